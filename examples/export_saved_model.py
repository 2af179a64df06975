"""Export a DINO backbone as a SavedModel for TensorFlow and TF Serving.

The weights come from a preset (`dino_vits16`, ... downloaded once), an official or
keras_dino checkpoint file, or the teacher of a full DINO training checkpoint. Run under
the TensorFlow backend (default) or the JAX backend (jax2tf):

    python examples/export_saved_model.py dino_vits16 --out exports --l2-normalize
    KERAS_BACKEND=jax python examples/export_saved_model.py checkpoint.pth --version 2
    python examples/export_saved_model.py --describe exports/dino

Then serve `exports/` with TF Serving (the command is printed at the end) and query it
with `examples/serving_client.py`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="?", help="preset name or checkpoint file")
    parser.add_argument("--out", default="exports", help="TF Serving model base directory")
    parser.add_argument("--model-name", default="dino")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"])
    parser.add_argument("--l2-normalize", action="store_true", help="L2-normalised embedding")
    parser.add_argument("--patch-tokens", action="store_true", help="also return patch tokens")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--checkpoint-key", default="teacher", help="for full checkpoints")
    parser.add_argument("--arch", default=None, help="for .weights.h5 files")
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None, help="for non-standard widths")
    parser.add_argument(
        "--serving-base-path",
        default=None,
        help="base_path in models.config (default /models/<model-name>)",
    )
    parser.add_argument("--describe", metavar="EXPORT_DIR", help="only describe an export")
    args = parser.parse_args(argv)

    from keras_dino import export

    if args.describe:
        export.describe(args.describe)
        return
    if not args.weights:
        parser.error("give a preset name or a checkpoint file (or --describe EXPORT_DIR)")
    load_kwargs = {"checkpoint_key": args.checkpoint_key}
    for key in ("arch", "patch_size", "num_heads"):
        if getattr(args, key) is not None:
            load_kwargs[key] = getattr(args, key)
    path = export.export_saved_model(
        args.weights,
        args.out,
        model_name=args.model_name,
        version=args.version,
        image_size=args.image_size,
        input_dtype=args.input_dtype,
        l2_normalize=args.l2_normalize,
        include_patch_tokens=args.patch_tokens,
        overwrite=args.overwrite,
        serving_base_path=args.serving_base_path,
        load_kwargs=load_kwargs,
    )
    export.describe(path)
    base = pathlib.Path(args.out).resolve()
    print(
        "\nServe it with TF Serving (REST on 8501, gRPC on 8500):\n"
        f'  docker run --rm -p 8501:8501 -p 8500:8500 -v "{base}:/models" tensorflow/serving '
        "--model_config_file=/models/models.config\n"
        "Query it:\n"
        f"  python examples/serving_client.py --model {args.model_name} photo.jpg"
    )


if __name__ == "__main__":
    main()
