"""Pictures of the patch features: PCA colours, a foreground mask, correspondences.

The flags of `visualize_attention.py` (`--image_path`, `--image_size`, `--output_dir`,
the backbone flags), plus `--image_path2`, `--foreground_only` and
`--foreground_threshold`. Each image is resized to `--image_size` (two values: height
and width; one: the shorter side), cut to whole patches and normalised, and its patch
features are computed (a ResNet's cells of its last feature map). Written to `--output_dir`, each image's pictures
at its own resolution (nearest-neighbour upsampling of the patch grid), the
correspondences at the model inputs' sizes:

* `pca.png`: the first three principal components of the patch features as RGB
  (fitted on every given image together; with `--foreground_only`, on the foreground
  patches only, the background black);
* `foreground.png`: the patches whose first component, scaled to [0, 1], is above
  `--foreground_threshold`, on the side of the component that covers fewer border patches;
* with `--image_path2`: `pca2.png`, `foreground2.png`, and `correspondences.png`, the
  two images side by side with lines joining the mutual nearest neighbours of their
  patch features (cosine; the `--max_lines` most similar pairs).

The last line printed is JSON listing the files. The functions are in
`keras_dino.evaluation` (`pca_rgb`, `foreground_mask`, `mutual_nearest_neighbours`,
`feature_images`).

    python examples/visualize_features.py --pretrained_weights=dino_vits8 \\
        --image_path=cat.jpg --image_path2=other_cat.jpg --output_dir=out/features
"""

import json
import os
import sys

from keras_dino.tools.common import (
    backbone_from_flags,
    define_backbone_flags,
    define_deprecated_alias,
    define_image_flags,
    read_image,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (visualize_attention.py's first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values, patch_size=8, presets="dino_vits8")
    define_image_flags(flag_values)
    # --- additions ---
    flags.DEFINE_string("image_path2", None, "A second image: PCA fitted on both, and the "
                        "patch correspondences between them.", **fv)
    flags.DEFINE_bool("foreground_only", False, "PCA (and correspondences) of the foreground "
                      "patches only.", **fv)
    flags.DEFINE_float("foreground_threshold", 0.5, "Foreground: the first principal "
                       "component, scaled to [0, 1], above this.", **fv)
    flags.DEFINE_integer("max_lines", 64, "Correspondences drawn at most (the most similar).",
                         **fv)
    define_deprecated_alias(flag_values, "threshold", "foreground_threshold")


def run(F):
    """Writes the pictures of the flags; returns the written paths."""
    from PIL import Image

    from keras_dino.evaluation import attention_input, feature_images

    paths = [F.image_path] + ([F.image_path2] if F.image_path2 else [])
    # The images first: a wrong path ends before the weights load (or download).
    images = [read_image(path, flag) for path, flag in zip(paths, ("--image_path",
                                                                   "--image_path2"))]
    backbone = backbone_from_flags(F)
    stride = getattr(backbone, "patch_size", 32)  # a ResNet's last map: stride 32
    inputs, shown, names, originals = [], [], [], []
    for image, name in images:
        originals.append(image.shape[:2])
        x, picture = attention_input(image, [int(v) for v in F.image_size], stride)
        inputs.append(x)
        shown.append(picture)
        names.append(name)
    try:
        pictures = feature_images(backbone, inputs, shown, F.foreground_only,
                                  F.foreground_threshold,
                                  F.max_lines)
    except ValueError as e:  # e.g. no foreground patch at this threshold
        raise app.UsageError(str(e)) from e
    os.makedirs(F.output_dir, exist_ok=True)
    written = []
    for file_name, picture in pictures.items():
        out = os.path.join(F.output_dir, file_name)
        picture = Image.fromarray(picture)
        if file_name != "correspondences.png":  # back to the input's own resolution
            height, width = originals[1 if file_name.endswith("2.png") else 0]
            picture = picture.resize((width, height), Image.NEAREST)
        picture.save(out)
        say(f"{out} saved.")
        written.append(out)
    sizes = [f"{h}x{w}" for h, w in originals]
    print(json.dumps({"images": names, "sizes": sizes, "files": written}), flush=True)
    return written


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
