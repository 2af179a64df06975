"""Image retrieval on revisited Oxford and Paris: the official eval_image_retrieval.py, in Keras.

The official flags keep their names and defaults (`--data_path`, `--dataset`,
`--multiscale`, `--imsize`, `--pretrained_weights`, `--arch`, `--patch_size`,
`--checkpoint_key`, `--num_workers`, `--use_cuda`, the last two accepted for
compatibility: Keras picks the device). Added: `--crop_queries` (crop each query to
its bounding box, the benchmark's own protocol; off, as the official script),
`--output_dir` (a JSON line in `log.txt`) and `--backend`. The last line printed is one
JSON line: `{"dataset": ..., "mAP_M": ..., "mAP_H": ..., "mP@k_M": ..., "mP@k_H": ...}`
(percent).

Layout: `<data_path>/<dataset>/gnd_<dataset>.pkl` and `<data_path>/<dataset>/jpg/*.jpg`
(the revisitop download). The ground-truth pickle is read without running any of its
code. Without `--pretrained_weights`, ViT-S/16 uses the official DINO weights trained on
Google Landmarks v2, as the official tool does.

    python examples/eval_image_retrieval.py --data_path=/data/revisitop \\
        --dataset=roxford5k --multiscale=true --imsize=512
"""

import json
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

GOOGLE_LANDMARKS_PRESET = "dino_vits16_googlelandmark"


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    # --- the official eval_image_retrieval.py arguments (names and defaults) ---
    flags.DEFINE_string("data_path", "/path/to/revisited_paris_oxford/", "Folder holding "
                        "<dataset>/gnd_<dataset>.pkl and <dataset>/jpg/.", **fv)
    flags.DEFINE_enum("dataset", "roxford5k", ["roxford5k", "rparis6k"], "Benchmark.", **fv)
    flags.DEFINE_boolean("multiscale", False, "Average the descriptors at scales 1, 1/sqrt(2) "
                         "and 1/2.", **fv)
    flags.DEFINE_integer("imsize", 224, "Longer side of the images (PIL thumbnail).", **fv)
    flags.DEFINE_boolean("use_cuda", True, "Accepted for compatibility; Keras picks the "
                         "device.", **fv)
    flags.DEFINE_integer("num_workers", 10, "Accepted for compatibility (images are read "
                         "one by one, as the official batch size 1).", **fv)
    # --- additions ---
    flags.DEFINE_boolean("crop_queries", False, "Crop queries to their bounding boxes (the "
                         "revisited benchmark's protocol; the official DINO script does "
                         "not).", **fv)
    flags.DEFINE_string("output_dir", None, "Where log.txt gets the results (optional).", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bars (0: none).", **fv)


def run(F):
    """Evaluates the backbone of the flags; returns `evaluate_retrieval`'s statistics."""
    from keras_dino.evaluation.retrieval import evaluate_retrieval

    require_folder(F.data_path, layout=f"(holding {F.dataset}/gnd_{F.dataset}.pkl and "
                   f"{F.dataset}/jpg/)")
    weights = F.pretrained_weights
    if not weights and (F.arch, F.patch_size) == ("vit_small", 16):
        say("no --pretrained_weights: the official DINO ViT-S/16 trained on Google "
            "Landmarks v2.")
        weights = GOOGLE_LANDMARKS_PRESET
    backbone = backbone_from_flags(F, weights)
    stats = evaluate_retrieval(backbone, F.data_path, F.dataset, imsize=F.imsize,
                               multiscale=F.multiscale, crop_queries=F.crop_queries,
                               verbose=F.verbose)
    say(f"train: {stats['num_database']} imgs / query: {stats['num_queries']} imgs")
    say(f">> {F.dataset}: mAP M: {stats['mAP_medium']:.2f}, H: {stats['mAP_hard']:.2f}")
    ks = sorted(stats["mP@k_medium"])
    medium = [round(stats["mP@k_medium"][k], 2) for k in ks]
    hard = [round(stats["mP@k_hard"][k], 2) for k in ks]
    say(f">> {F.dataset}: mP@k{ks} M: {medium}, H: {hard}")
    record = {"dataset": F.dataset, "mAP_M": round(stats["mAP_medium"], 2),
              "mAP_H": round(stats["mAP_hard"], 2),
              "mP@k_M": {k: round(v, 2) for k, v in stats["mP@k_medium"].items()},
              "mP@k_H": {k: round(v, 2) for k, v in stats["mP@k_hard"].items()}}
    if F.output_dir:
        append_log(F.output_dir, {**record, "multiscale": F.multiscale, "imsize": F.imsize})
    print(json.dumps(record), flush=True)  # the tool's last line: its figures
    return stats


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
