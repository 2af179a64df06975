"""Export of DINO backbones: SavedModel for TensorFlow and TF Serving, and its tools.

* `export(model, base_dir, format="saved_model", ...)`: the entry point; `format` picks
  the writer (`export_saved_model` today; the seam for other formats).
* `describe`, `load_metadata`: what an export is (signatures, preprocessing, model).
* `rest_request_to_tensors`, `rest_response`: TF Serving's REST format, without a server
  (no TensorFlow needed).
* `write_models_config`: TF Serving's `models.config`.

Modules: `saved_model` (the writer), `signatures` and `graph` (the serving functions),
`metadata`, `layout` (directories and models.config), `rest`.
"""

from keras_dino.export.layout import config_blocks as _config_blocks  # noqa: F401
from keras_dino.export.layout import write_models_config
from keras_dino.export.metadata import (
    FORMAT,
    METADATA_FILE,
    SIGNATURE_NAMES,
    describe,
    load_metadata,
)
from keras_dino.export.rest import rest_request_to_tensors, rest_response
from keras_dino.export.saved_model import export_saved_model

FORMATS = {"saved_model": export_saved_model}


def export(model, base_dir, format: str = "saved_model", **kwargs) -> str:
    """Exports `model`'s backbone in `format` (one of `FORMATS`) under `base_dir`.

    Example:

    ```python
    keras_dino.export.export("dino_vits16", "exports", format="saved_model")
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
    "describe",
    "export",
    "export_saved_model",
    "load_metadata",
    "rest_request_to_tensors",
    "rest_response",
    "write_models_config",
]
