"""`DataAugmentationDINO`: the official multi-crop recipe as a `tf.data`-ready callable."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dino.data import ops
from keras_dino.data.config import (
    PARAM_COLUMNS,
    PhotometricConfig,
    ViewSpec,
    dino_views,
    photometric_params,
)

Crops = tuple[tf.Tensor, ...]



def _as_seed(seed) -> tf.Tensor:
    """A `[2]` int64 stateless seed; a fresh random one when `seed` is None."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    return tf.cast(seed, tf.int64)


def sample_photometric_params(
    seed: tf.Tensor,
    blur_p: Sequence[float],
    solarize_p: Sequence[float],
    config: PhotometricConfig | None = None,
) -> dict[str, tf.Tensor]:
    """Draws the photometric parameters of `len(blur_p)` views (stateless, TF).

    Returns a dict of `[num]` tensors: `jitter` (bool), `brightness`, `contrast`,
    `saturation`, `hue` (float32 factors), `order` (`[num, 4]` int32, a permutation of
    brightness/contrast/saturation/hue, uniformly random as torchvision's `randperm(4)`),
    `grayscale`, `blur` (bool), `sigma` (float32 radius) and `solarize` (bool).
    """
    config = config or PhotometricConfig()
    u = tf.random.stateless_uniform([len(blur_p), PARAM_COLUMNS], _as_seed(seed), dtype=tf.float32)
    return photometric_params(
        u,
        tf.constant(list(blur_p), tf.float32),
        tf.constant(list(solarize_p), tf.float32),
        config,
        less=tf.less,
        argsort=lambda a: tf.argsort(a, axis=1, stable=True),
    )


def apply_photometric(image01: tf.Tensor, params: dict[str, tf.Tensor], i: int | None = None,
                      config: PhotometricConfig | None = None, axis: int = -1) -> tf.Tensor:
    """Applies one view's photometric parameters to one `[H, W, 3]` [0, 1] image.

    `params` holds the per-view arrays of `sample_photometric_params` (then `i` picks the
    view) or one view's scalars (`i=None`). Jitter in the drawn order, then grayscale,
    blur and solarise; the jitter and the blur, the costly ones, are skipped through
    `tf.cond` when not drawn. The jitter runs the blends (brightness, contrast,
    saturation) that come before the hue shift in the drawn order, then the hue shift,
    then the others. Returns the `[0, 1]` image (not normalised). XLA-compilable.
    `axis` is the channel axis (-1: `[H, W, 3]`, 0: planar `[3, H, W]`).
    """
    del config  # the factors are already drawn
    p = params if i is None else {k: v[i] for k, v in params.items()}
    jitter = p["jitter"]
    factors = tf.stack([p["brightness"], p["contrast"], p["saturation"]])
    pos = tf.argsort(p["order"], stable=True)  # position of each op in the order
    hue_pos = pos[3]
    cheap_order = tf.argsort(pos[:3], stable=True)

    def jitter_fn(x):
        # Inactive steps blend with factor 1 (the identity), without a branch each.
        for phase in ("pre", "post"):
            for step in range(3):
                op = tf.gather(cheap_order, step)
                before = tf.gather(pos, op) < hue_pos
                active = before if phase == "pre" else ~before
                x = _blend(x, op, tf.where(active, tf.gather(factors, op), 1.0), axis)
            if phase == "pre":
                x = ops.adjust_hue(x, p["hue"], axis)
        return x

    x = tf.cond(jitter, _bind(jitter_fn, image01), _const(image01))
    gray_on = tf.cast(p["grayscale"], tf.float32)
    x = x + gray_on * (ops.to_grayscale(x, axis) - x)
    x = tf.cond(p["blur"], _bind(ops.gaussian_blur, x, p["sigma"], axis), _const(x))
    x = tf.where(p["solarize"] & (x * 255.0 >= 127.5), 1.0 - x, x)
    return x


def _blend(x: tf.Tensor, op: tf.Tensor, factor: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2): blend with 0, mean grey, grey."""
    gray = ops.grayscale(x, axis)
    mean = tf.reduce_mean(gray)
    degenerate = tf.cast(op == 1, tf.float32) * mean + tf.cast(op == 2, tf.float32) * gray
    return tf.clip_by_value(factor * x + (1.0 - factor) * degenerate, 0.0, 1.0)


def _const(x):
    return lambda: x


def _bind(fn, *args):
    return lambda: fn(*args)


class DataAugmentationDINO:
    """The official DINO multi-crop augmentation for one decoded image, on TensorFlow ops.

    Two global views (RandomResizedCrop to `global_size` with `global_crops_scale`; blur
    with p=1.0 on the first and p=0.1 plus solarisation p=0.2 on the second) and
    `local_crops_number` local views (`local_size`, `local_crops_scale`, blur p=0.5).
    Every view: horizontal flip p=0.5, colour jitter (brightness 0.4, contrast 0.4,
    saturation 0.2, hue 0.1, random order) with p=0.8, grayscale p=0.2, ImageNet
    normalisation. RandomResizedCrop samples as torchvision (10 attempts, centre-crop
    fallback) and resizes with PIL-style antialiased bicubic.

    Call it on a uint8 `[H, W, 3]` tensor (eagerly or inside `tf.data.Dataset.map`): it
    returns the tuple of crops, globals first, float32, normalised, channels-last. Pass
    `seed` (a `[2]` integer tensor) for reproducible crops; without it each call draws a
    fresh seed.

    The work splits in two for accelerators: `crop_and_flip` (host: uint8 crops) and
    `photometric` (its TF version; `keras_dino.data.MultiCropPhotometric` is the Keras
    layer that does the same inside a compiled step on any backend).

    Example:

    >>> import tensorflow as tf
    >>> aug = DataAugmentationDINO(local_crops_number=2)
    >>> crops = aug(tf.zeros([120, 160, 3], tf.uint8), seed=[0, 1])
    >>> [tuple(c.shape) for c in crops]
    [(224, 224, 3), (224, 224, 3), (96, 96, 3), (96, 96, 3)]
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.4, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_size: int = 224,
        local_size: int = 96,
        *,
        photometric_config: PhotometricConfig | None = None,
        jit_compile: bool = True,
    ):
        self.global_crops_scale = tuple(float(s) for s in global_crops_scale)
        self.local_crops_scale = tuple(float(s) for s in local_crops_scale)
        self.local_crops_number = int(local_crops_number)
        self.global_size = int(global_size)
        self.local_size = int(local_size)
        self.config = photometric_config or PhotometricConfig()
        self.jit_compile = bool(jit_compile)
        # One XLA program per view size (compiled once, in seconds): it fuses the
        # elementwise math into a few loops and skips the ops not drawn. (One program for
        # all views runs ~7% faster but compiles ~4x longer.)
        self._view_fn = tf.function(self._photometric_view, jit_compile=self.jit_compile)
        self.views: tuple[ViewSpec, ...] = dino_views(
            self.global_crops_scale, self.local_crops_scale, self.local_crops_number,
            self.global_size, self.local_size,
        )

    @property
    def num_crops(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return (
            f"DataAugmentationDINO(global_crops_scale={self.global_crops_scale}, "
            f"local_crops_scale={self.local_crops_scale}, "
            f"local_crops_number={self.local_crops_number}, global_size={self.global_size}, "
            f"local_size={self.local_size})"
        )

    # -- random parameters ------------------------------------------------------------
    def _seeds(self, seed) -> tuple[tf.Tensor, tf.Tensor]:
        s = tf.random.experimental.stateless_split(_as_seed(seed), 2)
        return s[0], s[1]

    def _groups(self) -> dict[tuple[int, tuple[float, float]], list[int]]:
        groups: dict[tuple[int, tuple[float, float]], list[int]] = {}
        for i, v in enumerate(self.views):
            groups.setdefault((v.size, v.scale), []).append(i)
        return groups

    def sample_crop_params(self, seed, height, width) -> tuple[tf.Tensor, tf.Tensor]:
        """Boxes `[num_crops, 4]` (top, left, h, w) and flips `[num_crops]` for one image."""
        seed = _as_seed(seed)
        groups = self._groups()
        sub = tf.random.experimental.stateless_split(seed, len(groups) + 1)
        parts, order = [], []
        for g, ((_, scale), idx) in enumerate(groups.items()):
            parts.append(ops.sample_crop_boxes(sub[g], height, width, len(idx), scale))
            order += idx
        boxes = tf.concat(parts, axis=0)
        if order != list(range(self.num_crops)):
            boxes = tf.gather(boxes, [order.index(i) for i in range(self.num_crops)])
        flips = tf.random.stateless_uniform([self.num_crops], sub[-1]) < 0.5
        return boxes, flips

    def sample_photometric_params(self, seed) -> dict[str, tf.Tensor]:
        """Per-view photometric parameters (see `sample_photometric_params`)."""
        return sample_photometric_params(
            seed, [v.blur_p for v in self.views], [v.solarize_p for v in self.views],
            self.config,
        )

    # -- the two halves ---------------------------------------------------------------
    def crop_and_flip(self, image: tf.Tensor, seed=None, dtype=tf.uint8) -> Crops:
        """Host half: RandomResizedCrop + flip of every view.

        Returns the crops as `dtype` (uint8 by default; float32 keeps values in
        `[0, 255]`, rounded as PIL's uint8 output). `seed` is the same per-image seed as
        for `__call__`, so `photometric(crop_and_flip(x, s), s)` equals `self(x, s)`.
        """
        image = tf.convert_to_tensor(image)
        boxes, flips = self.crop_params(image, seed)
        out: list[tf.Tensor | None] = [None] * self.num_crops
        for (size, _), idx in self._groups().items():
            crops = ops.crops_and_resize(
                image, tf.gather(boxes, idx), size, tf.gather(flips, idx)
            )
            for i, crop in zip(idx, crops):
                out[i] = crop if dtype == tf.uint8 else tf.cast(crop, dtype)
        return tuple(out)

    def crop_params(self, image: tf.Tensor, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """The boxes `[num_crops, 4]` and flips `[num_crops]` `crop_and_flip` uses for
        `image` with the same per-image `seed`."""
        crop_seed, _ = self._seeds(seed)
        shape = tf.shape(image)
        return self.sample_crop_params(crop_seed, shape[0], shape[1])

    def crop_and_flip_batch(self, images: tf.Tensor, boxes: tf.Tensor, flips: tf.Tensor) -> Crops:
        """`crop_and_flip` for a batch of small images, a few ops per view for the batch.

        `images` is uint8 `[B, H, W, 3]` (smaller images zero-padded at the bottom and
        right), `boxes` `[B, num_crops, 4]` and `flips` `[B, num_crops]` come from
        `crop_params`. Returns uint8 `[B, size, size, 3]` per view, equal to
        `crop_and_flip` image by image (`ops.batch_crops_and_resize`).

        Example:

        >>> aug = DataAugmentationDINO(local_crops_number=1, global_size=32, local_size=16)
        >>> image = tf.zeros([32, 32, 3], tf.uint8)
        >>> boxes, flips = aug.crop_params(image, seed=[0, 1])
        >>> crops = aug.crop_and_flip_batch(image[None], boxes[None], flips[None])
        >>> [tuple(c.shape) for c in crops]
        [(1, 32, 32, 3), (1, 32, 32, 3), (1, 16, 16, 3)]
        """
        return tuple(
            ops.batch_crops_and_resize(images, boxes[:, i], view.size, flips[:, i])
            for i, view in enumerate(self.views)
        )

    def photometric(self, crops: Sequence[tf.Tensor], seed=None) -> Crops:
        """Host photometric half on TF ops: jitter, grayscale, blur, solarise, normalise.

        `crops` are uint8 (or float in `[0, 255]`) `[H, W, 3]` tensors of static size, one
        per view. With `jit_compile` (the default) each view runs as an XLA program (one
        per view size): on a CPU that fuses the elementwise math into a few loops, about
        4x faster than op by op; the first call compiles for a few seconds.
        """
        _, photo_seed = self._seeds(seed)
        params = self.sample_photometric_params(photo_seed)
        return self._photometric_impl(tuple(crops), params)

    def _photometric_view(self, crop: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
        # Planar inside (contiguous channel planes vectorise better), HWC outside.
        x = tf.transpose(tf.cast(crop, tf.float32) * (1.0 / 255.0), [2, 0, 1])
        x = apply_photometric(x, params, None, self.config, axis=0)
        x = ops.normalize(x, self.config.mean, self.config.std, axis=0)
        return tf.transpose(x, [1, 2, 0])

    def _photometric_impl(self, crops: Crops, params: dict[str, tf.Tensor]) -> Crops:
        return tuple(
            self._view_fn(crop, {k: v[i] for k, v in params.items()})
            for i, crop in enumerate(crops)
        )

    def __call__(self, image: tf.Tensor, seed=None) -> Crops:
        """All crops of one uint8 `[H, W, 3]` image: float32, normalised, globals first."""
        seed = _as_seed(seed)
        crops = self.crop_and_flip(image, seed)
        return self.photometric(crops, seed)

    def device_layer(self, seed: int | None = None):
        """The matching `MultiCropPhotometric` Keras layer for split mode."""
        from keras_dino.data.photometric import MultiCropPhotometric

        views = self.views
        return MultiCropPhotometric(
            global_blur_p=(views[0].blur_p, views[1].blur_p),
            local_blur_p=0.5,
            global_solarize_p=(views[0].solarize_p, views[1].solarize_p),
            local_solarize_p=0.0,
            config=self.config,
            seed=seed,
        )
