"""Export of DINO backbones: SavedModel (TensorFlow, TF Serving), ONNX and LiteRT.

* `export(model, base_dir, format="saved_model"|"onnx"|"litert", options=None, **kwargs)`:
  the entry point; `format` picks the writer (`export_saved_model`, `export_onnx`,
  `export_litert`), all three taking one `ExportOptions` (or its fields as keywords).
* `OnnxFeatureExtractor`, `LiteRTFeatureExtractor`, `load_feature_extractor`: run the
  ONNX and LiteRT files from Python, with named errors (`ImageSizeError`,
  `ImageChannelsError`, `ImageDtypeError`) for images they cannot take.
* `describe`, `load_metadata`: what an export is (signatures, preprocessing, model), for
  any format: a SavedModel folder, an `.onnx` or a `.tflite` file.
* `rest_request_to_tensors`, `rest_response`: TF Serving's REST format, without a server
  (no TensorFlow needed).
* `write_models_config`: TF Serving's `models.config`.

Modules: `options` (`ExportOptions`), `inference` (the graph every format exports: the
model's own pass and the named outputs), `serving_inputs` (input checks, decoding and
normalisation in TensorFlow), `metadata` (the record of an export: written, read,
described), the writers `saved_model`, `onnx` and `litert`, `single_file` (where the
ONNX and LiteRT files go and how they are written), `tf_serving` (TF Serving's names,
versions and models.config), `rest`, `feature_extractors` (running the files).
"""

from keras_dino.export.feature_extractors import (
    ImageChannelsError,
    ImageDtypeError,
    ImageSizeError,
    InvalidImagesError,
    LiteRTFeatureExtractor,
    OnnxFeatureExtractor,
    load_feature_extractor,
)
from keras_dino.export.litert import export_litert
from keras_dino.export.metadata import (
    FORMAT,
    METADATA_FILE,
    SIGNATURE_NAMES,
    describe,
    load_metadata,
)
from keras_dino.export.onnx import export_onnx
from keras_dino.export.options import ExportOptions, check_format
from keras_dino.export.rest import rest_request_to_tensors, rest_response
from keras_dino.export.saved_model import export_saved_model
from keras_dino.export.tf_serving import config_blocks as _config_blocks  # noqa: F401
from keras_dino.export.tf_serving import write_models_config

FORMATS = {"saved_model": export_saved_model, "onnx": export_onnx, "litert": export_litert}


def export(model, base_dir, format: str = "saved_model", options: ExportOptions | None = None,
           **kwargs) -> str:
    """Exports `model`'s backbone in `format` (one of `FORMATS`) under `base_dir`.

    `saved_model`: the TF Serving layout `<base_dir>/<model_name>/<version>/`;
    `onnx`: `<base_dir>/<model_name>.onnx` (any height and width by default);
    `litert`: `<base_dir>/<model_name>.tflite` (fixed `image_size`). `options` (an
    `ExportOptions`) and `kwargs` (its fields) go to the writer (`export_saved_model`,
    `export_onnx`, `export_litert`). Returns the path.

    Example:

    ```python
    keras_dino.export.export("dino_vits16", "exports", format="saved_model")
    keras_dino.export.export("dino_vits16", "exports", format="onnx", float16=True)
    options = keras_dino.export.ExportOptions(image_size=224, include_patch_tokens=True)
    for fmt in keras_dino.export.FORMATS:  # one options object, every format
        keras_dino.export.export("dino_vits16", "exports", format=fmt, options=options)
    ```
    """
    check_format(format)
    return FORMATS[format](model, base_dir, options, **kwargs)


__all__ = [
    "FORMAT",
    "FORMATS",
    "ExportOptions",
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
