"""Features of an image folder (or list) of any size, streamed to resumable `.npz` shards.

`write_feature_shards` reads the images a batch at a time (PIL, in threads, the official
evaluation view: `keras_dino.preprocessing.EvalConfig`), so memory holds one shard's
features and two batches of images, never the whole set. Shard `k` holds the images
`k * shard_size ... (k + 1) * shard_size - 1` of the sorted listing:

* `features-00000.npz`: `features` (float32, `(n, ...)`), `files` (paths relative to
  the data path, one per row), `skipped` (the shard's unreadable files), and for grid
  features `grid_shape` (`[h, w]`; `features` is `(n, h, w, C)`).
* `manifest.json`: the settings, the shards, the number of images and every skipped
  file with its reason; `"complete": true` once every shard is written.

A shard is written under a temporary name and renamed when complete, so an interrupted
run leaves no shard that looks complete; a rerun with the same settings reuses the
complete shards and computes the others. Read them back with `np.load` (no pickle), or
all together with `read_feature_shards`.
"""

import collections
import concurrent.futures
import hashlib
import json
import os

import keras
import numpy as np
from keras import ops

from keras_dino.evaluation.dense_features import GRID_KINDS, feature_function

SHARD_NAME = "features-{:05d}.npz"
MANIFEST = "manifest.json"
FORMAT = "keras_dino.features/1"


def list_images(data_path) -> tuple:
    """`(files, root)`: the images of a folder (recursive, sorted) or of a list file.

    A list file (`.txt`, `.lst`, `.list`) names one image per line, relative to its
    folder (`keras_dino.data.read_image_list`); `root` is what shard file names are
    relative to: the folder, or the list's folder.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "b").mkdir(); _ = (root / "b" / "x.png").write_bytes(b""); _ = (root / "a.jpg").write_bytes(b"")
    >>> files, base = list_images(root)
    >>> [os.path.relpath(f, base) for f in files]
    ['a.jpg', 'b/x.png']
    """
    from keras_dino.data.source_datasets import read_image_list
    from keras_dino.data.sources import list_image_files

    path = os.fspath(data_path)
    if os.path.isdir(path):
        return list_image_files(path).files, path
    if os.path.isfile(path):
        return read_image_list(path), os.path.dirname(os.path.abspath(path))
    raise FileNotFoundError(f"--data_path={path} is neither a folder nor a list of images.")


def _load(path, config):
    """`(image, None)`, or `(None, reason)` when PIL cannot read the file."""
    try:
        return config.load(path), None
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, with its reason
        return None, f"{type(e).__name__}: {e}"[:200]


def image_batches(files, config, batch_size: int, num_workers: int = 8):
    """Yields `(paths, images, reasons)` per batch: decoded in threads, one batch ahead.

    `images[i]` is float32 `(size, size, 3)` or None when `files[i]` cannot be read
    (`reasons[i]` says why).

    Example:

    >>> from keras_dino.preprocessing import EvalConfig
    >>> [(len(p), r) for p, _, r in image_batches(["missing.jpg"], EvalConfig(32, 32), 4)]
    [(1, ["FileNotFoundError: [Errno 2] No such file or directory: 'missing.jpg'"])]
    """
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        chunks = (files[i:i + batch_size] for i in range(0, len(files), batch_size))
        queue = collections.deque()

        def submit():
            chunk = next(chunks, None)
            if chunk is not None:
                queue.append((chunk, [pool.submit(_load, p, config) for p in chunk]))

        submit()
        while queue:
            submit()  # decode the next batch while this one runs
            chunk, futures = queue.popleft()
            results = [f.result() for f in futures]
            yield chunk, [r[0] for r in results], [r[1] for r in results]


class _Features(keras.Model):
    """The feature function as a model, so that `predict_on_batch` compiles it."""

    def __init__(self, backbone, fn, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.fn = fn

    def call(self, images):
        return self.fn(self.backbone, images)


def _atomic_write(path, write):
    """Writes through `write(file)` to a temporary name, then renames it to `path`."""
    partial = path + ".partial"
    with open(partial, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def _read_shard_index(path):
    """`(files, (skipped, reasons))` of a complete shard, or None when it cannot be read."""
    try:
        with np.load(path) as shard:
            return (shard["files"].tolist(),
                    (shard["skipped"].tolist(), shard["skipped_reasons"].tolist()))
    except Exception:  # noqa: BLE001 - an unreadable shard is computed again
        return None


def write_feature_shards(backbone, data_path, output_dir, features: str = "cls",
                         n_last_blocks: int = 4, block: int = -1, multiscale: bool = False,
                         image_size: int = 224, resize_size: int | None = None,
                         batch_size: int = 128, shard_size: int = 1024,
                         num_workers: int = 8, compiled: bool = True,
                         verbose: int = 1) -> dict:
    """Writes the features of every image under `data_path` as shards in `output_dir`.

    Args:
        backbone: a `VisionTransformer`, `XCiT` or `ResNet`.
        data_path: a folder of images (recursive) or a list file.
        output_dir: where the shards and `manifest.json` go.
        features: one of `FEATURE_KINDS` (`cls`, `patch`, `mean_patch`, `last_blocks`,
            `block`); with `n_last_blocks`, `block`, `multiscale` as `feature_function`.
        image_size: the official evaluation view (`EvalConfig`): the center crop.
        resize_size: the shorter side before the crop (default `image_size * 256 / 224`).
        batch_size: images per forward pass.
        shard_size: images per shard (listed images: a shard keeps fewer rows when
            some of its files are unreadable).
        num_workers: decoding threads.
        compiled: run the features through a compiled `predict_on_batch` (False: eager).
        verbose: progress bar.

    Returns:
        The manifest (also in `output_dir/manifest.json`), with `shards_written` and
        `shards_reused` of this run.

    Example:

    ```python
    summary = write_feature_shards(keras_dino.load_pretrained("dino_vits16"), "photos/",
                                   "out/features", features="patch")
    with np.load("out/features/features-00000.npz") as shard:
        shard["features"].shape, shard["files"][:2], shard["grid_shape"]
    # (1024, 14, 14, 384), ['a/1.jpg', 'a/2.jpg'], [14, 14]
    ```
    """
    from keras_dino.preprocessing import EvalConfig

    fn = feature_function(features, n_last_blocks, block, multiscale)
    config = EvalConfig(image_size, resize_size)
    files, root = list_images(data_path)
    if not files:
        raise ValueError(f"no image under {data_path}.")
    names = [os.path.relpath(f, root) for f in files]
    settings = {
        "features": features, "n_last_blocks": n_last_blocks if features == "last_blocks"
        else None, "block": block if features == "block" else None, "multiscale": multiscale,
        "eval_view": config.to_dict(), "shard_size": shard_size, "backbone": _describe(backbone),
        "weights_sha256": _weights_digest(backbone, fn, config.size),
        "num_files": len(names),
        "files_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    os.makedirs(output_dir, exist_ok=True)
    manifest_path = os.path.join(output_dir, MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            previous = json.load(f).get("settings")
        if previous != settings:
            changed = sorted(k for k in settings if (previous or {}).get(k) != settings[k])
            raise ValueError(f"{output_dir} holds features of other settings ({', '.join(changed)}"
                             " differ): give another --output_dir, or empty this one.")
    elif any(n.startswith("features-") and n.endswith(".npz") for n in os.listdir(output_dir)):
        raise ValueError(f"{output_dir} holds shards but no {MANIFEST} to tell their settings: "
                         "give another --output_dir, or empty this one.")
    _write_manifest(manifest_path, {"format": FORMAT, "settings": settings, "complete": False})

    model = _Features(backbone, fn, name="features") if compiled else None
    bar = keras.utils.Progbar(len(names), verbose=verbose, unit_name="image")
    done, shards, skipped, written, reused = 0, [], [], 0, 0
    feature_shape = grid_shape = None
    for k, start in enumerate(range(0, len(names), shard_size)):
        name = SHARD_NAME.format(k)
        path = os.path.join(output_dir, name)
        index = _read_shard_index(path) if os.path.isfile(path) else None
        if index is None:
            index = _write_shard(path, files[start:start + shard_size],
                                 names[start:start + shard_size], config, fn, backbone, model,
                                 batch_size, num_workers, features in GRID_KINDS,
                                 lambda n, base=done: bar.update(base + n))
            written += 1
        else:
            reused += 1
        kept, (shard_skipped, reasons) = index
        skipped += [{"file": f, "reason": r} for f, r in zip(shard_skipped, reasons)]
        shards.append({"file": name, "images": len(kept), "skipped": len(shard_skipped)})
        if feature_shape is None and kept:
            with np.load(path) as shard:
                feature_shape = list(shard["features"].shape[1:])
                grid_shape = shard["grid_shape"].tolist() if "grid_shape" in shard else None
        done += len(kept) + len(shard_skipped)
        bar.update(done)
    manifest = {
        "format": FORMAT, "settings": settings, "complete": True,
        "data_path": os.path.abspath(os.fspath(data_path)), "num_images": done - len(skipped),
        "num_skipped": len(skipped), "feature_shape": feature_shape, "grid_shape": grid_shape,
        "shards": shards, "skipped": skipped,
    }
    _write_manifest(manifest_path, manifest)
    return {**manifest, "shards_written": written, "shards_reused": reused}


def _write_shard(path, files, names, config, fn, backbone, model, batch_size, num_workers,
                 grid, progress):
    """Computes and writes one shard; returns its `(files, (skipped, reasons))`."""
    chunks, kept, skipped, reasons = [], [], [], []
    for _paths, images, why in image_batches(files, config, batch_size, num_workers):
        start = len(kept) + len(skipped)
        good = [i for i, image in enumerate(images) if image is not None]
        kept += [names[start + i] for i in good]
        for i, reason in enumerate(why):
            if reason is not None:
                skipped.append(names[start + i])
                reasons.append(reason)
        if good:
            chunks.append(_compute(np.stack([images[i] for i in good]), fn, backbone, model,
                                   batch_size))
        progress(len(kept) + len(skipped))
    if not chunks:  # every file unreadable: an empty array of the right shape
        empty = np.zeros((1, config.size, config.size, 3), np.float32)
        chunks.append(_compute(empty, fn, backbone, None)[:0])
    features = np.concatenate(chunks)
    arrays = {"features": features, "files": np.array(kept, dtype=str),
              "skipped": np.array(skipped, dtype=str),
              "skipped_reasons": np.array(reasons, dtype=str)}
    if grid:
        arrays["grid_shape"] = np.array(features.shape[1:3], np.int64)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return kept, (skipped, reasons)


def _compute(images, fn, backbone, model, batch_size=None):
    if model is None:
        return ops.convert_to_numpy(fn(backbone, images)).astype(np.float32)
    if not model.built:  # builds the backbone eagerly, then `predict_on_batch` compiles
        out = ops.convert_to_numpy(fn(backbone, images)).astype(np.float32)
        model.built = True
        return out
    count = len(images)
    if batch_size and count < batch_size:  # one compiled shape: pad, then drop the padding
        padding = np.zeros((batch_size - count,) + images.shape[1:], images.dtype)
        images = np.concatenate([images, padding])
    return np.asarray(model.predict_on_batch(images), np.float32)[:count]


def _write_manifest(path, manifest):
    _atomic_write(path, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))


def _weights_digest(backbone, fn, size) -> str:
    """sha256 of the backbone's weights: a rerun resumes only with the same weights."""
    if not backbone.built:  # lazily built: one forward pass creates the weights
        fn(backbone, np.zeros((1, size, size, 3), np.float32))
    digest = hashlib.sha256()
    for weight in backbone.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight.value)).tobytes())
    return digest.hexdigest()


def _describe(backbone) -> str:
    shape = f"{backbone.embed_dim}"
    if hasattr(backbone, "depth"):
        shape += f"x{backbone.depth}"
    if hasattr(backbone, "patch_size"):
        shape += f"/p{backbone.patch_size}"
    return f"{type(backbone).__name__} {shape}"


def read_feature_shards(output_dir) -> dict:
    """Every shard of a complete `write_feature_shards` run, concatenated in memory.

    Returns `{"features", "files", "skipped"}` arrays (and `grid_shape`), in listing order.

    Example:

    ```python
    data = read_feature_shards("out/features")
    data["features"].shape, data["files"][0]
    ```
    """
    with open(os.path.join(output_dir, MANIFEST)) as f:
        manifest = json.load(f)
    if not manifest.get("complete"):
        raise ValueError(f"{output_dir}: the extraction is not complete; run it again to "
                         "finish it.")
    parts = collections.defaultdict(list)
    for shard in manifest["shards"]:
        with np.load(os.path.join(output_dir, shard["file"])) as data:
            for key in ("features", "files", "skipped"):
                parts[key].append(data[key])
    out = {key: np.concatenate(value) for key, value in parts.items()}
    if manifest.get("grid_shape"):
        out["grid_shape"] = np.array(manifest["grid_shape"])
    return out
