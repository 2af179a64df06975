"""Features of a folder (or list) of images, written as resumable numpy shards.

Every image goes through the official evaluation view (shorter side to
`--eval_resize`, default `--eval_size * 256 / 224`, center crop `--eval_size`,
ImageNet normalisation), then the backbone; `--features` chooses what is kept:

* `cls`: the backbone's output, `(n, E)` (a ResNet's pooled features);
* `patch`: the patch tokens as grids, `(n, h, w, E)` (a ResNet's last feature map);
* `mean_patch`: the mean patch token, `(n, E)`;
* `last_blocks`: the CLS tokens of the last `--n_last_blocks` blocks, concatenated,
  as the official linear evaluation, `(n, n_last_blocks * E)`;
* `block`: the patch grid of block `--block` (0-based; -1 the last).

`--multiscale` averages the vector features over scales 1, 1/√2 and 1/2 and divides by
the norm, as the official `utils.multi_scale`. The features go to
`<output_dir>/features-00000.npz`, ... (`--shard_size` images each, with `features`,
`files` relative to `--data_path`, `skipped`, and `grid_shape` for grids) and
`<output_dir>/manifest.json` (settings, shards, skipped files and why). Images are read a
batch at a time, so the set may be any size. A rerun with the same flags reuses the
complete shards (an interrupted shard is never renamed to its final name) and
computes the rest. The last line printed is a JSON summary.

    python examples/extract_features.py --pretrained_weights=dino_vits16 \\
        --data_path=/data/photos --features=patch --output_dir=out/features

Read them with numpy:

    import numpy as np
    with np.load("out/features/features-00000.npz") as shard:
        grids, names = shard["features"], shard["files"]   # (n, 14, 14, 384), (n,)
"""

import json
import os
import sys

from keras_dino.tools.common import (
    append_log,
    backbone_from_flags,
    define_backbone_flags,
    define_deprecated_alias,
    define_eval_view_flags,
    resolve_data_path,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values`."""
    from keras_dino.evaluation.dense_features import FEATURE_KINDS

    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    flags.DEFINE_string("data_path", None, "A folder of images (read recursively) or a text "
                        "file listing images, one per line, relative to the list's folder; "
                        "embedded: the embedded CIFAR-10 subset's test split "
                        "(embedded:train, embedded:test).",
                        **fv)
    flags.DEFINE_string("output_dir", ".", "Where the shards and manifest.json are written.",
                        **fv)
    flags.DEFINE_enum("features", "cls", FEATURE_KINDS, "What to keep of each image.", **fv)
    flags.DEFINE_integer("n_last_blocks", 4, "--features=last_blocks: CLS tokens of this "
                         "many last blocks (4 for ViT-S, 1 for ViT-B, as the official "
                         "linear evaluation).", **fv)
    flags.DEFINE_integer("block", -1, "--features=block: the block (0-based; negative from "
                         "the end; a ResNet's stage).", **fv)
    flags.DEFINE_bool("multiscale", False, "The official multi-scale descriptor (cls, "
                      "mean_patch, last_blocks).", **fv)
    flags.DEFINE_integer("batch_size_per_gpu", 128, "Images per forward pass.", **fv)
    define_eval_view_flags(flag_values)
    flags.DEFINE_integer("shard_size", 1024, "Images per shard.", **fv)
    flags.DEFINE_integer("num_workers", 8, "Image decoding threads.", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bar (0: none).", **fv)
    define_deprecated_alias(flag_values, "image_size", "eval_size")
    define_deprecated_alias(flag_values, "resize_size", "eval_resize")


def run(F):
    """Writes the shards of the flags; returns the summary printed as the last line."""
    import keras

    from keras_dino.evaluation import write_feature_shards
    from keras_dino.version import __version__

    if not F.data_path:
        raise app.UsageError("--data_path is required: a folder of images or a list file.")
    data_path = resolve_data_path(F.data_path, natural="test")
    if not os.path.exists(data_path):
        raise app.UsageError(f"--data_path={F.data_path} does not exist.")
    say(f"keras_dino {__version__} on {keras.backend.backend()}")
    backbone = backbone_from_flags(F)
    try:
        manifest = write_feature_shards(
            backbone, data_path, F.output_dir, features=F.features,
            n_last_blocks=F.n_last_blocks, block=F.block, multiscale=F.multiscale,
            image_size=F.eval_size, resize_size=F.eval_resize,
            batch_size=F.batch_size_per_gpu, shard_size=F.shard_size,
            num_workers=F.num_workers, verbose=F.verbose)
    except ValueError as e:  # other settings in output_dir, bad flag combinations
        raise app.UsageError(str(e)) from e
    for entry in manifest["skipped"][:20]:
        say(f"skipped {entry['file']}: {entry['reason']}")
    if manifest["num_skipped"] > 20:
        say(f"... and {manifest['num_skipped'] - 20} more skipped files (manifest.json).")
    summary = {
        "output_dir": F.output_dir, "features": F.features, "num_images": manifest["num_images"],
        "num_skipped": manifest["num_skipped"], "num_shards": len(manifest["shards"]),
        "shards_written": manifest["shards_written"],
        "shards_reused": manifest["shards_reused"],
        "feature_shape": manifest["feature_shape"], "grid_shape": manifest["grid_shape"],
    }
    append_log(F.output_dir, summary)
    print(json.dumps(summary), flush=True)  # the tool's last line
    return summary


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
