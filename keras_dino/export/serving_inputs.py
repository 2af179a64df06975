"""The exports' image inputs in TensorFlow: input checks, decoding, normalisation.

TF Serving (and `signatures[...]` of a loaded SavedModel) feed tensors without checking
them against the signature's shapes, so every input is checked here, in the graph, and a
bad request fails with a message that names the signature and the expected input.
"""

import tensorflow as tf

# The checks read the runtime shape through values padded with a sentinel, which Grappler
# cannot fold from the static signature shape (it would fold tf.rank or tf.size), and the
# rest of the graph depends on them through a tf.cond, so they always run first.
SENTINEL = -7


def fail_unless(ok, value, message):
    """`value`, or an `InvalidArgumentError` carrying `message` when `ok` is false."""

    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, message, summarize=16)]):
            return tf.identity(value)

    return tf.cond(ok, lambda: tf.identity(value), fail)


def padded_shape(x, rank):
    """The runtime shape of `x` followed by `rank + 1` sentinels."""
    return tf.concat([tf.shape(x), tf.fill([rank + 1], SENTINEL)], 0)


def expects(signature, name, expected):
    """The start of every input error: which signature, which input, what it expects."""
    return f"signature '{signature}' expects input '{name}': {expected}"


def check_images(images, signature, image_size, dtype):
    """Fails with a message naming the input unless `images` is `[batch, S, S, 3]`
    (`[batch, H, W, 3]` when `image_size` is None)."""
    side = "H, W" if image_size is None else f"{image_size}, {image_size}"
    expected = f"{dtype} RGB images of shape [batch, {side}, 3] (NHWC, pixel values 0..255)"
    padded = padded_shape(images, 4)
    if image_size is None:
        ok = tf.reduce_all(tf.equal(padded[3:5], [3, SENTINEL]))
        ok = tf.logical_and(ok, tf.reduce_all(padded[1:3] > 0))
    else:
        ok = tf.reduce_all(tf.equal(padded[1:5], [image_size, image_size, 3, SENTINEL]))
    ok = tf.logical_and(ok, padded[0] >= 0)
    message = [expects(signature, "images", expected) + "; got shape", tf.shape(images)]
    return fail_unless(ok, images, message)


def normalize(images, eval_config):
    """0..255 RGB -> the normalised float32 the backbones take (`eval_config`'s mean, std)."""
    x = tf.cast(images, tf.float32) / 255.0
    mean = tf.constant(eval_config.mean, tf.float32)
    return (x - mean) / tf.constant(eval_config.std, tf.float32)


def decode_and_crop(data, image_size, resize_size):
    """One encoded JPEG/PNG -> float32 `[S, S, 3]` in 0..255, as `EvalConfig.load`."""
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    data = fail_unless(tf.logical_or(is_jpeg, is_png), data, ["neither JPEG nor PNG"])
    # JPEGs with libjpeg's accurate IDCT, as PIL (the official evaluation) decodes them.
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8),
    )
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    # torchvision Resize(int): the shorter side becomes resize_size, the other truncated.
    new_h = tf.where(height <= width, resize_size, resize_size * height // width)
    new_w = tf.where(height <= width, resize_size * width // height, resize_size)
    x = tf.cast(image, tf.float32)

    def resize():
        y = tf.image.resize(x[None], tf.stack([new_h, new_w]), "bicubic", antialias=True)[0]
        return tf.clip_by_value(tf.round(y), 0.0, 255.0)  # PIL produces uint8

    same = tf.logical_and(tf.equal(new_h, height), tf.equal(new_w, width))
    x = tf.cond(same, lambda: x, resize)
    # Python's round (half to even), like torchvision's CenterCrop.
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    x = tf.slice(x, tf.stack([top, left, 0]), [image_size, image_size, 3])
    return tf.ensure_shape(x, [image_size, image_size, 3])


def decode_batch(image_bytes, image_size, resize_size):
    """`[batch]` encoded images -> float32 `[batch, S, S, 3]` crops in 0..255.

    A tf.data pipeline (parallel, order kept) whose failed elements are dropped, so that
    a bad image fails the request with a message naming the input and the bad elements
    instead of the decoder's.
    """
    expected = 'a batch [batch] of encoded JPEG or PNG images (over REST: {"b64": "<base64>"})'
    padded = padded_shape(image_bytes, 1)
    ok = tf.logical_and(tf.equal(padded[1], SENTINEL), padded[0] >= 0)
    message = [
        expects("serve_bytes", "image_bytes", expected) + "; got shape",
        tf.shape(image_bytes),
    ]
    image_bytes = fail_unless(ok, image_bytes, message)
    n = tf.shape(image_bytes)[0]
    data = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    data = data.map(
        lambda i, d: (i, decode_and_crop(d, image_size, resize_size)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    empty = tf.data.Dataset.from_tensors(
        (tf.zeros([0], tf.int32), tf.zeros([0, image_size, image_size, 3]))
    )
    batches = data.batch(tf.cast(n, tf.int64) + 1).concatenate(empty).take(1)
    index, crops = batches.get_single_element()
    decoded = tf.reduce_any(tf.equal(tf.range(n)[:, None], index[None, :]), axis=1)
    failed = tf.boolean_mask(tf.range(n), tf.logical_not(decoded))
    message = [
        expects("serve_bytes", "image_bytes", expected)
        + "; these elements (0-based) could not be decoded as JPEG or PNG:",
        failed,
    ]
    return fail_unless(tf.equal(tf.size(index), n), crops, message)
