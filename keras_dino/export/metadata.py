"""What an export is, for every format: its metadata record, and how to read it back.

Every export records its input specs, output names, evaluation view (`EvalConfig`),
architecture, weights source and versions (like timm's `pretrained_cfg`), so that a
person or a client without keras_dino knows how to feed it: a SavedModel in
`assets/keras_dino_export.json`, an ONNX file in its `metadata_props`, a LiteRT file in
a TFLite metadata buffer, each single file with a copy beside it (`<file>.json`).
`make_metadata` writes the record of any format; `load_metadata` and `describe` read
any export (a SavedModel folder, an `.onnx` or a `.tflite` file) without loading it.
"""

import datetime
import json
import pathlib

import keras

from keras_dino.version import __version__

METADATA_FILE = "keras_dino_export.json"
METADATA_KEY = "keras_dino_export"  # the name in an ONNX or LiteRT file
FORMATS = {
    "saved_model": "keras_dino.saved_model/1",
    "onnx": "keras_dino.onnx/1",
    "litert": "keras_dino.litert/1",
}
FORMAT = FORMATS["saved_model"]
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}  # the single-file formats
SIGNATURE_NAMES = ("serving_default", "serve_bytes", "attention")
# Names of the dynamic dimensions after the batch, per input or output.
_DYNAMIC_DIMS = {"images": ("height", "width"), "patch_tokens": ("patches",),
                 "cls_attention": ("grid_h", "grid_w")}


def model_description(backbone, weights_source) -> dict:
    """The `model` entry of the metadata: class, architecture and where its weights come from.

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> description = model_description(resnet("resnet18"), "random")
    >>> description["arch"], description["embed_dim"]
    ('resnet18', 512)
    """
    from keras_dino.models.resnet import ResNet, resnet_name
    from keras_dino.models.vision_transformer import ARCHITECTURES
    from keras_dino.models.xcit import XCITS, XCiT

    config = backbone.get_config()
    model = {"class": type(backbone).__name__, "embed_dim": backbone.embed_dim}
    if isinstance(backbone, ResNet):
        shape = {k: config[k] for k in ("block", "layers", "width_per_group", "expansion",
                                        "stem_width", "stage_widths")}
        model.update(arch=resnet_name(backbone), **shape)
    elif isinstance(backbone, XCiT):
        keys = ("patch_size", "embed_dim", "depth", "num_heads")
        arch = next((name for name, c in XCITS.items()
                     if all(c[k] == config[k] for k in keys)), "custom")
        model.update(arch=arch, patch_size=backbone.patch_size, depth=backbone.depth,
                     num_heads=backbone.num_heads, cls_attn_layers=backbone.cls_attn_layers)
    else:
        arch = next((name for name, c in ARCHITECTURES.items()
                     if (backbone.embed_dim, backbone.depth, backbone.num_heads)
                     == (c["embed_dim"], c["depth"], c["num_heads"])), "custom")
        model.update(arch=arch, patch_size=backbone.patch_size, depth=backbone.depth,
                     num_heads=backbone.num_heads, trained_img_size=backbone.img_size,
                     num_register_tokens=backbone.num_register_tokens)
    if not backbone.built:
        backbone.build((None, None, None, 3))
    model.update(num_parameters=int(backbone.count_params()), weights_source=weights_source)
    return model


def make_metadata(fmt, *, inference, source, classifier, signatures, runtime) -> dict:
    """The metadata of a `fmt` export of `inference` (`keras_dino.export.inference`).

    The preprocessing is `inference.options.eval_config`'s own record (`EvalConfig.to_dict`),
    with the words a person needs; `runtime` names the converter's versions.
    """
    import tensorflow as tf

    options = inference.options
    view = options.eval_config
    record = view.to_dict()
    size = options.image_size
    shape = f"{size}x{size}" if size else "of any height and width (at least one patch)"
    metadata = {
        "format": FORMATS[fmt],
        "model_name": options.model_name,
        "version": int(options.version),
        "model": model_description(inference.backbone, options.weights_source or source),
        "image_size": size,
        "preprocessing": {
            "images": (
                f"raw RGB pixel values 0..255 as {options.input_dtype}, NHWC, {shape}; "
                "normalised in the graph: (x / 255 - mean) / std"
            ),
            "image_bytes": (
                "a JPEG (libjpeg's accurate IDCT, as PIL) or PNG decoded to RGB; resize so that "
                f"the shorter side is {view.resize_size} (the other truncated), bicubic with "
                "antialiasing, rounded and clipped to 0..255; center crop "
                f"{view.size}x{view.size} (offsets rounded half to even); then normalised "
                "as images"
            ),
            "resize_size": view.resize_size if size else None,
            "mean": record["mean"],
            "std": record["std"],
            "eval_config": record,
            "input_name": "images",
            "input_dtype": options.input_dtype,
            "layout": "NHWC",
            "value_range": [0, 255],
        },
        "signatures": signatures,
        "exported_with": {
            "keras_dino": __version__,
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "tensorflow": tf.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **runtime,
        },
    }
    if fmt != "saved_model":
        metadata["preprocessing"]["image_bytes"] = (
            "not in this export (no string input): decode to RGB, resize and center crop "
            "before, e.g. with keras_dino.preprocessing.EvalConfig(...).load (official: "
            f"shorter side {view.resize_size if size else 'S * 256 / 224'}, bicubic, center "
            "crop)"
        )
        metadata["weights_dtype"] = "float16" if options.float16 else "float32"
    if inference.grid is not None:
        metadata["patch_grid"] = list(inference.grid)
    if classifier is not None:
        metadata["classifier"] = classifier
    if keras.backend.backend() == "jax":
        import jax

        metadata["exported_with"]["jax"] = jax.__version__
    return metadata


def tflite_schema():
    """The TFLite flatbuffer schema module, from ai-edge-litert or TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def read_tflite_metadata(data: bytes):
    """The `keras_dino_export` metadata (a dict) of a TFLite file's bytes, or None."""
    model = tflite_schema().Model.GetRootAs(bytearray(data), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == METADATA_KEY:
            buffer = model.Buffers(entry.Buffer())
            return json.loads(bytes(buffer.DataAsNumpy()).decode())
    return None


def sidecar_path(path) -> pathlib.Path:
    """`<file>.json`, the copy of a single-file export's metadata beside it."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def is_file_export(path) -> bool:
    path = pathlib.Path(path)
    return path.suffix in SUFFIXES.values() and path.is_file()


def _embedded_metadata(path: pathlib.Path):
    """The metadata stored in the file itself, or None (reader package missing)."""
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            return None
        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
    try:
        return read_tflite_metadata(path.read_bytes())
    except ImportError:
        return None


def _resolve_export_dir(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give an export, a SavedModel folder "
                                "(or the model folder of its versions), a .onnx or a .tflite "
                                "file.")
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.glob("*") if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if versions:  # a model directory: its latest version, as TF Serving serves it.
        return max(versions, key=lambda p: int(p.name))
    raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {path} or its version directories.")


def load_metadata(export_dir) -> dict:
    """The metadata of an export as a dict (needs no TensorFlow).

    `export_dir`: a SavedModel (version or model directory: its
    `assets/keras_dino_export.json`), or an `.onnx` / `.tflite` file (the metadata in
    the file, else its `.json` copy beside it).

    Example:

    ```python
    load_metadata("exports/dino/1")["model"]["arch"]   # 'vit_small'
    load_metadata("exports/dino.onnx")["format"]       # 'keras_dino.onnx/1'
    ```
    """
    path = pathlib.Path(export_dir)
    if is_file_export(path):
        embedded = _embedded_metadata(path)
        if embedded is not None:
            return embedded
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            return json.loads(sidecar.read_text())
        raise FileNotFoundError(f"{path} holds no keras_dino metadata and has no "
                                f"{sidecar.name}: not an export of keras_dino.")
    meta_path = _resolve_export_dir(path) / "assets" / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not an export of keras_dino.")
    return json.loads(meta_path.read_text())


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


def _shape_text(shape, names=()):
    """`[batch, 224, 224, 3]`; other dynamic dimensions by name (`height`, `grid_h`)."""
    if shape is None:
        return "[?]"
    names = iter(names)
    return "[" + ", ".join("batch" if i == 0 and d is None else str(d) if d is not None
                           else next(names, "?") for i, d in enumerate(shape)) + "]"


def _describe_lines(info) -> list[str]:
    meta, lines = info["metadata"] or {}, [f"SavedModel {info['path']}"]
    if meta.get("format") in (FORMATS["onnx"], FORMATS["litert"]):
        kind = "ONNX model" if meta["format"] == FORMATS["onnx"] else "LiteRT model"
        lines = [f"{kind} {info['path']} ({meta.get('weights_dtype', 'float32')} weights)"]
    model = meta.get("model")
    if model:
        if "patch_size" in model:
            registers = model.get("num_register_tokens")
            shape = (f"embed dim {model['embed_dim']}, depth {model['depth']}, "
                     f"{model['num_heads']} heads), patch size {model['patch_size']}"
                     + (f", {registers} register tokens" if registers else ""))
        else:
            shape = (f"{model['block']} blocks {model['layers']}, "
                     f"{model['embed_dim']} features)")
        lines += [
            f"  model: {model['arch']} ({shape}, {model['num_parameters']:,} parameters",
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
                shape = _shape_text(spec["shape"], _DYNAMIC_DIMS.get(key, ()))
                lines.append(f"    {kind[:-1]:6} {key}: {spec['dtype']} {shape}")
        description = meta.get("signatures", {}).get(name, {}).get("description")
        if description:
            lines.append(f"    ({description})")
    return lines


def describe(export_dir, print_fn=print) -> dict:
    """Prints and returns what an export is: signatures, input specs, preprocessing, model.

    Any format, without loading the model: `export_dir` is a SavedModel version directory
    or model directory (then its latest version, the one TF Serving serves; signatures
    read from `saved_model.pb`), or an `.onnx` / `.tflite` file (signatures from its
    metadata). Also `python -m keras_dino.export <export>`.

    Args:
        export_dir: the export.
        print_fn: where the summary goes (`None`: nowhere).

    Returns:
        `{"path", "signatures": {name: {"inputs", "outputs"}}, "metadata"}`: the specs are
        `{"dtype", "shape"}` (None for the batch dimension); `metadata` is the export's
        (None for a SavedModel not written by keras_dino).

    Example:

    ```python
    info = describe("exports/dino")      # prints a summary
    info["signatures"]["serve_bytes"]["inputs"]   # {'image_bytes': {'dtype': 'string', ...}}
    ```
    """
    path = pathlib.Path(export_dir)
    if is_file_export(path):
        metadata = load_metadata(path)
        signatures = {name: {"inputs": sig["inputs"], "outputs": sig["outputs"]}
                      for name, sig in metadata.get("signatures", {}).items()}
    else:
        path = _resolve_export_dir(path)
        meta_path = path / "assets" / METADATA_FILE
        metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        signatures = _signature_defs(path)
    info = {"path": str(path), "signatures": signatures, "metadata": metadata}
    if print_fn is not None:
        print_fn("\n".join(_describe_lines(info)))
    return info
