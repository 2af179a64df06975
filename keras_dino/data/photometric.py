"""`MultiCropPhotometric`: the photometric half of the DINO recipe as a Keras layer.

Backend-agnostic (`keras.ops` and `keras.random` only), per-image random parameters,
traceable inside a compiled train step on TensorFlow, JAX and PyTorch. It takes the uint8
crops the host produced in split mode and returns them float32 and normalised, with the
same distributions as the host (`DataAugmentationDINO.photometric`):

* colour jitter with p=0.8: brightness (multiply), contrast (blend with the mean grey),
  saturation (blend with grey), each factor ~ U(0.6, 1.4) / U(0.6, 1.4) / U(0.8, 1.2), hue
  shift ~ U(-0.1, 0.1), the four in an independent random order per image;
* grayscale with p=0.2;
* Gaussian blur, radius (sigma) ~ U(0.1, 2.0), 13 taps, edges extended, with p=1.0 on the
  first global view, 0.1 on the second and 0.5 on the locals;
* solarisation at 128 with p=0.2 on the second global view only;
* ImageNet normalisation.

Example:

>>> import numpy as np
>>> layer = MultiCropPhotometric(seed=0)
>>> crops = [np.zeros((2, 32, 32, 3), "uint8")] * 2 + [np.zeros((2, 16, 16, 3), "uint8")]
>>> [tuple(o.shape) for o in layer(crops)]
[(2, 32, 32, 3), (2, 32, 32, 3), (2, 16, 16, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_dino.data.config import PARAM_COLUMNS, PhotometricConfig, photometric_params

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
BLUR_HALF_WIDTH = 6

_SHIFTS: dict[tuple[int, int], np.ndarray] = {}


def _edge_shift_stack(size: int, half_width: int = BLUR_HALF_WIDTH) -> np.ndarray:
    """`[taps, size, size]` 0/1 matrices: tap `t` of output `i` reads input `clip(i+t-hw)`."""
    key = (size, half_width)
    if key not in _SHIFTS:
        taps = 2 * half_width + 1
        stack = np.zeros((taps, size, size), np.float32)
        rows = np.arange(size)
        for t in range(taps):
            cols = np.clip(rows + t - half_width, 0, size - 1)
            np.add.at(stack[t], (rows, cols), 1.0)
        _SHIFTS[key] = stack
    return _SHIFTS[key]


def _bcast(v):
    """`[N]` -> `[N, 1, 1, 1]`."""
    return ops.reshape(v, (-1, 1, 1, 1))


def _column(values):
    return ops.convert_to_tensor(np.array(values, np.float32)[:, None])


def _gray(x):
    w = ops.convert_to_tensor(np.array(GRAY_WEIGHTS, np.float32))
    return ops.sum(x * w, axis=-1, keepdims=True)


def _hue_shift(x, delta):
    """Rotates the HSV hue of `[N, H, W, 3]` [0, 1] images by `delta` `[N]` (torchvision)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = ops.maximum(ops.maximum(r, g), b)
    minc = ops.minimum(ops.minimum(r, g), b)
    chroma = maxc - minc
    safe = ops.where(chroma > 0, chroma, ops.ones_like(chroma))
    rc = (maxc - r) / safe
    gc = (maxc - g) / safe
    bc = (maxc - b) / safe
    h = ops.where(maxc == r, bc - gc, ops.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = ops.where(chroma > 0, h, ops.zeros_like(h))
    h6 = ops.mod(h + 6.0 * ops.reshape(delta, (-1, 1, 1)), 6.0)  # hue in [0, 6)
    chroma = chroma[..., None]
    # HSV -> RGB: channel n (R 5, G 3, B 1) = v - c * clip(min(k, 4 - k), 0, 1),
    # k = (n + 6 h) mod 6.
    offsets = ops.convert_to_tensor(np.array([5.0, 3.0, 1.0], np.float32))
    k = ops.mod(h6[..., None] + offsets, 6.0)
    return maxc[..., None] - chroma * ops.clip(ops.minimum(k, 4.0 - k), 0.0, 1.0)


def _blur(x, sigma):
    """Per-image Gaussian blur (edges extended) of `[N, H, W, C]` via banded matrices."""
    h, w = int(x.shape[1]), int(x.shape[2])
    t = ops.convert_to_tensor(np.arange(-BLUR_HALF_WIDTH, BLUR_HALF_WIDTH + 1, dtype=np.float32))
    s = ops.reshape(sigma, (-1, 1))
    k = ops.exp(-(t * t) / (2.0 * s * s))
    k = k / ops.sum(k, axis=1, keepdims=True)  # [N, taps]
    rows = ops.einsum("nt,tij->nij", k, ops.convert_to_tensor(_edge_shift_stack(h)))
    cols = rows if w == h else ops.einsum(
        "nt,tij->nij", k, ops.convert_to_tensor(_edge_shift_stack(w))
    )
    y = ops.einsum("nij,njwc->niwc", rows, x)
    return ops.einsum("nvw,niwc->nivc", cols, y)


def apply_photometric(x, params: dict, config: PhotometricConfig | None = None):
    """Applies explicit per-image photometric parameters to `[N, H, W, 3]` [0, 1] images.

    `params` holds `[N]` arrays: `jitter`, `grayscale`, `blur`, `solarize` (bool),
    `brightness`, `contrast`, `saturation`, `hue`, `sigma` (float) and `order` (`[N, 4]`,
    the permutation of brightness/contrast/saturation/hue, as `sample_params` draws).
    Returns the `[0, 1]` images (not normalised). Backend-agnostic.
    """
    del config
    x = ops.convert_to_tensor(x, "float32")
    order = ops.convert_to_tensor(params["order"], "int32")
    jitter = ops.convert_to_tensor(params["jitter"], "bool")
    factors = [ops.convert_to_tensor(params[k], "float32")
               for k in ("brightness", "contrast", "saturation")]
    # Position of each op in the drawn order; the three blends (brightness, contrast,
    # saturation) before the hue shift run first, in order, then hue, then the rest.
    pos = ops.argsort(order, axis=1)
    hue_pos = pos[:, 3]
    cheap_order = ops.argsort(pos[:, :3], axis=1)
    one = ops.ones_like(factors[0])
    for phase in ("pre", "post"):
        for step in range(3):
            op = cheap_order[:, step]
            op_pos = ops.take_along_axis(pos, op[:, None], axis=1)[:, 0]
            before = op_pos < hue_pos
            active = ops.logical_and(jitter, before if phase == "pre" else ~before)
            f = ops.where(op == 0, factors[0], ops.where(op == 1, factors[1], factors[2]))
            f = ops.where(active, f, one)
            gray = _gray(x)
            mean = ops.mean(gray, axis=(1, 2, 3), keepdims=True)
            is_con = _bcast(ops.cast(op == 1, "float32"))
            is_sat = _bcast(ops.cast(op == 2, "float32"))
            degenerate = is_con * mean + is_sat * gray  # brightness blends with 0
            fb = _bcast(f)
            x = ops.clip(fb * x + (1.0 - fb) * degenerate, 0.0, 1.0)
        if phase == "pre":
            hue = ops.convert_to_tensor(params["hue"], "float32")
            x = ops.where(_bcast(jitter), _hue_shift(x, hue), x)
    gray_on = _bcast(ops.convert_to_tensor(params["grayscale"], "bool"))
    x = ops.where(gray_on, ops.repeat(_gray(x), 3, axis=-1), x)
    blur_on = _bcast(ops.convert_to_tensor(params["blur"], "bool"))
    x = ops.where(blur_on, _blur(x, ops.convert_to_tensor(params["sigma"], "float32")), x)
    sol_on = _bcast(ops.convert_to_tensor(params["solarize"], "bool"))
    x = ops.where(ops.logical_and(sol_on, x * 255.0 >= 127.5), 1.0 - x, x)
    return x


def sample_params(u, blur_p, solarize_p, config: PhotometricConfig | None = None) -> dict:
    """Maps uniforms `u` `[N, 13]` to photometric parameters (same columns as the host).

    `blur_p` and `solarize_p` are per-image probabilities `[N]`.
    """
    return photometric_params(
        ops.convert_to_tensor(u, "float32"),
        ops.convert_to_tensor(blur_p, "float32"),
        ops.convert_to_tensor(solarize_p, "float32"),
        config or PhotometricConfig(),
        less=ops.less,
        argsort=lambda a: ops.cast(ops.argsort(a, axis=1), "int32"),
    )


@keras.saving.register_keras_serializable(package="keras_dino")
class MultiCropPhotometric(keras.layers.Layer):
    """Photometric DINO augmentation of uint8 multi-crop batches, inside the model step.

    Call it on the tuple of crop batches the host produced in split mode,
    `(g0, g1, l0, ..., l_{n-1})`, each uint8 (or float in `[0, 255]`) `[B, H, W, 3]`; it
    returns the tuple float32, augmented and normalised. View 0 and 1 are the globals
    (blur p `global_blur_p`, solarise p `global_solarize_p`), the rest are locals.
    Every image draws its own parameters. With `training=False` it only normalises.

    Args:
        global_blur_p: blur probability of the two global views.
        local_blur_p: blur probability of every local view.
        global_solarize_p: solarisation probability of the two global views.
        local_solarize_p: solarisation probability of every local view.
        config: `PhotometricConfig` (or its dict) with the jitter/grayscale/blur values.
        seed: seed of the layer's `keras.random.SeedGenerator`.

    Example:

    >>> import numpy as np
    >>> layer = MultiCropPhotometric(seed=1)
    >>> g = np.full((4, 24, 24, 3), 200, "uint8")
    >>> out = layer((g, g))
    >>> keras.backend.standardize_dtype(out[0].dtype)
    'float32'
    """

    def __init__(
        self,
        global_blur_p: Sequence[float] = (1.0, 0.1),
        local_blur_p: float = 0.5,
        global_solarize_p: Sequence[float] = (0.0, 0.2),
        local_solarize_p: float = 0.0,
        config: PhotometricConfig | dict | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.global_blur_p = tuple(float(p) for p in global_blur_p)
        self.local_blur_p = float(local_blur_p)
        self.global_solarize_p = tuple(float(p) for p in global_solarize_p)
        self.local_solarize_p = float(local_solarize_p)
        if isinstance(config, dict) or config is None:
            config = PhotometricConfig.from_dict(config)
        self.config = config
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False
        self.built = True  # no weights: usable in stateless_call before a first call

    def view_probabilities(self, num_views: int) -> tuple[list[float], list[float]]:
        """Blur and solarisation probability of each of `num_views` views."""
        n_glob = min(2, num_views)
        blur = list(self.global_blur_p[:n_glob]) + [self.local_blur_p] * (num_views - n_glob)
        sol = list(self.global_solarize_p[:n_glob])
        sol += [self.local_solarize_p] * (num_views - n_glob)
        return blur, sol

    def _normalize(self, x01):
        mean = ops.convert_to_tensor(np.array(self.config.mean, np.float32))
        std = ops.convert_to_tensor(np.array(self.config.std, np.float32))
        return (x01 - mean) / std

    def call(self, inputs, training=True):
        if not isinstance(inputs, (list, tuple)):
            raise TypeError("MultiCropPhotometric expects a tuple/list of crop batches")
        crops = [ops.cast(c, "float32") / 255.0 for c in inputs]
        if training is False:
            return tuple(self._normalize(c) for c in crops)
        blur_p, sol_p = self.view_probabilities(len(crops))
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(crops):
            groups.setdefault(tuple(c.shape[1:]), []).append(i)
        out: list = [None] * len(crops)
        for idx in groups.values():
            # All views share the batch size (one dataset element), so the views of one
            # shape go through as one batch of k * B images.
            k = len(idx)
            x = crops[idx[0]] if k == 1 else ops.concatenate([crops[i] for i in idx], axis=0)
            batch = ops.shape(crops[idx[0]])[0]
            grid = ops.zeros((k, batch), "float32")
            bp = ops.reshape(grid + _column([blur_p[i] for i in idx]), (-1,))
            sp = ops.reshape(grid + _column([sol_p[i] for i in idx]), (-1,))
            u = keras.random.uniform(
                (ops.shape(x)[0], PARAM_COLUMNS), seed=self.seed_generator, dtype="float32"
            )
            params = sample_params(u, bp, sp, self.config)
            y = self._normalize(apply_photometric(x, params, self.config))
            if k == 1:
                out[idx[0]] = y
            else:
                y = ops.reshape(y, (k, -1) + tuple(y.shape[1:]))
                for j, i in enumerate(idx):
                    out[i] = y[j]
        return tuple(out)

    def compute_output_shape(self, input_shape):
        return tuple(tuple(s) for s in input_shape)

    def compute_output_spec(self, inputs, training=True):
        return tuple(keras.KerasTensor(tuple(c.shape), dtype="float32") for c in inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "global_blur_p": list(self.global_blur_p),
                "local_blur_p": self.local_blur_p,
                "global_solarize_p": list(self.global_solarize_p),
                "local_solarize_p": self.local_solarize_p,
                "config": self.config.to_dict(),
                "seed": self.seed,
            }
        )
        return config
