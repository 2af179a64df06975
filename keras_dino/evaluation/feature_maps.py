"""Looking at patch features: PCA colours, a foreground mask, patch correspondences.

The helpers take patch grids `(h, w, C)` or `(B, h, w, C)` (numpy arrays or backend
tensors, e.g. from `patch_features`) and compute in numpy (float64), so they work with
every backend; `feature_images` runs the backbone and draws all three pictures.

Conventions, so that the same features always give the same picture:

* PCA is fitted on the centred patches of every given image together (one colour
  scale for several images). The sign of each component makes its largest-magnitude
  projection positive (scikit-learn's `svd_flip` rule).
* The foreground is the side of the first component that covers the smaller share of
  the border patches (a picture's border is mostly background); `foreground_mask`
  flips the component when needed.
"""

import numpy as np

_EPS = 1e-12


def _grid(patch_grid) -> np.ndarray:
    from keras import ops

    grid = np.asarray(ops.convert_to_numpy(patch_grid), np.float64)
    if grid.ndim not in (3, 4):
        raise ValueError(f"a patch grid is (h, w, C) or (B, h, w, C); got shape {grid.shape}.")
    return grid


def principal_components(features, n: int = 3):
    """PCA of feature rows: `(projections (M, n), components (n, C), mean (C,))`, float64.

    Components are the right singular vectors of the centred rows, strongest first;
    each is signed so that its largest-magnitude projection is positive.

    Example:

    >>> x = np.array([[0.0, 0.0], [2.0, 1.0], [4.0, 2.0], [10.0, 5.0]])  # on a line
    >>> proj, comps, mean = principal_components(x, n=1)
    >>> np.round(comps, 4).tolist(), np.round(proj[:, 0], 4).tolist(), mean.tolist()
    ([[0.8944, 0.4472]], [-4.4721, -2.2361, 0.0, 6.7082], [4.0, 2.0])
    """
    x = np.asarray(features, np.float64)
    x = x.reshape(-1, x.shape[-1])
    if not 1 <= n <= min(x.shape):
        raise ValueError(f"n must be in [1, {min(x.shape)}] for {x.shape[0]} rows of "
                         f"{x.shape[1]} features; got {n}.")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:n]
    projections = (x - mean) @ components.T
    strongest = projections[np.argmax(np.abs(projections), axis=0), np.arange(n)]
    signs = np.where(strongest < 0, -1.0, 1.0)
    return projections * signs, components * signs[:, None], mean


def pca_rgb(patch_grid, n: int = 3, foreground=None) -> np.ndarray:
    """The first `n` principal components of the patches as colours in [0, 1].

    Args:
        patch_grid: `(h, w, C)` or `(B, h, w, C)`; PCA is fitted on all images together.
        n: components (3 for RGB).
        foreground: optional boolean mask `(h, w)` / `(B, h, w)` (e.g. from
            `foreground_mask`): PCA is fitted on those patches only and the others are 0.

    Returns:
        float32 `(..., h, w, n)`: each component min-max scaled over the fitted patches.

    Example:

    >>> grid = np.random.default_rng(0).normal(size=(4, 5, 8))
    >>> rgb = pca_rgb(grid)
    >>> rgb.shape, float(rgb.min()), float(rgb.max())
    ((4, 5, 3), 0.0, 1.0)
    """
    grid = _grid(patch_grid)
    mask = None
    if foreground is not None:
        mask = np.broadcast_to(np.asarray(foreground, bool), grid.shape[:-1]).reshape(-1)
    colours = _pca_colours(grid.reshape(-1, grid.shape[-1]), n, mask)
    return colours.reshape(grid.shape[:-1] + (n,))


def _pca_colours(rows, n, mask=None):
    """`pca_rgb` of feature rows `(M, C)`; `mask` `(M,)` selects the fitted rows."""
    mask = np.ones(len(rows), bool) if mask is None else mask
    if not mask.any():
        raise ValueError("the foreground mask selects no patch.")
    projections, _, _ = principal_components(rows[mask], n)
    low, high = projections.min(axis=0), projections.max(axis=0)
    out = np.zeros((len(rows), n), np.float32)
    out[mask] = (projections - low) / np.where(high > low, high - low, 1.0)
    return out


def _border(shape) -> np.ndarray:
    border = np.zeros(shape, bool)  # (B, h, w)
    border[:, 0], border[:, -1], border[:, :, 0], border[:, :, -1] = True, True, True, True
    return border


def foreground_mask(patch_grid, threshold: float = 0.5) -> np.ndarray:
    """Foreground patches: the first principal component above `threshold`, boolean.

    The component is min-max scaled to [0, 1] over all given patches and oriented so that
    the foreground, `score > threshold`, holds the smaller share of the border patches
    (on a tie, the side whose border patches score lower; then the PCA sign).

    Example:

    >>> grid = np.zeros((6, 6, 4)); grid[..., 0] = np.random.default_rng(0).normal(
    ...     size=(6, 6)) * 0.01
    >>> grid[2:4, 2:4, 1] = -5.0  # a distinct object in the middle
    >>> foreground_mask(grid).astype(int)[1:5, 1:5].tolist()
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    grid = _grid(patch_grid)
    batched = grid if grid.ndim == 4 else grid[None]
    mask = np.stack(_foreground(list(batched), threshold))
    return mask if grid.ndim == 4 else mask[0]


def _foreground(grids, threshold):
    """`foreground_mask` of several grids `(h, w, C)` (sizes may differ), fitted together."""
    rows = np.concatenate([g.reshape(-1, g.shape[-1]) for g in grids])
    score = principal_components(rows, 1)[0][:, 0]
    low, high = score.min(), score.max()
    score = (score - low) / (high - low if high > low else 1.0)
    ends = np.cumsum([0] + [g.shape[0] * g.shape[1] for g in grids])
    scores = [score[ends[k]:ends[k + 1]].reshape(g.shape[:2]) for k, g in enumerate(grids)]
    border = np.concatenate([s[_border((1,) + s.shape)[0]] for s in scores])
    share, flipped_share = (border > threshold).mean(), (border < 1 - threshold).mean()
    flip = flipped_share < share or (flipped_share == share and border.mean() > 0.5)
    return [((1.0 - s) if flip else s) > threshold for s in scores]


def mutual_nearest_neighbours(a, b):
    """Pairs of patches that are each other's nearest neighbour by cosine similarity.

    Args:
        a: features `(Na, C)`, or a patch grid `(h, w, C)` (flattened row-major:
            patch `r * w + c`).
        b: features `(Nb, C)`, or a patch grid, as `a`.

    Returns:
        `(pairs, similarities)`: int `(K, 2)` rows `(i, j)` with `j` the nearest patch of
        `b` to `a[i]` and `i` the nearest of `a` to `b[j]`, by increasing `i`; and their
        cosine similarities `(K,)`. Ties go to the lowest index.

    Example:

    >>> a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> pairs, sims = mutual_nearest_neighbours(a, a[[2, 0]])
    >>> pairs.tolist(), np.round(sims, 3).tolist()
    ([[0, 1], [2, 0]], [1.0, 1.0])
    """
    from keras import ops

    a = np.asarray(ops.convert_to_numpy(a), np.float64)
    b = np.asarray(ops.convert_to_numpy(b), np.float64)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
    similarity = a @ b.T
    nearest_b = np.argmax(similarity, axis=1)
    nearest_a = np.argmax(similarity, axis=0)
    rows = np.flatnonzero(nearest_a[nearest_b] == np.arange(len(a)))
    pairs = np.stack([rows, nearest_b[rows]], axis=1).astype(np.int64)
    return pairs, similarity[pairs[:, 0], pairs[:, 1]]


def upsample_grid(grid, height: int, width: int) -> np.ndarray:
    """A grid `(h, w, ...)` stretched over `height x width` pixels, nearest cell.

    Example:

    >>> upsample_grid(np.array([[1, 2]]), 2, 4).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    grid = np.asarray(grid)
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    return grid[rows][:, cols]


def to_uint8(values) -> np.ndarray:
    """[0, 1] values (a mask, PCA colours) as uint8 RGB `(H, W, 3)`.

    Example:

    >>> to_uint8(np.array([[True, False]])).tolist()
    [[[255, 255, 255], [0, 0, 0]]]
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _centre(index: int, grid_shape, image_shape) -> tuple:
    row, col = divmod(int(index), int(grid_shape[1]))
    return ((col + 0.5) * image_shape[1] / grid_shape[1],
            (row + 0.5) * image_shape[0] / grid_shape[0])


def draw_correspondences(image_a, image_b, grid_a, grid_b, pairs, similarities=None,
                         max_lines: int = 64) -> np.ndarray:
    """Two images side by side, a line joining the centres of each pair of patches.

    Args:
        image_a: uint8 `(H, W, 3)`, drawn at its own resolution.
        image_b: the second image, as `image_a`.
        grid_a: the `(h, w)` patch grid of `image_a`.
        grid_b: the `(h, w)` patch grid of `image_b`.
        pairs: `(K, 2)` flat patch indices (`mutual_nearest_neighbours`).
        similarities: optional `(K,)`: the `max_lines` most similar pairs are drawn.
        max_lines: at most this many lines (spread over the pairs without similarities).

    Returns:
        uint8 `(max(Ha, Hb), Wa + Wb, 3)`.

    Example:

    >>> image = np.zeros((32, 48, 3), "uint8")
    >>> draw_correspondences(image, image, (2, 3), (2, 3), np.array([[0, 5]])).shape
    (32, 96, 3)
    """
    from PIL import Image, ImageDraw

    image_a, image_b = np.asarray(image_a, np.uint8), np.asarray(image_b, np.uint8)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if similarities is not None:
        pairs = pairs[np.argsort(-np.asarray(similarities), kind="stable")[:max_lines]]
    elif len(pairs) > max_lines:
        pairs = pairs[np.linspace(0, len(pairs) - 1, max_lines).round().astype(int)]
    height = max(image_a.shape[0], image_b.shape[0])
    canvas = Image.new("RGB", (image_a.shape[1] + image_b.shape[1], height))
    canvas.paste(Image.fromarray(image_a), (0, 0))
    canvas.paste(Image.fromarray(image_b), (image_a.shape[1], 0))
    draw = ImageDraw.Draw(canvas)
    radius = max(2, min(height, canvas.width) // 100)
    for k, (i, j) in enumerate(pairs):
        hue = int(255 * k / max(len(pairs), 1))
        colour = Image.new("HSV", (1, 1), (hue, 255, 255)).convert("RGB").getpixel((0, 0))
        xa, ya = _centre(i, grid_a, image_a.shape)
        xb, yb = _centre(j, grid_b, image_b.shape)
        xb += image_a.shape[1]
        draw.line([(xa, ya), (xb, yb)], fill=colour, width=max(1, radius // 2))
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour)
    return np.asarray(canvas)


def feature_images(backbone, inputs, shown, foreground_only: bool = False,
                   threshold: float = 0.5, max_lines: int = 64) -> dict:
    """The pictures of `visualize_features.py`, as uint8 arrays by file name.

    Args:
        backbone: a `VisionTransformer`, `XCiT` or `ResNet`.
        inputs: one or two normalised images `(H, W, 3)` (`attention_input`'s first
            output); each runs alone, so their sizes may differ.
        shown: the same images as uint8, for display; every picture has their sizes.
        foreground_only: PCA of the foreground patches only (others black), and
            correspondences between foreground patches only.
        threshold: of `foreground_mask`.
        max_lines: correspondences drawn at most.

    Returns:
        `pca.png` and `foreground.png` of the first image (`pca2.png`, `foreground2.png`
        of the second: PCA and mask are fitted on both together), and with two images
        `correspondences.png` (mutual nearest neighbours of their patch features).

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> x, shown = np.zeros((32, 48, 3), "float32"), np.zeros((32, 48, 3), "uint8")
    >>> pictures = feature_images(vit_tiny(16, depth=1), [x, x], [shown, shown])
    >>> {name: image.shape for name, image in pictures.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'pca.png': (32, 48, 3), 'foreground.png': (32, 48, 3), 'pca2.png': (32, 48, 3),
     'foreground2.png': (32, 48, 3), 'correspondences.png': (32, 96, 3)}
    """
    from keras_dino.evaluation.dense_features import patch_features

    if not 1 <= len(inputs) <= 2 or len(inputs) != len(shown):
        raise ValueError("give one or two images, and as many to show.")
    grids = [_grid(patch_features(backbone, np.asarray(x, np.float32)[None]))[0]
             for x in inputs]
    masks = _foreground(grids, threshold)
    rows = np.concatenate([g.reshape(-1, g.shape[-1]) for g in grids])
    fit = np.concatenate([m.reshape(-1) for m in masks]) if foreground_only else None
    colours = _pca_colours(rows, 3, fit)
    ends = np.cumsum([0] + [g.shape[0] * g.shape[1] for g in grids])
    pictures = {}
    for k, (image, grid) in enumerate(zip(shown, grids)):
        suffix = "" if k == 0 else str(k + 1)
        height, width = np.asarray(image).shape[:2]
        colour = colours[ends[k]:ends[k + 1]].reshape(grid.shape[:2] + (3,))
        pictures[f"pca{suffix}.png"] = to_uint8(upsample_grid(colour, height, width))
        pictures[f"foreground{suffix}.png"] = to_uint8(upsample_grid(masks[k], height, width))
    if len(grids) == 2:
        a, b = (g.reshape(-1, g.shape[-1]) for g in grids)
        keep_a = np.flatnonzero(masks[0]) if foreground_only else np.arange(len(a))
        keep_b = np.flatnonzero(masks[1]) if foreground_only else np.arange(len(b))
        pairs = np.zeros((0, 2), np.int64)
        similarities = np.zeros((0,))
        if len(keep_a) and len(keep_b):
            pairs, similarities = mutual_nearest_neighbours(a[keep_a], b[keep_b])
            pairs = np.stack([keep_a[pairs[:, 0]], keep_b[pairs[:, 1]]], axis=1)
        pictures["correspondences.png"] = draw_correspondences(
            shown[0], shown[1], grids[0].shape[:2], grids[1].shape[:2], pairs, similarities,
            max_lines)
    return pictures
