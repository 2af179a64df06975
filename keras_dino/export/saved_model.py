"""SavedModel export of DINO backbones for plain TensorFlow and TF Serving.

`export_saved_model` writes a backbone (a `VisionTransformer`, the teacher of a trained
`DINO`, a preset name or a checkpoint file) as a TensorFlow SavedModel in the TF Serving
layout `<base_dir>/<model_name>/<version>/`, from the TensorFlow backend or from the JAX
backend (through jax2tf). The export needs neither keras nor keras_dino to be loaded.

Signatures (`S` = `image_size`, `G = S // patch_size`, `E` = embedding width):

* `serving_default`: `images`, `[batch, S, S, 3]`, uint8 (default) or float32, raw RGB
  pixel values in 0..255; they are normalised in the graph with the ImageNet mean and std
  (`keras_dino.normalize_images`). Returns `cls_embedding` `[batch, E]` (named
  `cls_embedding_l2norm` when exported with `l2_normalize=True`) and, with
  `include_patch_tokens=True`, `patch_tokens` `[batch, G*G, E]` (row-major patches).
* `serve_bytes`: `image_bytes`, `[batch]` string, each an encoded JPEG or PNG image of any
  size. Decoded (`tf.io.decode_image`, 3 channels), resized so that the shorter side is
  `resize_size` (256 for 224: bicubic, antialiased, rounded to 0..255 like PIL), center
  cropped to `S x S` and normalised, all in the graph, as the official evaluation does
  (`keras_dino.preprocess_images`). Same outputs as `serving_default`.
* `attention`: `images` as `serving_default`. Returns `cls_attention` `[batch, heads, G, G]`,
  the last block's attention of the CLS token to each patch, per head.

Each input is checked in the graph; a wrong shape or undecodable bytes fail the request
with an `InvalidArgumentError` that names the signature and the expected input, also
under TF Serving (which does not check shapes itself).

The export records what it is in `assets/keras_dino_export.json` (input specs, output names,
preprocessing, architecture, patch size, weights source, versions); `describe` prints it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile

import keras
import numpy as np

from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from keras_dino.version import __version__

METADATA_FILE = "keras_dino_export.json"
FORMAT = "keras_dino.saved_model/1"
SIGNATURE_NAMES = ("serving_default", "serve_bytes", "attention")
INPUT_DTYPES = ("uint8", "float32")

__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "SIGNATURE_NAMES",
    "describe",
    "export_saved_model",
    "load_metadata",
    "rest_request_to_tensors",
    "rest_response",
]


# --------------------------------------------------------------------------- model/provenance
def _resolve_backbone(model, weights_source, load_kwargs):
    """The backbone to export and the text recording where its weights come from."""
    from keras_dino.checkpoints.pretrained import PRESETS, load_pretrained, preset_url
    from keras_dino.models.multicrop import MultiCropWrapper
    from keras_dino.models.vision_transformer import VisionTransformer

    load_kwargs = dict(load_kwargs or {})
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if name in PRESETS:
            source = f"preset '{name}' ({preset_url(name)})"
        else:
            path = pathlib.Path(name)
            if not path.is_file():
                raise FileNotFoundError(
                    f"'{name}' is neither a preset ({', '.join(PRESETS)}) nor an existing file."
                )
            source = f"checkpoint {path.resolve()} (sha256 {_sha256(path)})"
        if load_kwargs.get("checkpoint_key", "teacher") != "teacher":
            source += f", {load_kwargs['checkpoint_key']} weights"
        loaded = load_pretrained(name, **load_kwargs)
        backbone = getattr(loaded, "backbone", loaded)
        return backbone, weights_source or source
    if load_kwargs:
        raise ValueError("load_kwargs only applies when `model` is a preset name or a file path.")
    if hasattr(model, "teacher") and isinstance(
        getattr(model, "backbone", None), VisionTransformer
    ):
        # keras_dino.DINO: the teacher backbone is the model DINO evaluates.
        source = f"teacher backbone of the in-memory keras_dino DINO model '{model.name}'"
        return model.backbone, weights_source or source
    if isinstance(model, MultiCropWrapper):
        source = f"backbone of the in-memory MultiCropWrapper '{model.name}'"
        return model.backbone, weights_source or source
    if isinstance(model, VisionTransformer):
        return model, weights_source or f"in-memory VisionTransformer '{model.name}'"
    raise TypeError(
        "model must be a keras_dino VisionTransformer, a DINO model (its teacher backbone is "
        "exported), a MultiCropWrapper, a preset name or a checkpoint path; got "
        f"{type(model).__name__}."
    )


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _arch_name(backbone) -> str:
    from keras_dino.models.vision_transformer import ARCHITECTURES

    for name, config in ARCHITECTURES.items():
        if (backbone.embed_dim, backbone.depth, backbone.num_heads) == (
            config["embed_dim"],
            config["depth"],
            config["num_heads"],
        ):
            return name
    return "custom"


# --------------------------------------------------------------------------- layout
def _check_name(model_name):
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_name or "") or model_name in (".", ".."):
        raise ValueError(
            f"model_name must be a plain directory name (letters, digits, '_', '-', '.'); "
            f"got {model_name!r}."
        )


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            f"version must be a non-negative integer (TF Serving's rule); got {version!r}."
        )
    return int(version)


def _config_blocks(text):
    """Top-level `config { ... }` blocks of a models.config `model_config_list`."""
    blocks, i = [], 0
    for match in re.finditer(r"\bconfig\s*\{", text):
        if match.start() < i:
            continue
        depth, j = 0, match.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        blocks.append(text[match.start() : j + 1])
        i = j + 1
    return blocks


def write_models_config(base_dir, model_name: str, base_path: str | None = None) -> str:
    """Adds (or replaces) `model_name` in `<base_dir>/models.config` and returns its path.

    The file is TF Serving's `--model_config_file` text proto; entries for other models
    already in it are kept. `base_path` is where the server sees `<base_dir>/<model_name>`:
    by default `/models/<model_name>`, the path inside the `tensorflow/serving` Docker image
    when `base_dir` is mounted at `/models`.

    Example:

    ```python
    write_models_config("exports", "dino")   # exports/models.config
    ```
    """
    _check_name(model_name)
    base_path = base_path or f"/models/{model_name}"
    path = pathlib.Path(base_dir) / "models.config"
    kept = []
    if path.is_file():
        for block in _config_blocks(path.read_text()):
            name = re.search(r"\bname\s*:\s*[\"']([^\"']*)[\"']", block)
            if name is None or name.group(1) != model_name:
                kept.append(block)
    entry = (
        "config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }"
    )
    blocks = [*kept, entry]
    path.write_text("model_config_list {\n  " + "\n  ".join(blocks) + "\n}\n")
    return str(path)


# --------------------------------------------------------------------------- TF graph pieces
# TF Serving (and `signatures[...]` of a loaded SavedModel) feed tensors into the graph
# without checking them against the signature's shapes, so each input is checked in the
# graph. The checks read the runtime shape through values padded with a sentinel, which
# Grappler cannot fold from the static signature shape (it would fold tf.rank or tf.size),
# and the rest of the graph depends on them through a tf.cond, so they always run first.
_SENTINEL = -7


def _fail_unless(tf, ok, value, message):
    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, message, summarize=16)]):
            return tf.identity(value)

    return tf.cond(ok, lambda: tf.identity(value), fail)


def _padded_shape(tf, x, rank):
    return tf.concat([tf.shape(x), tf.fill([rank + 1], _SENTINEL)], 0)


def _expects(signature, name, expected):
    return f"signature '{signature}' expects input '{name}': {expected}"


def _check_images(tf, images, signature, image_size, dtype):
    """Fails with a message naming the input unless `images` is `[batch, S, S, 3]`."""
    expected = (
        f"{dtype} RGB images of shape [batch, {image_size}, {image_size}, 3] "
        "(NHWC, pixel values 0..255)"
    )
    padded = _padded_shape(tf, images, 4)
    ok = tf.reduce_all(tf.equal(padded[1:5], [image_size, image_size, 3, _SENTINEL]))
    ok = tf.logical_and(ok, padded[0] >= 0)
    message = [_expects(signature, "images", expected) + "; got shape", tf.shape(images)]
    return _fail_unless(tf, ok, images, message)


def _normalize(tf, images):
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def _decode_and_crop(tf, data, image_size, resize_size):
    """One encoded JPEG/PNG -> float32 `[S, S, 3]` in 0..255, as `preprocess_images`."""
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    data = _fail_unless(tf, tf.logical_or(is_jpeg, is_png), data, ["neither JPEG nor PNG"])
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
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


def _decode_batch(tf, image_bytes, image_size, resize_size):
    """`[batch]` encoded images -> float32 `[batch, S, S, 3]` crops in 0..255.

    A tf.data pipeline (parallel, order kept) whose failed elements are dropped, so that
    a bad image fails the request with a message naming the input and the bad elements
    instead of the decoder's.
    """
    expected = 'a batch [batch] of encoded JPEG or PNG images (over REST: {"b64": "<base64>"})'
    padded = _padded_shape(tf, image_bytes, 1)
    ok = tf.logical_and(tf.equal(padded[1], _SENTINEL), padded[0] >= 0)
    message = [
        _expects("serve_bytes", "image_bytes", expected) + "; got shape",
        tf.shape(image_bytes),
    ]
    image_bytes = _fail_unless(tf, ok, image_bytes, message)
    n = tf.shape(image_bytes)[0]
    data = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    data = data.map(
        lambda i, d: (i, _decode_and_crop(tf, d, image_size, resize_size)),
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
        _expects("serve_bytes", "image_bytes", expected)
        + "; these elements (0-based) could not be decoded as JPEG or PNG:",
        failed,
    ]
    return _fail_unless(tf, tf.equal(tf.size(index), n), crops, message)


# --------------------------------------------------------------------------- export
def export_saved_model(
    model,
    base_dir,
    model_name: str = "dino",
    version: int = 1,
    image_size: int = 224,
    *,
    input_dtype: str = "uint8",
    l2_normalize: bool = False,
    include_patch_tokens: bool = False,
    resize_size: int | None = None,
    overwrite: bool = False,
    models_config: bool = True,
    serving_base_path: str | None = None,
    weights_source: str | None = None,
    load_kwargs: dict | None = None,
    verbose: bool = False,
) -> str:
    """Exports a DINO backbone as a SavedModel for TensorFlow and TF Serving.

    Works under the TensorFlow and the JAX Keras backends (JAX through jax2tf; the
    export then holds the model as an `XlaCallModule` op). The torch backend cannot
    export SavedModels.

    Args:
        model: a `VisionTransformer`, a `keras_dino.DINO` (its teacher backbone is
            exported), a `MultiCropWrapper` (its backbone), or a preset name / checkpoint
            path given to `keras_dino.load_pretrained` (with `load_kwargs`).
        base_dir: the model base directory of TF Serving; the export goes to
            `<base_dir>/<model_name>/<version>/`.
        model_name: the name TF Serving serves the model under.
        version: the version directory (a non-negative integer).
        image_size: the square input resolution `S` of the `images` inputs and of the
            center crop of `serve_bytes`; a multiple of the patch size.
        input_dtype: `"uint8"` or `"float32"`: the dtype of the `images` inputs. Either
            way they are raw RGB pixel values in 0..255, normalised in the graph.
        l2_normalize: L2-normalise the CLS embedding; its output is then named
            `cls_embedding_l2norm` instead of `cls_embedding`.
        include_patch_tokens: also return the normalised patch tokens `patch_tokens`
            `[batch, G*G, E]` from `serving_default` and `serve_bytes`.
        resize_size: shorter side after the resize in `serve_bytes`; defaults to
            `round(image_size * 256 / 224)` (256 for 224).
        overwrite: replace an existing version directory (otherwise `FileExistsError`).
        models_config: write or update `<base_dir>/models.config` for TF Serving's
            `--model_config_file`.
        serving_base_path: the `base_path` written to models.config: where the server sees
            `<base_dir>/<model_name>` (default `/models/<model_name>`, the Docker layout).
        weights_source: text recorded as the weights' provenance (by default derived
            from `model`: preset URL, checkpoint path and sha256, or the in-memory model).
        load_kwargs: arguments for `load_pretrained` when `model` is a name or a path
            (e.g. `{"num_heads": 3}`).
        verbose: print the export's description (`describe`).

    Returns:
        The version directory, `<base_dir>/<model_name>/<version>`, as a string.

    Example:

    ```python
    import keras_dino
    path = keras_dino.export_saved_model("dino_vits16", "exports", l2_normalize=True)
    keras_dino.export.describe(path)

    # Anywhere with TensorFlow only:
    import tensorflow as tf
    served = tf.saved_model.load(path)
    out = served.signatures["serve_bytes"](image_bytes=tf.constant([open("a.jpg", "rb").read()]))
    out["cls_embedding_l2norm"]          # (1, 384)
    ```
    """
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise RuntimeError(
            f"export_saved_model needs the TensorFlow or JAX Keras backend (this is '{backend}'): "
            "Keras can only write SavedModels from torch through torch_xla. Save the weights "
            "(`model.save_weights('backbone.weights.h5')`) and export from a process started "
            "with KERAS_BACKEND=tensorflow."
        )
    _check_name(model_name)
    version = _check_version(version)
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}; got {input_dtype!r}.")
    model_dir = pathlib.Path(base_dir) / model_name
    version_dir = model_dir / str(version)
    if version_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{version_dir} already exists; pass overwrite=True to replace it, or export "
            "another version."
        )
    backbone, weights_source = _resolve_backbone(model, weights_source, load_kwargs)
    patch = backbone.patch_size
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}.")
    resize_size = int(resize_size or round(image_size * 256 / 224))
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} is smaller than image_size {image_size}.")
    if not backbone.built:
        backbone.build((None, image_size, image_size, 3))
    grid = image_size // patch

    import tensorflow as tf

    # 1. The backbone as tf.functions on normalised images (jax2tf under JAX).
    archive = keras.export.ExportArchive()
    archive.track(backbone)
    spec = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]

    def features(images):
        return backbone.forward_features(images, training=False)

    def last_selfattention(images):
        return backbone.get_last_selfattention(images)

    # Inference only: no gradient functions (jax2tf's would be saved as unusable stubs).
    kwargs = {"jax2tf_kwargs": {"with_gradient": False}} if backend == "jax" else {}
    features_fn = archive.add_endpoint("forward_features", features, spec, **kwargs)
    attention_fn = archive.add_endpoint(
        "get_last_selfattention", last_selfattention, spec, **kwargs
    )

    # 2. The serving signatures around them, in TensorFlow.
    embedding_key = "cls_embedding_l2norm" if l2_normalize else "cls_embedding"

    tokens_shape = [grid * grid + 1, backbone.embed_dim]
    attention_shape = [backbone.num_heads, grid * grid + 1, grid * grid + 1]

    def unless_empty(fn, x, shape):
        # An empty batch gives empty outputs (the backbone itself cannot take batch 0).
        return tf.cond(
            tf.shape(x)[0] > 0,
            lambda: tf.cast(fn(x), tf.float32),
            lambda: tf.zeros([0, *shape], tf.float32),
        )

    def outputs_of(x):
        tokens = unless_empty(features_fn, x, tokens_shape)
        cls = tokens[:, 0]
        if l2_normalize:
            cls = tf.math.l2_normalize(cls, axis=-1, epsilon=1e-24)
        outputs = {embedding_key: cls}
        if include_patch_tokens:
            outputs["patch_tokens"] = tokens[:, 1:]
        return outputs

    images_spec = tf.TensorSpec([None, image_size, image_size, 3], input_dtype, name="images")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    @tf.function(input_signature=[images_spec], autograph=False)
    def serving_default(images):
        images = _check_images(tf, images, "serving_default", image_size, input_dtype)
        return outputs_of(_normalize(tf, images))

    @tf.function(input_signature=[bytes_spec], autograph=False)
    def serve_bytes(image_bytes):
        crops = _decode_batch(tf, image_bytes, image_size, resize_size)
        return outputs_of(_normalize(tf, crops))

    @tf.function(input_signature=[images_spec], autograph=False)
    def attention(images):
        images = _check_images(tf, images, "attention", image_size, input_dtype)
        attn = unless_empty(attention_fn, _normalize(tf, images), attention_shape)
        cls = attn[:, :, 0, 1:]
        return {"cls_attention": tf.reshape(cls, [-1, backbone.num_heads, grid, grid])}

    signatures = {
        "serving_default": serving_default.get_concrete_function(),
        "serve_bytes": serve_bytes.get_concrete_function(),
        "attention": attention.get_concrete_function(),
    }

    # 3. What the export is, for describe() and for people without keras_dino.
    outputs = {embedding_key: {"dtype": "float32", "shape": [None, backbone.embed_dim]}}
    if include_patch_tokens:
        outputs["patch_tokens"] = {
            "dtype": "float32",
            "shape": [None, grid * grid, backbone.embed_dim],
        }
    images_input = {"images": {"dtype": input_dtype, "shape": [None, image_size, image_size, 3]}}
    metadata = {
        "format": FORMAT,
        "model_name": model_name,
        "version": version,
        "model": {
            "class": type(backbone).__name__,
            "arch": _arch_name(backbone),
            "patch_size": patch,
            "embed_dim": backbone.embed_dim,
            "depth": backbone.depth,
            "num_heads": backbone.num_heads,
            "trained_img_size": backbone.img_size,
            "num_parameters": int(backbone.count_params()),
            "weights_source": weights_source,
        },
        "image_size": image_size,
        "patch_grid": [grid, grid],
        "preprocessing": {
            "images": (
                f"raw RGB pixel values 0..255 as {input_dtype}, NHWC, already "
                f"{image_size}x{image_size}; normalised in the graph: (x / 255 - mean) / std"
            ),
            "image_bytes": (
                "tf.io.decode_image(channels=3) of a JPEG or PNG; resize so that the shorter "
                f"side is {resize_size} (the other truncated), bicubic with antialiasing, "
                f"rounded and clipped to 0..255; center crop {image_size}x{image_size} "
                "(offsets rounded half to even); then normalised as images"
            ),
            "resize_size": resize_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "signatures": {
            "serving_default": {
                "inputs": images_input,
                "outputs": outputs,
                "description": "CLS embedding"
                + (" (L2-normalised)" if l2_normalize else "")
                + (" and patch tokens" if include_patch_tokens else "")
                + " of a batch of images",
            },
            "serve_bytes": {
                "inputs": {"image_bytes": {"dtype": "string", "shape": [None]}},
                "outputs": outputs,
                "description": "as serving_default, from encoded JPEG/PNG images of any size",
            },
            "attention": {
                "inputs": images_input,
                "outputs": {
                    "cls_attention": {
                        "dtype": "float32",
                        "shape": [None, backbone.num_heads, grid, grid],
                    }
                },
                "description": (
                    "last block's attention of the CLS token to the patches, per head, "
                    "at patch resolution (rows of patches first)"
                ),
            },
        },
        "exported_with": {
            "keras_dino": __version__,
            "keras": keras.__version__,
            "keras_backend": backend,
            "tensorflow": tf.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if backend == "jax":
        import jax

        metadata["exported_with"]["jax"] = jax.__version__

    # 4. Write to a hidden directory (TF Serving only loads numeric names), then rename.
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        meta_dir = staging / "_metadata"
        meta_dir.mkdir()
        meta_path = meta_dir / METADATA_FILE
        meta_path.write_text(json.dumps(metadata, indent=2) + "\n")

        root = tf.Module()
        variables = []
        seen = set()
        for fn in (features_fn, attention_fn):
            for v in fn.get_concrete_function().variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        root.model_variables = variables
        root.forward_features = features_fn
        root.get_last_selfattention = attention_fn
        root.serving_default = serving_default
        root.serve_bytes = serve_bytes
        root.attention = attention
        root.metadata_file = tf.saved_model.Asset(str(meta_path))
        out_dir = staging / "saved_model"
        tf.saved_model.save(root, str(out_dir), signatures=signatures)
        old = None
        if version_dir.exists():
            if not overwrite:  # written meanwhile by another process
                raise FileExistsError(f"{version_dir} appeared during the export.")
            old = model_dir / f".old-{version}-{os.getpid()}"
            os.replace(version_dir, old)
        os.replace(out_dir, version_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if models_config:
        write_models_config(base_dir, model_name, serving_base_path)
    if verbose:
        describe(version_dir)
    return str(version_dir)


# --------------------------------------------------------------------------- describe
def _resolve_export_dir(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.glob("*") if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if versions:  # a model directory: its latest version, as TF Serving serves it.
        return max(versions, key=lambda p: int(p.name))
    raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {path} or its version directories.")


def load_metadata(export_dir) -> dict:
    """The export's `assets/keras_dino_export.json` as a dict (needs no TensorFlow).

    Example:

    ```python
    load_metadata("exports/dino/1")["model"]["arch"]   # 'vit_small'
    ```
    """
    path = _resolve_export_dir(export_dir) / "assets" / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an export of keras_dino.")
    return json.loads(path.read_text())


def _signature_defs(export_dir):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    result = {}
    for meta_graph in proto.meta_graphs:
        for name, sig in meta_graph.signature_def.items():
            if name.startswith("__"):
                continue

            def specs(infos):
                return {
                    key: {
                        "dtype": tf.dtypes.as_dtype(info.dtype).name,
                        "shape": None
                        if info.tensor_shape.unknown_rank
                        else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim],
                    }
                    for key, info in sorted(infos.items())
                }

            result[name] = {"inputs": specs(sig.inputs), "outputs": specs(sig.outputs)}
    return result


def _shape_text(shape):
    if shape is None:
        return "[?]"
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"


def _describe_lines(info) -> list[str]:
    meta, lines = info["metadata"] or {}, [f"SavedModel {info['path']}"]
    model = meta.get("model")
    if model:
        lines += [
            f"  model: {model['arch']} (embed dim {model['embed_dim']}, depth {model['depth']}, "
            f"{model['num_heads']} heads), patch size {model['patch_size']}, "
            f"{model['num_parameters']:,} parameters",
            f"  weights: {model['weights_source']}",
        ]
        exported = meta.get("exported_with", {})
        lines.append(
            f"  exported with keras_dino {exported.get('keras_dino')}, keras "
            f"{exported.get('keras')} ({exported.get('keras_backend')} backend), "
            f"tensorflow {exported.get('tensorflow')}, {exported.get('date')}"
        )
        lines += [f"  {key}: {meta['preprocessing'][key]}" for key in ("images", "image_bytes")]
    order = {name: i for i, name in enumerate(SIGNATURE_NAMES)}
    for name in sorted(info["signatures"], key=lambda n: (order.get(n, len(order)), n)):
        sig = info["signatures"][name]
        lines.append(f"  signature '{name}':")
        for kind in ("inputs", "outputs"):
            for key, spec in sig[kind].items():
                lines.append(
                    f"    {kind[:-1]:6} {key}: {spec['dtype']} {_shape_text(spec['shape'])}"
                )
        description = meta.get("signatures", {}).get(name, {}).get("description")
        if description:
            lines.append(f"    ({description})")
    return lines


def describe(export_dir, print_fn=print) -> dict:
    """Prints and returns what an export is: signatures, input specs, preprocessing, model.

    Reads the signatures from `saved_model.pb` and the provenance from the assets JSON,
    without loading the model. `export_dir` is a version directory or a model directory
    (then its latest version, the one TF Serving serves). Also `python -m
    keras_dino.export <export_dir>`.

    Args:
        export_dir: the export.
        print_fn: where the summary goes (`None`: nowhere).

    Returns:
        `{"path", "signatures": {name: {"inputs", "outputs"}}, "metadata"}`: the specs are
        `{"dtype", "shape"}` (None for the batch dimension); `metadata` is the assets JSON
        (None for a SavedModel not written by keras_dino).

    Example:

    ```python
    info = describe("exports/dino")      # prints a summary
    info["signatures"]["serve_bytes"]["inputs"]   # {'image_bytes': {'dtype': 'string', ...}}
    ```
    """
    path = _resolve_export_dir(export_dir)
    meta_path = path / "assets" / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    info = {"path": str(path), "signatures": _signature_defs(path), "metadata": metadata}
    if print_fn is not None:
        print_fn("\n".join(_describe_lines(info)))
    return info


# --------------------------------------------------------------------------- REST emulation
def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(
                f"a JSON object in a tensor value must be {{'b64': ...}}; got {value}."
            )
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_array(value, spec, name):
    """JSON value -> numpy array of the signature's dtype, as strictly as TF Serving."""
    if spec.dtype == "string":
        array = np.array(_decode_b64(value), dtype=object)
        flat = [v.encode() if isinstance(v, str) else v for v in array.reshape(-1)]
        if not all(isinstance(v, bytes) for v in flat):
            raise ValueError(f"input '{name}' is a string tensor; got non-string values.")
        result = np.empty(len(flat), dtype=object)
        result[:] = flat
        return result.reshape(array.shape)
    try:
        array = np.array(value)
    except ValueError as error:  # ragged lists
        raise ValueError(f"input '{name}' is ragged: {error}") from error
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError(f"input '{name}' must hold numbers of a rectangular shape.")
    dtype = np.dtype(spec.dtype.as_numpy_dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.dtype.kind == "f" and array.size and not np.all(array == np.round(array)):
            raise ValueError(f"input '{name}' is {spec.dtype.name}; got non-integer numbers.")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"input '{name}' is {spec.dtype.name}; got values out of range.")
    return array.astype(dtype)


def rest_request_to_tensors(body, input_specs) -> tuple[str, dict]:
    """Converts a TF Serving REST predict body to the signature's input tensors.

    Follows TF Serving's documented REST API: the row format `{"instances": [...]}` (one
    entry per example, an object of named inputs or, for a single-input signature, the
    value itself; examples are stacked along a new batch axis) and the columnar format
    `{"inputs": ...}` (the whole batch per input); `{"b64": "..."}` objects carry binary
    strings; numbers are converted to the signature's dtype. Meant for testing requests
    and clients without a running server.

    Args:
        body: the request, as a JSON string or the decoded object.
        input_specs: the signature's inputs, a dict of name -> `tf.TensorSpec`, or a
            loaded signature (its `structured_input_signature` is used).

    Returns:
        `(signature_name, {input name: numpy array})`.

    Example:

    ```python
    served = tf.saved_model.load(path)
    fn = served.signatures["serve_bytes"]
    name, inputs = rest_request_to_tensors(
        {"signature_name": "serve_bytes", "instances": [{"b64": encoded}]}, fn)
    outputs = fn(**inputs)
    ```
    """
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if hasattr(input_specs, "structured_input_signature"):
        input_specs = input_specs.structured_input_signature[1]
    names = sorted(input_specs)
    signature_name = body.get("signature_name", "serving_default")
    if ("instances" in body) == ("inputs" in body):
        raise ValueError('a predict request has exactly one of "instances" and "inputs".')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ValueError('"instances" must be a list.')
        columns = {name: [] for name in names}
        for instance in instances:
            is_named = isinstance(instance, dict) and set(instance) != {"b64"}
            if len(names) == 1 and not is_named:
                instance = {names[0]: instance}
            elif not is_named or set(instance) != set(names):
                raise ValueError(f"each instance must be an object with the inputs {names}.")
            for name in names:
                columns[name].append(instance[name])
        values = columns
    else:
        inputs = body["inputs"]
        if len(names) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(names)):
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict) or set(inputs) != set(names):
            raise ValueError(f'"inputs" must name the inputs {names}.')
        values = inputs
    return signature_name, {
        name: _to_array(values[name], input_specs[name], name) for name in names
    }


def rest_response(outputs, row_format: bool = True) -> dict:
    """A TF Serving REST predict response for signature outputs (name -> array).

    Row format requests get `{"predictions": [...]}` (per example: the value for a single
    output, else an object of named outputs); columnar ones get `{"outputs": ...}`.

    Example:

    ```python
    rest_response({"cls_embedding": np.zeros((2, 384))})["predictions"][0][:2]  # [0.0, 0.0]
    ```
    """
    outputs = {k: np.asarray(v).tolist() for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    names = list(outputs)
    batch = len(outputs[names[0]])
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    return {"predictions": [{name: outputs[name][i] for name in names} for i in range(batch)]}


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m keras_dino.export <export dir>")
    describe(sys.argv[1])
