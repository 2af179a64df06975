"""Labelled evaluation inputs as the official `eval_*.py` transforms build them (tf.data)."""

import os

from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def eval_transform(image, size: int = 224, resize_size: int | None = None):
    """Resize the shorter side (bicubic, antialiased), center crop, normalise: one image.

    `resize_size` defaults to `size * 256 / 224` (256 for 224). TensorFlow ops, for
    `tf.data.Dataset.map`.
    """
    import tensorflow as tf

    resize_size = resize_size or int(round(size * 256 / 224))
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(height, width)
    new_h = tf.cast(tf.cast(height * resize_size, tf.float32) / tf.cast(short, tf.float32), tf.int32)
    new_w = tf.cast(tf.cast(width * resize_size, tf.float32) / tf.cast(short, tf.float32), tf.int32)
    new_h = tf.where(height <= width, resize_size, new_h)
    new_w = tf.where(height <= width, new_w, resize_size)
    resized = tf.cond(
        tf.logical_and(tf.equal(new_h, height), tf.equal(new_w, width)),
        lambda: image,
        lambda: tf.clip_by_value(
            tf.round(tf.image.resize(image, [new_h, new_w], "bicubic", antialias=True)), 0, 255
        ),
    )
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    crop = resized[top : top + size, left : left + size, :]
    crop = tf.ensure_shape(crop, [size, size, 3])
    return (crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def image_folder_dataset(
    path, batch_size: int = 128, size: int = 224, resize_size: int | None = None
):
    """`(images, labels)` batches of an ImageFolder tree, in file order, for evaluation.

    Files that cannot be decoded are skipped and reported (as `multicrop_dataset` does).

    Returns:
        `(dataset, class_names, num_images)`.

    Example:

    ```python
    ds, classes, n = image_folder_dataset("imagenet/val", batch_size=256)
    features, labels = keras_dino.evaluation.extract_features(model.backbone, ds)
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
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.map(
        lambda f, y: (eval_transform(decode_image(tf.io.read_file(f)), size, resize_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, listing.class_names, len(files)
