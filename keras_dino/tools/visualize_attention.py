"""Self-attention maps of the CLS token: the official visualize_attention.py, in Keras.

The official flags keep their names and defaults (`--image_size=480,480`, absl style).
The image is resized to `--image_size` (two values: height and width; one: the shorter
side), cut to whole patches and normalised; the last block's attention of the CLS token
to every patch is written per head to `<output_dir>/attn-head<i>.png`, next to the
image (`img.png`) and an overlay of every head (`attn-overlay.png`). With `--threshold`,
`mask_th<threshold>_head<i>.png` show, per head, the smallest set of patches that holds
that fraction of the attention. Without `--image_path`, the first image of the embedded
CIFAR-10 test split is used (the official tool downloads one; this one works offline).

The official ViT-S/8 at 480x480, with the masks of the paper:

    python examples/visualize_attention.py --pretrained_weights=dino_vits8 \\
        --image_path=cat.jpg --threshold=0.6 --output_dir=out/attention
"""

import sys

from keras_dino.tools.common import (
    backbone_from_flags,
    define_backbone_flags,
    define_image_flags,
    read_image,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values, patch_size=8, presets="dino_vits8")
    # --- the official visualize_attention.py arguments (names and defaults) ---
    define_image_flags(flag_values)
    flags.DEFINE_float("threshold", None, "Also draw, per head, the patches that hold this "
                       "fraction of the attention mass (e.g. 0.6).", **fv)
    # --- additions ---


def run(F):
    """Writes the attention images of the flags; returns the written paths."""
    from keras_dino.evaluation import (
        attention_input,
        cls_attention_maps,
        save_attention_images,
        save_threshold_masks,
    )

    image, path = read_image(F.image_path)  # a wrong path ends before the weights load
    backbone = backbone_from_flags(F)
    patch = backbone.patch_size
    x, shown = attention_input(image, [int(v) for v in F.image_size], patch)
    maps = cls_attention_maps(backbone, x)
    paths = save_attention_images(shown, maps, F.output_dir, patch, threshold=F.threshold)
    if F.threshold is not None:
        paths += save_threshold_masks(shown, maps, F.output_dir, patch, F.threshold)
    for written in paths:
        say(f"{written} saved.")
    heads, grid_h, grid_w = maps.shape
    say(f"{heads} heads, CLS attention of the last block over {grid_h}x{grid_w} patches of "
        f"{path} at {shown.shape[0]}x{shown.shape[1]}: {len(paths)} images in {F.output_dir}")
    return paths


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
