"""`keras-dino <tool> [flags]`: the command-line tools of keras_dino.

    keras-dino --help                      # the tools, one line each
    keras-dino eval-knn --help             # every flag of one tool
    keras-dino train --flagfile=quickstart.flags
    keras-dino eval-knn --backend=torch --pretrained_weights=dino_vits16 --data_path=imagenet

Each tool is a module of `keras_dino.tools` (`eval-knn` is `keras_dino/tools/eval_knn.py`)
and is also `python examples/<script>.py` in a clone of the repository. Nothing of Keras
is imported here: a tool picks its backend from `--backend` (else KERAS_BACKEND) before
Keras is first imported.
"""

import importlib
import sys

# Command name: (module of keras_dino.tools, one-line description).
TOOLS = {
    "train": ("train", "Train DINO with model.fit (the official main_dino.py)."),
    "eval-knn": ("eval_knn", "Weighted k-NN classification on frozen features."),
    "eval-linear": ("eval_linear", "Linear classification on a frozen backbone."),
    "eval-image-retrieval": ("eval_image_retrieval",
                             "Image retrieval on revisited Oxford and Paris."),
    "eval-copy-detection": ("eval_copy_detection", "Copy detection on Copydays."),
    "eval-video-segmentation": ("eval_video_segmentation",
                                "Video object segmentation on DAVIS-2017."),
    "eval-attention-segmentation": ("eval_attention_segmentation",
                                    "Jaccard of thresholded self-attention masks (VOC)."),
    "video-generation": ("video_generation", "Self-attention over a video."),
    "visualize-attention": ("visualize_attention", "Self-attention maps of the CLS token."),
    "visualize-features": ("visualize_features",
                           "Patch features as pictures: PCA colours, foreground."),
    "extract-features": ("extract_features", "Features of many images, as numpy shards."),
    "classify": ("classify", "ImageNet classes with a released backbone and classifier."),
    "export": ("export", "Export a backbone: SavedModel, ONNX or LiteRT."),
    "serving-client": ("serving_client", "Query an export served by TF Serving."),
}

USAGE = "usage: keras-dino <tool> [flags]    (keras-dino <tool> --help: the tool's flags)"


def tools_help():
    """The text of `keras-dino --help`: the usage line and one line per tool."""
    width = max(len(name) for name in TOOLS)
    lines = [USAGE, "", "tools:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in TOOLS.items()]
    lines += ["", "Every tool takes --backend=tensorflow|jax|torch (default: KERAS_BACKEND) and "
              "--flagfile=FILE.", "In a clone of the repository, `keras-dino train` is also "
              "`python examples/train_dino.py`, and so on."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the tool named by the first argument with the remaining arguments.

    Exit status 2 (a usage error) for a missing or unknown tool name; otherwise the tool's.
    """
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if not args or args[0] in ("-h", "--help", "help", "-help", "--helpshort", "--helpfull"):
        sys.stdout.write(tools_help())
        return 0 if args else 2
    if args[0] == "--version":
        from keras_dino.version import __version__

        sys.stdout.write(f"keras-dino {__version__}\n")
        return 0
    name, tool_args = args[0], args[1:]
    if name not in TOOLS and name.replace("_", "-") in TOOLS:
        name = name.replace("_", "-")  # the module's spelling works too
    if name not in TOOLS:
        from keras_dino.errors import did_you_mean

        hint = did_you_mean(name, TOOLS, cutoff=0.5)
        hint = f" D{hint[1:]}" if hint else ""
        sys.stderr.write(f"keras-dino: unknown tool '{name}'.{hint} "
                         "'keras-dino --help' lists the tools.\n")
        return 2
    # absl reads the flags from sys.argv and names the command after sys.argv[0].
    sys.argv = [f"keras-dino {name}", *tool_args]
    from keras_dino.tools.common import select_backend

    select_backend(sys.argv)  # before anything imports Keras
    module = importlib.import_module(f"keras_dino.tools.{TOOLS[name][0]}")
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
