"""Image sources for the multi-crop pipeline: listing, content-based decoding, validation.

* `list_image_files`: an ImageFolder tree (`root/<class>/**/<image>`), recursive, sorted.
* `decode_image`: bytes -> uint8 `[H, W, 3]`, the format told by the content (JPEG, PNG,
  GIF, BMP, WebP), whatever the file is called. CMYK and grayscale JPEGs, RGBA, grey and
  palette PNGs, palette BMPs and the first frame of an animated GIF become RGB.
* `scan_images`: a parallel `tf.data` pass that decodes every file once (JPEGs at 1/8
  scale: the whole bitstream is still read) and reports which ones cannot be used.

Example:

>>> import tensorflow as tf
>>> from keras_dino.data import decode_image
>>> png = tf.io.encode_png(tf.zeros([4, 5, 4], tf.uint8))  # RGBA
>>> decode_image(png).shape.as_list()
[4, 5, 3]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import tensorflow as tf

logger = logging.getLogger("keras_dino.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class ImageFolderListing(NamedTuple):
    """Files of an ImageFolder tree, their class indices and the sorted class names.

    Files directly under the root (a flat folder of images) get label -1.
    """

    files: list[str]
    labels: list[int]
    class_names: list[str]


def list_image_files(
    root: str | os.PathLike,
    extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
) -> ImageFolderListing:
    """Lists the images of an ImageFolder-style directory, recursively, in sorted order.

    Classes are the sorted immediate subdirectories of `root` (as torchvision's
    `ImageFolder`); every file below a class directory, at any depth, belongs to it.
    Hidden files and directories are ignored. `extensions` filters by name
    (case-insensitive); `None` keeps every file. Decoding is by content, not by name.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "cat").mkdir(); (root / "cat" / "a.jpg").write_bytes(b"")
    0
    >>> list_image_files(root).class_names
    ['cat']
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    exts = None if extensions is None else tuple(e.lower() for e in extensions)

    def keep(name: str) -> bool:
        if name.startswith("."):
            return False
        return exts is None or name.lower().endswith(exts)

    entries = sorted(os.scandir(root), key=lambda e: e.name)
    class_names = [
        e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
    ]
    files: list[str] = []
    labels: list[int] = []
    for e in entries:
        if e.is_file(follow_symlinks=True) and keep(e.name):
            files.append(e.path)
            labels.append(-1)
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if keep(f):
                    files.append(os.path.join(dirpath, f))
                    labels.append(label)
    return ImageFolderListing(files, labels, class_names)


# -- decoding -----------------------------------------------------------------------------
def _starts_with(contents: tf.Tensor, magic: bytes, pos: int = 0) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, pos, len(magic)), magic)


def is_jpeg(contents: tf.Tensor) -> tf.Tensor:
    """True when `contents` starts with the JPEG SOI marker."""
    return _starts_with(contents, b"\xff\xd8\xff")


def _le_uint(contents: tf.Tensor, pos: int, nbytes: int) -> tf.Tensor:
    raw = tf.io.decode_raw(tf.strings.substr(contents, pos, nbytes), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    raw = tf.pad(raw, [[0, nbytes - tf.shape(raw)[0]]])
    return tf.reduce_sum(raw * tf.constant([256**i for i in range(nbytes)], tf.int64))


def _bmp_palette_to_rgb(contents: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Maps the palette indices of an <= 8-bit BMP (decoded by TF as 1 channel) to RGB."""
    dib_size = _le_uint(contents, 14, 4)
    bpp = _le_uint(contents, 28, 2)
    used = _le_uint(contents, 46, 4)
    count = tf.where(used > 0, used, tf.bitwise.left_shift(tf.constant(1, tf.int64), bpp))
    entry = tf.where(dib_size == 12, 3, 4)  # OS/2 headers use 3-byte entries
    table = tf.io.decode_raw(
        tf.strings.substr(contents, 14 + dib_size, count * tf.cast(entry, tf.int64)), tf.uint8
    )
    table = tf.reshape(table[: (tf.shape(table)[0] // entry) * entry], [-1, entry])
    rgb = tf.reverse(table[:, :3], axis=[1])  # BGR(A) -> RGB
    # On CPU, tf.gather rejects indices outside the palette.
    return tf.gather(rgb, tf.cast(indices[..., 0], tf.int32))


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes encoded image bytes to uint8 `[H, W, 3]`, choosing the decoder by content.

    JPEG (RGB, grayscale, CMYK), PNG (RGB, RGBA, grey, grey+alpha, palette, 16-bit), GIF
    (first frame), BMP (24/32-bit and palette) and WebP. Alpha is dropped, as PIL's
    `convert("RGB")` does. JPEGs are decoded with libjpeg's accurate integer IDCT, as PIL
    decodes them (the official loader's pixels). Anything else raises
    `InvalidArgumentError` when run.

    Example:

    >>> import tensorflow as tf
    >>> jpeg = tf.io.encode_jpeg(tf.zeros([2, 3, 1], tf.uint8))  # grayscale JPEG
    >>> decode_image(jpeg).shape.as_list()
    [2, 3, 3]
    """
    contents = tf.convert_to_tensor(contents, tf.string)

    def jpeg():
        # The accurate integer IDCT is what PIL (libjpeg's default) uses: the same pixels
        # as the official PIL loader, bit for bit. TensorFlow's default differs by up to 8.
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def bmp():
        raw = tf.io.decode_bmp(contents)
        return tf.cond(
            tf.shape(raw)[-1] == 1,
            lambda: _bmp_palette_to_rgb(contents, raw),
            lambda: raw[..., :3],
        )

    def other():
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.case(
        [(is_jpeg(contents), jpeg), (_starts_with(contents, b"BM"), bmp)],
        default=other,
        exclusive=False,
    )
    return tf.ensure_shape(image, [None, None, 3])


def ensure_rgb_uint8(image: tf.Tensor) -> tf.Tensor:
    """uint8 `[H, W, C]` with C in {1, 3, 4} -> uint8 `[H, W, 3]` (grey tiled, alpha dropped)."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"images must be uint8 (or encoded bytes), got {image.dtype.name}")
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels == 4:
        return image[..., :3]
    c = tf.shape(image)[-1]
    return tf.cond(c == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])


def _check_decodable(contents: tf.Tensor) -> tf.Tensor:
    """Decodes just enough to know the file is usable; returns its `[H, W]` (full scale)."""

    def jpeg():
        # Reading the whole bitstream finds truncation; the 1/8-scale IDCT is cheap.
        return tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8))[:2]

    def other():
        return tf.shape(decode_image(contents))[:2]

    size = tf.cond(is_jpeg(contents), jpeg, other)
    with tf.control_dependencies(
        [tf.debugging.assert_positive(tf.reduce_min(size), message="empty image")]
    ):
        return tf.identity(size)


@dataclasses.dataclass
class ScanResult:
    """What `scan_images` found.

    Attributes:
        files: the usable files, in input order.
        labels: their labels (parallel to `files`).
        skipped: `(path, reason)` for each file that cannot be decoded.
    """

    files: list[str]
    labels: list[int]
    skipped: list[tuple[str, str]]

    @property
    def skipped_files(self) -> list[str]:
        return [p for p, _ in self.skipped]


def _reason(path: str) -> str:
    try:
        data = tf.io.read_file(path)
        if int(tf.strings.length(data)) == 0:
            return "empty file"
        _check_decodable(data)
    except (tf.errors.OpError, ValueError) as e:
        msg = getattr(e, "message", str(e)).strip().splitlines()
        msg = msg[0] if msg else type(e).__name__
        msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
        return re.sub(r"\s*\[Op:.*$", "", msg)[:200]
    return "failed to decode"


def scan_images(
    files: Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    on_error: str = "skip",
    num_parallel_calls: int = tf.data.AUTOTUNE,
    max_reasons: int = 1000,
) -> ScanResult:
    """Decodes every file once, in parallel, and separates the usable ones from the rest.

    Args:
        files: image paths.
        labels: optional labels, kept in step with `files`.
        on_error: "skip" returns the bad files in `ScanResult.skipped`; "raise" raises
            `ValueError` naming them.
        num_parallel_calls: parallelism of the scan.
        max_reasons: at most this many bad files get their error message.

    Example:

    >>> import tempfile, os
    >>> bad = os.path.join(tempfile.mkdtemp(), "bad.jpg")
    >>> _ = open(bad, "w").write("not an image")
    >>> scan_images([bad]).skipped_files == [bad]
    True
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    files = [os.fspath(f) for f in files]
    labels = list(labels) if labels is not None else [-1] * len(files)
    if not files:
        return ScanResult([], [], [])
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files)), files))
    ds = ds.map(
        lambda i, path: (i, _check_decodable(tf.io.read_file(path))),
        num_parallel_calls=num_parallel_calls,
        deterministic=False,
    ).ignore_errors()
    good = set()
    for idx, _ in ds.batch(4096).prefetch(1).as_numpy_iterator():  # batched: few Python steps
        good.update(int(i) for i in idx)
    bad_idx = [i for i in range(len(files)) if i not in good]
    skipped = [
        (files[i], _reason(files[i]) if k < max_reasons else "not decodable")
        for k, i in enumerate(bad_idx)
    ]
    if skipped and on_error == "raise":
        listing = "; ".join(f"{p}: {r}" for p, r in skipped[:20])
        more = f" (and {len(skipped) - 20} more)" if len(skipped) > 20 else ""
        raise ValueError(f"{len(skipped)} image file(s) cannot be decoded: {listing}{more}")
    keep = sorted(good)
    return ScanResult([files[i] for i in keep], [labels[i] for i in keep], skipped)


def log_skipped(skipped: Iterable[tuple[str, str]], where: str = "") -> None:
    """Logs a warning that names the skipped files (the first 20) and their count."""
    skipped = list(skipped)
    if not skipped:
        return
    head = "; ".join(f"{p} ({r})" for p, r in skipped[:20])
    more = f" ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    logger.warning(
        "keras_dino.data: skipped %d undecodable image file(s)%s: %s%s",
        len(skipped), f" in {where}" if where else "", head, more,
    )
