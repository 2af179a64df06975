"""The official weighted k-NN classifier of `eval_knn.py`."""

import numpy as np
from keras import ops

from keras_dino.errors import InputError


def l2_normalize(features):
    """Rows divided by their L2 norm (`F.normalize(x, dim=1)`, eps 1e-12)."""
    features = ops.convert_to_tensor(features, "float32")
    norm = ops.sqrt(ops.sum(ops.square(features), axis=-1, keepdims=True))
    return features / ops.maximum(norm, 1e-12)


def _class_indices(train_labels, test_labels):
    """Both label arrays as int32 class indices: integers (or integral floats) as they
    are, anything else (class names) numbered in sorted order over both arrays."""
    train = np.asarray(train_labels).reshape(-1)
    test = np.asarray(test_labels).reshape(-1)

    def integral(a):
        return a.dtype.kind in "iub" or (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0))

    if integral(train) and integral(test):
        return train.astype("int32"), test.astype("int32")
    _, indices = np.unique(np.concatenate([train.astype(str), test.astype(str)]),
                           return_inverse=True)
    indices = indices.reshape(-1).astype("int32")
    return indices[: train.shape[0]], indices[train.shape[0]:]


def _check_features_and_labels(train_features, train_labels, test_features, test_labels):
    """A `ValueError` naming the mismatch, before it becomes a wrong accuracy."""
    dims = []
    for name, features, labels in (("train", train_features, train_labels),
                                   ("test", test_features, test_labels)):
        shape = tuple(getattr(features, "shape", None) or np.shape(features))
        if len(shape) != 2:
            raise ValueError(f"{name}_features must be (N, D); got shape {shape}.")
        if shape[0] != labels.shape[0]:
            raise ValueError(f"{shape[0]} {name} features but {labels.shape[0]} {name} "
                             "labels: give one label per feature.")
        dims.append(shape[1])
    if dims[0] != dims[1]:
        raise ValueError(
            f"train features have {dims[0]} dimensions and test features {dims[1]}: "
            "extract both with the same backbone.")


def knn_classifier(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1000,
):
    """Top-1 and top-5 accuracy (percent) of DINO's weighted k-NN vote.

    For each test feature, the `k` training features of highest cosine similarity vote
    for their labels with weight `exp(similarity / T)`; classes are ranked by their summed
    votes. Features are L2-normalised here (the official extraction does it too), and
    test features are processed in chunks so memory stays bounded.

    Args:
        train_features: `(N, D)` features of the labelled reference set.
        train_labels: `(N,)` labels: integer class indices, or class names (strings, any
            non-integer values), numbered in sorted order over both sets.
        test_features: `(M, D)` features to classify.
        test_labels: `(M,)` labels, as `train_labels`.
        k: number of neighbours (the paper reports 10, 20, 100 and 200; 20 is best).
        T: temperature of the vote weights, 0.07.
        num_classes: number of classes; by default `max(label) + 1` (class names: their
            number).
        chunk_size: test features per similarity matrix.

    Returns:
        `(top1, top5)` in percent; top-5 counts the first `min(5, k)` predictions.

    Example:

    >>> import numpy as np
    >>> train = np.eye(4, dtype="float32"); labels = np.arange(4)
    >>> knn_classifier(train, labels, train, labels, k=1)
    (100.0, 100.0)
    """
    train_labels, test_labels = _class_indices(train_labels, test_labels)
    _check_features_and_labels(train_features, train_labels, test_features, test_labels)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    n_train = train_labels.shape[0]
    if not 1 <= k <= n_train:
        raise InputError(f"k must be in [1, {n_train}] (the number of training features); got "
                         f"{k}.")
    train = l2_normalize(train_features)
    test = l2_normalize(test_features)
    train_t = ops.transpose(train)
    labels_row = ops.convert_to_tensor(train_labels)
    top1 = top5 = 0
    total = test_labels.shape[0]
    for start in range(0, total, chunk_size):
        chunk = test[start : start + chunk_size]
        targets = test_labels[start : start + chunk_size]
        similarity = ops.matmul(chunk, train_t)
        distances, indices = ops.top_k(similarity, k=k, sorted=True)
        neighbours = ops.take(labels_row, indices)  # (b, k)
        votes = ops.one_hot(neighbours, num_classes) * ops.expand_dims(ops.exp(distances / T), -1)
        probs = ops.convert_to_numpy(ops.sum(votes, axis=1))
        # Stable descending order, ties by class index as torch's sort does on CPU.
        predictions = np.argsort(-probs, axis=1, kind="stable")
        correct = predictions == targets[:, None]
        top1 += int(correct[:, 0].sum())
        top5 += int(correct[:, : min(5, k)].sum())
    return top1 * 100.0 / total, top5 * 100.0 / total


def knn_accuracy(backbone, train_data, test_data, k: int = 20, T: float = 0.07,
                 batch_size: int = 256) -> tuple[float, float]:
    """`(top1, top5)` of the weighted k-NN vote on `backbone`'s features, in percent.

    The features of both labelled sets are extracted (`extract_features`) and the test
    set is classified against the reference set with `knn_classifier`.

    Args:
        backbone: a keras_dino backbone (its pooled output is the feature).
        train_data: `(images, labels)` arrays of normalised NHWC images, or a dataset
            of such batches: the reference set.
        test_data: the same, for the images to classify.
        k: the number of neighbours (20, the paper's).
        T: the vote temperature (0.07, the paper's).
        batch_size: images per extraction batch.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    >>> y = np.arange(8) % 2
    >>> knn_accuracy(vit_tiny(16, depth=1), (x, y), (x, y), k=1)  # each image finds itself
    (100.0, 100.0)
    """
    from keras_dino.evaluation.features import extract_features

    train_f, train_y = extract_features(backbone, train_data, batch_size, verbose=0)
    test_f, test_y = extract_features(backbone, test_data, batch_size, verbose=0)
    return knn_classifier(train_f, train_y, test_f, test_y, k=k, T=T)

