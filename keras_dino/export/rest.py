"""TF Serving's REST predict format, to test requests and clients without a server.

No TensorFlow here: the specs only need `.dtype.name` and `.dtype.as_numpy_dtype`.
"""

import base64
import json

import numpy as np


def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(
                f"a JSON object in a tensor value must be {{'b64': ...}}; got {value}."
            )
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_array(value, spec, name):
    """JSON value -> numpy array of the signature's dtype, as strictly as TF Serving."""
    if spec.dtype == "string":
        array = np.array(_decode_b64(value), dtype=object)
        flat = [v.encode() if isinstance(v, str) else v for v in array.reshape(-1)]
        if not all(isinstance(v, bytes) for v in flat):
            raise ValueError(f"input '{name}' is a string tensor; got non-string values.")
        result = np.empty(len(flat), dtype=object)
        result[:] = flat
        return result.reshape(array.shape)
    try:
        array = np.array(value)
    except ValueError as error:  # ragged lists
        raise ValueError(f"input '{name}' is ragged: {error}") from error
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError(f"input '{name}' must hold numbers of a rectangular shape.")
    dtype = np.dtype(spec.dtype.as_numpy_dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.dtype.kind == "f" and array.size and not np.all(array == np.round(array)):
            raise ValueError(f"input '{name}' is {spec.dtype.name}; got non-integer numbers.")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"input '{name}' is {spec.dtype.name}; got values out of range.")
    return array.astype(dtype)


def rest_request_to_tensors(body, input_specs) -> tuple[str, dict]:
    """Converts a TF Serving REST predict body to the signature's input tensors.

    Follows TF Serving's documented REST API: the row format `{"instances": [...]}` (one
    entry per example, an object of named inputs or, for a single-input signature, the
    value itself; examples are stacked along a new batch axis) and the columnar format
    `{"inputs": ...}` (the whole batch per input); `{"b64": "..."}` objects carry binary
    strings; numbers are converted to the signature's dtype. Meant for testing requests
    and clients without a running server.

    Args:
        body: the request, as a JSON string or the decoded object.
        input_specs: the signature's inputs, a dict of name -> `tf.TensorSpec`, or a
            loaded signature (its `structured_input_signature` is used).

    Returns:
        `(signature_name, {input name: numpy array})`.

    Example:

    ```python
    served = tf.saved_model.load(path)
    fn = served.signatures["serve_bytes"]
    name, inputs = rest_request_to_tensors(
        {"signature_name": "serve_bytes", "instances": [{"b64": encoded}]}, fn)
    outputs = fn(**inputs)
    ```
    """
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if hasattr(input_specs, "structured_input_signature"):
        input_specs = input_specs.structured_input_signature[1]
    names = sorted(input_specs)
    signature_name = body.get("signature_name", "serving_default")
    if ("instances" in body) == ("inputs" in body):
        raise ValueError('a predict request has exactly one of "instances" and "inputs".')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ValueError('"instances" must be a list.')
        columns = {name: [] for name in names}
        for instance in instances:
            is_named = isinstance(instance, dict) and set(instance) != {"b64"}
            if len(names) == 1 and not is_named:
                instance = {names[0]: instance}
            elif not is_named or set(instance) != set(names):
                raise ValueError(f"each instance must be an object with the inputs {names}.")
            for name in names:
                columns[name].append(instance[name])
        values = columns
    else:
        inputs = body["inputs"]
        if len(names) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(names)):
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict) or set(inputs) != set(names):
            raise ValueError(f'"inputs" must name the inputs {names}.')
        values = inputs
    return signature_name, {
        name: _to_array(values[name], input_specs[name], name) for name in names
    }


def rest_response(outputs, row_format: bool = True) -> dict:
    """A TF Serving REST predict response for signature outputs (name -> array).

    Row format requests get `{"predictions": [...]}` (per example: the value for a single
    output, else an object of named outputs); columnar ones get `{"outputs": ...}`.

    Example:

    ```python
    rest_response({"cls_embedding": np.zeros((2, 384))})["predictions"][0][:2]  # [0.0, 0.0]
    ```
    """
    outputs = {k: np.asarray(v).tolist() for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    names = list(outputs)
    batch = len(outputs[names[0]])
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    return {"predictions": [{name: outputs[name][i] for name in names} for i in range(batch)]}
