"""What the single-file exports (ONNX, LiteRT) share: their path, metadata and sidecar.

An export of `model_name` in `base_dir` is one file, `<base_dir>/<model_name>.onnx` or
`<base_dir>/<model_name>.tflite`, holding its metadata (ONNX `metadata_props`, a TFLite
metadata buffer) and with a copy of it beside it, `<file>.json`, readable without any
package. The metadata has the keys of the SavedModel's (`keras_dino.export.metadata`),
with `format` `keras_dino.onnx/1` or `keras_dino.litert/1`.
"""

import json
import os
import pathlib
import tempfile

from keras_dino.export import layout
from keras_dino.export.metadata import build_metadata, model_description

METADATA_KEY = "keras_dino_export"
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
FORMATS = {"onnx": "keras_dino.onnx/1", "litert": "keras_dino.litert/1"}
INPUT_DTYPES = ("uint8", "float32")


def target_path(base_dir, model_name, fmt, overwrite) -> pathlib.Path:
    """`<base_dir>/<model_name><suffix>`, refused if it exists and not `overwrite`."""
    layout.check_model_name(model_name)
    path = pathlib.Path(base_dir) / f"{model_name}{SUFFIXES[fmt]}"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    return path


def resolve(model, load_kwargs):
    """`(model to export, weights source, backbone, classifier description or None)`."""
    from keras_dino.checkpoints.pretrained import resolve_backbone
    from keras_dino.evaluation.linear import LinearProbe

    if isinstance(model, LinearProbe):
        if load_kwargs:
            raise ValueError("load_kwargs only applies when `model` is a preset name or a "
                             "file path.")
        _, source = resolve_backbone(model.backbone)
        classifier = {"num_labels": int(model.num_labels),
                      "n_last_blocks": int(model.n_last_blocks),
                      "avgpool_patchtokens": bool(model.avgpool_patchtokens)}
        source = source.replace("in-memory", "in-memory LinearProbe of")
        return model, source, model.backbone, classifier
    backbone, source = resolve_backbone(model, **(load_kwargs or {}))
    return backbone, source, backbone, None


def check_arguments(backbone, image_size, input_dtype, fixed_size: bool):
    """Checks the export's arguments; returns the patch grid side (or None)."""
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}; got {input_dtype!r}.")
    if image_size is None:
        if fixed_size:
            raise ValueError("a LiteRT export has a fixed image size: give image_size.")
        return None
    patch = getattr(backbone, "patch_size", None)
    if patch and image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}.")
    return image_size // patch if patch else None


def make_metadata(fmt, *, model_name, version, model, backbone, source, image_size, grid,
                  input_dtype, outputs, float16, runtime, classifier=None) -> dict:
    """The metadata of an ONNX or LiteRT export: the SavedModel's keys, this file's values."""
    import tensorflow as tf

    size = (f"{image_size}x{image_size}" if image_size
            else "of any height and width (at least one patch)")
    shape = [None, image_size, image_size, 3]
    what = "features" if classifier is None else "features and linear-classifier logits"
    signatures = {
        "serving_default": {
            "inputs": {"images": {"dtype": input_dtype, "shape": shape}},
            "outputs": outputs,
            "description": f"{what} of a batch of images",
        }
    }
    resize_size = round(image_size * 256 / 224) if image_size else None
    metadata = build_metadata(
        model_name=model_name, version=int(layout.check_version(version)),
        model=model_description(backbone, source), image_size=image_size, grid=grid,
        input_dtype=input_dtype, resize_size=resize_size, signatures=signatures,
        tensorflow_version=tf.__version__,
    )
    metadata["format"] = FORMATS[fmt]
    metadata["preprocessing"].update(
        images=(f"raw RGB pixel values 0..255 as {input_dtype}, NHWC, {size}; normalised in "
                "the graph: (x / 255 - mean) / std"),
        image_bytes=("not in this export (no string input): decode to RGB, resize and center "
                     "crop before, e.g. with keras_dino.preprocess_images (official: shorter "
                     f"side {resize_size or 'S * 256 / 224'}, bicubic, center crop)"),
        input_name="images",
        input_dtype=input_dtype,
        layout="NHWC",
        value_range=[0, 255],
    )
    metadata["weights_dtype"] = "float16" if float16 else "float32"
    if classifier is not None:
        metadata["classifier"] = classifier
    metadata["exported_with"].update(runtime)
    return metadata


def write_atomically(path: pathlib.Path, data: bytes, metadata: dict) -> None:
    """Writes the file and its `.json` sidecar through temporary names, then renames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_path(path)
    pairs = [(path, data), (sidecar, (json.dumps(metadata, indent=2) + "\n").encode())]
    for target, content in pairs:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, target)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise


def sidecar_path(path) -> pathlib.Path:
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
    from keras_dino.export.litert import read_tflite_metadata

    return read_tflite_metadata(path.read_bytes())


def load_file_metadata(path) -> dict:
    """The metadata of an ONNX or LiteRT export: the file's own, else its `.json` sidecar."""
    path = pathlib.Path(path)
    embedded = _embedded_metadata(path)
    if embedded is not None:
        return embedded
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    raise FileNotFoundError(f"{path} holds no keras_dino metadata and has no {sidecar.name}: "
                            "not an export of keras_dino.")


_DYNAMIC_DIMS = {"images": ["height", "width"], "patch_tokens": ["patches"],
                 "cls_attention": ["grid_h", "grid_w"]}


def _named(shape, key):
    """The batch stays None (printed `batch`); other dynamic dimensions get names."""
    names = iter(_DYNAMIC_DIMS.get(key, []))
    return [d if d is not None or i == 0 else next(names, "?") for i, d in enumerate(shape)]


def describe_file(path, print_fn=print) -> dict:
    """`describe` for an ONNX or LiteRT export (from its metadata)."""
    from keras_dino.export.metadata import _describe_lines

    metadata = load_file_metadata(path)
    signatures = {name: {"inputs": sig["inputs"], "outputs": sig["outputs"]}
                  for name, sig in metadata.get("signatures", {}).items()}
    info = {"path": str(path), "signatures": signatures, "metadata": metadata}
    if print_fn is not None:
        named = {name: {kind: {key: dict(spec, shape=_named(spec["shape"], key))
                               for key, spec in sig[kind].items()}
                        for kind in ("inputs", "outputs")}
                 for name, sig in signatures.items()}
        kind = "ONNX model" if pathlib.Path(path).suffix == ".onnx" else "LiteRT model"
        lines = _describe_lines(dict(info, signatures=named))
        lines[0] = f"{kind} {path} ({metadata.get('weights_dtype', 'float32')} weights)"
        print_fn("\n".join(lines))
    return info
