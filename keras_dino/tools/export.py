"""Export a DINO backbone as a SavedModel (TensorFlow, TF Serving), ONNX or LiteRT file.

The weights come from a preset (`dino_vits16`, ... downloaded once), an official or
keras_dino checkpoint file, or the teacher of a full DINO training checkpoint, named by
`--pretrained_weights` (the evaluation tools' flag) or as the one positional argument.
Run under the TensorFlow backend (default) or, for SavedModels, the JAX backend (jax2tf):

    python examples/export_saved_model.py --pretrained_weights=dino_vits16 \\
        --output_dir=exports --l2_normalize
    KERAS_BACKEND=jax python examples/export_saved_model.py checkpoint.pth --version=2
    python examples/export_saved_model.py --describe=exports/dino

`--format=onnx` writes `<output_dir>/<model_name>.onnx` (any height and width unless
`--eval_size` is given), `--format=litert` writes `<output_dir>/<model_name>.tflite`
(`--eval_size`, default 224); both take `--float16` (float16 weights) and `--attention`
(also output `cls_attention`), and need `pip install "keras-dino[export]"`:

    python examples/export_saved_model.py --pretrained_weights=dino_vits16 \\
        --format=onnx --output_dir=exports
    python examples/export_saved_model.py --describe=exports/dino.onnx

Serve a SavedModel export with TF Serving (the command is printed at the end) and query
it with `examples/serving_client.py`; run the files with onnxruntime or the LiteRT
interpreter (`keras_dino.export.load_feature_extractor`).

The hyphenated flags of keras_dino 0.1 (`--out`, `--model-name`, `--l2-normalize`, ...)
still work for this release, with a deprecation message naming the new flag.
"""

import os
import pathlib
import sys

from keras_dino.tools.common import (
    define_backbone_flags,
    define_deprecated_alias,
    define_eval_view_flags,
    official_preset,
    run_absl,
    say,
    select_backend,
    short_load_errors,
    translate_deprecated,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402

# keras_dino 0.1's argparse flags and the absl flags that replace them.
DEPRECATED_FLAGS = {
    "--out": "--output_dir",
    "--model-name": "--model_name",
    "--image-size": "--eval_size",
    "--input-dtype": "--input_dtype",
    "--l2-normalize": "--l2_normalize",
    "--patch-tokens": "--patch_tokens",
    "--checkpoint-key": "--checkpoint_key",
    "--patch-size": "--patch_size",
    "--num-heads": "--num_heads",
    "--serving-base-path": "--serving_base_path",
}


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values`."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    flags.DEFINE_string("output_dir", "exports", "TF Serving model base directory (the "
                        "folder of the .onnx / .tflite file).", **fv)
    flags.DEFINE_string("model_name", "dino", "Model name (a folder under --output_dir; the "
                        "file name for onnx and litert).", **fv)
    flags.DEFINE_integer("version", 1, "Version number (the SavedModel's folder).", **fv)
    flags.DEFINE_enum("format", "saved_model", ["saved_model", "onnx", "litert"],
                      "Export format: a SavedModel folder, an .onnx or a .tflite file.", **fv)
    define_eval_view_flags(flag_values, "Side of the model's input images, the center crop "
                           "of its serve_bytes signature (onnx: any size unless given).")
    flags.DEFINE_enum("input_dtype", "uint8", ["uint8", "float32"], "Dtype of the raw "
                      "0..255 pixels the signatures take.", **fv)
    flags.DEFINE_boolean("l2_normalize", False, "Output the L2-normalised embedding.", **fv)
    flags.DEFINE_boolean("patch_tokens", False, "Also output the patch tokens (ViTs).", **fv)
    flags.DEFINE_boolean("attention", False, "onnx, litert: also output cls_attention (the "
                         "SavedModel's attention signature).", **fv)
    flags.DEFINE_boolean("float16", False, "onnx, litert: store the weights as float16.", **fv)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing version or file.", **fv)
    flags.DEFINE_string("serving_base_path", None, "base_path in models.config (default "
                        "/models/<model_name>).", **fv)
    flags.DEFINE_string("describe", None, "Only describe an existing export (a folder).", **fv)
    define_deprecated_alias(flag_values, "image_size", "eval_size")


def _weights(F, positional):
    """The weights to export: --pretrained_weights, the positional argument or a preset."""
    if len(positional) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(positional[1:])}")
    if positional and F.pretrained_weights:
        raise app.UsageError("give the weights once: --pretrained_weights or the argument.")
    weights = F.pretrained_weights or (positional[0] if positional else "")
    if weights:
        return weights
    preset = official_preset(F.arch, F.patch_size)
    if preset and (F["arch"].present or F["patch_size"].present):
        say(f"no --pretrained_weights: exporting the official weights of {preset}.")
        return preset
    raise app.UsageError("give --pretrained_weights (a preset name or a checkpoint file), or "
                         "--describe=EXPORT_DIR.")


def run(F, positional=()):
    """Exports (or describes) as the flags say; returns the export's path."""
    from keras_dino import export

    if F.describe:
        export.describe(F.describe)
        return F.describe
    weights = _weights(F, list(positional))
    load_kwargs = {"checkpoint_key": F.checkpoint_key}
    # Architecture flags only when given: checkpoints record their own shape.
    for key in ("arch", "patch_size", "num_heads"):
        if F[key].present:
            load_kwargs[key] = F[key].value
    common = dict(
        format=F.format,
        model_name=F.model_name,
        version=F.version,
        image_size=F.eval_size,
        resize_size=F.eval_resize,
        input_dtype=F.input_dtype,
        l2_normalize=F.l2_normalize,
        include_patch_tokens=F.patch_tokens,
        overwrite=F.overwrite,
        load_kwargs=load_kwargs,
    )
    named = {key: load_kwargs[key] for key in ("arch", "patch_size") if key in load_kwargs}
    with short_load_errors(weights, named):
        return _export(F, weights, common, tell_architecture=len(named) < 2)


def _say_architecture(weights, path):
    """The line of the architecture read from the weights, as the export recorded it."""
    from keras_dino import export

    model = export.load_metadata(path)["model"]
    arch = model["arch"]
    if arch == "custom":
        family = {"VisionTransformer": "vit", "XCiT": "xcit"}.get(model["class"], model["class"])
        arch = (f"{family} (width {model['embed_dim']}, depth {model['depth']}, "
                f"{model['num_heads']} heads)")
    patch = f"/{model['patch_size']}" if model.get("patch_size") and "xcit" not in arch else ""
    registers = model.get("num_register_tokens")
    say(f"architecture from {os.path.basename(str(weights))}: {arch}{patch}"
        + (f" +{registers} registers" if registers else ""))


def _export(F, weights, common, tell_architecture):
    from keras_dino import export

    if F.format == "saved_model":
        for flag in ("attention", "float16"):
            if F[flag].value:
                raise app.UsageError(f"--{flag} applies to --format=onnx and --format=litert; "
                                     "a SavedModel has an attention signature and float32 "
                                     "weights.")
        path = export.export(weights, F.output_dir, serving_base_path=F.serving_base_path,
                             **common)
    else:
        if F["eval_resize"].present:
            raise app.UsageError("--eval_resize applies to --format=saved_model, which decodes "
                                 "and resizes images; an ONNX or LiteRT model takes images "
                                 "already at --eval_size.")
        common.pop("resize_size")
        if F.format == "onnx" and not F["eval_size"].present:
            common["image_size"] = None  # any height and width
        path = export.export(weights, F.output_dir, include_attention=F.attention,
                             float16=F.float16, **common)
        if tell_architecture:
            _say_architecture(weights, path)
        export.describe(path)
        say(f"\nRun it with {'onnxruntime' if F.format == 'onnx' else 'the LiteRT interpreter'}:"
            "\n  from keras_dino.export import load_feature_extractor\n"
            f"  load_feature_extractor({path!r})(uint8_images)")
        return path
    if tell_architecture:
        _say_architecture(weights, path)
    export.describe(path)
    base = pathlib.Path(F.output_dir).resolve()
    say("\nServe it with TF Serving (REST on 8501, gRPC on 8500):\n"
        f'  docker run --rm -p 8501:8501 -p 8500:8500 -v "{base}:/models" tensorflow/serving '
        "--model_config_file=/models/models.config\n"
        "Query it:\n"
        f"  python examples/serving_client.py --model_name={F.model_name} photo.jpg")
    return path


def _main(argv):
    run(flags.FLAGS, argv[1:])


def main():
    """The command: parses the flags of `sys.argv` (0.1's names translated) and exports."""
    define_flags()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_absl(_main, __doc__, argv=translate_deprecated(sys.argv, DEPRECATED_FLAGS))
