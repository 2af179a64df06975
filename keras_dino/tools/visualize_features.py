"""Pictures of the patch features: PCA colours, a foreground mask, correspondences.

The flags of `visualize_attention.py` (`--image_path`, `--image_size`, `--output_dir`,
the backbone flags), plus `--image_path2`, `--foreground_only` and `--threshold`. Each
image is resized to `--image_size` (two values: height and width; one: the shorter
side), cut to whole patches and normalised, and its patch features are computed (a
ResNet's cells of its last feature map). Written to `--output_dir`, each image's pictures
at its own resolution (nearest-neighbour upsampling of the patch grid), the
correspondences at the model inputs' sizes:

* `pca.png`: the first three principal components of the patch features as RGB
  (fitted on every given image together; with `--foreground_only`, on the foreground
  patches only, the background black);
* `foreground.png`: the patches whose first component, scaled to [0, 1], is above
  `--threshold`, on the side of the component that covers fewer border patches;
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
    backbone_load_kwargs,
    define_backbone_flags,
    load_backbone,
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
    flags.DEFINE_string("image_path", None, "The image to look at (default: the first image of "
                        "the embedded CIFAR-10 test split).", **fv)
    flags.DEFINE_list("image_size", [480, 480], "Resize to height,width (or one value: the "
                      "shorter side).", **fv)
    flags.DEFINE_string("output_dir", ".", "Where the images are written.", **fv)
    # --- additions ---
    flags.DEFINE_string("image_path2", None, "A second image: PCA fitted on both, and the "
                        "patch correspondences between them.", **fv)
    flags.DEFINE_bool("foreground_only", False, "PCA (and correspondences) of the foreground "
                      "patches only.", **fv)
    flags.DEFINE_float("threshold", 0.5, "Foreground: the first principal component, scaled "
                       "to [0, 1], above this.", **fv)
    flags.DEFINE_integer("max_lines", 64, "Correspondences drawn at most (the most similar).",
                         **fv)


def read_image(path):
    """uint8 RGB `(H, W, 3)` of an image file, and its path."""
    import numpy as np
    from PIL import Image

    if path is None:
        from keras_dino.data.sources import list_image_files
        from keras_dino.datasets import cifar10_mini

        path = list_image_files(cifar10_mini("test")).files[0]
        say(f"no --image_path: using {path}")
    elif not os.path.isfile(path):
        raise app.UsageError(f"{path} is not a file.")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), path


def run(F):
    """Writes the pictures of the flags; returns the written paths."""
    from PIL import Image

    from keras_dino.evaluation import attention_input, feature_images

    backbone = load_backbone(F.pretrained_weights, F.arch, F.patch_size, F.checkpoint_key,
                             **backbone_load_kwargs(F))
    stride = getattr(backbone, "patch_size", 32)  # a ResNet's last map: stride 32
    paths = [F.image_path] + ([F.image_path2] if F.image_path2 else [])
    inputs, shown, names, originals = [], [], [], []
    for path in paths:
        image, name = read_image(path)
        originals.append(image.shape[:2])
        x, picture = attention_input(image, [int(v) for v in F.image_size], stride)
        inputs.append(x)
        shown.append(picture)
        names.append(name)
    try:
        pictures = feature_images(backbone, inputs, shown, F.foreground_only, F.threshold,
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
