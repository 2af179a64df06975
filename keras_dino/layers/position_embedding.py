"""Position-embedding interpolation identical to the official DINO `interpolate_pos_encoding`.

The official model resizes its square grid of patch position embeddings with
`torch.nn.functional.interpolate(mode="bicubic", scale_factor=((g + 0.1) / sqrt(N), ...))`.
Two details make every generic resize (Keras, TF, JAX) differ from it by up to 3e-2:
torch's cubic kernel uses A = -0.75 (Keys A = -0.5 elsewhere), and the sampling
positions follow the `+0.1` scale factor, not the output size. We reproduce the kernel
exactly as a fixed 4-tap interpolation matrix per axis, built in numpy once per
(source grid, target grid) and applied with `keras.ops.einsum` on any backend.
"""

import functools
import math

import numpy as np
from keras import ops

_CUBIC_A = -0.75


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    """torch's upsample_bicubic2d weights for the taps at floor(x) - 1 .. floor(x) + 2."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def _resize_matrix(xp, source_size: int, target_size, scale):
    """`(target_size, source_size)` float64 matrix of torch's bicubic resize, in `xp`.

    One definition for both uses: `xp` is numpy for Python sizes (the matrix is then a
    constant) and `keras.ops` for a size known only when the graph runs (a model traced
    with a dynamic height and width, as the ONNX export is). Output `i` samples at
    `(i + 0.5) / scale - 0.5` (align_corners=False) with four taps clamped at the border;
    taps landing on the same source sample add up, in tap order.
    """
    src = (xp.arange(target_size, dtype="float64") + 0.5) / scale - 0.5
    base = xp.floor(src)
    weights = xp.stack(_cubic_weights(src - base), axis=1)  # (target, 4)
    taps = xp.expand_dims(base, 1) + xp.arange(-1, 3, dtype="float64")
    taps = xp.clip(taps, 0.0, float(source_size - 1))
    hits = xp.equal(xp.expand_dims(taps, 2), xp.arange(source_size, dtype="float64"))
    return xp.sum(xp.where(hits, xp.expand_dims(weights, 2), 0.0), axis=1)


@functools.lru_cache(maxsize=256)
def bicubic_resize_matrix(source_size: int, target_size: int, scale: float) -> np.ndarray:
    """Interpolation matrix `(target_size, source_size)` of torch's bicubic resize.

    Args:
        source_size: number of input samples along the axis.
        target_size: number of output samples along the axis.
        scale: the `scale_factor` torch was given (output/input); the sampling position
            of output `i` is `(i + 0.5) / scale - 0.5` (align_corners=False), with the
            four taps clamped at the border.

    Example:

    >>> m = bicubic_resize_matrix(14, 6, 6.1 / 14)
    >>> m.shape, bool(np.allclose(m.sum(axis=1), 1.0))
    ((6, 14), True)
    """
    return _resize_matrix(np, source_size, target_size, float(scale))


def _is_static(size) -> bool:
    return isinstance(size, (int, np.integer))


def _grid_matrix(side: int, grid, dtype, keep=None):
    """The resize matrix of one axis of the patch grid, `(grid, side)` in `dtype`.

    The official model keeps its embeddings as they are for the square training grid:
    for a runtime `grid`, the matrix is the identity where `keep` (a boolean tensor:
    both axes of the grid are the source's) holds.
    """
    if _is_static(grid):
        matrix = bicubic_resize_matrix(side, int(grid), (int(grid) + 0.1) / side)
        return ops.convert_to_tensor(matrix.astype(np.float32), dtype=dtype)
    grid = ops.convert_to_tensor(grid, "int32")
    scale = (ops.cast(grid, "float64") + 0.1) / float(side)
    matrix = _resize_matrix(ops, side, grid, scale)
    eye = ops.cast(ops.equal(ops.expand_dims(ops.arange(grid), 1), ops.arange(side)), "float64")
    matrix = ops.where(keep, eye, matrix)
    return ops.cast(ops.cast(matrix, "float32"), dtype)


def interpolate_pos_encoding(pos_embed, grid_h, grid_w):
    """Resizes `(1, 1 + N, E)` position embeddings to a `grid_h x grid_w` patch grid.

    Reproduces the official `VisionTransformer.interpolate_pos_encoding`: the class
    token's embedding is kept, the square `sqrt(N) x sqrt(N)` grid is resized with
    torch's bicubic kernel and scale factors `(grid + 0.1) / sqrt(N)`, and the result is
    returned unchanged when the grid already is the square source grid. `grid_h` and
    `grid_w` are Python integers, or scalar tensors when the image size is only known
    when the graph runs (then the interpolation matrices are computed in the graph, with
    the same float64 arithmetic).

    Args:
        pos_embed: tensor of shape `(1, 1 + N, E)`, N a perfect square.
        grid_h: number of patch rows of the image.
        grid_w: number of patch columns of the image.

    Returns:
        A tensor `(1, 1 + grid_h * grid_w, E)`, tokens in row-major order.

    Example:

    >>> import numpy as np
    >>> pe = np.random.rand(1, 1 + 14 * 14, 8).astype("float32")
    >>> tuple(interpolate_pos_encoding(pe, 30, 20).shape)
    (1, 601, 8)
    """
    pos_embed = ops.convert_to_tensor(pos_embed)
    num_patches = pos_embed.shape[1] - 1
    side = int(round(math.sqrt(num_patches)))
    if side * side != num_patches:
        raise ValueError(
            f"pos_embed must hold a square grid of patch embeddings plus the class token; "
            f"got {num_patches} patch positions, which is not a perfect square."
        )
    if _is_static(grid_h) and _is_static(grid_w) and grid_h == side and grid_w == side:
        return pos_embed
    dim = pos_embed.shape[-1]
    keep = None
    if not (_is_static(grid_h) and _is_static(grid_w)):
        keep = ops.logical_and(ops.equal(grid_h, side), ops.equal(grid_w, side))
    rows = _grid_matrix(side, grid_h, pos_embed.dtype, keep)
    cols = _grid_matrix(side, grid_w, pos_embed.dtype, keep)
    grid = ops.reshape(pos_embed[0, 1:], (side, side, dim))
    resized = ops.einsum("hi,wj,ijd->hwd", rows, cols, grid)
    resized = ops.reshape(resized, (1, grid_h * grid_w, dim))
    return ops.concatenate([pos_embed[:, :1], resized], axis=1)
