"""Query a keras_dino export served by TF Serving, over REST and gRPC.

Needs neither keras nor keras_dino: REST uses the standard library, numpy and absl-py (its
command line; copy `common.py` from this folder beside it), gRPC needs
`pip install tensorflow-serving-api` (imported only when gRPC is used). Start the server
as in docs/export.md ("Serving"), then:

    # Encoded JPEG/PNG files through the `serve_bytes` signature (REST, then gRPC):
    python examples/serving_client.py --model_name=dino photo1.jpg photo2.jpg
    python examples/serving_client.py --model_name=dino --protocol=grpc photo1.jpg

    # Raw pixels (uint8 [batch, 224, 224, 3] in a .npy file) through `serving_default`,
    # or random pixels, and the attention maps:
    python examples/serving_client.py --model_name=dino --signature=serving_default batch.npy
    python examples/serving_client.py --model_name=dino --signature=attention --random=2

The request bodies follow TF Serving's REST API: the row format
`{"signature_name": ..., "instances": [...]}` (default) or the columnar format
`{"signature_name": ..., "inputs": {...}}` (`--columnar`); encoded images travel as
`{"b64": "<base64>"}`. `tests/test_export.py` runs these same bodies through an export.
The hyphenated flags of keras_dino 0.1 (`--rest-port`, `--grpc-port`, `--image-size`)
and the names `--model` and `--image_size` (now `--model_name` and `--eval_size`, as
the export tool names them) still work for this release, with a deprecation message.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
import types
import urllib.error
import urllib.request

import numpy as np

BYTES_SIGNATURE = "serve_bytes"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_NAMES = {"attention": "cls_attention"}  # single-output signatures


def rest_body(
    signature: str = "serving_default",
    images=None,
    image_bytes=None,
    row_format: bool = True,
) -> dict:
    """A TF Serving REST predict body for a keras_dino export.

    Args:
        signature: `serving_default`, `attention` (pass `images`) or `serve_bytes` (pass
            `image_bytes`).
        images: uint8 or float32 `[batch, S, S, 3]` raw RGB pixels (0..255).
        image_bytes: a list of encoded JPEG/PNG files (bytes).
        row_format: `{"instances": [...]}` (one entry per image) if True, else the
            columnar `{"inputs": {name: batch}}`.

    Example:

    >>> body = rest_body("serve_bytes", image_bytes=[b"\\xff\\xd8\\xff"])
    >>> body["instances"]
    [{'b64': '/9j/'}]
    """
    if (images is None) == (image_bytes is None):
        raise ValueError("pass exactly one of images and image_bytes.")
    if image_bytes is not None:
        name = BYTES_INPUT
        values = [{"b64": base64.b64encode(data).decode("ascii")} for data in image_bytes]
    else:
        name = IMAGES_INPUT
        array = np.asarray(images)
        if array.ndim != 4:
            raise ValueError(f"images must be a batch [batch, H, W, 3]; got shape {array.shape}.")
        values = array.tolist()
    if row_format:
        return {"signature_name": signature, "instances": values}
    return {"signature_name": signature, "inputs": {name: values}}


def rest_url(host: str, port: int, model: str, version: int | None = None) -> str:
    """`http://host:port/v1/models/<model>[/versions/<version>]:predict`."""
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return f"http://{host}:{port}{path}:predict"


def rest_predict(url: str, body: dict, timeout: float = 60.0) -> dict:
    """POSTs a predict body and returns the decoded JSON response.

    Raises `RuntimeError` with the server's error message on an HTTP error.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeError(f"TF Serving answered {error.code}: {detail}") from error


def rest_outputs(response: dict, single_output_name: str = "output") -> dict:
    """A REST predict response as `{output name: numpy array}`.

    TF Serving leaves out the name when a signature has a single output (`attention`'s
    `cls_attention`); that output is returned under `single_output_name`.
    """
    if "outputs" in response:  # columnar
        outputs = response["outputs"]
        if isinstance(outputs, dict):
            return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
        return {single_output_name: np.asarray(outputs, np.float32)}
    predictions = response["predictions"]
    if predictions and isinstance(predictions[0], dict):
        return {k: np.asarray([p[k] for p in predictions], np.float32) for k in predictions[0]}
    return {single_output_name: np.asarray(predictions, np.float32)}


def grpc_predict(
    target: str,
    model: str,
    signature: str,
    inputs: dict,
    version: int | None = None,
    timeout: float = 60.0,
) -> dict:
    """Sends a gRPC `PredictRequest` and returns `{output name: numpy array}`.

    Args:
        target: `host:port` of the gRPC endpoint (8500 by default in TF Serving).
        model: the served model name.
        signature: the signature name.
        inputs: `{input name: array}`; use a numpy object array of bytes for `image_bytes`.
        version: a specific version (default: the latest one served).

    Needs `tensorflow-serving-api` (imported here, not at module import).
    """
    try:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as error:
        raise ImportError(
            "gRPC needs `pip install tensorflow-serving-api` (it brings grpcio and "
            f"tensorflow): {error}"
        ) from error
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    # Patch tokens of a batch exceed gRPC's default 4 MB message limit.
    options = [("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _load_inputs(args):
    if args.signature == BYTES_SIGNATURE:
        if not args.files:
            raise SystemExit("serve_bytes needs JPEG or PNG files.")
        return {BYTES_INPUT: [pathlib.Path(f).read_bytes() for f in args.files]}
    if args.random:
        rng = np.random.default_rng(0)
        size = args.image_size
        return {IMAGES_INPUT: rng.integers(0, 256, (args.random, size, size, 3), np.uint8)}
    if not args.files:
        raise SystemExit(f"{args.signature} needs .npy files of [batch, S, S, 3] or --random N.")
    return {IMAGES_INPUT: np.concatenate([np.load(f) for f in args.files])}


def _summary(outputs):
    return {
        name: {
            "shape": list(value.shape),
            "first values": np.asarray(value, np.float64)
            .reshape(len(value), -1)[:, :4]
            .round(4)
            .tolist(),
        }
        for name, value in outputs.items()
    }


DEPRECATED_FLAGS = {"--rest-port": "--rest_port", "--grpc-port": "--grpc_port",
                    "--image-size": "--eval_size"}


def define_flags(flag_values=None):
    """Defines the client's flags (absl, as every keras_dino tool)."""
    from absl import flags

    from keras_dino.tools.common import define_deprecated_alias

    fv = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
    flags.DEFINE_string("host", "localhost", "TF Serving host.", **fv)
    flags.DEFINE_integer("rest_port", 8501, "REST port.", **fv)
    flags.DEFINE_integer("grpc_port", 8500, "gRPC port.", **fv)
    flags.DEFINE_string("model_name", "dino", "Served model name (export's --model_name).",
                        **fv)
    flags.DEFINE_integer("version", None, "Model version (default: the latest).", **fv)
    flags.DEFINE_enum("signature", BYTES_SIGNATURE, ["serve_bytes", "serving_default",
                      "attention"], "Signature to call.", **fv)
    flags.DEFINE_enum("protocol", "rest", ["rest", "grpc", "both"], "Protocol.", **fv)
    flags.DEFINE_boolean("columnar", False, 'REST {"inputs": ...} format.', **fv)
    flags.DEFINE_integer("random", 0, "Send N random images.", **fv)
    flags.DEFINE_integer("eval_size", 224, "Side of the --random images (the export's "
                         "--eval_size).", **fv)
    define_deprecated_alias(fv["flag_values"], "model", "model_name")
    define_deprecated_alias(fv["flag_values"], "image_size", "eval_size")


def _main(argv):
    """Sends the files named after the flags (JPEG/PNG, or .npy pixel batches)."""
    from absl import flags

    F = flags.FLAGS
    names = ("host", "rest_port", "grpc_port", "version", "signature", "protocol", "columnar",
             "random")
    args = types.SimpleNamespace(files=argv[1:], model=F.model_name, image_size=F.eval_size,
                                 **{name: F[name].value for name in names})
    inputs = _load_inputs(args)
    results = {}
    if args.protocol in ("rest", "both"):
        body = rest_body(
            args.signature,
            images=inputs.get(IMAGES_INPUT),
            image_bytes=inputs.get(BYTES_INPUT),
            row_format=not args.columnar,
        )
        url = rest_url(args.host, args.rest_port, args.model, args.version)
        response = rest_predict(url, body)
        results["rest"] = _summary(
            rest_outputs(response, OUTPUT_NAMES.get(args.signature, "output"))
        )
    if args.protocol in ("grpc", "both"):
        grpc_inputs = dict(inputs)
        if BYTES_INPUT in grpc_inputs:
            grpc_inputs[BYTES_INPUT] = np.array(grpc_inputs[BYTES_INPUT], dtype=object)
        target = f"{args.host}:{args.grpc_port}"
        outputs = grpc_predict(target, args.model, args.signature, grpc_inputs, args.version)
        results["grpc"] = _summary(outputs)
    json.dump(results, sys.stdout, indent=2)
    print()


def main():
    """The command: parses the flags of `sys.argv` (0.1's names translated) and sends."""
    from keras_dino.tools.common import run_absl, translate_deprecated

    define_flags()
    run_absl(_main, __doc__, argv=translate_deprecated(sys.argv, DEPRECATED_FLAGS))
