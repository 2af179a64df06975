"""Export of DINO backbones: SavedModel (TensorFlow, TF Serving), ONNX and LiteRT.

* `export(model, base_dir, format="saved_model"|"onnx"|"litert", ...)`: the entry point;
  `format` picks the writer (`export_saved_model`, `export_onnx`, `export_litert`).
* `OnnxFeatureExtractor`, `LiteRTFeatureExtractor`, `load_feature_extractor`: run the
  ONNX and LiteRT files from Python, with named errors (`ImageSizeError`,
  `ImageChannelsError`, `ImageDtypeError`) for images they cannot take.
* `describe`, `load_metadata`: what an export is (signatures, preprocessing, model), for
  a SavedModel folder or an `.onnx` / `.tflite` file.
* `rest_request_to_tensors`, `rest_response`: TF Serving's REST format, without a server
  (no TensorFlow needed).
* `write_models_config`: TF Serving's `models.config`.

Modules: `saved_model` (the writer), `signatures` and `graph` (the serving functions),
`metadata`, `layout` (directories and models.config), `rest`; `onnx` and `litert` (the
single-file writers), `portable` (their graph: dynamic height and width), `files` (their
paths and metadata), `runtime` (the feature extractors).
"""

from keras_dino.export.layout import config_blocks as _config_blocks  # noqa: F401
from keras_dino.export.layout import write_models_config
from keras_dino.export.litert import export_litert
from keras_dino.export.metadata import (
    FORMAT,
    METADATA_FILE,
    SIGNATURE_NAMES,
    describe,
    load_metadata,
)
from keras_dino.export.onnx import export_onnx
from keras_dino.export.rest import rest_request_to_tensors, rest_response
from keras_dino.export.runtime import (
    ImageChannelsError,
    ImageDtypeError,
    ImageSizeError,
    InvalidImagesError,
    LiteRTFeatureExtractor,
    OnnxFeatureExtractor,
    load_feature_extractor,
)
from keras_dino.export.saved_model import export_saved_model

FORMATS = {"saved_model": export_saved_model, "onnx": export_onnx, "litert": export_litert}


def export(model, base_dir, format: str = "saved_model", **kwargs) -> str:
    """Exports `model`'s backbone in `format` (one of `FORMATS`) under `base_dir`.

    `saved_model`: the TF Serving layout `<base_dir>/<model_name>/<version>/`;
    `onnx`: `<base_dir>/<model_name>.onnx` (any height and width by default);
    `litert`: `<base_dir>/<model_name>.tflite` (fixed `image_size`). `kwargs` go to the
    writer (`export_saved_model`, `export_onnx`, `export_litert`). Returns the path.

    Example:

    ```python
    keras_dino.export.export("dino_vits16", "exports", format="saved_model")
    keras_dino.export.export("dino_vits16", "exports", format="onnx", float16=True)
    ```
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}.")
    return FORMATS[format](model, base_dir, **kwargs)


__all__ = [
    "FORMAT",
    "FORMATS",
    "METADATA_FILE",
    "SIGNATURE_NAMES",
    "ImageChannelsError",
    "ImageDtypeError",
    "ImageSizeError",
    "InvalidImagesError",
    "LiteRTFeatureExtractor",
    "OnnxFeatureExtractor",
    "describe",
    "export",
    "export_litert",
    "export_onnx",
    "export_saved_model",
    "load_feature_extractor",
    "load_metadata",
    "rest_request_to_tensors",
    "rest_response",
    "write_models_config",
]
