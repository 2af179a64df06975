"""Labelled evaluation inputs as the official `eval_*.py` transforms build them (tf.data).

The evaluation view's pixels are defined once, by `keras_dino.preprocessing.EvalConfig`
(PIL decoding and resizing, as the official tools).
"""

import os

from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD, EvalConfig


def train_transform(image, seed, size: int = 224, scale=(0.08, 1.0)):
    """The official linear-evaluation training view of one image (TensorFlow ops).

    torchvision's `RandomResizedCrop(size)` (area fraction in `scale`, aspect ratio in
    `[3/4, 4/3]`, antialiased bilinear resize) and `RandomHorizontalFlip()`, then the
    ImageNet normalisation. Randomness is stateless: the same `seed` gives the same view.

    Args:
        image: uint8 (or 0..255) image `(H, W, 3)`.
        seed: stateless seed, an int tensor of shape `[2]`.
        size: side of the square output.
        scale: range of the crop's area, as a fraction of the image's.

    Returns:
        float32 `(size, size, 3)`, normalised.

    Example:

    >>> import tensorflow as tf
    >>> view = train_transform(tf.zeros([40, 60, 3], tf.uint8), tf.constant([1, 2]), 32)
    >>> view.shape.as_list()
    [32, 32, 3]
    """
    import tensorflow as tf

    from keras_dino.data.ops import flip_left_right, sample_crop_boxes

    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    box = sample_crop_boxes(seed, height, width, num=1, scale=scale)[0]
    crop = tf.slice(tf.cast(image, tf.float32), tf.stack([box[0], box[1], 0]),
                    tf.stack([box[2], box[3], -1]))
    crop = tf.image.resize(crop, [size, size], "bilinear", antialias=True)
    crop = tf.clip_by_value(tf.round(crop), 0.0, 255.0)  # PIL's uint8 output
    flip = tf.random.stateless_uniform([], seed + tf.constant([0, 1], tf.int64)) < 0.5
    crop = tf.ensure_shape(flip_left_right(crop, flip), [size, size, 3])
    return (crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def image_folder_dataset(
    path,
    batch_size: int = 128,
    size: int = 224,
    resize_size: int | None = None,
    training: bool = False,
    seed: int | None = None,
    num_parallel_calls: int | None = None,
):
    """`(images, labels)` batches of an ImageFolder tree, for evaluation or a linear probe.

    By default the official evaluation view, with the official pixels (PIL decoding and
    resizing: `keras_dino.preprocessing.EvalConfig`), in file order. With
    `training=True`, the official linear-evaluation training view (`train_transform`:
    random resized crop and flip) of the images in a new random order every epoch,
    reproducible from `seed`. Files that cannot be decoded are skipped and reported (as
    `multicrop_dataset` does).

    Args:
        path: root of the ImageFolder tree (`<class>/<image>`).
        batch_size: images per batch (the last batch may be smaller).
        size: side of the square images.
        resize_size: evaluation only: shorter side before the center crop (default
            `size * 256 / 224`).
        training: random training views, reshuffled every epoch.
        seed: seed of the training order and views.
        num_parallel_calls: parallel decodes (default: AUTOTUNE).

    Returns:
        `(dataset, class_names, num_images)`.

    Example:

    ```python
    ds, classes, n = image_folder_dataset("imagenet/val", batch_size=256)
    features, labels = keras_dino.evaluation.extract_features(model.backbone, ds)
    train_ds, _, _ = image_folder_dataset("imagenet/train", 256, training=True, seed=0)
    ```
    """
    import tensorflow as tf

    from keras_dino.data.sources import decode_image, list_image_files, log_skipped, scan_images

    listing = list_image_files(os.fspath(path))
    scan = scan_images(listing.files, listing.labels)
    if scan.skipped:
        log_skipped(scan.skipped, where=os.fspath(path))
    if not scan.files:
        raise ValueError(f"no decodable image under {path}.")
    files, labels = list(scan.files), list(scan.labels)
    parallel = num_parallel_calls or tf.data.AUTOTUNE
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda fy, s: (train_transform(decode_image(tf.io.read_file(fy[0])), s, size), fy[1]),
            num_parallel_calls=parallel,
            deterministic=True,
        )
    else:
        # The official evaluation's pixels: PIL decodes and resizes (EvalConfig.load), in
        # parallel threads (PIL releases the GIL).
        config = EvalConfig(size, resize_size)

        def load(path, label):
            image = tf.numpy_function(lambda p: config.load(p.decode()), [path], tf.float32)
            return tf.ensure_shape(image, [size, size, 3]), label

        ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, listing.class_names, len(files)


def labelled_arrays(data, what: str = "the evaluation data"):
    """`(images, labels)` numpy arrays of an array pair or of `(images, labels)` batches.

    Args:
        data: an `(images, labels)` pair of arrays, or an iterable of such batches (a
            `tf.data.Dataset`, e.g. from `image_folder_dataset`).
        what: how errors name the data.

    Example:

    >>> import numpy as np
    >>> batches = [(np.zeros((2, 4, 4, 3)), np.array([0, 1])), (np.ones((1, 4, 4, 3)), [2])]
    >>> images, labels = labelled_arrays(batches)
    >>> images.shape, labels.tolist()
    ((3, 4, 4, 3), [0, 1, 2])
    """
    import numpy as np

    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape"):
        return np.asarray(data[0]), np.asarray(data[1])
    images, labels = [], []
    for element in data:
        if not isinstance(element, (tuple, list)) or len(element) != 2:
            raise ValueError(f"{what}: expected (images, labels) arrays or a dataset of "
                             "(images, labels) batches.")
        images.append(np.asarray(element[0]))
        labels.append(np.asarray(element[1]))
    if not images:
        raise ValueError(f"{what}: the dataset is empty.")
    return np.concatenate(images), np.concatenate(labels)


def image_folder_arrays(path, size: int = 224, resize_size: int | None = None,
                        batch_size: int = 256):
    """A labelled ImageFolder tree's evaluation views, decoded once: `(images, labels)`.

    The pixels of `image_folder_dataset` (the official evaluation view), as numpy
    arrays, for the small labelled splits of a k-NN evaluation during training.

    Example:

    >>> from keras_dino.datasets import cifar10_mini
    >>> images, labels = image_folder_arrays(cifar10_mini("test"), size=32, resize_size=32)
    >>> images.shape[1:], images.dtype.name, len(set(labels.tolist()))
    ((32, 32, 3), 'float32', 10)
    """
    dataset, _, _ = image_folder_dataset(path, batch_size, size, resize_size)
    return labelled_arrays(((x.numpy(), y.numpy()) for x, y in dataset), what=str(path))
