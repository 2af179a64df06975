"""Segmentation from attention: the paper's Jaccard of thresholded self-attention masks.

The paper measures how well the last block's self-attention of the CLS token
segments objects (its table and figure on self-attention masks): each head's map is
thresholded to keep 60% of its mass, upsampled to the image, and compared with the
ground-truth masks of PASCAL VOC 2012 val by the Jaccard index (intersection over
union); the figure is reported per head and for the best head. There is no official
script; this module is keras_dino's reading of that text:

* **Images** are seen as `visualize_attention.py` sees them (`attention_input`): resized
  to `image_size` (one value: the shorter side, aspect kept; two: height and width),
  normalised, and cut to whole patches at the bottom and right.
* **Masks**: per head, the smallest set of patches holding `threshold` of the CLS
  attention (`attention_threshold_mask`), upsampled by the patch size (`upsample_nearest`)
  to the resized image.
* **Ground truth** is resized to the same size as the image with nearest-neighbour
  sampling (labels must not blend) and cut the same way, so that both are compared at
  one resolution: the evaluation one. The rows and columns the patch cut drops (fewer
  than a patch) are not scored.
* **Labels**: the VOC palette PNGs hold indices. 0 is background, 255 the void /
  object-boundary band, which is ignored (neither counted as a hit nor as a miss), and
  any other value (a class in `SegmentationClass/`, an instance in
  `SegmentationObject/`) is foreground: the masks say "object or not", not which one.
* **Jaccard** per image and head: `|M ∩ G| / |M ∪ G|` over non-void pixels; when both
  are empty (no foreground and nothing predicted, on the pixels that count) the masks
  agree and the index is 1. The figure of a head is the mean over images; the best head
  is the one with the highest mean (the first one on a tie). Reported in percent.

Layout (`data_path`, the `VOC2012/` folder of the official VOCdevkit): `JPEGImages/<id>.jpg`,
`SegmentationObject/<id>.png` or `SegmentationClass/<id>.png`, and the ids in
`ImageSets/Segmentation/<image_set>.txt`.
"""

import os

import numpy as np

from keras_dino.evaluation.attention_maps import (
    attention_input,
    attention_resize_shape,
    attention_threshold_mask,
    cls_attention_maps,
    require_self_attention,
    upsample_nearest,
)

VOID_LABEL = 255
SEGMENTATION_FOLDERS = {"object": "SegmentationObject", "class": "SegmentationClass"}


def voc_palette() -> list:
    """The PASCAL VOC colour map: 256 RGB triples, flat, for `PIL.Image.putpalette`.

    Index `i`'s colour spreads its bits over the channels, most significant first
    (bit 0 to red, 1 to green, 2 to blue, then the next three one level down). A full
    256-entry palette also keeps PIL from renumbering the indices when it saves a PNG.

    Example:

    >>> palette = voc_palette()
    >>> len(palette), palette[3:6], palette[-3:]  # 1: aeroplane; 255: void
    (768, [128, 0, 0], [224, 224, 192])
    """
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for level in range(7, -1, -1):
            red |= (bits & 1) << level
            green |= ((bits >> 1) & 1) << level
            blue |= ((bits >> 2) & 1) << level
            bits >>= 3
        palette += [red, green, blue]
    return palette


def read_image_set(data_path, image_set: str = "val") -> list:
    """The ids of `ImageSets/Segmentation/<image_set>.txt`, in file order.

    One id per line (its first word); blank lines are skipped. A missing list is a
    `FileNotFoundError`, an empty one a `ValueError`.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "ImageSets/Segmentation").mkdir(parents=True)
    >>> _ = (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\\n\\n2007_000042\\n")
    >>> read_image_set(root, "val")
    ['2007_000033', '2007_000042']
    """
    path = os.path.join(data_path, "ImageSets", "Segmentation", f"{image_set}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image-set list {path}: expected the PASCAL VOC layout "
                                "(ImageSets/Segmentation/<image_set>.txt under --data_path).")
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"the image-set list {path} is empty: no image to evaluate.")
    return ids


def read_index_mask(path) -> np.ndarray:
    """The label indices of a palette (mode "P") PNG, uint8 `(H, W)`.

    VOC masks are indexed images: each pixel stores a class or instance index, and the
    palette only colours it. An RGB (or grayscale) rendering is refused with a
    `ValueError`: its colours are not the indices.

    Example:

    >>> import tempfile
    >>> from PIL import Image
    >>> mask = Image.fromarray(np.array([[0, 1], [255, 2]], np.uint8))
    >>> mask.putpalette(voc_palette())  # now a palette image
    >>> path = tempfile.mktemp(suffix=".png")
    >>> mask.save(path)
    >>> read_index_mask(path).tolist()
    [[0, 1], [255, 2]]
    """
    from PIL import Image

    with Image.open(path) as mask:
        if mask.mode != "P":
            raise ValueError(f"{path} is a mode '{mask.mode}' image, not a palette (indexed) "
                             "PNG: PASCAL VOC masks store label indices in a palette image.")
        return np.asarray(mask, np.uint8)


def voc_segmentation_files(data_path, image_set: str = "val",
                           segmentation: str = "object") -> list:
    """`(id, image_path, mask_path)` of every listed id, all checked before any is read.

    Each id needs `JPEGImages/<id>.jpg` and `<Segmentation folder>/<id>.png` of the same
    size (`segmentation`: "object" for `SegmentationObject/`, "class" for
    `SegmentationClass/`). A missing file is a `FileNotFoundError` and a size mismatch
    a `ValueError`, both naming the id.

    Example:

    ```python
    files = voc_segmentation_files("VOCdevkit/VOC2012", "val", "object")
    files[0]  # ('2007_000033', '.../JPEGImages/2007_000033.jpg', '.../SegmentationObject/2007_000033.png')
    ```
    """
    from PIL import Image

    if segmentation not in SEGMENTATION_FOLDERS:
        raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATION_FOLDERS)}; "
                         f"got '{segmentation}'.")
    folder = SEGMENTATION_FOLDERS[segmentation]
    files = []
    for image_id in read_image_set(data_path, image_set):
        image_path = os.path.join(data_path, "JPEGImages", f"{image_id}.jpg")
        mask_path = os.path.join(data_path, folder, f"{image_id}.png")
        for what, path in (("image", image_path), ("mask", mask_path)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no {what} for '{image_id}' of {image_set}.txt: "
                                        f"{path} does not exist.")
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            if image.size != mask.size:
                raise ValueError(f"'{image_id}': the image is {image.size[0]}x{image.size[1]} "
                                 f"but its mask {mask.size[0]}x{mask.size[1]} (width x "
                                 "height); they must have the same size.")
        files.append((image_id, image_path, mask_path))
    return files


def resize_labels_nearest(labels, size) -> np.ndarray:
    """A label map resized to `size` = `(height, width)` by nearest-neighbour sampling.

    Output pixel `i` takes input pixel `floor((i + 1/2) * H / h)`: the one under its
    centre, computed exactly in integers (PIL's `NEAREST` takes the same pixels, up to
    its rounding of exact ties). Labels are copied, never blended.

    Example:

    >>> resize_labels_nearest(np.array([[1, 2], [3, 4]]), (2, 4)).tolist()
    [[1, 1, 2, 2], [3, 3, 4, 4]]
    >>> resize_labels_nearest(np.arange(16).reshape(4, 4), (2, 2)).tolist()
    [[5, 7], [13, 15]]
    """
    labels = np.asarray(labels)
    (height, width), (new_h, new_w) = labels.shape[-2:], (int(size[0]), int(size[1]))
    rows = ((2 * np.arange(new_h) + 1) * height) // (2 * new_h)
    cols = ((2 * np.arange(new_w) + 1) * width) // (2 * new_w)
    return labels[..., rows[:, None], cols[None, :]]


def jaccard_index(masks, ground_truth, void_label: int = VOID_LABEL) -> np.ndarray:
    """Jaccard index of binary masks against a label map, void pixels excluded.

    Args:
        masks: boolean `(H, W)` or per head `(heads, H, W)`.
        ground_truth: label indices `(H, W)`: 0 background, `void_label` ignored, any
            other value foreground.
        void_label: the ignored label (VOC: 255).

    Returns:
        float64, a scalar array for one mask or `(heads,)`: `|M ∩ G| / |M ∪ G|` over the
        non-void pixels, and 1 where both are empty there.

    Example:

    >>> gt = np.array([[0, 1, 1], [255, 1, 0]])
    >>> pred = np.array([[1, 1, 0], [1, 0, 0]], bool)  # its void pixel does not count
    >>> float(jaccard_index(pred, gt))  # 1 common pixel out of 4
    0.25
    >>> jaccard_index(np.zeros((2, 2, 3), bool), np.zeros((2, 3))).tolist()  # both empty
    [1.0, 1.0]
    """
    masks = np.asarray(masks, bool)
    ground_truth = np.asarray(ground_truth)
    if masks.shape[-2:] != ground_truth.shape:
        raise ValueError(f"masks of {masks.shape[-2:]} pixels against a ground truth of "
                         f"{ground_truth.shape}: compare them at one resolution.")
    valid = ground_truth != void_label
    foreground = valid & (ground_truth != 0)
    predicted = masks & valid
    intersection = (predicted & foreground).sum(axis=(-2, -1))
    union = (predicted | foreground).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def attention_segmentation_masks(backbone, image, image_size=480,
                                 threshold: float = 0.6) -> np.ndarray:
    """Per head, the foreground mask of an image: `threshold` of the CLS attention mass.

    The image is resized and cut as `attention_input` does; the mask of each head
    (`attention_threshold_mask`) is upsampled by the patch size to that resolution.

    Args:
        backbone: a backbone with `get_last_selfattention` (ViT, XCiT).
        image: uint8 (0..255) RGB `(H, W, 3)`.
        image_size: one value (the shorter side) or `(height, width)`.
        threshold: the fraction of each head's attention mass the mask keeps.

    Returns:
        bool `(heads, h, w)`, `h` and `w` the resized size cut to whole patches.

    Example:

    >>> from keras_dino.models import VisionTransformer
    >>> vit = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> masks = attention_segmentation_masks(vit, np.zeros((30, 45, 3), "uint8"), 20)
    >>> masks.shape, masks.dtype.name  # resized to 20x30, cut to 16x24
    ((2, 16, 24), 'bool')
    """
    require_self_attention(backbone, "segmentation masks from attention")
    x, _ = attention_input(image, image_size, backbone.patch_size)
    maps = cls_attention_maps(backbone, x)
    return upsample_nearest(attention_threshold_mask(maps, threshold), backbone.patch_size)


def ground_truth_at(mask, masks_shape, image_size) -> np.ndarray:
    """A ground-truth label map at the resolution of `attention_segmentation_masks`.

    Resized (nearest neighbour) to the size the image was resized to, then cut to the
    `(h, w)` of the masks, as the image was.

    Example:

    >>> ground_truth_at(np.zeros((30, 45), "uint8"), (2, 16, 24), 20).shape
    (16, 24)
    """
    mask = np.asarray(mask)
    height, width = mask.shape
    resized = resize_labels_nearest(mask, attention_resize_shape(height, width, image_size))
    return resized[: masks_shape[-2], : masks_shape[-1]]


def image_attention_jaccard(backbone, image, mask, image_size=480,
                            threshold: float = 0.6) -> np.ndarray:
    """The Jaccard index of each head's attention mask on one image, `(heads,)` in 0..1.

    The per-image work of `evaluate_attention_segmentation` (what a benchmark times):
    `attention_segmentation_masks`, the ground truth brought to their resolution by
    `ground_truth_at`, and `jaccard_index`.

    Args:
        backbone: a backbone with `get_last_selfattention`.
        image: uint8 RGB `(H, W, 3)`.
        mask: the label indices `(H, W)` of the same image (0 background, 255 void).
        image_size: one value (the shorter side) or `(height, width)`.
        threshold: the fraction of the attention mass each mask keeps.

    Example:

    >>> from keras_dino.models import VisionTransformer
    >>> vit = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> void = np.full((30, 45), 255, "uint8")  # nothing to score: every head agrees
    >>> image_attention_jaccard(vit, np.zeros((30, 45, 3), "uint8"), void, 20).tolist()
    [1.0, 1.0]
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"an image of {image.shape[:2]} pixels with a mask of {mask.shape}: "
                         "they must have the same size.")
    masks = attention_segmentation_masks(backbone, image, image_size, threshold)
    return jaccard_index(masks, ground_truth_at(mask, masks.shape, image_size))


def _read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _save_head_masks(masks, shape, image_size, output_dir, image_id):
    """Each head's mask as a palette PNG of the original image's size (0 bg, 1 fg)."""
    from PIL import Image

    height, width = shape
    resized_h, resized_w = attention_resize_shape(height, width, image_size)
    full = np.zeros((masks.shape[0], resized_h, resized_w), np.uint8)
    full[:, : masks.shape[1], : masks.shape[2]] = masks  # the cut border: not foreground
    palette = voc_palette()
    for head, mask in enumerate(resize_labels_nearest(full, (height, width))):
        folder = os.path.join(output_dir, f"head{head}")
        os.makedirs(folder, exist_ok=True)
        out = Image.fromarray(mask)
        out.putpalette(palette)  # a palette image, as the VOC masks
        out.save(os.path.join(folder, f"{image_id}.png"))


def evaluate_attention_segmentation(backbone, data_path, image_set: str = "val",
                                    image_size=480, threshold: float = 0.6,
                                    segmentation: str = "object",
                                    max_images: int | None = None,
                                    save_masks_dir: str | None = None,
                                    verbose: int = 1) -> dict:
    """Jaccard of each head's thresholded CLS attention against VOC masks, in percent.

    Args:
        backbone: a backbone with `get_last_selfattention` (ViT, XCiT).
        data_path: the VOC root (`VOCdevkit/VOC2012/`), see the module's docstring.
        image_set: the list `ImageSets/Segmentation/<image_set>.txt`.
        image_size: one value (the shorter side) or `(height, width)`.
        threshold: the fraction of each head's attention mass its mask keeps.
        segmentation: "object" (`SegmentationObject/`) or "class" (`SegmentationClass/`).
        max_images: evaluate only the first ones of the list (None: all).
        save_masks_dir: where to write each head's mask per image,
            `<dir>/head<i>/<id>.png` (palette PNGs of the image's size, 1 foreground).
        verbose: a progress bar (0: none).

    Returns:
        A dict: `jaccard_per_head` (list, %), `jaccard_best_head` (%), `best_head`,
        `num_images`, `ids` and `per_image` (`(num_images, heads)` array, %).

    Example:

    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> from keras_dino.models import VisionTransformer
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for sub in ("JPEGImages", "SegmentationObject", "ImageSets/Segmentation"):
    ...     (root / sub).mkdir(parents=True)
    >>> Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "JPEGImages/a.jpg")
    >>> mask = Image.fromarray(np.zeros((24, 32), np.uint8))
    >>> mask.putpalette(voc_palette())
    >>> mask.save(root / "SegmentationObject/a.png")
    >>> _ = (root / "ImageSets/Segmentation/val.txt").write_text("a\\n")
    >>> vit = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> result = evaluate_attention_segmentation(vit, root, image_size=16, verbose=0)
    >>> result["jaccard_per_head"], result["num_images"]  # no object: every mask misses
    ([0.0, 0.0], 1)
    """
    import keras

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the attention mass, in (0, 1]; got "
                         f"{threshold}.")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1 (or None for all); got {max_images}.")
    files = voc_segmentation_files(data_path, image_set, segmentation)[:max_images]
    bar = keras.utils.Progbar(len(files), unit_name="images") if verbose else None
    scores = []
    for image_id, image_path, mask_path in files:
        image, mask = _read_rgb(image_path), read_index_mask(mask_path)
        if save_masks_dir is None:
            scores.append(image_attention_jaccard(backbone, image, mask, image_size, threshold))
        else:
            masks = attention_segmentation_masks(backbone, image, image_size, threshold)
            scores.append(jaccard_index(masks, ground_truth_at(mask, masks.shape, image_size)))
            _save_head_masks(masks, mask.shape, image_size, save_masks_dir, image_id)
        if bar is not None:
            bar.add(1)
    per_image = 100.0 * np.stack(scores)
    per_head = per_image.mean(axis=0)
    best = int(np.argmax(per_head))
    return {
        "jaccard_best_head": float(per_head[best]),
        "jaccard_per_head": [float(v) for v in per_head],
        "best_head": best,
        "num_images": len(files),
        "ids": [image_id for image_id, _, _ in files],
        "per_image": per_image,
    }
