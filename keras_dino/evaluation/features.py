"""Feature extraction from a frozen backbone, batched, with a progress bar."""

import keras
import numpy as np
from keras import ops

from keras_dino.errors import WrongModelError


def _batches(data, batch_size):
    """Yields `(images, labels)` numpy batches from a tf.data dataset or array pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape"):
        images, labels = data
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size], np.asarray(labels[start : start + batch_size])
        return
    for element in data:
        if not isinstance(element, (tuple, list)) or len(element) != 2:
            raise ValueError(
                "extract_features expects a dataset of (images, labels) batches or an "
                "(images, labels) pair of arrays."
            )
        images, labels = element
        yield np.asarray(images), np.asarray(labels)


def _count(data, batch_size):
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape"):
        return -(-len(data[0]) // batch_size)
    try:
        n = int(data.cardinality())
        return n if n >= 0 else None
    except (AttributeError, TypeError):
        return None


def check_backbone(model, where: str = "feature extraction") -> None:
    """Raises a `WrongModelError` for a model whose call is not the backbone's features.

    A `keras_dino.DINO` training model (found by its `teacher` and `student` attributes,
    without importing the training code) returns the student head's logits; a
    `MultiCropWrapper` returns its head's output. Both name the backbone to pass instead.

    Example:

    >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
    >>> check_backbone(vit_tiny(16, depth=1))
    >>> check_backbone(MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(192, 8)))
    Traceback (most recent call last):
    ...
    keras_dino.errors.WrongModelError: feature extraction takes a backbone, not a MultiCropWrapper (its call returns the head's output): pass wrapper.backbone.
    """
    if hasattr(model, "teacher") and hasattr(model, "student"):
        raise WrongModelError(
            f"{where} takes a backbone, not a DINO training model (its call returns the "
            "student head's logits): pass model.teacher.backbone, the network DINO evaluates.")
    if hasattr(model, "backbone") and hasattr(model, "head"):
        raise WrongModelError(
            f"{where} takes a backbone, not a {type(model).__name__} (its call returns the "
            "head's output): pass wrapper.backbone.")


def extract_features(backbone, data, batch_size: int = 128, feature_fn=None, verbose: int = 1):
    """Features `(N, D)` (float32, not normalised) and labels `(N,)` of a dataset.

    Args:
        backbone: a `VisionTransformer` (e.g. `dino_model.backbone`, the teacher's).
        data: a `tf.data.Dataset` of `(images, labels)` batches of normalised NHWC images,
            or an `(images, labels)` pair of arrays.
        batch_size: batch size for array inputs.
        feature_fn: `fn(backbone, images) -> features`, called eagerly; by default the
            CLS embedding through the backbone's compiled `predict_on_batch` (about 3x
            faster than an eager call on JAX).
        verbose: show a progress bar.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> feats, labels = extract_features(
    ...     vit_tiny(16, depth=1), (np.zeros((3, 32, 32, 3), "float32"), np.arange(3)),
    ...     verbose=0)
    >>> feats.shape, labels.tolist()
    ((3, 192), [0, 1, 2])
    """
    check_backbone(backbone, "extract_features")
    feature_fn = feature_fn or (lambda model, images: model.predict_on_batch(images))
    bar = keras.utils.Progbar(_count(data, batch_size), verbose=verbose, unit_name="batch")
    features, labels = [], []
    for i, (images, batch_labels) in enumerate(_batches(data, batch_size)):
        features.append(ops.convert_to_numpy(feature_fn(backbone, images)).astype(np.float32))
        labels.append(batch_labels)
        bar.update(i + 1)
    if not features:
        raise ValueError("the dataset is empty: no features to extract.")
    return np.concatenate(features), np.concatenate(labels)
