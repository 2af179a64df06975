"""multicrop_dataset: sources, bad files, determinism, sharding, shapes, labels."""

import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_dino.data import (
    DataAugmentationDINO,
    MultiCropPhotometric,
    decode_image,
    detect_source_type,
    list_image_files,
    multicrop_dataset,
    scan_images,
)

pytestmark = pytest.mark.tf_only

SHARED = pathlib.Path(
    os.environ.get("KERAS_DINO_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared")
)
PHOTOS = sorted((SHARED / "images").glob("*.jpg"))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def aug():
    # The small recipe of test_data_augment: XLA compiles its program once per process.
    return DataAugmentationDINO(local_crops_number=2, global_size=16, local_size=8)


def _rgb(h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, 1, 3))
    ramp = np.linspace(0, 60, w)[None, :, None]
    return np.clip(base + ramp + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """An ImageFolder tree: real photos, convertible oddities and undecodable files."""
    root = tmp_path_factory.mktemp("messy")
    for d in ("cats", "dogs/deep/er", "fish"):
        (root / d).mkdir(parents=True)
    good = []

    def save(rel, img, **kw):
        img.save(root / rel, **kw)
        good.append(str(root / rel))

    for i, p in enumerate(PHOTOS):
        shutil.copy(p, root / "cats" / f"photo{i}.JPG")
        good.append(str(root / "cats" / f"photo{i}.JPG"))
    save("cats/cmyk.jpg", Image.fromarray(_rgb(60, 80, 1)).convert("CMYK"), quality=90)
    save("cats/gray.jpeg", Image.fromarray(_rgb(60, 80, 2)).convert("L"))
    save("dogs/rgba.png", Image.fromarray(_rgb(50, 70, 3)).convert("RGBA"))
    save("dogs/deep/palette.png", Image.fromarray(_rgb(50, 70, 4)).convert("P"))
    frames = [Image.fromarray(_rgb(40, 40, 10 + k)) for k in range(3)]
    frames[0].save(root / "dogs/deep/er/anim.gif", save_all=True, append_images=frames[1:])
    good.append(str(root / "dogs/deep/er/anim.gif"))
    save("dogs/one.png", Image.fromarray(_rgb(1, 1, 5)))
    save("fish/wide.jpg", Image.fromarray(_rgb(120, 10000, 6)), quality=80)
    save("fish/palette.bmp", Image.fromarray(_rgb(30, 40, 7)).convert("P"))
    save("fish/pic.webp", Image.fromarray(_rgb(30, 40, 8)))
    save("fish/png_named.jpg", Image.fromarray(_rgb(30, 40, 9)), format="PNG")
    bad = [root / "cats/zero.jpg", root / "dogs/truncated.jpg", root / "fish/text.jpg"]
    bad[0].write_bytes(b"")
    Image.fromarray(_rgb(64, 64, 11)).save(bad[1], quality=90)
    bad[1].write_bytes(bad[1].read_bytes()[: len(bad[1].read_bytes()) // 2])
    bad[2].write_text("this is not an image\n")
    (root / "fish/notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden").mkdir()
    shutil.copy(PHOTOS[0], root / ".hidden/skip.jpg")
    return root, sorted(good), sorted(str(b) for b in bad)


def test_listing_is_recursive_sorted_and_labelled(messy_folder):
    root, good, bad = messy_folder
    listing = list_image_files(root)
    assert listing.class_names == ["cats", "dogs", "fish"]
    assert sorted(listing.files) == sorted(good + bad)
    for f, y in zip(listing.files, listing.labels):
        assert pathlib.Path(f).relative_to(root).parts[0] == listing.class_names[y]
    assert not any(".hidden" in f or f.endswith(".txt") for f in listing.files)


def test_decoding_by_content_converts_odd_formats(messy_folder):
    root, good, _ = messy_folder
    for f in good:
        img = decode_image(tf.io.read_file(f)).numpy()
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, f
        ref = np.asarray(Image.open(f).convert("RGB"))
        assert img.shape == ref.shape, f
        diff = np.abs(img.astype(int) - ref.astype(int))
        if Image.open(f).mode == "CMYK":  # PIL's own CMYK -> RGB formula, not libjpeg's
            assert diff.mean() < 1.5 and diff.max() <= 12, f
        else:  # JPEGs too: libjpeg's accurate IDCT, as PIL
            assert diff.max() == 0, f


def test_bad_files_are_skipped_and_reported(messy_folder, aug, caplog):
    root, good, bad = messy_folder
    with caplog.at_level(logging.WARNING, logger="keras_dino.data"):
        ds, info = multicrop_dataset(
            root, 4, augmentation=aug, seed=0, drop_remainder=False, with_labels=True,
            return_info=True,
        )
    assert info.num_skipped == 3 and sorted(info.skipped_files) == bad
    assert info.augmentation is aug
    assert int(ds.cardinality()) == -(-info.num_images // 4)  # Keras sees the epoch's length
    reasons = dict(info.skipped)
    assert reasons[str(root / "cats/zero.jpg")] == "empty file"
    assert "Unknown image file format" in reasons[str(root / "fish/text.jpg")]
    assert "jpeg" in reasons[str(root / "dogs/truncated.jpg")].lower()
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 undecodable" in message and all(b in message for b in bad)
    assert info.num_images == len(good) and info.class_names == ["cats", "dogs", "fish"]
    seen, labels = 0, []
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for crops, y in ds:  # the whole epoch, the 10,000 px image and the 1x1 one included
        assert len(crops) == 4
        for c in crops:
            x = c.numpy()
            assert c.dtype == tf.float32 and np.isfinite(x).all()
            # (x - mean) / std of [0, 1] values: 2 roundings at |x| <= 2.7 (2.4e-7 per ulp).
            assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
        seen += int(y.shape[0])
        labels += y.numpy().tolist()
    assert seen == len(good)
    expected = sorted(["cats", "dogs", "fish"].index(pathlib.Path(f).relative_to(root).parts[0])
                      for f in good)
    assert sorted(labels) == expected


@pytest.mark.parametrize("split", [False, True])
def test_batched_crops_give_the_same_batches(messy_folder, aug, split):
    """`batched_crops=True` yields exactly the per-image path's batches (same seeds, same
    pixels), on a folder of images of every size with undecodable files skipped."""
    root, good, _ = messy_folder
    kwargs = dict(augmentation=aug, seed=4, deterministic=True, drop_remainder=False,
                  with_labels=True, split=split)
    per_image = list(multicrop_dataset(root, 3, **kwargs))
    batched = list(multicrop_dataset(root, 3, batched_crops=True, **kwargs))
    assert len(batched) == len(per_image) == -(-len(good) // 3)
    for (crops_a, labels_a), (crops_b, labels_b) in zip(per_image, batched):
        np.testing.assert_array_equal(labels_a.numpy(), labels_b.numpy())
        assert len(crops_a) == len(crops_b) == aug.num_crops
        for a, b in zip(crops_a, crops_b):
            assert a.dtype == b.dtype == (tf.uint8 if split else tf.float32)
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_on_error_raise_names_the_files(messy_folder, aug):
    root, _, bad = messy_folder
    with pytest.raises(ValueError, match="3 image file") as err:
        multicrop_dataset(root, 4, augmentation=aug, on_error="raise")
    assert all(b in str(err.value) for b in bad)


def test_empty_or_undecodable_folders_raise_before_training(tmp_path, aug):
    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    from keras_dino.errors import InputError

    with pytest.raises(InputError, match="no image files found in .*empty: point the data "
                       "source at a folder that holds jpg/jpeg/png/bmp/gif/webp images"):
        multicrop_dataset(empty, 2, augmentation=aug)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"")
    (junk / "b.png").write_text("nope")
    with pytest.raises(ValueError, match="none of the 2 files"):
        multicrop_dataset(junk, 2, augmentation=aug)
    with pytest.raises(FileNotFoundError):
        multicrop_dataset(tmp_path / "missing_dir/", 2, augmentation=aug, source_type="folder")


def test_scan_images_direct(messy_folder):
    _, good, bad = messy_folder
    result = scan_images(good + bad, list(range(len(good) + len(bad))))
    assert result.files == good and result.labels == list(range(len(good)))
    assert sorted(result.skipped_files) == bad


def test_labels_follow_the_files(tmp_path, aug):
    colors = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}
    for name, color in colors.items():
        (tmp_path / name).mkdir()
        for k in range(3):
            Image.new("RGB", (30 + k, 20), color).save(tmp_path / name / f"{k}.png")
    ds, info = multicrop_dataset(tmp_path, 3, augmentation=aug, split=True, with_labels=True,
                                 seed=1, return_info=True)
    assert info.class_names == ["blue", "green", "red"]  # sorted, as ImageFolder
    channel = np.array([2, 1, 0])  # dominant colour channel of each class
    n = 0
    for crops, y in ds:
        for c in crops:
            assert c.dtype == tf.uint8
            dominant = c.numpy().reshape(c.shape[0], -1, 3).mean(1).argmax(-1)
            np.testing.assert_array_equal(dominant, channel[y.numpy()])
        n += len(y)
    assert n == 9


def test_shapes_dtypes_batches_and_remainder(aug):
    ds = multicrop_dataset(PHOTOS, 3, augmentation=aug, seed=0)
    batches = list(ds)
    assert len(batches) == 1  # 4 images, drop_remainder=True
    assert [tuple(t.shape) for t in batches[0]] == [(3, 16, 16, 3)] * 2 + [(3, 8, 8, 3)] * 2
    ds = multicrop_dataset(PHOTOS, 3, augmentation=aug, seed=0, drop_remainder=False)
    assert [int(b[0].shape[0]) for b in ds] == [3, 1]
    split = multicrop_dataset(PHOTOS, 2, augmentation=aug, seed=0, split=True)
    crops = next(iter(split))
    assert all(c.dtype == tf.uint8 for c in crops)
    # Split mode + the Keras layer gives the full-mode kind of batch.
    out = MultiCropPhotometric(seed=0)(crops)
    assert [tuple(o.shape) for o in out] == [(2, 16, 16, 3)] * 2 + [(2, 8, 8, 3)] * 2
    assert all(o.dtype == tf.float32 for o in out)
    rep = multicrop_dataset(PHOTOS, 3, augmentation=aug, seed=0, repeat=True)
    assert len(list(rep.take(5))) == 5


def _arrays(ds):
    return [[t.numpy() for t in tf.nest.flatten(b)] for b in ds]


def test_determinism_and_fresh_crops_each_epoch(aug):
    kw = dict(augmentation=aug, drop_remainder=False, deterministic=True)
    a = multicrop_dataset(PHOTOS, 2, seed=4, **kw)
    b = multicrop_dataset(PHOTOS, 2, seed=4, num_parallel_calls=1, **kw)
    c = multicrop_dataset(PHOTOS, 2, seed=5, **kw)
    first, second = _arrays(a), _arrays(a)
    for x, y in zip(first, _arrays(b)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for x, y in zip(first, second) for u, v in zip(x, y))
    assert any(not np.array_equal(u, v) for x, y in zip(first, _arrays(c)) for u, v in zip(x, y))
    # Epoch 2 of a fresh dataset repeats epoch 2 of the first one.
    a2 = multicrop_dataset(PHOTOS, 2, seed=4, **kw)
    _arrays(a2)
    for x, y in zip(second, _arrays(a2)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="seed"):
        multicrop_dataset(PHOTOS, 2, augmentation=aug, deterministic=True)


def test_sharding_with_input_context(aug):
    files = PHOTOS * 3
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ds, info = multicrop_dataset(files, 4, augmentation=aug, seed=0, input_context=ctx,
                                     drop_remainder=False, return_info=True, shuffle=False)
        assert info.batch_size == 2 and info.num_images == 6
        assert [int(b[0].shape[0]) for b in ds] == [2, 2, 2]
        seen.append(files[pid::2])
    assert sorted(seen[0] + seen[1]) == sorted(files)


def _write_tfrecords(path, n_shards=2):
    records = []
    for s in range(n_shards):
        name = path / f"train-{s:05d}-of-{n_shards:05d}"
        with tf.io.TFRecordWriter(str(name)) as w:
            for i, p in enumerate(PHOTOS):
                feature = {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[p.read_bytes()])),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[i + 1])),
                    "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
                    "image/filename": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[p.name.encode()])),
                }
                w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                        .SerializeToString())
                records.append(i)
    return str(path / "train-*")


def test_tfrecord_source(tmp_path, aug):
    pattern = _write_tfrecords(tmp_path)
    assert detect_source_type(pattern) == "tfrecord"
    ds = multicrop_dataset(pattern, 4, augmentation=aug, seed=0, with_labels=True)
    labels = sorted(sum((y.numpy().tolist() for _, y in ds), []))
    assert labels == [0, 0, 1, 1, 2, 2, 3, 3]  # 1-based in the files, 0-based out


def test_dataset_sources(aug):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    raw = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    encoded = tf.data.Dataset.from_tensor_slices([p.read_bytes() for p in PHOTOS])
    dicts = tf.data.Dataset.from_tensor_slices(
        {"image": [p.read_bytes() for p in PHOTOS], "label": [5, 6, 7, 8]})
    gray = tf.data.Dataset.from_tensor_slices((np.zeros((4, 20, 30, 1), np.uint8), [1, 2, 3, 4]))
    for src, expected in ((raw, [-1] * 4), (encoded, [-1] * 4), (dicts, [5, 6, 7, 8]),
                          (gray, [1, 2, 3, 4])):
        assert detect_source_type(src) == "dataset"
        ds = multicrop_dataset(src, 2, augmentation=aug, seed=0, with_labels=True)
        labels = []
        for crops, y in ds:
            assert [tuple(c.shape) for c in crops] == [(2, 16, 16, 3)] * 2 + [(2, 8, 8, 3)] * 2
            labels += y.numpy().tolist()
        assert sorted(labels) == expected
    with pytest.raises(ValueError, match="empty"):
        multicrop_dataset(encoded.take(0), 2, augmentation=aug)


def test_tfds_source(aug):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds, info = multicrop_dataset("mnist", 3, augmentation=aug, seed=0, with_labels=True,
                                     return_info=True)
        batches = list(ds)
    assert info.source_type == "tfds" and len(info.class_names) == 10
    assert len(batches) == 2
    crops, y = batches[0]
    assert [tuple(c.shape) for c in crops] == [(3, 16, 16, 3)] * 2 + [(3, 8, 8, 3)] * 2
    assert y.dtype == tf.int32


def test_list_file_source(tmp_path, messy_folder, aug):
    root, good, bad = messy_folder
    listing = tmp_path / "images.txt"
    # Absolute and relative paths, a comment, a blank line, and one undecodable file.
    relative = os.path.relpath(good[1], tmp_path)
    listing.write_text(f"# my images\n{good[0]}\n\n{relative}\n{bad[0]}\n")
    ds, info = multicrop_dataset(str(listing), 1, augmentation=aug, seed=0, return_info=True)
    assert info.source_type == "list"
    assert info.num_images == 2 and info.skipped_files == [bad[0]]
    assert len(list(ds)) == 2
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no file"):
        multicrop_dataset(str(tmp_path / "empty.txt"), 1, augmentation=aug)


def test_tfds_source_with_a_split(aug, monkeypatch):
    import tensorflow_datasets as tfds

    splits = []
    original = tfds.core.DatasetBuilder.as_dataset

    def as_dataset(self, *args, **kwargs):
        splits.append(kwargs.get("split"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)
    with tfds.testing.mock_data(num_examples=4):
        test = multicrop_dataset("tfds:mnist:test[:50%]", 2, augmentation=aug, seed=0)
        plain = multicrop_dataset("mnist", 2, augmentation=aug, seed=0, tfds_split="test")
        assert len(list(test)) == 2 and len(list(plain)) == 2
    assert splits == ["test[:50%]", "test"]


def test_source_type_detection(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\n")
    assert detect_source_type(str(tmp_path / "images.txt")) == "list"
    assert detect_source_type(str(tmp_path)) == "folder"
    assert detect_source_type([str(PHOTOS[0])]) == "files"
    assert detect_source_type(str(PHOTOS[0])) == "files"
    assert detect_source_type("imagenet2012") == "tfds"
    assert detect_source_type("tfds:cifar10") == "tfds"
    assert detect_source_type(str(tmp_path / "train-*")) == "tfrecord"
    with pytest.raises(TypeError):
        detect_source_type(3)


def test_arrays_source_gives_the_crops_of_the_same_images_as_a_dataset(aug):
    """A uint8 array (with labels shaped as keras.datasets gives them) is a source: the
    same crops, seed for seed, as the same images through a tf.data.Dataset; sharded
    across input pipelines without loss; bad arrays named with their fix."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)
    labels = np.arange(10, 16).reshape(6, 1)  # cifar10.load_data()'s label shape
    assert detect_source_type(images) == detect_source_type((images, labels)) == "arrays"
    options = dict(augmentation=aug, seed=3, deterministic=True, with_labels=True)
    ds, info = multicrop_dataset((images, labels), 2, return_info=True, **options)
    reference = multicrop_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels[:, 0])), 2, **options)
    assert info.source_type == "arrays" and info.num_images == 6
    assert int(ds.cardinality()) == 3
    batches, expected = list(ds), list(reference)
    assert len(batches) == len(expected) == 3
    for (crops, y), (ref_crops, ref_y) in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(y.numpy(), ref_y.numpy())
        for c, r in zip(crops, ref_crops, strict=True):
            np.testing.assert_array_equal(c.numpy(), r.numpy())
    assert sorted(sum((y.numpy().tolist() for _, y in batches), [])) == list(range(10, 16))
    # Unlabelled and grayscale arrays; two input pipelines share the images out.
    gray = multicrop_dataset(images[..., 0], 3, augmentation=aug, seed=0, with_labels=True)
    for crops, y in gray:
        assert [tuple(c.shape) for c in crops] == [(3, 16, 16, 3)] * 2 + [(3, 8, 8, 3)] * 2
        assert y.numpy().tolist() == [-1, -1, -1]
    shards = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        part, part_info = multicrop_dataset((images, labels), 2, augmentation=aug, seed=0,
                                            with_labels=True, input_context=context,
                                            drop_remainder=False, return_info=True)
        assert part_info.num_images == 3
        shards += sum((y.numpy().tolist() for _, y in part), [])
    assert sorted(shards) == list(range(10, 16))
    with pytest.raises(ValueError, match="must be uint8 pixels in \\[0, 255\\]; got float32"):
        multicrop_dataset((images / 255.0).astype(np.float32), 2, augmentation=aug)
    with pytest.raises(ValueError, match="Channels first .* x.transpose\\(0, 2, 3, 1\\)"):
        multicrop_dataset(images.transpose(0, 3, 1, 2), 2, augmentation=aug)
    with pytest.raises(ValueError, match="6 images but labels of shape \\(5, 1\\)"):
        multicrop_dataset((images, labels[:5]), 2, augmentation=aug)
    # Fewer images than a batch: named at once, not an iterator error at the first step.
    with pytest.raises(ValueError, match="6 images make no full batch of 8: lower batch_size"):
        multicrop_dataset(images, 8, augmentation=aug)
    assert len(list(multicrop_dataset(images, 8, augmentation=aug, drop_remainder=False))) == 1
