"""Small TensorFlow ops for the DINO multi-crop recipe, written for `tf.data` graphs.

Every op here is a pure function of its inputs: randomness is drawn with stateless TF ops
from an explicit `seed` (an int32/int64 tensor of shape `[2]`), so a pipeline that feeds
the same seeds gets the same crops whatever its parallelism.

The semantics follow the official DINO recipe, which runs torchvision transforms on PIL
images:

* `sample_crop_boxes`: `torchvision.transforms.RandomResizedCrop.get_params` (area scale,
  log-uniform aspect ratio, 10 attempts, then the centre-crop fallback).
* `resize_bicubic`: PIL's antialiased bicubic resampling (Keys a=-0.5, support widened by
  the downscale factor, weights normalised inside the image), as `Image.resize(BICUBIC)`.
* colour ops on float images in `[0, 1]`: brightness multiplies, contrast blends with the
  mean of the grayscale image, saturation blends with the grayscale image, hue rotates in
  HSV; each result is clipped to `[0, 1]` like the uint8 PIL originals.
* `gaussian_blur`: a Gaussian of standard deviation `sigma` (PIL's radius), 13 taps
  (`2 * ceil(3 * 2.0) + 1` for the largest radius 2.0), edges extended as PIL does.
* `solarize`: PIL's `ImageOps.solarize(threshold=128)` on the rounded uint8 value.

Example:

>>> import tensorflow as tf
>>> from keras_dino.data import ops
>>> image = tf.zeros([300, 400, 3], tf.uint8)
>>> boxes = ops.sample_crop_boxes(tf.constant([1, 2]), 300, 400, num=2, scale=(0.4, 1.0))
>>> crop = ops.crop_and_resize(image, boxes[0], 224)
>>> crop.shape.as_list(), crop.dtype.name
([224, 224, 3], 'uint8')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from keras_dino.data.config import IMAGENET_MEAN, IMAGENET_STD

# PIL's "L" conversion (ITU-R 601-2 luma), used by ImageEnhance and Grayscale.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# Taps on each side of the blur kernel: ceil(3 * largest radius 2.0).
BLUR_HALF_WIDTH = 6

# Resampling as banded matmuls: output rows in blocks of _RESIZE_BLOCK, each reading a
# window of input rows. Windows and crop widths are rounded up to these quanta so that
# the matmul shapes repeat: oneDNN generates a kernel for every new shape, and with
# continuously varying crop sizes that costs more than the products themselves.
_RESIZE_BLOCK = 8
_WINDOW_QUANTUM = 8
_WIDTH_QUANTUM = 16


def sample_crop_boxes(
    seed: tf.Tensor,
    height: tf.Tensor | int,
    width: tf.Tensor | int,
    num: int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
) -> tf.Tensor:
    """Samples `num` RandomResizedCrop boxes as torchvision does.

    Each box tries `attempts` (area fraction ~ U(scale), log aspect ratio ~ U(log ratio))
    pairs, keeps the first that fits with `w = round(sqrt(area * r))`,
    `h = round(sqrt(area / r))` and a uniform integer offset, and otherwise falls back to
    the centre crop clamped to the ratio range.

    Args:
        seed: stateless seed, shape `[2]`.
        height, width: image size (Python ints or scalar tensors).
        num: how many boxes.
        scale: `(min, max)` fraction of the image area.
        ratio: `(min, max)` aspect ratio `w / h`.
        attempts: tries before the fallback (torchvision uses 10).

    Returns:
        int32 tensor `[num, 4]` of `(top, left, crop_height, crop_width)`.
    """
    u = tf.random.stateless_uniform([num, attempts, 4], seed, dtype=tf.float64)
    return crop_boxes_from_uniforms(u, height, width, scale, ratio)


def crop_boxes_from_uniforms(
    u: tf.Tensor,
    height: tf.Tensor | int,
    width: tf.Tensor | int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tf.Tensor:
    """The deterministic half of `sample_crop_boxes`: boxes from uniforms in `[0, 1)`.

    `u` is float64 `[num, attempts, 4]`: per attempt the area fraction, the log ratio,
    the top and the left offset draws (torchvision's `uniform_`, `uniform_`, `randint`,
    `randint`, with `randint(0, n)` = `floor(u * n)`).
    """
    u = tf.cast(u, tf.float64)
    num = tf.shape(u)[0]
    hf = tf.cast(height, tf.float64)
    wf = tf.cast(width, tf.float64)
    area = hf * wf
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    # Python's round() and tf.round() both round half to even.
    cw = tf.round(tf.sqrt(target_area * aspect))
    ch = tf.round(tf.sqrt(target_area / aspect))
    ok = (cw > 0) & (cw <= wf) & (ch > 0) & (ch <= hf)
    top = tf.floor(u[..., 2] * (hf - ch + 1.0))
    left = tf.floor(u[..., 3] * (wf - cw + 1.0))
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    candidates = tf.stack([top, left, ch, cw], axis=-1)  # [num, attempts, 4]
    sampled = tf.gather(candidates, first, axis=1, batch_dims=1)
    # Centre-crop fallback.
    in_ratio = wf / hf
    fw = tf.where(in_ratio > ratio[1], tf.round(hf * ratio[1]), wf)
    fh = tf.where(in_ratio < ratio[0], tf.round(wf / ratio[0]), hf)
    fallback = tf.stack([tf.floor((hf - fh) / 2), tf.floor((wf - fw) / 2), fh, fw])
    any_ok = tf.reduce_any(ok, axis=1, keepdims=True)
    boxes = tf.where(any_ok, sampled, tf.broadcast_to(fallback[None, :], [num, 4]))
    return tf.cast(boxes, tf.int32)


def _keys_cubic(x: tf.Tensor, a: float = -0.5) -> tf.Tensor:
    """Keys' cubic kernel (PIL's bicubic uses a = -0.5); zero from |x| = 2 on."""
    ax = tf.minimum(tf.abs(x), 2.0)
    near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a  # far(2) == 0
    is_near = tf.cast(ax < 1.0, x.dtype)
    return far + is_near * (near - far)


def resize_weights(
    in_sizes: tf.Tensor,
    out_size: int,
    flip: tf.Tensor | None = None,
    block: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Banded PIL-bicubic weights for resampling `n` axes of lengths `in_sizes` to `out_size`.

    The output positions are split in blocks of `block`; block `b` of axis `i` reads the
    `windows[i]` input positions from `starts[i, b]` on. Computing all axes of one output
    size at once keeps the op count (what a CPU pays for small tensors) low.

    Args:
        in_sizes: int32 `[n]` input lengths.
        out_size: output length.
        flip: optional bool `[n]`; a true entry mirrors that axis (free horizontal flip).

    Returns:
        `weights` float32 `[n, blocks, block, max_window]` (zero outside each window),
        `starts` int32 `[n, blocks]` and `windows` int32 `[n]`.
    """
    block = block or _RESIZE_BLOCK
    in_sizes = tf.cast(in_sizes, tf.int32)
    nf = tf.cast(in_sizes, tf.float32)[:, None, None]
    scale = nf / float(out_size)
    filter_scale = tf.maximum(scale, 1.0)
    support = 2.0 * filter_scale
    blocks = -(-out_size // block)
    padded = blocks * block
    pos = tf.reshape(tf.range(padded, dtype=tf.float32), [1, blocks, block])
    if flip is not None:
        mirror = tf.cast(flip, tf.float32)[:, None, None]
        pos = pos + mirror * (float(out_size - 1) - 2.0 * pos)
    centers = (pos + 0.5) * scale  # [n, blocks, block]
    lowest = tf.reduce_min(centers, axis=2)
    starts = tf.cast(tf.floor(lowest - support[:, :, 0] + 0.5), tf.int32)  # [n, blocks]
    windows = tf.cast(tf.math.ceil((block - 1) * scale + 2.0 * support), tf.int32)[:, 0, 0] + 2
    # Rounded up (the extra taps get zero weight): see _WINDOW_QUANTUM.
    windows = (windows + _WINDOW_QUANTUM - 1) // _WINDOW_QUANTUM * _WINDOW_QUANTUM
    idx = starts[:, :, None] + tf.range(tf.reduce_max(windows))[None, None, :]  # [n, B, L]
    taps = (tf.cast(idx[:, :, None, :], tf.float32) - centers[..., None] + 0.5)
    taps = taps / filter_scale[..., None]
    valid = (idx >= 0) & (idx < in_sizes[:, None, None])
    weights = _keys_cubic(taps) * tf.cast(valid, tf.float32)[:, :, None, :]
    weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
    return weights, starts, windows


def _resample_rows(
    x: tf.Tensor, weights: tf.Tensor, starts: tf.Tensor, window: tf.Tensor, out_size: int
) -> tf.Tensor:
    """Resamples the rows of `x` (`[in, rest]`) with one axis' `resize_weights` output.

    `x` may be uint8: the windows are gathered first and cast after (less to copy).
    """
    n = tf.shape(x)[0]
    idx = tf.clip_by_value(starts[:, None] + tf.range(window)[None, :], 0, n - 1)
    rows = tf.gather(x, idx)  # [blocks, window, rest]
    if rows.dtype != tf.float32:
        rows = tf.cast(rows, tf.float32)
    out = tf.matmul(weights[:, :, :window], rows)
    out = tf.reshape(out, [-1, tf.shape(x)[1]])
    return out[:out_size] if weights.shape[0] * weights.shape[1] != out_size else out



def _resize_with(
    crop: tf.Tensor, size: int, wy, wx, channels: int, pad_width: tf.Tensor | None = None
) -> tf.Tensor:
    """Resizes `crop` ([h, w, C]) with precomputed `(weights, starts, window)` per axis.

    Returns uint8 `[size, size, C]`: rounded and clipped as PIL's uint8 output.
    """
    h, w = tf.shape(crop)[0], tf.shape(crop)[1]
    # Columns up to a multiple of _WIDTH_QUANTUM keep the matmul shapes few (see
    # resize_weights); the horizontal weights never reach them. `crop` may already hold
    # them (see `crops_and_resize`); zeros fill what is missing.
    if pad_width is None:
        pad_width = (w + _WIDTH_QUANTUM - 1) // _WIDTH_QUANTUM * _WIDTH_QUANTUM
    w = pad_width
    x = tf.pad(crop, [[0, 0], [0, w - tf.shape(crop)[1]], [0, 0]])
    y = _resample_rows(tf.reshape(x, [h, w * channels]), *wy, size)
    y = tf.transpose(tf.reshape(y, [size, w, channels]), [1, 0, 2])
    y = _resample_rows(tf.reshape(y, [w, size * channels]), *wx, size)
    y = tf.saturate_cast(tf.round(tf.reshape(y, [size, size, channels])), tf.uint8)
    return tf.transpose(y, [1, 0, 2])


def resize_bicubic(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes one `[H, W, C]` image to `size x size` like PIL's `resize(..., BICUBIC)`.

    Antialiased when downscaling; the weights of
    `tf.image.resize(..., "bicubic", antialias=True)` at about twice its speed on a CPU.
    Returns uint8 (rounded and clipped, as PIL's output).
    """
    channels = int(image.shape[-1]) if image.shape[-1] is not None else 3
    shape = tf.shape(image)
    w, s, win = resize_weights(tf.stack([shape[0], shape[1]]), size)
    out = _resize_with(image, size, (w[0], s[0], win[0]), (w[1], s[1], win[1]), channels)
    return tf.ensure_shape(out, [size, size, channels])


def crop_and_resize(image: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """Crops `box` = `(top, left, h, w)` out of `image` and resizes it to `size x size`.

    The crop happens before the resize, so a huge image only costs the size of its crop.
    Returns uint8, as PIL's `resized_crop` does.
    """
    crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], -1]))
    return resize_bicubic(crop, size)


def crops_and_resize(
    image: tf.Tensor, boxes: tf.Tensor, size: int, flips: tf.Tensor | None = None
) -> list[tf.Tensor]:
    """`crop_and_resize` for several boxes of one output size, with optional mirroring.

    Weights for all boxes are computed in one batch (fewer ops than one call per box).
    Returns a list of uint8 `[size, size, C]` crops.
    """
    num = int(boxes.shape[0])
    channels = int(image.shape[-1]) if image.shape[-1] is not None else 3
    wy, sy, win_y = resize_weights(boxes[:, 2], size)
    wx, sx, win_x = resize_weights(boxes[:, 3], size, flips)
    wy, sy, win_y = tf.unstack(wy, num), tf.unstack(sy, num), tf.unstack(win_y, num)
    wx, sx, win_x = tf.unstack(wx, num), tf.unstack(sx, num), tf.unstack(win_x, num)
    out = []
    width = tf.shape(image)[1]
    top, left, height, crop_w = tf.unstack(tf.cast(boxes, tf.int32), axis=1)
    # Take the columns up to the next multiple of _WIDTH_QUANTUM from the image itself
    # where it has them (no padding copy); they get zero weight.
    padded_w = (crop_w + _WIDTH_QUANTUM - 1) // _WIDTH_QUANTUM * _WIDTH_QUANTUM
    take_w = tf.minimum(padded_w, width - left)
    starts = tf.unstack(tf.stack([top, left, tf.zeros_like(top)], axis=1), num)
    sizes = tf.unstack(tf.stack([height, take_w, -tf.ones_like(top)], axis=1), num)
    padded_w = tf.unstack(padded_w, num)
    for i in range(num):
        crop = tf.slice(image, starts[i], sizes[i])
        y = _resize_with(crop, size, (wy[i], sy[i], win_y[i]), (wx[i], sx[i], win_x[i]),
                         channels, padded_w[i])
        out.append(tf.ensure_shape(y, [size, size, channels]))
    return out


def resize_matrices(
    in_length: tf.Tensor | int,
    starts: tf.Tensor,
    lengths: tf.Tensor,
    out_size: int,
    flips: tf.Tensor | None = None,
) -> tf.Tensor:
    """Dense PIL-bicubic resampling matrices of `n` crops along one axis.

    Row `p` of matrix `i` holds the weights with which output position `p` reads the
    `in_length` input positions when the crop `[starts[i], starts[i] + lengths[i])` is
    resized to `out_size` (the weights of `resize_weights`, placed at the crop's offset;
    positions outside the crop weigh zero, as PIL resamples the cropped image alone).

    Args:
        in_length: length of the (padded) input axis.
        starts, lengths: int `[n]` crop offsets and lengths.
        out_size: output length.
        flips: optional bool `[n]`; a true entry mirrors the output.

    Returns:
        float32 `[n, out_size, in_length]`.

    Example:

    >>> w = resize_matrices(4, tf.constant([1]), tf.constant([2]), 2, flips=tf.constant([True]))
    >>> w.numpy().tolist()  # positions 1 and 2 copied, mirrored
    [[[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]
    """
    starts = tf.cast(starts, tf.float32)[:, None, None]
    lengths_f = tf.cast(lengths, tf.float32)[:, None, None]
    scale = lengths_f / float(out_size)
    filter_scale = tf.maximum(scale, 1.0)
    pos = tf.range(out_size, dtype=tf.float32)[None, :, None]
    if flips is not None:
        pos = pos + tf.cast(flips, tf.float32)[:, None, None] * (float(out_size - 1) - 2.0 * pos)
    centers = (pos + 0.5) * scale
    idx = tf.range(in_length, dtype=tf.float32)[None, None, :] - starts  # crop-relative
    weights = _keys_cubic((idx - centers + 0.5) / filter_scale)
    weights *= tf.cast((idx >= 0.0) & (idx < lengths_f), tf.float32)
    return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)


def batch_crops_and_resize(
    images: tf.Tensor,
    boxes: tf.Tensor,
    size: int,
    flips: tf.Tensor | None = None,
) -> tf.Tensor:
    """`crop_and_resize` (with optional mirroring) of one box per image of a batch.

    The batched counterpart of `crops_and_resize` for small images: each crop is two
    matrix products with dense `resize_matrices` over the whole (padded) image, so a
    batch costs a handful of ops instead of dozens per image. It pays for the full image
    size, so it suits data sets of small images (CIFAR, thumbnails), not large photos.

    Args:
        images: `[B, H, W, C]` uint8 (or float in `[0, 255]`), smaller images zero-padded
            at the bottom and right (as `padded_batch` makes them).
        boxes: int `[B, 4]` `(top, left, height, width)`, inside each image.
        size: output side.
        flips: optional bool `[B]`: mirror that crop horizontally.

    Returns:
        uint8 `[B, size, size, C]`, rounded and clipped as PIL's uint8 output.

    Example:

    >>> images = tf.random.uniform([2, 32, 32, 3], 0, 255, tf.int32)
    >>> boxes = tf.constant([[0, 0, 32, 32], [4, 6, 20, 24]])
    >>> out = batch_crops_and_resize(tf.cast(images, tf.uint8), boxes, 32)
    >>> bool(tf.reduce_all(out[0] == tf.cast(images[0], tf.uint8)))
    True
    """
    boxes = tf.cast(boxes, tf.int32)
    shape = tf.shape(images)
    wy = resize_matrices(shape[1], boxes[:, 0], boxes[:, 2], size)
    wx = resize_matrices(shape[2], boxes[:, 1], boxes[:, 3], size, flips)
    x = tf.cast(images, tf.float32)
    # Vertical pass first, then horizontal, rounding once at the end: the per-image path's
    # order (`_resize_with`).
    y = tf.einsum("bsh,bhwc->bswc", wy, x)
    y = tf.einsum("btw,bswc->bstc", wx, y)
    return tf.saturate_cast(tf.round(y), tf.uint8)


def flip_left_right(image: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Mirrors an `[H, W, C]` image when the boolean scalar `flip` is true."""
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


# The colour ops take the channel axis: -1 for `[H, W, 3]` images, 0 for planar
# `[3, H, W]` ones (what the host photometric program uses: under XLA on a CPU every
# channel is then a contiguous plane, which vectorises better).


def grayscale(image: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """PIL's `convert("L")` luma as a single channel (size 1 on `axis`), float."""
    r, g, b = tf.unstack(image, 3, axis=axis)
    return tf.expand_dims(GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b, axis)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """torchvision brightness: `clip(factor * x)` on a `[0, 1]` image."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """torchvision contrast: blend with the mean of the grayscale image, then clip."""
    mean = tf.reduce_mean(grayscale(image, axis))
    return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """torchvision saturation: blend with the grayscale image, then clip."""
    gray = grayscale(image, axis)
    return tf.clip_by_value(factor * image + (1.0 - factor) * gray, 0.0, 1.0)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """torchvision hue: rotate the HSV hue of a `[0, 1]` image by `delta` (of the circle).

    Computed as `v - c * clip(min(k, 4 - k), 0, 1)` per channel with `k = (n + 6h) mod 6`
    (n = 5, 3, 1 for R, G, B), which is HSV -> RGB with the value and chroma kept.
    """
    r, g, b = tf.unstack(image, 3, axis=axis)
    maxc = tf.maximum(tf.maximum(r, g), b)
    minc = tf.minimum(tf.minimum(r, g), b)
    chroma = maxc - minc
    safe = tf.where(chroma > 0, chroma, tf.ones_like(chroma))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = tf.where(maxc == r, bc - gc, tf.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = tf.where(chroma > 0, h, tf.zeros_like(h)) + 6.0 * delta  # hue in sixths
    out = []
    for n in (5.0, 3.0, 1.0):
        k = tf.math.floormod(h + n, 6.0)
        out.append(maxc - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0))
    return tf.stack(out, axis=axis)


def to_grayscale(image: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """torchvision `Grayscale(num_output_channels=3)`: luma copied to 3 channels."""
    g = grayscale(image, axis)
    return tf.concat([g, g, g], axis=axis)


def blur_kernel(sigma: tf.Tensor, half_width: int = BLUR_HALF_WIDTH) -> tf.Tensor:
    """Normalised 1-D Gaussian taps `[2 * half_width + 1]` of standard deviation `sigma`."""
    t = tf.range(-half_width, half_width + 1, dtype=tf.float32)
    k = tf.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / tf.reduce_sum(k)


def _blur_axis(x: tf.Tensor, taps: list[tf.Tensor], axis: int) -> tf.Tensor:
    """Convolves `x` along `axis` (static length) with `taps`, the edges extended."""
    hw = len(taps) // 2
    n = int(x.shape[axis])
    first = tf.gather(x, [0] * hw, axis=axis)
    last = tf.gather(x, [n - 1] * hw, axis=axis)
    x = tf.concat([first, x, last], axis=axis)
    index = [slice(None)] * x.shape.rank
    terms = []
    for t, k in enumerate(taps):
        index[axis] = slice(t, t + n)
        terms.append(k * x[tuple(index)])
    return tf.add_n(terms)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Separable Gaussian blur of one float image of static size, channels on `axis`.

    13 taps of standard deviation `sigma` (PIL's radius), edges extended as PIL does.
    Written as shifted sums so that XLA fuses each pass into one loop.
    """
    taps = tf.unstack(blur_kernel(sigma))
    spatial = (1, 2) if axis % 3 == 0 else (0, 1)
    return _blur_axis(_blur_axis(image, taps, spatial[0]), taps, spatial[1])


def solarize(image: tf.Tensor) -> tf.Tensor:
    """PIL `ImageOps.solarize(threshold=128)` on a `[0, 1]` float image.

    A pixel whose rounded uint8 value is >= 128 (i.e. `255 * x >= 127.5`) becomes `1 - x`.
    """
    return tf.where(image * 255.0 >= 127.5, 1.0 - image, image)


def normalize(image: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, axis: int = -1):
    """`(x - mean) / std` on a `[0, 1]` float image (torchvision `Normalize`)."""
    shape = [1] * image.shape.rank
    shape[axis] = 3
    mean = tf.reshape(tf.constant(mean, tf.float32), shape)
    std = tf.reshape(tf.constant(std, tf.float32), shape)
    return (image - mean) / std
