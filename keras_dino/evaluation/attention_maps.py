"""Attention maps of the last block, as the official `visualize_attention.py` draws them."""

import numpy as np
from keras import ops


def require_self_attention(backbone, what: str = "attention maps") -> None:
    """A `WrongModelError` naming the fix unless `backbone` has a last self-attention to
    read (a Vision Transformer or an XCiT; a ResNet or a DINO training model has none).

    Example:

    >>> from keras_dino.models.resnet import ResNet
    >>> require_self_attention(ResNet("basic", (1, 1), stage_widths=(8, 16)))
    Traceback (most recent call last):
    ...
    keras_dino.errors.WrongModelError: attention maps need a backbone's self-attention; a ResNet has none: use a Vision Transformer or an XCiT.
    """
    from keras_dino.errors import WrongModelError

    if hasattr(backbone, "get_last_selfattention"):
        return
    name = type(backbone).__name__
    fix = ("pass its teacher backbone (model.teacher.backbone)" if hasattr(backbone, "teacher")
           else "use a Vision Transformer or an XCiT")
    raise WrongModelError(f"{what} need a backbone's self-attention; a {name} has none: {fix}.")


def cls_attention_maps(backbone, image):
    """Per-head attention of the CLS token to every patch, `(heads, grid_h, grid_w)`.

    Args:
        backbone: a `VisionTransformer`.
        image: one normalised image `(H, W, 3)` (or a batch of one), H and W multiples of
            the patch size.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> maps = cls_attention_maps(vit_tiny(16, depth=1), np.zeros((64, 32, 3), "float32"))
    >>> maps.shape
    (3, 4, 2)
    """
    require_self_attention(backbone)
    image = ops.convert_to_tensor(image, "float32")
    if len(image.shape) == 3:
        image = image[None]
    grid_h, grid_w = backbone.patch_grid(image.shape[1], image.shape[2])
    attn = ops.convert_to_numpy(backbone.get_last_selfattention(image))
    # The patches follow the class token (and a ViT's register tokens).
    return attn[0, :, 0, backbone.num_prefix_tokens:].reshape(attn.shape[1], grid_h, grid_w)


def attention_threshold_mask(maps, threshold: float = 0.6):
    """Per head, the smallest set of patches holding `threshold` of the attention mass.

    The official rule: sort a head's attention ascending, normalise to sum 1, and keep
    the patches whose cumulative mass exceeds `1 - threshold` (so the kept, largest
    patches hold at least `threshold` of the mass, and no smaller set does).

    Example:

    >>> m = np.array([[[0.1, 0.2], [0.3, 0.4]]])
    >>> attention_threshold_mask(m, 0.6).astype(int).tolist()
    [[[0, 0], [1, 1]]]
    """
    maps = np.asarray(maps, np.float64)
    heads = maps.shape[0]
    flat = maps.reshape(heads, -1)
    order = np.argsort(flat, axis=1, kind="stable")
    values = np.take_along_axis(flat, order, axis=1)
    values = values / values.sum(axis=1, keepdims=True)
    keep_sorted = np.cumsum(values, axis=1) > (1.0 - threshold)
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep.reshape(maps.shape)


def upsample_nearest(maps, factor: int):
    """Nearest-neighbour upsampling of `(heads, h, w)` maps by an integer factor."""
    maps = np.asarray(maps)
    return maps.repeat(factor, axis=-2).repeat(factor, axis=-1)


def attention_resize_shape(height: int, width: int, image_size) -> tuple:
    """The `(height, width)` that `attention_input` resizes an image to, before the crop.

    Two values of `image_size` are the size itself; one is the shorter side, the longer
    one scaled to keep the aspect ratio and rounded down, as torchvision's `Resize`.

    Example:

    >>> attention_resize_shape(300, 451, 40), attention_resize_shape(300, 451, (60, 90))
    ((40, 60), (60, 90))
    """
    sizes = [int(v) for v in np.atleast_1d(image_size)]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    if len(sizes) != 1:
        raise ValueError(f"image_size must be one or two values; got {image_size}.")
    short = sizes[0]
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def attention_input(image, image_size, patch_size: int):
    """An image as `visualize_attention.py` feeds it: resized, cropped to patches, normalised.

    The official transform: resize to `image_size` (two values: exactly `(height, width)`;
    one value: the shorter side, as torchvision's `Resize`) with antialiased bilinear
    interpolation, normalise, and drop the last rows and columns that do not fill a patch.

    Args:
        image: uint8 (or 0..255) image `(H, W, 3)`.
        image_size: an int, or a `(height, width)` pair.
        patch_size: the backbone's patch size.

    Returns:
        `(x, shown)`: the float32 model input `(h, w, 3)` and the same pixels as uint8,
        for display; `h` and `w` are multiples of `patch_size`.

    Example:

    >>> x, shown = attention_input(np.zeros((300, 451, 3), "uint8"), (60, 90), 8)
    >>> x.shape, shown.shape, shown.dtype.name
    ((56, 88, 3), (56, 88, 3), 'uint8')
    >>> attention_input(np.zeros((300, 451, 3), "uint8"), 64, 16)[0].shape
    (64, 96, 3)
    """
    from keras_dino.preprocessing import normalize_images

    image = np.asarray(image)
    height, width = image.shape[:2]
    new_h, new_w = attention_resize_shape(height, width, image_size)
    x = ops.cast(ops.convert_to_tensor(image), "float32")
    if (new_h, new_w) != (height, width):
        x = ops.image.resize(x, (new_h, new_w), interpolation="bilinear", antialias=True)
        x = ops.clip(ops.round(x), 0.0, 255.0)  # PIL's uint8 output
    shown = ops.convert_to_numpy(x).astype("uint8")
    h, w = new_h - new_h % patch_size, new_w - new_w % patch_size
    if h == 0 or w == 0:
        raise ValueError(f"an image of {new_h}x{new_w} holds no {patch_size}x{patch_size} patch.")
    shown = shown[:h, :w]
    x = ops.convert_to_numpy(normalize_images(shown[None]))[0]
    return x, shown


# One colour per head for the masks (RGB, 0..255); heads beyond the list reuse it.
_MASK_COLORS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
     [0, 128, 128], [170, 110, 40]],
    dtype=np.float64,
)


def _mask_overlay(image, mask, color, alpha=0.5):
    """`image` with `mask` tinted in `color` and its outline drawn in full colour."""
    out = np.asarray(image, np.float64).copy()
    mask = np.asarray(mask, bool)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    )
    out[mask & ~interior] = color
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_threshold_masks(image, maps, output_dir, patch_size: int, threshold: float = 0.6):
    """Writes `mask_th<threshold>_head<i>.png`: each head's thresholded mask over the image.

    The masks are `attention_threshold_mask(maps, threshold)` upsampled to pixels, drawn
    tinted with their outline on `image`, one PNG per head of exactly the image's size
    (the files of the official `visualize_attention.py --threshold`).

    Args:
        image: the displayed image, uint8 `(H, W, 3)` at the resolution the maps cover.
        maps: `(heads, grid_h, grid_w)` from `cls_attention_maps`.
        output_dir: folder to write into (created if needed).
        patch_size: the backbone's patch size (upsampling factor).
        threshold: attention mass the masks keep.

    Returns:
        The list of written paths.

    Example:

    >>> import tempfile
    >>> maps = np.random.default_rng(0).random((2, 3, 4))
    >>> paths = save_threshold_masks(np.zeros((24, 32, 3), "uint8"), maps, tempfile.mkdtemp(), 8)
    >>> [p.rsplit("/", 1)[-1] for p in paths]
    ['mask_th0.6_head0.png', 'mask_th0.6_head1.png']
    """
    import os

    from matplotlib import image as mpimg

    os.makedirs(output_dir, exist_ok=True)
    masks = upsample_nearest(attention_threshold_mask(maps, threshold), patch_size)
    image = np.asarray(image)[: masks.shape[1], : masks.shape[2]]
    paths = []
    for h, mask in enumerate(masks):
        color = _MASK_COLORS[h % len(_MASK_COLORS)]
        path = os.path.join(output_dir, f"mask_th{threshold}_head{h}.png")
        mpimg.imsave(path, _mask_overlay(image, mask, color))
        paths.append(path)
    return paths


def save_attention_images(image, maps, output_dir, patch_size, threshold=0.6, prefix="attn"):
    """Writes `<prefix>-head<i>.png` per head, the thresholded masks, and an overlay.

    Args:
        image: the displayed image, uint8 `(H, W, 3)` at the resolution the maps cover.
        maps: `(heads, grid_h, grid_w)` from `cls_attention_maps`.
        output_dir: folder to write into (created if needed).
        patch_size: the backbone's patch size (upsampling factor).
        threshold: mass kept by the masks (None to skip them).

    Returns:
        The list of written paths.
    """
    import os

    from matplotlib import image as mpimg

    from keras_dino.reporting import agg_figure

    os.makedirs(output_dir, exist_ok=True)
    maps = np.asarray(maps)
    heads = maps.shape[0]
    up = upsample_nearest(maps, patch_size)
    image = np.asarray(image)[: up.shape[1], : up.shape[2]]
    paths = []
    mpimg.imsave(os.path.join(output_dir, "img.png"), image)
    paths.append(os.path.join(output_dir, "img.png"))
    for h in range(heads):
        path = os.path.join(output_dir, f"{prefix}-head{h}.png")
        mpimg.imsave(path, up[h], format="png", cmap="viridis")
        paths.append(path)
    masks = upsample_nearest(attention_threshold_mask(maps, threshold), patch_size) if threshold else None
    cols = min(heads, 6)
    rows = -(-heads // cols)
    fig = agg_figure(figsize=(2.2 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if h >= heads:
            continue
        ax.imshow(image)
        ax.imshow(up[h], cmap="inferno", alpha=0.55)
        if masks is not None:
            ax.contour(masks[h], levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"head {h}", fontsize=8)
    fig.suptitle(f"CLS attention of the last block (white: {threshold:.0%} of the mass)" if threshold else "CLS attention", fontsize=9)
    fig.tight_layout()
    path = os.path.join(output_dir, f"{prefix}-overlay.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths


def save_attention_examples(backbone, image_files, output_dir, eval_config=None):
    """Attention images of a few image files, each in `<output_dir>/image<i>/`.

    Each file is seen as the evaluation sees it (`eval_config`, default
    `keras_dino.preprocessing.EvalConfig()`), and `save_attention_images` writes its
    per-head maps and overlay. For a quick look at what a trained ViT attends to.

    Args:
        backbone: a backbone with `get_last_selfattention` (a Vision Transformer).
        image_files: paths of the images.
        output_dir: folder to write into (created if needed).
        eval_config: the evaluation view (size, resize, normalisation).

    Returns:
        The folders written, one per image.

    Example:

    >>> import tempfile
    >>> from keras_dino.data import list_image_files
    >>> from keras_dino.datasets import cifar10_mini
    >>> from keras_dino.models import VisionTransformer
    >>> from keras_dino.preprocessing import EvalConfig
    >>> vit = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> files = list_image_files(cifar10_mini("test")).files[:2]
    >>> folders = save_attention_examples(vit, files, tempfile.mkdtemp(), EvalConfig(32, 32))
    >>> len(folders)
    2
    """
    import os

    from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD, EvalConfig

    require_self_attention(backbone)
    config = eval_config or EvalConfig()
    folders = []
    for i, file in enumerate(image_files):
        x = config.load(file)
        shown = np.clip((x * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype("uint8")
        folder = os.path.join(output_dir, f"image{i}")
        save_attention_images(shown, cls_attention_maps(backbone, x), folder,
                              backbone.patch_size)
        folders.append(folder)
    return folders
