"""The official linear evaluation (`eval_linear.py`) on a frozen DINO backbone."""

import math

import keras
from keras import ops

from keras_dino.training.optimizers import SGD


def linear_features(backbone, images, n_last_blocks: int = 4, avgpool_patchtokens: bool = False):
    """What the official linear classifier sees.

    The CLS tokens of the last `n_last_blocks` blocks (normalised by the final norm),
    concatenated; with `avgpool_patchtokens` (used with `n_last_blocks=1`, as for ViT-B),
    the CLS token and the mean of the patch tokens interleaved per channel, exactly as
    the official `torch.cat((cls.unsqueeze(-1), mean.unsqueeze(-1)), -1).reshape(B, -1)`.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> x = linear_features(vit_tiny(16, depth=4), np.zeros((2, 32, 32, 3), "float32"))
    >>> tuple(x.shape)
    (2, 768)
    """
    outputs = backbone.get_intermediate_layers(images, n_last_blocks)
    cls = ops.concatenate([t[:, 0] for t in outputs], axis=-1)
    if not avgpool_patchtokens:
        return cls
    if n_last_blocks != 1:
        raise ValueError(
            "avgpool_patchtokens interleaves the CLS token with the mean patch token, which "
            "the official code defines for n_last_blocks=1 only."
        )
    mean = ops.mean(outputs[-1][:, 1:], axis=1)
    both = ops.stack([cls, mean], axis=-1)
    return ops.reshape(both, (ops.shape(cls)[0], -1))


@keras.saving.register_keras_serializable(package="keras_dino")
class LinearClassifier(keras.layers.Layer):
    """The official linear head: a dense layer with weights N(0, 0.01) and zero bias.

    Example:

    >>> import numpy as np
    >>> tuple(LinearClassifier(10)(np.zeros((2, 384), "float32")).shape)
    (2, 10)
    """

    def __init__(self, num_labels: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.linear = keras.layers.Dense(
            num_labels,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer="zeros",
            name="linear",
        )

    def build(self, input_shape):
        self.linear.build(input_shape)

    def call(self, x):
        return self.linear(ops.reshape(x, (ops.shape(x)[0], -1)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_labels)

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels}


class EpochCosineSchedule:
    """`CosineAnnealingLR(T_max=epochs, eta_min=0)` stepped once per epoch, as officially.

    `lr(step) = base_lr * (1 + cos(pi * epoch / epochs)) / 2` with
    `epoch = step // steps_per_epoch`; no weight decay. Used by the torch-arithmetic SGD.
    """

    def __init__(self, base_lr: float, epochs: int, steps_per_epoch: int | None = None):
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def lr(self, step):
        if not self.steps_per_epoch:
            raise ValueError("steps_per_epoch is not set (LinearProbe.fit sets it).")
        epoch = ops.floor(ops.cast(step, "float32") / float(self.steps_per_epoch))
        return self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * epoch / float(self.epochs)))

    def wd(self, step):
        return ops.zeros(())

    def last_layer_trains(self, step):
        return True


class _SetStepsPerEpoch(keras.callbacks.Callback):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_train_begin(self, logs=None):
        if not self.schedule.steps_per_epoch:
            steps = self.params.get("steps")
            if not steps:
                raise ValueError("pass steps_per_epoch= to fit for an unsized dataset.")
            self.schedule.steps_per_epoch = int(steps)


@keras.saving.register_keras_serializable(package="keras_dino")
class LinearProbe(keras.Model):
    """A frozen backbone, the official linear features, and a trainable linear layer.

    Train it like the official `eval_linear.py`: SGD with momentum 0.9 and no weight
    decay, `lr * batch_size / 256` with per-epoch cosine annealing, cross-entropy; the
    backbone runs in inference mode and gets no gradient.

    Args:
        backbone: a `VisionTransformer`.
        num_labels: number of classes.
        n_last_blocks: CLS tokens of this many last blocks (4 for ViT-S, 1 for ViT-B).
        avgpool_patchtokens: also the mean patch token (official choice for ViT-B).

    Example:

    ```python
    probe = keras_dino.evaluation.LinearProbe(model.backbone, num_labels=1000)
    probe.compile_official(lr=0.001, batch_size=256, epochs=100)
    probe.fit(train_ds, validation_data=val_ds, epochs=100)
    ```
    """

    def __init__(self, backbone, num_labels: int, n_last_blocks: int = 4,
                 avgpool_patchtokens: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.backbone.trainable = False
        self.num_labels = num_labels
        self.n_last_blocks = n_last_blocks
        self.avgpool_patchtokens = avgpool_patchtokens
        self.classifier = LinearClassifier(num_labels, name="linear_classifier")
        width = backbone.embed_dim * (2 if avgpool_patchtokens else n_last_blocks)
        self.classifier.build((None, width))
        self.schedule = None

    def call(self, images, training=None):
        features = linear_features(
            self.backbone, images, self.n_last_blocks, self.avgpool_patchtokens
        )
        return self.classifier(ops.stop_gradient(features))

    def compile_official(self, lr: float = 0.001, batch_size: int = 256, epochs: int = 100, **kw):
        """SGD(momentum 0.9) with the official scaled lr and per-epoch cosine; top-1/5."""
        self.schedule = EpochCosineSchedule(lr * batch_size / 256.0, epochs)
        optimizer = SGD(self.schedule, clip_grad=0.0, momentum=0.9, name="linear_sgd")
        self.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="acc1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, self.num_labels), name="acc5"),
            ],
            **kw,
        )

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if self.schedule is not None:
            callbacks.insert(0, _SetStepsPerEpoch(self.schedule))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_labels": self.num_labels,
            "n_last_blocks": self.n_last_blocks,
            "avgpool_patchtokens": self.avgpool_patchtokens,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
