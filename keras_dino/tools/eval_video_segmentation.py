"""Video object segmentation on DAVIS-2017: the official eval_video_segmentation.py, in Keras.

The first frame's annotation of each sequence is propagated through the video by the
patch features of the backbone's last block (`keras_dino.evaluation.video_segmentation`,
the official algorithm and defaults). The official flags keep their names and defaults
(`--pretrained_weights`, `--arch`, `--patch_size`, `--checkpoint_key`, `--output_dir`,
`--data_path`, `--n_last_frames=7`, `--size_mask_neighborhood=12`, `--topk=5`, `--bs`
accepted for compatibility). Masks are written where the official tool writes them,
`<output_dir>/<sequence>/<frame>.png`, palette-indexed like the annotations. Added:
J and F are computed here, for every sequence whose frames all have annotations (the
DAVIS-2017 semi-supervised definitions, `keras_dino.evaluation.davis`), and the last
line printed is one JSON object: `{"J_mean": .., "F_mean": .., "JF_mean": .., ...}`
(percent). Also added: `--subset`, `--sequences`, `--image_size` (the frames' shorter side;
`--scale_size` before), `--backend`.

    python examples/eval_video_segmentation.py --pretrained_weights=dino_vits16 \\
        --data_path=/data/DAVIS --output_dir=out/davis_vits16
"""

import json
import sys

from keras_dino.tools.common import (
    append_log,
    backbone_from_flags,
    define_backbone_flags,
    define_deprecated_alias,
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
    define_backbone_flags(flag_values, patch_size=16, presets="dino_vits16", arch="vit_small")
    # --- the official eval_video_segmentation.py arguments (names and defaults) ---
    flags.DEFINE_string("output_dir", ".", "Where the segmentations are written "
                        "(<output_dir>/<sequence>/<frame>.png).", **fv)
    flags.DEFINE_string("data_path", "/path/to/davis/", "DAVIS-2017 root (JPEGImages/480p, "
                        "Annotations/480p, ImageSets/2017).", **fv)
    flags.DEFINE_integer("n_last_frames", 7, "Number of preceding frames used as context "
                         "besides the first.", **fv)
    flags.DEFINE_integer("size_mask_neighborhood", 12, "Labels come from source patches "
                         "within this many patches of the target (0: anywhere).", **fv)
    flags.DEFINE_integer("topk", 5, "Labels are accumulated from the top k neighbours.", **fv)
    flags.DEFINE_integer("bs", 6, "Accepted for compatibility (unused, as in the official "
                         "tool).", **fv)
    # --- additions ---
    flags.DEFINE_string("subset", "val", "The sequence list ImageSets/2017/<subset>.txt.", **fv)
    flags.DEFINE_list("sequences", None, "Only these sequences (default: the whole list).",
                      **fv)
    flags.DEFINE_list("image_size", ["480"], "Shorter side of the frames fed to the model "
                      "(one value, the official reader's 480; as --image_size of "
                      "visualize_attention.py with one value).", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bars (0: none).", **fv)
    define_deprecated_alias(flag_values, "scale_size", "image_size")


def _shorter_side(values):
    from absl import app

    if len(values) != 1 or not values[0].isdigit() or int(values[0]) <= 0:
        raise app.UsageError(f"--image_size={','.join(values)}: one positive size, the "
                             "shorter side of the frames.")
    return int(values[0])


def run(F):
    """Segments the sequences of the flags; returns `evaluate_video_segmentation`'s dict."""
    from keras_dino.evaluation.video_segmentation import evaluate_video_segmentation

    require_folder(F.data_path, layout="(a DAVIS-2017 root: JPEGImages/480p, Annotations/480p, "
                   "ImageSets/2017)")
    backbone = backbone_from_flags(F)
    result = evaluate_video_segmentation(
        backbone, F.data_path, F.output_dir, subset=F.subset, sequences=F.sequences,
        n_last_frames=F.n_last_frames, size_mask_neighborhood=F.size_mask_neighborhood,
        topk=F.topk, scale_size=_shorter_side(F.image_size), verbose=F.verbose, say=say)
    record = {key: result[key] for key in ("J_mean", "F_mean", "JF_mean") if key in result}
    if record:
        say(f"DAVIS-2017 {F.subset}: J&F {result['JF_mean']:.1f}, J {result['J_mean']:.1f} "
            f"(recall {result['J_recall']:.1f}), F {result['F_mean']:.1f} "
            f"(recall {result['F_recall']:.1f}) over {result['scored_sequences']} sequences.")
    else:
        say("no sequence has annotations for all its frames: segmentations written, not "
            "scored.")
    say(f"{result['frames']} frames of {result['sequences']} sequences in {F.output_dir}; "
        f"features {result['timings']['features']:.1f} s, propagation "
        f"{result['timings']['propagation']:.1f} s.")
    record.update(sequences=result["sequences"], frames=result["frames"],
                  scored_sequences=result["scored_sequences"])
    append_log(F.output_dir, {**record, "per_sequence": result["per_sequence"]})
    print(json.dumps(record), flush=True)  # the tool's last line: its figures
    return result


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
