"""SavedModel export of DINO backbones for plain TensorFlow and TF Serving.

`export_saved_model` writes a backbone (a `VisionTransformer`, `XCiT` or `ResNet`, the
teacher of a trained `DINO`, a `LinearProbe`, a preset name or a checkpoint file) as a
TensorFlow SavedModel in the TF Serving layout `<base_dir>/<model_name>/<version>/`, from
the TensorFlow backend or from the JAX backend (through jax2tf). Loading the export needs
neither keras nor keras_dino. Its signatures are those of `Inference`
(`keras_dino.export.inference`), the graph of every format:

* `serving_default`: `images` `[batch, S, S, 3]` (uint8 or float32 pixel values 0..255,
  normalised in the graph) -> the embedding: `cls_embedding` `[batch, E]` for a Vision
  Transformer or an XCiT (with `patch_tokens` `[batch, G*G, E]`, `cls_attention` and a
  linear classifier's `logits` on request), `embedding` `[batch, C]` (the pooled
  features) for a ResNet; `..._l2norm` when L2-normalised.
* `serve_bytes`: `image_bytes` `[batch]` encoded JPEG/PNG images of any size, decoded,
  resized and center-cropped in the graph as the official evaluation does
  (`options.eval_config`); same outputs.
* `attention` (Vision Transformers, XCiT): `images` -> `cls_attention`
  `[batch, heads, G, G]`, the last block's attention of the CLS token to the patches
  (XCiT: of its last class-attention block).

The backbone's `forward_features` and `get_last_selfattention` are kept as functions of
the SavedModel (on normalised images). The metadata is `keras_dino.export.metadata`'s.
"""

import json
import os
import pathlib
import shutil
import tempfile

import keras

from keras_dino.export import inference as inference_lib
from keras_dino.export import tf_serving
from keras_dino.export.metadata import METADATA_FILE, describe, make_metadata
from keras_dino.export.options import ExportOptions


def _version_dir(base_dir, options) -> pathlib.Path:
    version_dir = pathlib.Path(base_dir) / options.model_name / str(int(options.version))
    if version_dir.exists() and not options.overwrite:
        raise FileExistsError(
            f"{version_dir} already exists; pass overwrite=True to replace it, or export "
            "another version."
        )
    return version_dir


def _unless_empty(fn, x):
    """`fn(x)` in float32; an empty batch gives empty outputs (the backbones cannot take
    batch 0): those of one blank image of its size, cut to none."""
    import tensorflow as tf

    def run(images, keep):
        return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32)[:keep], fn(images))

    blank = tf.zeros(tf.concat([[1], tf.shape(x)[1:]], 0), x.dtype)
    return tf.cond(tf.shape(x)[0] > 0, lambda: run(x, tf.shape(x)[0]), lambda: run(blank, 0))


def _endpoints(archive, inference) -> dict:
    """The model's passes as functions of normalised images (through jax2tf under JAX):
    the backbone's own `forward_features` and `get_last_selfattention`, and `inference`'s
    forward, with and without the attention."""
    import tensorflow as tf

    size = inference.options.image_size
    if size is None and keras.backend.backend() != "tensorflow":
        raise ValueError("a SavedModel of any image size (image_size=None) needs the "
                         "TensorFlow backend; give image_size under JAX.")
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]
    # Inference only: no gradient functions (jax2tf's would be saved as unusable stubs).
    kwargs = {"jax2tf_kwargs": {"with_gradient": False}} if keras.backend.backend() == "jax" else {}
    backbone = inference.backbone
    functions = {"inference": lambda x: inference.forward(x, attention=False)}
    if inference.has_attention:
        functions["inference_with_attention"] = lambda x: inference.forward(x, attention=True)
    if hasattr(backbone, "forward_features") and inference.has_tokens:
        functions["forward_features"] = lambda x: backbone.forward_features(x, training=False)
    if inference.has_attention:
        functions["get_last_selfattention"] = backbone.get_last_selfattention
    return {name: archive.add_endpoint(name, fn, spec, **kwargs)
            for name, fn in functions.items()}


def _signatures(inference, endpoints):
    """`({signature name: tf.function}, {signature name: description for the metadata})`."""
    import tensorflow as tf

    from keras_dino.export import serving_inputs

    options = inference.options
    size, dtype, view = options.image_size, options.input_dtype, options.eval_config
    names = inference.output_names()
    with_attention = "cls_attention" in names
    forward = endpoints["inference_with_attention" if with_attention else "inference"]

    def check(signature):
        return lambda images: serving_inputs.check_images(images, signature, size, dtype)

    def outputs_of(x, forward, names):
        return inference.outputs(x, _unless_empty(forward, x), names)

    functions = {"serving_default": inference.function(
        names, forward=lambda x: _unless_empty(forward, x), check=check("serving_default"))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                 autograph=False)
    def serve_bytes(image_bytes):
        crops = serving_inputs.decode_batch(image_bytes, view.size, view.resize_size)
        return outputs_of(serving_inputs.normalize(crops, view), forward, names)

    functions["serve_bytes"] = serve_bytes
    outputs = inference.output_specs(names)
    images_input = {"images": {"dtype": dtype, "shape": [None, size, size, 3]}}
    what = ("CLS embedding" if inference.has_tokens else "pooled features") + (
        " (L2-normalised)" if options.l2_normalize else "") + (
        " and patch tokens" if options.include_patch_tokens else "") + (
        " and the CLS attention" if with_attention else "") + (
        " and linear-classifier logits" if inference.probe is not None else "")
    described = {
        "serving_default": {"inputs": images_input, "outputs": outputs,
                            "description": f"{what} of a batch of images"},
        "serve_bytes": {
            "inputs": {"image_bytes": {"dtype": "string", "shape": [None]}},
            "outputs": outputs if size else inference.output_specs(names, view.size),
            "description": "as serving_default, from encoded JPEG/PNG images of any size",
        },
    }
    if inference.has_attention:
        attention_names = inference.output_names(attention_only=True)
        functions["attention"] = inference.function(
            attention_names,
            forward=lambda x: _unless_empty(endpoints["inference_with_attention"], x),
            check=check("attention"))
        described["attention"] = {
            "inputs": images_input,
            "outputs": inference.output_specs(attention_names),
            "description": (
                "last block's attention of the CLS token to the patches, per head, "
                "at patch resolution (rows of patches first)"
            ),
        }
    return functions, described


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


def export_saved_model(model, base_dir, options: ExportOptions | None = None,
                       **kwargs) -> str:
    """Exports a DINO backbone (or a `LinearProbe`) as a SavedModel for TF and TF Serving.

    Works under the TensorFlow and the JAX Keras backends (JAX through jax2tf; the
    export then holds the model as an `XlaCallModule` op). The torch backend cannot
    export SavedModels.

    Args:
        model: a backbone (`VisionTransformer`, `XCiT`, `ResNet`), a `keras_dino.DINO`
            (its teacher backbone is exported), a `MultiCropWrapper` (its backbone), a
            `LinearProbe` (also `logits`), or a preset name / checkpoint path given to
            `keras_dino.load_pretrained` (with `load_kwargs`).
        base_dir: the model base directory of TF Serving; the export goes to
            `<base_dir>/<model_name>/<version>/`.
        options: an `ExportOptions`; `**kwargs` are its fields (`model_name`,
            `version`, `image_size` (224), `resize_size`, `input_dtype`,
            `l2_normalize`, `include_patch_tokens`, `include_attention`, `overwrite`,
            `models_config`, `serving_base_path`, `weights_source`, `load_kwargs`,
            `verbose`), overriding those of `options`.

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
    options = ExportOptions.for_format("saved_model", options, **kwargs)
    inference_lib.check_backend("saved_model")
    version_dir = _version_dir(base_dir, options)
    resolved, source, _, classifier = inference_lib.resolve(model, options.load_kwargs)
    inference = inference_lib.Inference(resolved, options)

    archive = keras.export.ExportArchive()
    archive.track(inference.backbone)
    if inference.probe is not None:  # its classifier (the probe itself is never built)
        archive.track(inference.probe.classifier)
    endpoints = _endpoints(archive, inference)
    functions, described = _signatures(inference, endpoints)
    metadata = make_metadata("saved_model", inference=inference, source=source,
                             classifier=classifier, signatures=described, runtime={})
    _write(version_dir, endpoints, functions, metadata, options.overwrite)
    if options.models_config:
        tf_serving.write_models_config(base_dir, options.model_name, options.serving_base_path)
    if options.verbose:
        describe(version_dir)
    return str(version_dir)
