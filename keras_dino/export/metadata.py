"""What an export is: its metadata file, and `describe` / `load_metadata` to read it back.

Every export records, in `assets/keras_dino_export.json`, its input specs, output names,
preprocessing, architecture, weights source and versions (like timm's `pretrained_cfg`),
so that a person or a client without keras_dino knows how to feed it.
"""

import datetime
import json
import pathlib

import keras

from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from keras_dino.version import __version__

METADATA_FILE = "keras_dino_export.json"
FORMAT = "keras_dino.saved_model/1"
SIGNATURE_NAMES = ("serving_default", "serve_bytes", "attention")


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
                     num_heads=backbone.num_heads, trained_img_size=backbone.img_size)
    if not backbone.built:
        backbone.build((None, None, None, 3))
    model.update(num_parameters=int(backbone.count_params()), weights_source=weights_source)
    return model


def build_metadata(*, model_name, version, model, image_size, grid, input_dtype, resize_size,
                   signatures, tensorflow_version) -> dict:
    """The metadata dict of an export (written to `assets/keras_dino_export.json`)."""
    metadata = {
        "format": FORMAT,
        "model_name": model_name,
        "version": version,
        "model": model,
        "image_size": image_size,
        "preprocessing": {
            "images": (
                f"raw RGB pixel values 0..255 as {input_dtype}, NHWC, already "
                f"{image_size}x{image_size}; normalised in the graph: (x / 255 - mean) / std"
            ),
            "image_bytes": (
                "a JPEG (libjpeg's accurate IDCT, as PIL) or PNG decoded to RGB; resize so that "
                "the shorter "
                f"side is {resize_size} (the other truncated), bicubic with antialiasing, "
                f"rounded and clipped to 0..255; center crop {image_size}x{image_size} "
                "(offsets rounded half to even); then normalised as images"
            ),
            "resize_size": resize_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "signatures": signatures,
        "exported_with": {
            "keras_dino": __version__,
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "tensorflow": tensorflow_version,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if grid is not None:
        metadata["patch_grid"] = [grid, grid]
    if keras.backend.backend() == "jax":
        import jax

        metadata["exported_with"]["jax"] = jax.__version__
    return metadata


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

    `export_dir` may also be an `.onnx` or `.tflite` export (its embedded metadata).

    Example:

    ```python
    load_metadata("exports/dino/1")["model"]["arch"]   # 'vit_small'
    ```
    """
    from keras_dino.export import files

    if files.is_file_export(export_dir):  # an .onnx or .tflite export
        return files.load_file_metadata(export_dir)
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
        if "patch_size" in model:
            shape = (f"embed dim {model['embed_dim']}, depth {model['depth']}, "
                     f"{model['num_heads']} heads), patch size {model['patch_size']}")
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
    (then its latest version, the one TF Serving serves), or an `.onnx` / `.tflite` file
    (described from its metadata). Also `python -m keras_dino.export <export_dir>`.

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
    from keras_dino.export import files

    if files.is_file_export(export_dir):  # an .onnx or .tflite export
        return files.describe_file(export_dir, print_fn)
    path = _resolve_export_dir(export_dir)
    meta_path = path / "assets" / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    info = {"path": str(path), "signatures": _signature_defs(path), "metadata": metadata}
    if print_fn is not None:
        print_fn("\n".join(_describe_lines(info)))
    return info
