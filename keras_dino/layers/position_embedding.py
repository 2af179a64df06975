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
    matrix = np.zeros((target_size, source_size), np.float64)
    for i in range(target_size):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for offset, weight in zip(range(-1, 3), _cubic_weights(src - base)):
            j = min(max(base + offset, 0), source_size - 1)
            matrix[i, j] += weight
    return matrix


def interpolate_pos_encoding(pos_embed, grid_h: int, grid_w: int):
    """Resizes `(1, 1 + N, E)` position embeddings to a `grid_h x grid_w` patch grid.

    Reproduces the official `VisionTransformer.interpolate_pos_encoding`: the class
    token's embedding is kept, the square `sqrt(N) x sqrt(N)` grid is resized with
    torch's bicubic kernel and scale factors `(grid + 0.1) / sqrt(N)`, and the result is
    returned unchanged when the grid already is the square source grid.

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
    if grid_h == side and grid_w == side:
        return pos_embed
    dim = pos_embed.shape[-1]
    rows = bicubic_resize_matrix(side, grid_h, (grid_h + 0.1) / side)
    cols = bicubic_resize_matrix(side, grid_w, (grid_w + 0.1) / side)
    dtype = pos_embed.dtype
    rows = ops.convert_to_tensor(rows.astype(np.float32), dtype=dtype)
    cols = ops.convert_to_tensor(cols.astype(np.float32), dtype=dtype)
    grid = ops.reshape(pos_embed[0, 1:], (side, side, dim))
    resized = ops.einsum("hi,wj,ijd->hwd", rows, cols, grid)
    resized = ops.reshape(resized, (1, grid_h * grid_w, dim))
    return ops.concatenate([pos_embed[:, :1], resized], axis=1)
