"""Copy detection on Copydays: the official eval_copy_detection.py, in Keras.

The official flags keep their names and defaults (`--data_path`, `--whitening_path`,
`--distractors_path`, `--imsize`, `--batch_size_per_gpu`, `--pretrained_weights`,
`--arch` vit_base, `--patch_size` 8, `--checkpoint_key`, `--num_workers` and
`--use_cuda`, the last two accepted for compatibility). Added: `--output_dir` (a JSON
line in `log.txt`) and `--backend`. Prints `eval on <block> mAP=...` per query block as
the official tool, then a summary, and last one JSON line:
`{"mAP": {"original": ..., "strong": ..., "jpegqual/3": ..., ...}, ...}`. Folders of whitening or distractor images that do
not exist are skipped, as in the official tool, and said so.

    python examples/eval_copy_detection.py --data_path=/data/copydays \\
        --whitening_path=/data/yfcc20k --distractors_path=/data/yfcc10k
"""

import json
import os
import sys

from keras_dino.tools.common import (
    append_log,
    backbone_from_flags,
    define_backbone_flags,
    require_folder,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values, patch_size=8, presets="dino_vitb8", arch="vit_base")
    # --- the official eval_copy_detection.py arguments (names and defaults) ---
    flags.DEFINE_string("data_path", "/path/to/copydays/", "Copydays root (original/, "
                        "strong/, jpegqual/<q>/, crops/<c>/).", **fv)
    flags.DEFINE_string("whitening_path", "/path/to/whitening_data/", "Images to learn the "
                        "PCA whitening from (the paper: 20k random YFCC100M images).", **fv)
    flags.DEFINE_string("distractors_path", "/path/to/distractors/", "Distractor images added "
                        "to the database (the paper: 10k random YFCC100M images).", **fv)
    flags.DEFINE_integer("imsize", 320, "Side of the square resize.", **fv)
    flags.DEFINE_integer("batch_size_per_gpu", 16, "Batch size of the feature extraction.",
                         **fv)
    flags.DEFINE_boolean("use_cuda", True, "Accepted for compatibility; Keras picks the "
                         "device.", **fv)
    flags.DEFINE_integer("num_workers", 10, "Accepted for compatibility.", **fv)
    # --- additions ---
    flags.DEFINE_string("output_dir", None, "Where log.txt gets the results (optional).", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bars (0: none).", **fv)


def run(F):
    """Evaluates the backbone of the flags; returns `evaluate_copy_detection`'s result."""
    from keras_dino.evaluation.copy_detection import evaluate_copy_detection

    require_folder(F.data_path, layout="(the Copydays root: original/, strong/, ...)")
    backbone = backbone_from_flags(F)
    for name, path in (("whitening", F.whitening_path), ("distractors", F.distractors_path)):
        if not os.path.isdir(path):
            say(f"no {name} images ({path} is not a folder): evaluating without {name}.")
    stats = evaluate_copy_detection(backbone, F.data_path, F.whitening_path,
                                    F.distractors_path, imsize=F.imsize,
                                    batch_size=F.batch_size_per_gpu, verbose=F.verbose)
    blocks = [k for k in stats if k not in ("num_database", "whitened")]
    for block in blocks:
        say(f"eval on {block} mAP={stats[block]:.3f}")
    say(f"copy detection: strong mAP {stats.get('strong', float('nan')):.3f} against "
        f"{stats['num_database']} database images"
        f"{', whitened' if stats['whitened'] else ''}.")
    record = {"mAP": {block: round(stats[block], 4) for block in blocks},
              "num_database": stats["num_database"], "whitened": stats["whitened"]}
    if F.output_dir:
        append_log(F.output_dir, {**record, "imsize": F.imsize})
    print(json.dumps(record), flush=True)  # the tool's last line: its figures
    return stats


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
