"""One small builder per kind of source: each turns a source into `(image, label)` elements.

`multicrop_dataset` picks the builder (`SOURCE_BUILDERS[source_type]`), then crops,
batches and prefetches whatever it returns. A builder shards its source for the input
pipeline it runs in, shuffles it, and says what it knows: the number of images, the
files it skipped, the class names. Its elements are `(payload, label)`: `payload` is the
encoded image (a string) or a uint8 image, `label` an int32 (-1 when unknown).
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_dino.data.sources import (
    IMAGE_EXTENSIONS,
    list_image_files,
    log_skipped,
    scan_images,
)
from keras_dino.errors import DataSourceNotFoundError, InputError

SOURCE_TYPES = ("folder", "files", "list", "tfrecord", "tfds", "dataset", "arrays")
# Text files that list image paths, one per line.
LIST_EXTENSIONS = (".txt", ".lst", ".list")


@dataclasses.dataclass
class SourceOptions:
    """How a builder reads its source (set by `multicrop_dataset` from its arguments)."""

    shuffle: bool = True
    shuffle_seed: int = 0
    shuffle_buffer: int = 4096
    deterministic: bool = False
    num_pipelines: int = 1
    pipeline_id: int = 0
    input_context: tf.distribute.InputContext | None = None
    validate: bool = True
    on_error: str = "skip"
    labels: Sequence[int] | None = None
    extensions: Sequence[str] | None = IMAGE_EXTENSIONS
    tfds_split: str = "train"
    tfds_data_dir: str | None = None
    tfrecord_label_offset: int = 1

    def shuffled(self, ds: tf.data.Dataset, size: int | None = None) -> tf.data.Dataset:
        """`ds` reshuffled every epoch (a buffer of `size`, or `shuffle_buffer`)."""
        if not self.shuffle:
            return ds
        return ds.shuffle(size or self.shuffle_buffer, seed=self.shuffle_seed,
                          reshuffle_each_iteration=True)


@dataclasses.dataclass
class SourceDataset:
    """A builder's result: the elements and what is known about them."""

    dataset: tf.data.Dataset
    num_images: int | None = None
    skipped: list = dataclasses.field(default_factory=list)
    class_names: list[str] | None = None


def detect_source_type(source) -> str:
    """Guesses the kind of `source` (see `multicrop_dataset`).

    Example:

    >>> detect_source_type("tfds:cifar10"), detect_source_type(["a.jpg", "b.jpg"])
    ('tfds', 'files')
    """
    if isinstance(source, tf.data.Dataset):
        return "dataset"
    if isinstance(source, np.ndarray) or (
            isinstance(source, tuple) and len(source) == 2
            and isinstance(source[0], np.ndarray)):
        return "arrays"
    if isinstance(source, (list, tuple)):
        return "files"
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if s.startswith("tfds:"):
            return "tfds"
        if os.path.isdir(s):
            return "folder"
        if os.path.isfile(s) and s.lower().endswith(LIST_EXTENSIONS):
            return "list"
        if any(ch in s for ch in "*?[") or os.path.isfile(s):
            if s.lower().endswith(IMAGE_EXTENSIONS):
                return "files"
            return "tfrecord"
        if os.sep not in s and "/" not in s:
            return "tfds"
        raise DataSourceNotFoundError(
            f"{s!r} is neither a directory, a file, a glob nor a TFDS name; check the path "
            f"(relative paths start from {os.getcwd()}).")
    raise TypeError(
        "source must be a directory, a list of files, a TFRecord glob, a TFDS name, a "
        "tf.data.Dataset or a uint8 NumPy array of images (N, H, W, 3) (optionally "
        f"(images, labels)), got {type(source).__name__}"
    )


def read_image_list(path) -> list[str]:
    r"""The image paths of a list file: one per line, relative to the list's folder.

    Blank lines and lines starting with `#` are ignored.

    Example:

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "images.txt").write_text("# my photos\na.jpg\n\n/data/b.png\n")
    >>> [p.replace(str(folder), "<dir>") for p in read_image_list(folder / "images.txt")]
    ['<dir>/a.jpg', '/data/b.png']
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    files = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
    if not files:
        raise ValueError(f"the image list {path} names no file.")
    return files


def parse_tfds_name(source: str, default_split: str = "train") -> tuple[str, str]:
    """`(name, split)` of `"tfds:name[:split]"` or `"name"`.

    Example:

    >>> parse_tfds_name("tfds:cifar10:test"), parse_tfds_name("imagenet2012")
    (('cifar10', 'test'), ('imagenet2012', 'train'))
    """
    name = source[len("tfds:"):] if source.startswith("tfds:") else source
    name, _, split = name.partition(":")
    return name, split or default_split


# ---------------------------------------------------------------------- files on disk
def _image_files(files, labels, where, opts, class_names=None) -> SourceDataset:
    """Image files (already listed): sharded, scanned when asked, read, shuffled."""
    if not files:
        kinds = "/".join(e.lstrip(".") for e in opts.extensions) if opts.extensions else "any"
        raise InputError(f"no image files found in {where}: point the data source at a "
                         f"folder that holds {kinds} images (in it or its subfolders)")
    if opts.num_pipelines > 1:
        files = files[opts.pipeline_id::opts.num_pipelines]
        labels = labels[opts.pipeline_id::opts.num_pipelines]
    skipped = []
    if opts.validate:
        scan = scan_images(files, labels, on_error=opts.on_error)
        files, labels, skipped = scan.files, scan.labels, scan.skipped
        log_skipped(skipped, where)
        if not files:
            raise ValueError(
                f"none of the {len(skipped)} files in {where} could be decoded "
                f"(first: {skipped[0][0]}: {skipped[0][1]})"
            )
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.constant(labels, tf.int32))
    )
    ds = opts.shuffled(ds, len(files)).map(lambda f, y: (tf.io.read_file(f), y))
    return SourceDataset(ds, len(files), skipped, class_names)


def folder_source(root, opts: SourceOptions) -> SourceDataset:
    """An ImageFolder directory (`root/<class>/**/*`), labelled by class."""
    listing = list_image_files(root, opts.extensions)
    return _image_files(listing.files, listing.labels, os.fspath(root), opts,
                        listing.class_names)


def files_source(files, opts: SourceOptions) -> SourceDataset:
    """A list of image paths (or one path or glob), labelled by `opts.labels`."""
    files = [os.fspath(f) for f in ([files] if isinstance(files, str) else files)]
    if len(files) == 1 and any(ch in files[0] for ch in "*?["):
        files = sorted(_glob.glob(files[0]))
    labels = list(opts.labels) if opts.labels is not None else [-1] * len(files)
    if len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} files")
    return _image_files(files, labels, f"{len(files)} files", opts)


def list_source(path, opts: SourceOptions) -> SourceDataset:
    """A text file of image paths (see `read_image_list`)."""
    return files_source(read_image_list(path), opts)


# ---------------------------------------------------------------------- streams
def _parse_imagenet_example(record: tf.Tensor, label_offset: int):
    features = tf.io.parse_single_example(
        record,
        {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        },
    )
    label = features["image/class/label"]
    label = tf.where(label >= 0, label - label_offset, label)
    return features["image/encoded"], tf.cast(label, tf.int32)


def tfrecord_source(pattern, opts: SourceOptions) -> SourceDataset:
    """TFRecords in the standard ImageNet format (`image/encoded`, `image/class/label`).

    Pipelines share out the files when there are enough of them, else the records.
    """
    pattern = os.fspath(pattern)
    tf_files = sorted(tf.io.gfile.glob(pattern))
    if not tf_files:
        raise ValueError(f"no TFRecord files match {pattern!r}")
    shard_records = opts.num_pipelines > len(tf_files)
    if opts.num_pipelines > 1 and not shard_records:
        tf_files = tf_files[opts.pipeline_id::opts.num_pipelines]
    ds = opts.shuffled(tf.data.Dataset.from_tensor_slices(tf_files), len(tf_files))
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(16, len(tf_files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=opts.deterministic,
    )
    if opts.num_pipelines > 1 and shard_records:
        ds = ds.shard(opts.num_pipelines, opts.pipeline_id)
    ds = ds.map(
        lambda r: _parse_imagenet_example(r, opts.tfrecord_label_offset),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=opts.deterministic,
    )
    return SourceDataset(opts.shuffled(ds))


def _dataset_elements(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Normalises a dataset to `(image_or_bytes, label)` elements."""
    spec = ds.element_spec
    if isinstance(spec, dict):
        key = next((k for k in ("image", "img", "images") if k in spec), None)
        if key is None:
            raise ValueError(f"dataset elements have no 'image' entry: {list(spec)}")
        has_label = "label" in spec
        return ds.map(
            lambda e: (e[key], tf.cast(e["label"], tf.int32) if has_label else -1),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError("tuple dataset elements must be (image, label)")
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    return ds.map(lambda x: (x, tf.constant(-1, tf.int32)))


def _tfds_class_names(builder) -> list[str] | None:
    try:
        return list(builder.info.features["label"].names)
    except (KeyError, AttributeError, TypeError):
        return None


def tfds_source(name, opts: SourceOptions) -> SourceDataset:
    """A TFDS data set (`"name"`, `"tfds:name"` or `"tfds:name:split"`), images undecoded."""
    import tensorflow_datasets as tfds

    source = os.fspath(name)
    name, split_name = parse_tfds_name(source, opts.tfds_split)
    try:
        builder = tfds.builder(name, data_dir=opts.tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        # TFDS lists every data set it knows (thousands of lines): say what to fix instead.
        if source.startswith("tfds:"):
            raise DataSourceNotFoundError(
                f"TFDS has no data set {name!r} (tfds.list_builders() names them); check "
                "the name, or pass tfds_data_dir= where it was prepared.") from None
        raise DataSourceNotFoundError(
            f"no folder {source!r} in {os.getcwd()}, and no TFDS data set of that name. "
            "Give the path of an image folder, or name a TFDS data set as 'tfds:<name>' "
            "(e.g. 'tfds:cifar10').") from None
    ds = builder.as_dataset(
        split=split_name,
        shuffle_files=opts.shuffle,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(
            input_context=opts.input_context, shuffle_seed=opts.shuffle_seed,
        ),
    )
    return SourceDataset(opts.shuffled(_dataset_elements(ds)),
                         class_names=_tfds_class_names(builder))


def dataset_source(ds: tf.data.Dataset, opts: SourceOptions) -> SourceDataset:
    """A `tf.data.Dataset` of images, `(image, label)` tuples or dicts with "image"."""
    if ds.cardinality() == 0:
        raise ValueError("the source dataset is empty")
    if opts.num_pipelines > 1:
        ds = ds.shard(opts.num_pipelines, opts.pipeline_id)
    return SourceDataset(opts.shuffled(_dataset_elements(ds)))


def arrays_source(source, opts: SourceOptions) -> SourceDataset:
    """Images in memory: a uint8 array `(N, H, W, 3)` (grayscale `(N, H, W)` or
    `(N, H, W, 1)` too), or `(images, labels)` as `keras.datasets.cifar10.load_data()`
    gives them (labels of shape `(N,)` or `(N, 1)`)."""
    images, labels = source if isinstance(source, tuple) else (source, None)
    if images.ndim == 3:  # grayscale (N, H, W), made RGB with the other sources' rule
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(
            f"in-memory images must be an array (N, H, W, 3), channels last and RGB (or "
            f"grayscale (N, H, W)); got shape {images.shape}. Channels first (N, 3, H, W): "
            "pass x.transpose(0, 2, 3, 1).")
    if images.dtype != np.uint8:
        raise InputError(
            f"in-memory images must be uint8 pixels in [0, 255]; got {images.dtype}. "
            "The pipeline normalises them itself: pass the raw pixels (from [0, 1]: "
            "np.round(x * 255).astype('uint8')).")
    if len(images) == 0:
        raise InputError("the array of images is empty")
    if labels is None:
        labels = np.full(len(images), -1, np.int32)
    else:
        labels = np.asarray(labels)
        if labels.size != len(images) or labels.ndim > 2:
            raise InputError(
                f"{len(images)} images but labels of shape {labels.shape}: give one label "
                "per image, shape (N,) or (N, 1).")
        labels = labels.reshape(-1).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    count = len(images)
    if opts.num_pipelines > 1:
        ds = ds.shard(opts.num_pipelines, opts.pipeline_id)
        count = len(range(opts.pipeline_id, count, opts.num_pipelines))
    return SourceDataset(opts.shuffled(ds, size=count), num_images=count)


SOURCE_BUILDERS = {
    "folder": folder_source,
    "files": files_source,
    "list": list_source,
    "tfrecord": tfrecord_source,
    "tfds": tfds_source,
    "dataset": dataset_source,
    "arrays": arrays_source,
}
