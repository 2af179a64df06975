"""Backbone + head over a list of crops, the official `MultiCropWrapper`."""

import keras
from keras import ops


def group_crops_by_resolution(crops) -> list[tuple[int, int]]:
    """`[start, end)` index ranges of consecutive crops that share height and width.

    Example:

    >>> import numpy as np
    >>> crops = [np.zeros((2, 8, 8, 3))] * 2 + [np.zeros((2, 4, 4, 3))] * 3
    >>> group_crops_by_resolution(crops)
    [(0, 2), (2, 5)]
    """
    groups = []
    start = 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or tuple(crops[i].shape[1:3]) != tuple(crops[start].shape[1:3]):
            groups.append((start, i))
            start = i
    return groups


@keras.saving.register_keras_serializable(package="keras_dino")
class MultiCropWrapper(keras.Model):
    """Runs the backbone once per resolution and the head once on all crops.

    Consecutive crops of the same resolution are concatenated along the batch axis and
    go through the backbone together; the CLS embeddings of all groups are
    concatenated (crop-major: crop 0's batch, then crop 1's, ...) and go through the
    head in one call, exactly as the official `MultiCropWrapper`.

    Args:
        backbone: a `VisionTransformer`.
        head: a `DINOHead` (or any layer mapping embeddings to logits).

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import DINOHead, vit_tiny
    >>> head = DINOHead(64, hidden_dim=32, bottleneck_dim=16)
    >>> model = MultiCropWrapper(vit_tiny(16, depth=1), head)
    >>> crops = [np.zeros((2, 64, 96, 3), "float32")] * 2 + [np.zeros((2, 32, 32, 3), "float32")]
    >>> tuple(model(crops).shape)
    (6, 64)
    """

    def __init__(self, backbone, head, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head

    def build(self, input_shape=None):
        if self.built:
            return
        self.backbone.build((None, None, None, 3))
        self.head.build((None, self.backbone.embed_dim))
        self.built = True

    def call(self, crops, training=None, return_features=False):
        if not isinstance(crops, (list, tuple)):
            crops = [crops]
        features = []
        for start, end in group_crops_by_resolution(crops):
            group = crops[start:end]
            batch = group[0] if len(group) == 1 else ops.concatenate(list(group), axis=0)
            features.append(self.backbone(batch, training=training))
        features = features[0] if len(features) == 1 else ops.concatenate(features, axis=0)
        logits = self.head(features, training=training)
        if return_features:
            return logits, features
        return logits

    def compute_output_spec(self, crops, training=None, return_features=False):
        if not isinstance(crops, (list, tuple)):
            crops = [crops]
        batch = sum(c.shape[0] for c in crops) if all(c.shape[0] for c in crops) else None
        return keras.KerasTensor((batch, self.head.out_dim), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
