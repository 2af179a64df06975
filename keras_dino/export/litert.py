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

from keras_dino.export import files


def _schema():
    """The TFLite flatbuffer schema module, from ai-edge-litert or TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def read_tflite_metadata(data: bytes):
    """The `keras_dino_export` metadata (a dict) of a TFLite file's bytes, or None."""
    schema = _schema()
    model = schema.Model.GetRootAs(bytearray(data), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == files.METADATA_KEY:
            buffer = model.Buffers(entry.Buffer())
            return json.loads(bytes(buffer.DataAsNumpy()).decode())
    return None


def add_tflite_metadata(data: bytes, metadata: dict) -> bytes:
    """The TFLite file with `metadata` (JSON) as its `keras_dino_export` metadata buffer."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.decode() if isinstance(m.name, bytes) else m.name)
                      != files.METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = files.METADATA_KEY
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


def export_litert(
    model,
    base_dir,
    model_name: str = "dino",
    version: int = 1,
    image_size: int = 224,
    *,
    input_dtype: str = "uint8",
    l2_normalize: bool = False,
    include_patch_tokens: bool = False,
    include_attention: bool = False,
    float16: bool = False,
    overwrite: bool = False,
    weights_source: str | None = None,
    load_kwargs: dict | None = None,
    verbose: bool = False,
) -> str:
    """Exports a DINO backbone (or a `LinearProbe`) as a LiteRT (TFLite) model.

    Needs the TensorFlow Keras backend (the TFLite converter is TensorFlow's).

    Args:
        model: as `export_onnx`.
        base_dir: the folder of the file `<model_name>.tflite` (and its `.json` sidecar).
        model_name: the file's name.
        version: recorded in the metadata.
        image_size: the square input size `S` (fixed: LiteRT resizes only the batch).
        input_dtype: as `export_onnx`.
        l2_normalize: as `export_onnx`.
        include_patch_tokens: as `export_onnx`.
        include_attention: as `export_onnx`.
        float16: float16 weights (the converter's float16 quantization: half the file,
            dequantized to float32 on CPU).
        overwrite: as `export_onnx`.
        weights_source: as `export_onnx`.
        load_kwargs: as `export_onnx`.
        verbose: as `export_onnx`.

    Returns:
        The path of the `.tflite` file, as a string.

    Example:

    ```python
    path = keras_dino.export.export("dino_vits16", "exports", format="litert")
    extractor = keras_dino.export.LiteRTFeatureExtractor(path)
    extractor(uint8_images_224)["cls_embedding"]      # (B, 384)
    ```
    """
    from keras_dino.export import portable

    prepared = portable.prepare(
        "litert", model, base_dir, model_name, overwrite=overwrite, load_kwargs=load_kwargs,
        image_size=image_size, input_dtype=input_dtype, l2_normalize=l2_normalize,
        include_patch_tokens=include_patch_tokens, include_attention=include_attention,
    )
    data = convert(prepared.function, float16=float16)
    import tensorflow as tf

    metadata = prepared.metadata(
        model_name=model_name, version=version, weights_source=weights_source,
        float16=float16, runtime={"tflite_converter": tf.__version__},
    )
    data = add_tflite_metadata(data, metadata)
    files.write_atomically(prepared.path, data, metadata)
    if verbose:
        files.describe_file(prepared.path)
    return str(prepared.path)
