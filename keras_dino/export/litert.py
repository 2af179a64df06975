"""LiteRT (TFLite) export of DINO backbones (and of their linear classifiers).

`export_litert` writes `<base_dir>/<model_name>.tflite` with one signature,
`serving_default`: input `images` `[batch, S, S, 3]` (raw RGB pixels 0..255, uint8 or
float32, normalised in the graph, as the SavedModel's), a dynamic batch and a fixed image
size `S`; outputs named as the SavedModel's (`cls_embedding`, `patch_tokens`,
`cls_attention`, `logits`). Converted by TensorFlow's TFLite converter from a SavedModel
of that one function (Keras' own `format="litert"` exports `call` only); the metadata is
stored in the file as the TFLite metadata buffer `keras_dino_export` (JSON). Run it with
the LiteRT interpreter (`ai-edge-litert`, in the `export` extra) or `tf.lite.Interpreter`.
"""

import json
import tempfile

from keras_dino.export import single_file
from keras_dino.export.metadata import METADATA_KEY, tflite_schema
from keras_dino.export.options import ExportOptions


def add_tflite_metadata(data: bytes, metadata: dict) -> bytes:
    """The TFLite file with `metadata` (JSON) as its `keras_dino_export` metadata buffer."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    schema = tflite_schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.decode() if isinstance(m.name, bytes) else m.name)
                      != METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(function, float16: bool = False) -> bytes:
    """A `tf.function` with a fixed-size input signature -> TFLite bytes (its signature
    `serving_default`, inputs and outputs named as the function's)."""
    import tensorflow as tf

    concrete = function.get_concrete_function()
    with tempfile.TemporaryDirectory(prefix="keras_dino_litert_") as tmp:
        root = tf.Module()
        root.model_variables = list(concrete.variables)
        root.serving_default = function
        tf.saved_model.save(root, tmp, signatures={"serving_default": concrete})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if float16:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def export_litert(model, base_dir, options: ExportOptions | None = None, **kwargs) -> str:
    """Exports a DINO backbone (or a `LinearProbe`) as a LiteRT (TFLite) model.

    Needs the TensorFlow Keras backend (the TFLite converter is TensorFlow's).

    Args:
        model: as `export_onnx`.
        base_dir: the folder of the file `<model_name>.tflite` (and its `.json` sidecar).
        options: an `ExportOptions`; `**kwargs` are its fields, as `export_onnx`'s but
            `opset`. `image_size` (default 224) is fixed: LiteRT resizes only the batch.
            `float16`: the converter's float16 quantization (half the file, dequantized
            to float32 on CPU).

    Returns:
        The path of the `.tflite` file, as a string.

    Example:

    ```python
    path = keras_dino.export.export("dino_vits16", "exports", format="litert")
    extractor = keras_dino.export.LiteRTFeatureExtractor(path)
    extractor(uint8_images_224)["cls_embedding"]      # (B, 384)
    ```
    """
    options = ExportOptions.for_format("litert", options, **kwargs)

    def convert_with_metadata(function, output_names, metadata_for):
        import tensorflow as tf

        data = convert(function, float16=options.float16)
        metadata = metadata_for({"tflite_converter": tf.__version__})
        return add_tflite_metadata(data, metadata), metadata

    return single_file.export_file("litert", model, base_dir, options, convert_with_metadata)
