"""Attention maps of the last block, as the official `visualize_attention.py` draws them."""

import numpy as np
from keras import ops


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
    image = ops.convert_to_tensor(image, "float32")
    if len(image.shape) == 3:
        image = image[None]
    p = backbone.patch_size
    grid_h, grid_w = image.shape[1] // p, image.shape[2] // p
    attn = ops.convert_to_numpy(backbone.get_last_selfattention(image))
    return attn[0, :, 0, 1:].reshape(attn.shape[1], grid_h, grid_w)


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

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    maps = np.asarray(maps)
    heads = maps.shape[0]
    up = upsample_nearest(maps, patch_size)
    image = np.asarray(image)[: up.shape[1], : up.shape[2]]
    paths = []
    plt.imsave(os.path.join(output_dir, "img.png"), image)
    paths.append(os.path.join(output_dir, "img.png"))
    for h in range(heads):
        path = os.path.join(output_dir, f"{prefix}-head{h}.png")
        plt.imsave(path, up[h], format="png", cmap="viridis")
        paths.append(path)
    masks = upsample_nearest(attention_threshold_mask(maps, threshold), patch_size) if threshold else None
    cols = min(heads, 6)
    rows = -(-heads // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
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
    plt.close(fig)
    paths.append(path)
    return paths
