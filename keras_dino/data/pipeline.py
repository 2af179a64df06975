"""`multicrop_dataset`: a `tf.data` pipeline of DINO multi-crop batches from real sources."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence

import tensorflow as tf

from keras_dino.data.augment import DataAugmentationDINO
from keras_dino.data.source_datasets import (
    LIST_EXTENSIONS,
    SOURCE_BUILDERS,
    SOURCE_TYPES,
    SourceOptions,
    detect_source_type,
    parse_tfds_name,
    read_image_list,
)
from keras_dino.data.sources import IMAGE_EXTENSIONS, decode_image, ensure_rgb_uint8
from keras_dino.errors import InputError

__all__ = [
    "LIST_EXTENSIONS",
    "SOURCE_TYPES",
    "MultiCropInfo",
    "detect_source_type",
    "multicrop_dataset",
    "parse_tfds_name",
    "read_image_list",
]


@dataclasses.dataclass
class MultiCropInfo:
    """What `multicrop_dataset` built, returned with `return_info=True`.

    Pass it to `DINO.fit(..., data_settings=info)` so that the model's checkpoints record
    the crop settings (`augmentation`).

    Attributes:
        source_type: one of `SOURCE_TYPES`.
        num_images: usable images in this input pipeline's shard (None for streams).
        skipped: `(path, reason)` of each file skipped by the validation scan.
        class_names: ImageFolder class names (None when the source has none).
        batch_size: batch size of this input pipeline (per replica with an input context).
        num_crops: crops per image (2 global + locals).
        split: whether the crops are uint8 for `MultiCropPhotometric` (split mode).
        seed: the seed used (drawn at random when none was given).
        drop_remainder: whether the last incomplete batch is dropped.
        repeat: whether the dataset repeats forever.
        augmentation: the `DataAugmentationDINO` recipe of the crops.
    """

    source_type: str
    num_images: int | None
    skipped: list[tuple[str, str]]
    class_names: list[str] | None
    batch_size: int
    num_crops: int
    split: bool
    seed: int
    drop_remainder: bool = True
    repeat: bool = False
    augmentation: DataAugmentationDINO | None = None

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch of this pipeline, when the number of images is known."""
        if self.num_images is None:
            return None
        if self.drop_remainder:
            return self.num_images // self.batch_size
        return -(-self.num_images // self.batch_size)

    @property
    def skipped_files(self) -> list[str]:
        return [p for p, _ in self.skipped]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def _to_image(payload: tf.Tensor) -> tf.Tensor:
    if payload.dtype == tf.string:
        return decode_image(payload)
    return ensure_rgb_uint8(payload)


def _batched_crops(ds, aug, stream, local_batch, *, split, with_labels, on_error,
                   drop_remainder, num_parallel_calls, deterministic):
    """The `batched_crops=True` body of `multicrop_dataset`: per image, decode and draw
    the crop boxes (the per-image path's seeds); per batch, crop and resize all images at
    once; then, unless `split`, the photometric half image by image."""

    @tf.autograph.experimental.do_not_convert
    def prepare(payload, r):
        image = _to_image(payload[0])
        image_seed = tf.stack([r, stream])
        boxes, flips = aug.crop_params(image, image_seed)
        return image, boxes, flips, image_seed, payload[1]

    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if on_error == "skip":
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.padded_batch(local_batch, drop_remainder=drop_remainder)

    @tf.autograph.experimental.do_not_convert
    def crop(images, boxes, flips, seeds, labels):
        crops = aug.crop_and_flip_batch(images, boxes, flips)
        return crops, seeds, labels

    ds = ds.map(crop, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if not split:
        # The photometric half stays per image (its XLA programs are per view); the
        # unbatch/batch pair regroups exactly the same images, as every batch is full
        # (or the last one, which stays last).
        @tf.autograph.experimental.do_not_convert
        def photometric(crops, seed, label):
            return aug.photometric(crops, seed), label

        ds = ds.unbatch().map(photometric, num_parallel_calls=num_parallel_calls,
                              deterministic=deterministic)
        ds = ds.batch(local_batch, drop_remainder=drop_remainder)
    else:
        ds = ds.map(lambda crops, seeds, labels: (crops, labels))
    if not with_labels:
        ds = ds.map(lambda crops, labels: crops)
    return ds


def multicrop_dataset(
    source,
    batch_size: int,
    *,
    augmentation: DataAugmentationDINO | None = None,
    split: bool = False,
    with_labels: bool = False,
    labels: Sequence[int] | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    deterministic: bool = False,
    drop_remainder: bool = True,
    repeat: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    on_error: str = "skip",
    validate: bool = True,
    source_type: str | None = None,
    extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
    tfrecord_label_offset: int = 1,
    shuffle_buffer: int = 4096,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    num_threads: int | None = None,
    prefetch: int = tf.data.AUTOTUNE,
    batched_crops: bool = False,
    return_info: bool = False,
):
    """A `tf.data.Dataset` of DINO multi-crop batches, ready for `DINO.fit`.

    Each element is the tuple of crops `(g0, g1, l0, ..., l_{n-1})`, each a channels-last
    batch: float32 normalised (default), or uint8 in split mode (`split=True`), where the
    photometric half then runs on the accelerator in `keras_dino.data.MultiCropPhotometric`.
    With `with_labels=True` the element is `(crops, labels)` (int32 `[batch]`; -1 when the
    source has none).

    Sources (`source_type` guesses when None):

    * "folder": an ImageFolder directory (`root/<class>/**/*`), recursive; files are
      picked by `extensions` and decoded by content (JPEG, PNG, GIF, BMP, WebP).
    * "files": a list of image paths (`labels` optional).
    * "list": a text file (`.txt`, `.lst`, `.list`) of image paths, one per line,
      relative to the list's folder.
    * "tfrecord": a glob of TFRecords in the standard ImageNet format (`image/encoded`,
      `image/class/label`, from 1, shifted down by `tfrecord_label_offset`).
    * "tfds": a TFDS name (`"imagenet2012"`, `"tfds:imagenet2012"` or, with the split,
      `"tfds:imagenet2012:train[:90%]"`; otherwise `tfds_split`).
    * "dataset": a `tf.data.Dataset` of images (uint8 `[H, W, C]` or encoded bytes),
      `(image, label)` tuples or dicts with "image" (and "label").
    * "arrays": images in memory, a uint8 NumPy array `(N, H, W, 3)` or `(images,
      labels)` as `keras.datasets.cifar10.load_data()` returns them (held in the graph:
      keep it under about 2 GB; larger sets belong in a folder or TFRecords).

    Bad input: with `validate=True`, folder and file sources are scanned (every file
    read and decoded once, JPEGs at 1/8 scale, in parallel; each input pipeline scans
    its own shard) before the pipeline is built. Files that cannot be decoded
    are skipped and reported (a logged warning; `MultiCropInfo.skipped`), or, with
    `on_error="raise"`, a `ValueError` names them. An empty source or one with no
    decodable image raises `ValueError` at once. With `on_error="skip"`, decode errors met
    later (streams, unvalidated files) drop that image.

    Randomness: every image gets its own stateless seed drawn from `seed` (a fresh one
    each epoch), so the crops do not depend on parallelism. `deterministic=True` also
    fixes the element order: the same `seed` then yields exactly the same batches.

    Args:
        source: see above.
        batch_size: global batch size; with `input_context` each pipeline batches
            `input_context.get_per_replica_batch_size(batch_size)`.
        augmentation: the recipe (default `DataAugmentationDINO()`).
        split: yield uint8 crops (decode + crop + flip on the host only).
        with_labels: yield `(crops, labels)`.
        labels: labels of a "files" source.
        shuffle: shuffle the files (folder/files: the whole list each epoch; streams: a
            `shuffle_buffer` of encoded images).
        seed: integer seed of shuffling and augmentation.
        deterministic: reproducible element order (requires `seed`).
        drop_remainder: drop the last incomplete batch.
        repeat: repeat forever (use `steps_per_epoch` in `fit`).
        input_context: a `tf.distribute.InputContext` (from
            `distribute_datasets_from_function`): shards the input across pipelines.
        on_error: "skip" or "raise".
        validate: scan folder/file sources before training (costs one extra read of the
            files; without it undecodable files are still skipped, with `on_error="skip"`,
            but only TF's log names the error, not the file).
        source_type: force one of `SOURCE_TYPES`.
        extensions: file-name filter of a folder source (None: every file).
        tfds_split: the TFDS split.
        tfds_data_dir: the TFDS data directory.
        tfrecord_label_offset: subtracted from TFRecord labels (1 for the standard format).
        shuffle_buffer: shuffle buffer of stream sources.
        num_parallel_calls: decode + augment parallelism (AUTOTUNE).
        num_threads: pin the pipeline to a private thread pool of this size, one thread
            per op (e.g. 1 to measure per-core speed).
        prefetch: batches to prefetch (AUTOTUNE).
        batched_crops: crop and resize a whole batch at once (`ops.batch_crops_and_resize`)
            instead of image by image: the same crops (same seeds, same pixels) at a
            fraction of the host time for small images such as CIFAR's 32x32, where the
            per-image path is bound by op overhead. Each batch is zero-padded to its
            largest image, so keep it off for large photos.
        return_info: also return a `MultiCropInfo`.

    Returns:
        The dataset, or `(dataset, info)` with `return_info=True`.

    Example:

    >>> from keras_dino.datasets import cifar10_mini
    >>> ds = multicrop_dataset(
    ...     cifar10_mini("test"), batch_size=2, seed=0,
    ...     augmentation=DataAugmentationDINO(local_crops_number=2))
    >>> [tuple(t.shape) for t in next(iter(ds))]
    [(2, 224, 224, 3), (2, 224, 224, 3), (2, 96, 96, 3), (2, 96, 96, 3)]
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if deterministic and seed is None:
        raise ValueError("deterministic=True needs an explicit seed")
    stype = source_type or detect_source_type(source)
    if stype not in SOURCE_TYPES:
        raise ValueError(f"source_type must be one of {SOURCE_TYPES}, got {stype!r}")
    aug = augmentation or DataAugmentationDINO()
    if seed is None:
        seed = secrets.randbits(31)
    seed = int(seed)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    local_batch = (
        input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    )
    # Independent streams per use and per input pipeline.
    shuffle_seed = (seed * 1_000_003 + 7919 * pipeline_id + 1) % (2**31 - 1)
    aug_seed = (seed * 1_000_033 + 104_729 * pipeline_id + 2) % (2**31 - 1)

    source_options = SourceOptions(
        shuffle=shuffle,
        shuffle_seed=shuffle_seed,
        shuffle_buffer=shuffle_buffer,
        deterministic=deterministic,
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        input_context=input_context,
        validate=validate,
        on_error=on_error,
        labels=labels,
        extensions=extensions,
        tfds_split=tfds_split,
        tfds_data_dir=tfds_data_dir,
        tfrecord_label_offset=tfrecord_label_offset,
    )
    read = SOURCE_BUILDERS[stype](source, source_options)
    ds, num_images = read.dataset, read.num_images
    if repeat:
        ds = ds.repeat()
    seeds = tf.data.Dataset.random(seed=aug_seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds))
    stream = tf.constant(pipeline_id, tf.int64)

    @tf.autograph.experimental.do_not_convert
    def make_crops(payload, label, r):
        image = _to_image(payload)
        image_seed = tf.stack([r, stream])
        if split:
            crops = aug.crop_and_flip(image, image_seed)
        else:
            crops = aug(image, image_seed)
        return (crops, label) if with_labels else crops

    if batched_crops:
        ds = _batched_crops(ds, aug, stream, local_batch, split=split,
                            with_labels=with_labels, on_error=on_error,
                            drop_remainder=drop_remainder,
                            num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    else:
        ds = ds.map(
            tf.autograph.experimental.do_not_convert(lambda pl, r: make_crops(pl[0], pl[1], r)),
            num_parallel_calls=num_parallel_calls,
            deterministic=deterministic,
        )
        if on_error == "skip":
            ds = ds.ignore_errors(log_warning=True)
        ds = ds.batch(local_batch, drop_remainder=drop_remainder)
    if num_images and not repeat:
        # The scan counted the images: Keras then knows the epoch's length (tf.data
        # cannot, through the map and ignore_errors) and re-iterates every epoch.
        batches = num_images // local_batch if drop_remainder else -(-num_images // local_batch)
        if batches == 0:
            raise InputError(
                f"{num_images} images make no full batch of {local_batch}: lower "
                "batch_size, pass drop_remainder=False, or repeat=True (batches then run "
                "across epochs).")
        ds = ds.apply(tf.data.experimental.assert_cardinality(max(batches, 1)))
    ds = ds.prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = deterministic
    if num_threads:
        options.threading.private_threadpool_size = int(num_threads)
        options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)

    info = MultiCropInfo(
        source_type=stype,
        num_images=num_images,
        skipped=read.skipped,
        class_names=read.class_names,
        batch_size=local_batch,
        num_crops=aug.num_crops,
        split=split,
        seed=seed,
        drop_remainder=drop_remainder,
        repeat=repeat,
        augmentation=aug,
    )
    return (ds, info) if return_info else ds
