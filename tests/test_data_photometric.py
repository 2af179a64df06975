"""MultiCropPhotometric: the device half of split mode, on every Keras backend.

Backend-agnostic: the TensorFlow, JAX and torch CI processes each run this file.
"""

import itertools
import math

import keras
import numpy as np
from keras import ops

from keras_dino.data import MultiCropPhotometric, PhotometricConfig
from keras_dino.data.photometric import apply_photometric, sample_params

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def binom_ok(hits, n, p, z=5.0):
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    return abs(hits / n - p) <= z * se + 1e-12


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


_JITTED = {}


def run(layer, crops, training=True):
    """Calls the layer; under JAX as one jitted stateless call (as in a train step), which
    is also far quicker than eager op-by-op dispatch."""
    if keras.backend.backend() != "jax":
        return layer(crops, training=training)
    import jax

    config = {k: v for k, v in layer.get_config().items() if k != "name"}
    key = (repr(sorted(config.items())), training)
    if key not in _JITTED:  # stateless: any layer of this config computes the same
        _JITTED[key] = jax.jit(lambda s, xs: layer.stateless_call([], s, xs, training=training))
    fn = _JITTED[key]
    out, state = fn([v.value for v in layer.non_trainable_variables], list(crops))
    for var, value in zip(layer.non_trainable_variables, state):
        var.assign(value)
    return out


def apply(x, params):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(apply_photometric)(x, params)
    return apply_photometric(x, params)


# -- a numpy reference of the official ops (torchvision semantics on [0, 1] floats) ----------
def ref_hue(x, delta):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(-1), x.min(-1)
    v = maxc
    cr = maxc - minc
    s = cr / np.where(maxc == 0, 1, maxc)
    crd = np.where(cr == 0, 1, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = np.where(cr == 0, 0, h)
    h = ((h / 6.0) % 1.0 + delta) % 1.0
    i = np.floor(h * 6.0) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(x)
    for k, chans in enumerate(table):
        out[i == k] = np.stack(chans, -1)[i == k]
    return out


def ref_blur(x, sigma):
    t = np.arange(-6, 7)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    h, w = x.shape[:2]
    pad = np.pad(x, ((6, 6), (6, 6), (0, 0)), mode="edge")
    rows = sum(k[j] * pad[j:j + h] for j in range(13))
    return sum(k[j] * rows[:, j:j + w] for j in range(13))


def ref_photometric(x, p, i):
    gray = lambda y: y @ GRAY  # noqa: E731
    fns = [
        lambda y: np.clip(p["brightness"][i] * y, 0, 1),
        lambda y: np.clip(p["contrast"][i] * y + (1 - p["contrast"][i]) * gray(y).mean(), 0, 1),
        lambda y: np.clip(
            p["saturation"][i] * y + (1 - p["saturation"][i]) * gray(y)[..., None], 0, 1
        ),
        lambda y: ref_hue(y, p["hue"][i]),
    ]
    if p["jitter"][i]:
        for k in p["order"][i]:
            x = fns[int(k)](x)
    if p["grayscale"][i]:
        x = np.repeat(gray(x)[..., None], 3, -1)
    if p["blur"][i]:
        x = ref_blur(x, p["sigma"][i])
    if p["solarize"][i]:
        x = np.where(x * 255 >= 127.5, 1 - x, x)
    return x


def random_params(n, rng):
    return {
        "jitter": rng.random(n) < 0.8,
        "brightness": rng.uniform(0.6, 1.4, n).astype(np.float32),
        "contrast": rng.uniform(0.6, 1.4, n).astype(np.float32),
        "saturation": rng.uniform(0.8, 1.2, n).astype(np.float32),
        "hue": rng.uniform(-0.1, 0.1, n).astype(np.float32),
        "order": np.array([rng.permutation(4) for _ in range(n)], np.int32),
        "grayscale": rng.random(n) < 0.2,
        "blur": rng.random(n) < 0.5,
        "sigma": rng.uniform(0.1, 2.0, n).astype(np.float32),
        "solarize": rng.random(n) < 0.3,
    }


def test_apply_matches_reference_semantics():
    rng = np.random.default_rng(0)
    n = 64
    x = rng.random((n, 20, 20, 3)).astype(np.float32)
    # Smooth a little so that few values sit on the solarisation threshold.
    x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3
    p = random_params(n, rng)
    got = np_(apply(x, p))
    for i in range(n):
        want = ref_photometric(x[i], p, i)
        diff = np.abs(got[i] - want)
        if p["solarize"][i]:
            diff = np.minimum(diff, np.abs(1 - got[i] - want))
        # The chain below (2e-5) plus a 400-pixel contrast mean (sum_tolerance(400): 7e-6
        # of it) and two 13-tap blur passes against float64 (~6e-6): ~4e-5; 2e-4 is 5x that.
        assert diff.max() < 2e-4, (i, diff.max(), {k: p[k][i] for k in p})


def test_every_jitter_order_is_applied_in_order():
    x = np.random.default_rng(1).random((24, 8, 8, 3)).astype(np.float32)
    perms = np.array(list(itertools.permutations(range(4))), np.int32)
    p = {
        "jitter": np.ones(24, bool), "brightness": np.full(24, 1.35, np.float32),
        "contrast": np.full(24, 0.65, np.float32), "saturation": np.full(24, 1.15, np.float32),
        "hue": np.full(24, 0.07, np.float32), "order": perms,
        "grayscale": np.zeros(24, bool), "blur": np.zeros(24, bool),
        "sigma": np.ones(24, np.float32), "solarize": np.zeros(24, bool),
    }
    got = np_(apply(np.repeat(x[:1], 24, 0), p))
    for i in range(24):
        # 4 chained ops, two hue algorithms (ours in sixths, the reference's HSV round trip):
        # ulps of values up to 6 (4.8e-7) times the chroma, x factors <= 1.35: a few 1e-6.
        np.testing.assert_allclose(got[i], ref_photometric(x[0], p, i), atol=2e-5)
    assert len({np.round(g, 4).tobytes() for g in got}) == 24


def test_parameter_distributions():
    n = 20000
    u = keras.random.uniform((n, 13), seed=keras.random.SeedGenerator(3))
    bp = np.full(n, 0.1, np.float32)
    sp = np.full(n, 0.2, np.float32)
    p = {k: np_(v) for k, v in sample_params(u, bp, sp).items()}
    assert binom_ok(p["jitter"].sum(), n, 0.8)
    assert binom_ok(p["grayscale"].sum(), n, 0.2)
    assert binom_ok(p["blur"].sum(), n, 0.1)
    assert binom_ok(p["solarize"].sum(), n, 0.2)
    cfg = PhotometricConfig()
    for name in ("brightness", "contrast", "saturation", "hue"):
        lo, hi = cfg.factor_range(name)
        v = p[name]
        assert v.min() >= lo and v.max() <= hi
        assert abs(v.mean() - (lo + hi) / 2) <= 5 * (hi - lo) / math.sqrt(12 * n)
        counts, _ = np.histogram(v, bins=8, range=(lo, hi))
        assert all(binom_ok(c, n, 1 / 8) for c in counts)
    s = p["sigma"]
    assert s.min() >= 0.1 and s.max() <= 2.0
    assert abs(s.mean() - 1.05) <= 5 * 1.9 / math.sqrt(12 * n)
    codes = p["order"] @ np.array([64, 16, 4, 1])
    assert len(np.unique(codes)) == 24
    for c in np.unique(codes):
        assert binom_ok((codes == c).sum(), n, 1 / 24)


def test_view_probabilities():
    layer = MultiCropPhotometric()
    blur, sol = layer.view_probabilities(10)
    assert blur == [1.0, 0.1] + [0.5] * 8
    assert sol == [0.0, 0.2] + [0.0] * 8


def _constant_crops(color, batch, num_locals=2, size=(4, 2)):
    g = np.broadcast_to(np.asarray(color, np.uint8), (batch, size[0], size[0], 3)).copy()
    loc = np.broadcast_to(np.asarray(color, np.uint8), (batch, size[1], size[1], 3)).copy()
    return (g, g.copy()) + tuple(loc.copy() for _ in range(num_locals))


def test_output_probabilities_per_view():
    # Constant colours: grayscale gives R=G=B, jitter moves the colour, solarisation maps
    # it to 1 - x, blur keeps it. Per-image draws over a batch of 3000.
    n = 3000
    color = np.array([90, 150, 210], np.uint8)
    layer = MultiCropPhotometric(seed=5)
    outs = [np_(o) for o in run(layer, _constant_crops(color, n))]
    c = color / 255.0
    solar = np.where(color >= 128, 1 - c, c)
    for v, x in enumerate(outs):
        assert x.dtype == np.float32
        rgb = (x * STD + MEAN).reshape(n, -1, 3)
        # 1e-4 separates float32 round-off of the ops (~1e-6 in [0, 1]) from a real change:
        # a uint8 colour step is 3.9e-3, a jitter factor is 1 with probability 0.
        assert np.ptp(rgb, axis=1).max() < 1e-4
        rgb = rgb[:, 0]
        gray = np.ptp(rgb, axis=1) < 1e-4
        plain = np.abs(rgb - c).max(axis=1) < 1e-4
        solarized = np.abs(rgb - solar).max(axis=1) < 1e-4
        p_sol = 0.2 if v == 1 else 0.0
        assert binom_ok(gray.sum(), n, 0.2), v
        assert binom_ok((~gray & ~plain & ~solarized).sum(), n, 0.64), v
        assert binom_ok(solarized.sum(), n, 0.16 * p_sol), v
        assert binom_ok(plain.sum(), n, 0.16 * (1 - p_sol)), v
    # Per-image: the images of one batch do not share parameters.
    assert len(np.unique(np.round(outs[2][:, 0, 0, 0], 5))) > n // 2


def test_blur_probability_per_view():
    n = 2000
    cfg = PhotometricConfig(jitter_p=0.0, grayscale_p=0.0, blur_radius=(1.0, 2.0))
    layer = MultiCropPhotometric(config=cfg, seed=2)
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    loc = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    crops = (g, g, loc, loc)
    outs = [np_(o) * STD + MEAN for o in run(layer, crops)]
    plain = [np_(o) * STD + MEAN for o in run(layer, crops, training=False)]
    for v, (x, x0) in enumerate(zip(outs, plain)):
        solar = np.where(x0 * 255 >= 127.5, 1 - x0, x0)
        # 1e-4: float32 round-off (~1e-6) vs a blur of radius >= 1 on random uint8 pixels.
        same = (np.abs(x - x0).max(axis=(1, 2, 3)) < 1e-4) | (
            np.abs(x - solar).max(axis=(1, 2, 3)) < 1e-4
        )
        assert binom_ok((~same).sum(), n, [1.0, 0.1, 0.5, 0.5][v]), v


def test_shapes_ranges_inference_and_seeds():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8) for _ in range(2)]
    crops += [rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8) for _ in range(4)]
    layer = MultiCropPhotometric(seed=7)
    out = run(layer, crops)
    assert isinstance(out, tuple) and len(out) == 6
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for o, c in zip(out, crops):
        o = np_(o)
        assert o.shape == c.shape and o.dtype == np.float32
        # (x - mean) / std of [0, 1] values: 2 roundings at |x| <= 2.7 (2.4e-7 per ulp).
        assert (o >= lo - 1e-5).all() and (o <= hi + 1e-5).all()
    # Inference: normalisation only.
    for o, c in zip(run(layer, crops, training=False), crops):
        # 3 float32 roundings at |x| <= 2.7 against float64: 1e-5 is 40 ulps (2.4e-7).
        np.testing.assert_allclose(np_(o), (c / 255.0 - MEAN) / STD, atol=1e-5)
    # Same seed, same draws; the generator advances between calls.
    again = run(MultiCropPhotometric(seed=7), crops)
    for a, b in zip(out, again):
        # The same program with the same draws, same machine: the backends' CPU reductions
        # are deterministic, so identical bits; 1e-6 is 4 ulps at |x| <= 2.7.
        np.testing.assert_allclose(np_(a), np_(b), atol=1e-6)
    later = run(layer, crops)
    assert any(np.abs(np_(a) - np_(b)).max() > 1e-3 for a, b in zip(out, later))


def test_config_round_trip():
    layer = MultiCropPhotometric(
        global_blur_p=(0.9, 0.2), local_blur_p=0.4, global_solarize_p=(0.0, 0.3),
        config=PhotometricConfig(hue=0.05), seed=3, name="photo",
    )
    clone = MultiCropPhotometric.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.config.hue == 0.05 and clone.global_blur_p == (0.9, 0.2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, MultiCropPhotometric) and restored.local_blur_p == 0.4


def test_runs_compiled_in_a_train_step():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for _ in range(2)]
    crops += [rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8) for _ in range(2)]
    layer = MultiCropPhotometric(seed=0)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        state = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(lambda s, xs: layer.stateless_call([], s, xs))
        out1, state = step(state, crops)
        out2, state = step(state, crops)
    elif backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda xs: layer(xs), jit_compile=False)
        out1 = step([tf.constant(c) for c in crops])
        out2 = step([tf.constant(c) for c in crops])
    else:
        import torch

        xs = [torch.as_tensor(c) for c in crops]
        out1, out2 = layer(xs), layer(xs)
    assert [tuple(o.shape) for o in out1] == [c.shape for c in crops]
    # The seed state advances inside the compiled step: fresh draws each call.
    assert any(np.abs(np_(a) - np_(b)).max() > 1e-3 for a, b in zip(out1, out2))
