"""SavedModel export of DINO backbones for plain TensorFlow and TF Serving.

`export_saved_model` writes a backbone (a `VisionTransformer` or a `ResNet`, the teacher of
a trained `DINO`, a preset name or a checkpoint file) as a TensorFlow SavedModel in the TF
Serving layout `<base_dir>/<model_name>/<version>/`, from the TensorFlow backend or from
the JAX backend (through jax2tf). Loading the export needs neither keras nor keras_dino.
The signatures are described in `keras_dino.export.signatures`, the metadata in
`keras_dino.export.metadata`.
"""

import json
import os
import pathlib
import shutil
import tempfile

import keras

from keras_dino.export import layout
from keras_dino.export.metadata import METADATA_FILE, build_metadata, describe, model_description

INPUT_DTYPES = ("uint8", "float32")


def _check_backend():
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise RuntimeError(
            f"export_saved_model needs the TensorFlow or JAX Keras backend (this is '{backend}'): "
            "Keras can only write SavedModels from torch through torch_xla. Save the weights "
            "(`model.save_weights('backbone.weights.h5')`) and export from a process started "
            "with KERAS_BACKEND=tensorflow."
        )


def _version_dir(base_dir, model_name, version, overwrite) -> pathlib.Path:
    layout.check_model_name(model_name)
    version_dir = pathlib.Path(base_dir) / model_name / str(layout.check_version(version))
    if version_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{version_dir} already exists; pass overwrite=True to replace it, or export "
            "another version."
        )
    return version_dir


def _sizes(backbone, image_size, resize_size) -> tuple[int, int | None]:
    """`(resize_size, patch grid side or None)`, checked."""
    patch = getattr(backbone, "patch_size", None)
    if patch and image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}.")
    resize_size = int(resize_size or round(image_size * 256 / 224))
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} is smaller than image_size {image_size}.")
    return resize_size, (image_size // patch if patch else None)


def _write(version_dir, endpoints, functions, metadata, overwrite):
    """Writes into a hidden directory (TF Serving loads numeric names only), then renames."""
    import tensorflow as tf

    model_dir = version_dir.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version_dir.name}-", dir=model_dir))
    try:
        meta_dir = staging / "_metadata"
        meta_dir.mkdir()
        meta_path = meta_dir / METADATA_FILE
        meta_path.write_text(json.dumps(metadata, indent=2) + "\n")
        root = tf.Module()
        variables, seen = [], set()
        for fn in endpoints.values():
            for v in fn.get_concrete_function().variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        root.model_variables = variables
        for name, fn in {**endpoints, **functions}.items():
            setattr(root, name, fn)
        root.metadata_file = tf.saved_model.Asset(str(meta_path))
        out_dir = staging / "saved_model"
        signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}
        tf.saved_model.save(root, str(out_dir), signatures=signatures)
        old = None
        if version_dir.exists():
            if not overwrite:  # written meanwhile by another process
                raise FileExistsError(f"{version_dir} appeared during the export.")
            old = model_dir / f".old-{version_dir.name}-{os.getpid()}"
            os.replace(version_dir, old)
        os.replace(out_dir, version_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
        model: a backbone (`VisionTransformer`, `ResNet`), a `keras_dino.DINO` (its
            teacher backbone is exported), a `MultiCropWrapper` (its backbone), or a preset
            name / checkpoint path given to `keras_dino.load_pretrained` (with
            `load_kwargs`).
        base_dir: the model base directory of TF Serving; the export goes to
            `<base_dir>/<model_name>/<version>/`.
        model_name: the name TF Serving serves the model under.
        version: the version directory (a non-negative integer).
        image_size: the square input resolution `S` of the `images` inputs and of the
            center crop of `serve_bytes`; for a ViT, a multiple of the patch size.
        input_dtype: `"uint8"` or `"float32"`: the dtype of the `images` inputs. Either
            way they are raw RGB pixel values in 0..255, normalised in the graph.
        l2_normalize: L2-normalise the embedding; its output is then named
            `cls_embedding_l2norm` (`embedding_l2norm` for a ResNet).
        include_patch_tokens: (ViTs) also return the normalised patch tokens
            `patch_tokens` `[batch, G*G, E]` from `serving_default` and `serve_bytes`.
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
    from keras_dino.checkpoints.pretrained import resolve_backbone

    _check_backend()
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}; got {input_dtype!r}.")
    version_dir = _version_dir(base_dir, model_name, version, overwrite)
    backbone, source = resolve_backbone(model, **(load_kwargs or {}))
    resize_size, grid = _sizes(backbone, image_size, resize_size)
    if not backbone.built:
        backbone.build((None, image_size, image_size, 3))

    import tensorflow as tf

    from keras_dino.export import signatures

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    endpoints = signatures.add_endpoints(archive, backbone, image_size)
    functions, described = signatures.serving_functions(
        backbone, endpoints, image_size=image_size, input_dtype=input_dtype,
        resize_size=resize_size, l2_normalize=l2_normalize,
        include_patch_tokens=include_patch_tokens,
    )
    metadata = build_metadata(
        model_name=model_name, version=int(version_dir.name),
        model=model_description(backbone, weights_source or source), image_size=image_size,
        grid=grid, input_dtype=input_dtype, resize_size=resize_size, signatures=described,
        tensorflow_version=tf.__version__,
    )
    _write(version_dir, endpoints, functions, metadata, overwrite)
    if models_config:
        layout.write_models_config(base_dir, model_name, serving_base_path)
    if verbose:
        describe(version_dir)
    return str(version_dir)
