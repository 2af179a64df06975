"""Backend-free description of the DINO multi-crop recipe (shared by host and device code).

Example:

>>> from keras_dino.data.config import dino_views
>>> [(v.size, v.blur_p, v.solarize_p) for v in dino_views(local_crops_number=2)]
[(224, 1.0, 0.0), (224, 0.1, 0.2), (96, 0.5, 0.0), (96, 0.5, 0.0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class PhotometricConfig:
    """The photometric part of the recipe, with the official values as defaults.

    Attributes:
        brightness, contrast, saturation: torchvision `ColorJitter` strengths; each factor
            is drawn from `U(max(0, 1 - s), 1 + s)`.
        hue: hue shift drawn from `U(-hue, hue)` (fraction of the colour circle).
        jitter_p: probability of applying the colour jitter (`RandomApply`, 0.8).
        grayscale_p: probability of `RandomGrayscale` (0.2).
        blur_radius: PIL Gaussian-blur radius (= sigma) range, drawn uniformly.
        mean, std: ImageNet normalisation of the `[0, 1]` image.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_radius: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not 0.0 < self.blur_radius[0] <= self.blur_radius[1] <= 2.0:
            raise ValueError(
                f"blur_radius must satisfy 0 < lo <= hi <= 2.0 (kernel of 13 taps), "
                f"got {self.blur_radius}"
            )
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")

    def factor_range(self, name: str) -> tuple[float, float]:
        """`(low, high)` of the jitter factor `name` (brightness/contrast/saturation/hue)."""
        s = float(getattr(self, name))
        if name == "hue":
            return (-s, s)
        return (max(0.0, 1.0 - s), 1.0 + s)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> PhotometricConfig:
        if d is None:
            return cls()
        d = dict(d)
        for key in ("blur_radius", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# Columns of the `[N, PARAM_COLUMNS]` uniforms each view draws (host and device alike).
PARAM_COLUMNS = 13


def photometric_params(u, blur_p, solarize_p, config: PhotometricConfig, *, less, argsort):
    """Maps uniforms `u` `[N, 13]` to the photometric parameters of N views.

    The one definition of the sampling, shared by the host (`tf` functions) and the
    accelerator (`keras.ops`): the caller gives its `less(a, b)` and its row-wise
    `argsort(a)` (int32). Columns: 0 jitter applied, 1-4 brightness / contrast /
    saturation / hue factors, 5-8 the jitter order (a uniform permutation, as
    torchvision's `randperm(4)`), 9 grayscale, 10 blur, 11 blur radius, 12 solarise.

    Example:

    >>> import numpy as np
    >>> u = np.full((1, PARAM_COLUMNS), 0.5, "float32")
    >>> p = photometric_params(u, np.ones(1), np.zeros(1), PhotometricConfig(),
    ...                        less=np.less, argsort=lambda a: np.argsort(a, axis=1))
    >>> bool(p["jitter"][0]), float(p["brightness"][0]), bool(p["blur"][0])
    (True, 1.0, True)
    """

    def between(col, lo_hi):
        lo, hi = lo_hi
        return lo + (hi - lo) * u[:, col]

    return {
        "jitter": less(u[:, 0], config.jitter_p),
        "brightness": between(1, config.factor_range("brightness")),
        "contrast": between(2, config.factor_range("contrast")),
        "saturation": between(3, config.factor_range("saturation")),
        "hue": between(4, config.factor_range("hue")),
        "order": argsort(u[:, 5:9]),
        "grayscale": less(u[:, 9], config.grayscale_p),
        "blur": less(u[:, 10], blur_p),
        "sigma": between(11, config.blur_radius),
        "solarize": less(u[:, 12], solarize_p),
    }


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """One crop of the multi-crop recipe.

    Attributes:
        size: output side in pixels (square crops).
        scale: RandomResizedCrop area-fraction range.
        blur_p: probability of the Gaussian blur on this view.
        solarize_p: probability of solarisation on this view.
    """

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


def dino_views(
    global_crops_scale: Sequence[float] = (0.4, 1.0),
    local_crops_scale: Sequence[float] = (0.05, 0.4),
    local_crops_number: int = 8,
    global_size: int = 224,
    local_size: int = 96,
) -> tuple[ViewSpec, ...]:
    """The official views: 2 global (blur 1.0 / 0.1, solarise 0 / 0.2), then the locals."""
    g = (float(global_crops_scale[0]), float(global_crops_scale[1]))
    loc = (float(local_crops_scale[0]), float(local_crops_scale[1]))
    views = [ViewSpec(global_size, g, 1.0, 0.0), ViewSpec(global_size, g, 0.1, 0.2)]
    views += [ViewSpec(local_size, loc, 0.5, 0.0) for _ in range(local_crops_number)]
    return tuple(views)
