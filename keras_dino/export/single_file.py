"""Where the single-file exports (ONNX, LiteRT) go, and how they are written.

An export of `model_name` in `base_dir` is one file, `<base_dir>/<model_name>.onnx` or
`<base_dir>/<model_name>.tflite`, holding its metadata, with a copy of the metadata
beside it, `<file>.json`, readable without any package (`keras_dino.export.metadata`).
"""

import json
import os
import pathlib
import tempfile

from keras_dino.export import inference as inference_lib
from keras_dino.export.metadata import SUFFIXES, describe, make_metadata, sidecar_path


def target_path(base_dir, model_name, fmt, overwrite) -> pathlib.Path:
    """`<base_dir>/<model_name><suffix>`, refused if it exists and not `overwrite`."""
    path = pathlib.Path(base_dir) / f"{model_name}{SUFFIXES[fmt]}"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    return path


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


def export_file(fmt, model, base_dir, options, convert) -> str:
    """The steps of `export_onnx` and `export_litert` around their converter.

    Checks the backend and the target, resolves `model` (a preset or checkpoint is
    loaded), traces `Inference(model, options).function()`, and writes what
    `convert(function, output_names, metadata_for)` returns, `(file bytes, metadata)`,
    where `metadata_for(runtime)` builds the metadata with the converter's versions.
    """
    inference_lib.check_backend(fmt)
    path = target_path(base_dir, options.model_name, fmt, options.overwrite)
    resolved, source, _, classifier = inference_lib.resolve(model, options.load_kwargs)
    inference = inference_lib.Inference(resolved, options)
    function = inference.function()
    outputs = inference.output_specs()
    size = options.image_size
    what = "features" if classifier is None else "features and linear-classifier logits"
    signatures = {
        "serving_default": {
            "inputs": {"images": {"dtype": options.input_dtype,
                                  "shape": [None, size, size, 3]}},
            "outputs": outputs,
            "description": f"{what} of a batch of images",
        }
    }

    def metadata_for(runtime):
        return make_metadata(fmt, inference=inference, source=source, classifier=classifier,
                             signatures=signatures, runtime=runtime)

    data, metadata = convert(function, list(outputs), metadata_for)
    write_atomically(path, data, metadata)
    if options.verbose:
        describe(path)
    return str(path)
