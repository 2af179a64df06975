"""Segmentation from attention: the paper's Jaccard of thresholded self-attention masks.

The paper compares, on PASCAL VOC 2012 val, the ground-truth masks with masks obtained
by thresholding each head's self-attention map of the CLS token (last block) to keep
60% of the mass, and reports the Jaccard similarity per head and for the best head.
There is no official script; `keras_dino.evaluation.attention_segmentation` documents
the reading this tool follows (images resized as `visualize_attention.py` does, ground
truth resized to match by nearest neighbour, label 0 background, 255 ignored, any other
label foreground). Prints a progress bar, one line per head, and last one JSON line
`{"jaccard_best_head": ..., "jaccard_per_head": [...]}` (percent). With `--output_dir`,
`log.txt` gets that line with the settings; `--save_masks` also writes each head's mask
per image to `<output_dir>/masks/head<i>/<id>.png`.

The paper's ViT-S/8 on VOC 2012 val (`VOCdevkit/VOC2012/` of the trainval tar):

    python examples/eval_attention_segmentation.py --pretrained_weights=dino_vits8 \\
        --data_path=/data/VOCdevkit/VOC2012 --output_dir=out/attention_segmentation
"""

import json
import os
import sys

from keras_dino.tools.common import (
    append_log,
    backbone_from_flags,
    define_backbone_flags,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values`."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values, patch_size=8, presets="dino_vits8")
    flags.DEFINE_string("data_path", "/path/to/VOCdevkit/VOC2012/", "PASCAL VOC root "
                        "(JPEGImages/, SegmentationObject/ or SegmentationClass/, "
                        "ImageSets/Segmentation/<image_set>.txt).", **fv)
    flags.DEFINE_string("image_set", "val", "The ids of ImageSets/Segmentation/<image_set>.txt.",
                        **fv)
    flags.DEFINE_enum("segmentation", "object", ["object", "class"], "Ground truth: "
                      "SegmentationObject/ or SegmentationClass/ (the same foreground).", **fv)
    flags.DEFINE_list("image_size", ["480"], "Resize to this shorter side (one value, aspect "
                      "kept) or to height,width, as visualize_attention.py.", **fv)
    flags.DEFINE_float("threshold", 0.6, "Fraction of each head's attention mass its mask "
                       "keeps.", **fv)
    flags.DEFINE_integer("max_images", None, "Evaluate only the first images of the list.",
                         **fv)
    flags.DEFINE_string("output_dir", None, "Where log.txt gets the results (optional).", **fv)
    flags.DEFINE_boolean("save_masks", False, "Also write each head's mask per image to "
                         "<output_dir>/masks/head<i>/<id>.png (needs --output_dir).", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bar (0: none).", **fv)


def run(F):
    """Evaluates the backbone of the flags; returns `evaluate_attention_segmentation`'s dict."""
    from keras_dino.evaluation.attention_segmentation import evaluate_attention_segmentation

    if F.save_masks and not F.output_dir:
        raise app.UsageError("--save_masks writes into --output_dir; give one.")
    if not os.path.isdir(F.data_path):
        raise app.UsageError(f"--data_path={F.data_path} is not a folder (the VOC2012/ folder "
                             "of VOCdevkit).")
    if not 0.0 < F.threshold <= 1.0:
        raise app.UsageError(f"--threshold={F.threshold}: a fraction of the mass, in (0, 1].")
    image_size = [int(v) for v in F.image_size]
    if len(image_size) not in (1, 2):
        raise app.UsageError(f"--image_size takes one or two values; got {F.image_size}.")
    backbone = backbone_from_flags(F)
    masks_dir = os.path.join(F.output_dir, "masks") if F.save_masks else None
    stats = evaluate_attention_segmentation(
        backbone, F.data_path, image_set=F.image_set, image_size=image_size,
        threshold=F.threshold, segmentation=F.segmentation, max_images=F.max_images,
        save_masks_dir=masks_dir, verbose=F.verbose)
    for head, value in enumerate(stats["jaccard_per_head"]):
        say(f"head {head}: Jaccard {value:.2f}")
    say(f"segmentation from attention: best head {stats['best_head']}, Jaccard "
        f"{stats['jaccard_best_head']:.2f} over {stats['num_images']} images of "
        f"{F.image_set} ({F.segmentation} masks, {F.threshold:.0%} of the mass)."
        + (f" Masks in {masks_dir}." if masks_dir else ""))
    record = {"jaccard_best_head": round(stats["jaccard_best_head"], 2),
              "jaccard_per_head": [round(v, 2) for v in stats["jaccard_per_head"]]}
    if F.output_dir:
        append_log(F.output_dir, {**record, "best_head": stats["best_head"],
                                  "num_images": stats["num_images"], "image_set": F.image_set,
                                  "segmentation": F.segmentation, "threshold": F.threshold,
                                  "image_size": image_size})
    print(json.dumps(record), flush=True)  # the tool's last line: its figures
    return stats


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
