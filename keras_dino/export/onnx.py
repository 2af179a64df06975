"""ONNX export of DINO backbones (and of their linear classifiers), for ONNX Runtime.

`export_onnx` writes `<base_dir>/<model_name>.onnx`: one input `images` (raw RGB pixels
0..255, uint8 or float32, NHWC, normalised in the graph, as the SavedModel's
`serving_default`), with a dynamic batch and, by default, a dynamic height and width (a
Vision Transformer resizes its position embeddings inside the graph with the official
kernel); outputs named as the SavedModel's (`cls_embedding`, `patch_tokens`,
`cls_attention`, `logits`). The graph is the TensorFlow backend's, converted by tf2onnx
(Keras' own `model.export(format="onnx")` traces `call` only, at a fixed height and
width). Needs the `export` extra: `pip install "keras-dino[export]"`.
"""

import contextlib
import os

import numpy as np

from keras_dino.export import single_file
from keras_dino.export.metadata import METADATA_KEY
from keras_dino.export.options import DEFAULT_OPSET, ExportOptions

# Float32 initializers with fewer elements stay float32 (mean, std, shape constants).
_FLOAT16_MIN_SIZE = 16


def _require(module):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"the ONNX export needs {module}: pip install \"keras-dino[export]\" "
            "(onnx, onnxruntime, tf2onnx)."
        ) from error


def _erfc_handler(ctx, node, name, args):
    """tf2onnx has no Erfc (TensorFlow's exact GELU): erfc(x) = 1 + erf(-x)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    ctx.insert_new_node_on_input(node, "Neg", node.input[0])
    node.type = "Erf"
    one = ctx.make_const(utils.make_name("one"), np.array(1.0, dtype=dtype))
    ctx.insert_new_node_on_output("Add", node.output[0], inputs=[node.output[0], one.output[0]])


# tf2onnx's switch for its optimizer's safety net (tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS).
_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"


@contextlib.contextmanager
def _without_optimizer_safety_net():
    """tf2onnx's graph optimizer without its safety net, for a conversion; for a caller
    whose environment has no TF2ONNX_CATCH_ERRORS, which it has none of again afterwards.

    With the net, tf2onnx deep-copies the whole graph before each of its optimizer passes
    (49 copies for a 5-block ViT), so that it can keep the graph of before a pass that
    raises: a third of a conversion's time (the official 5-block ViT of the test
    fixtures: 20 s with the copies, 13 s without). Without it the same passes run, and
    a failing pass fails the conversion. The graphs can differ by a node or two (the
    copies change the order in which a pass meets the nodes; that ViT: 678 nodes
    instead of 676) and compute the same numbers (bit-identical outputs at 224x160).
    tf2onnx 1.16-1.17 turns the net off when TF2ONNX_CATCH_ERRORS is set to any value
    (it compares the variable's name, not its value, with "TRUE"); "FALSE" turns it off
    in a version that reads the value too.
    """
    os.environ[_CATCH_ERRORS] = "FALSE"
    try:
        yield
    finally:
        os.environ.pop(_CATCH_ERRORS, None)


def convert(function, opset=DEFAULT_OPSET):
    """A `tf.function` with an input signature -> an `onnx.ModelProto` (tf2onnx).

    tf2onnx's optimizer runs first without the safety net it keeps by default (a copy of
    the graph before each pass). If that conversion raises, it runs again with the net,
    which skips a failing optimizer pass as tf2onnx does by default (an error of another
    kind is raised by the second run). A TF2ONNX_CATCH_ERRORS of the user's own is used
    as it is.
    """
    tf2onnx = _require("tf2onnx")
    _require("onnx")
    import warnings

    def run():
        return tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset,
            custom_op_handlers={"Erfc": (_erfc_handler, [])},
        )[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:  # tf2onnx 1.16/1.17 and numpy 2: the patch Keras' own ONNX export applies.
            from keras.src.export.tf2onnx_lib import patch_tf2onnx

            patch_tf2onnx()
        except ImportError:  # pragma: no cover - older or newer Keras
            pass
        if _CATCH_ERRORS in os.environ:  # the user's own setting
            return run()
        try:
            with _without_optimizer_safety_net():
                return run()
        except Exception:  # e.g. a failing pass: again, with tf2onnx's default safety net
            return run()


def name_dimensions(proto, outputs) -> None:
    """Names the dynamic dimensions (`batch`, `height`, `width`, ...) of inputs and outputs."""
    names = {"images": ["batch", "height", "width", None],
             "patch_tokens": ["batch", "patches", None],
             "cls_attention": ["batch", None, "grid_h", "grid_w"]}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        wanted = names.get(value.name, ["batch"] + [None] * (len(dims) - 1))
        for dim, name in zip(dims, wanted):
            if name is not None and not dim.HasField("dim_value"):
                dim.dim_param = name
    order = {name: i for i, name in enumerate(outputs)}
    sorted_outputs = sorted(proto.graph.output, key=lambda v: order.get(v.name, len(order)))
    del proto.graph.output[:]
    proto.graph.output.extend(sorted_outputs)


def float16_weights(proto) -> int:
    """Stores the float32 weights as float16, cast back to float32 in the graph.

    The arithmetic stays float32 (as a LiteRT float16 export on CPU); only the stored
    weights are rounded, and the file is half the size. Returns the number converted.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    casts, converted = [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        if value.size < _FLOAT16_MIN_SIZE:
            continue
        name = init.name
        half = numpy_helper.from_array(value.astype(np.float16), f"{name}__float16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                      name=f"{name}__to_float32"))
        converted += 1
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return converted


def add_metadata(proto, metadata) -> None:
    """The metadata as `metadata_props`: the whole JSON, and flat keys for quick reads."""
    import json

    from keras_dino.version import __version__

    model = metadata["model"]
    pre = metadata["preprocessing"]
    flat = {
        METADATA_KEY: json.dumps(metadata),
        "keras_dino_version": __version__,
        "format": metadata["format"],
        "arch": str(model.get("arch")),
        "patch_size": str(model.get("patch_size", "")),
        "embed_dim": str(model["embed_dim"]),
        "image_size": str(metadata["image_size"] or "dynamic"),
        "input_dtype": pre["input_dtype"],
        "layout": pre["layout"],
        "mean": json.dumps(pre["mean"]),
        "std": json.dumps(pre["std"]),
        "weights_dtype": metadata["weights_dtype"],
    }
    del proto.metadata_props[:]
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "keras_dino"
    proto.producer_version = __version__
    proto.doc_string = pre["images"]


def export_onnx(model, base_dir, options: ExportOptions | None = None, **kwargs) -> str:
    """Exports a DINO backbone (or a `LinearProbe`) as an ONNX model for ONNX Runtime.

    Needs the TensorFlow Keras backend and the `export` extra (onnx, onnxruntime, tf2onnx).

    Args:
        model: a backbone (`VisionTransformer`, `XCiT`, `ResNet`), a `keras_dino.DINO`
            (its teacher), a `LinearProbe` (backbone and linear classifier: also outputs
            `logits`), or a preset name / checkpoint path (`load_pretrained`, with
            `load_kwargs`).
        base_dir: the folder of the file `<model_name>.onnx` (and `<model_name>.onnx.json`).
        options: an `ExportOptions`; `**kwargs` are its fields (`model_name`, `version`,
            `image_size`, `input_dtype`, `l2_normalize`, `include_patch_tokens`,
            `include_attention`, `float16`, `opset`, `overwrite`, `weights_source`,
            `load_kwargs`, `verbose`), overriding those of `options`. `image_size`
            defaults to None here: any height and width, the position embeddings
            interpolated in the graph; an integer: square inputs of that size only.
            `float16` stores the weights as float16 (half the file; float32 arithmetic).

    Returns:
        The path of the `.onnx` file, as a string.

    Example:

    ```python
    path = keras_dino.export.export("dino_vits16", "exports", format="onnx")
    extractor = keras_dino.export.OnnxFeatureExtractor(path)
    extractor(uint8_images)["cls_embedding"]          # (B, 384), any H and W
    ```
    """
    options = ExportOptions.for_format("onnx", options, **kwargs)

    def convert_with_metadata(function, output_names, metadata_for):
        proto = convert(function, options.opset)
        name_dimensions(proto, output_names)
        if options.float16:
            float16_weights(proto)
        import onnx
        import tf2onnx

        metadata = metadata_for({"onnx": onnx.__version__, "tf2onnx": tf2onnx.__version__,
                                 "opset": options.opset})
        add_metadata(proto, metadata)
        return proto.SerializeToString(), metadata

    return single_file.export_file("onnx", model, base_dir, options, convert_with_metadata)
