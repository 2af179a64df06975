"""DataAugmentationDINO on tf.data: sampling distributions, official semantics, determinism.

Distribution checks compare many draws with their analytic values, with tolerances of
5 binomial (or sample) standard errors.
"""

import itertools
import math
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_dino.data import DataAugmentationDINO, PhotometricConfig, ops
from keras_dino.data.augment import apply_photometric, sample_photometric_params
from keras_dino.testing.tolerance import sum_tolerance

pytestmark = pytest.mark.tf_only

SHARED = pathlib.Path(
    os.environ.get("KERAS_DINO_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared")
)
IMAGES = SHARED / "images"

LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def z_ok(observed, expected, se, z=5.0):
    return abs(observed - expected) <= z * se + 1e-12


def binom_ok(hits, n, p, z=5.0):
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    return z_ok(hits / n, p, se, z)


# -- RandomResizedCrop ----------------------------------------------------------------------
def torchvision_box(u, height, width, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params with the random draws taken from `u`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a in range(u.shape[0]):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[a, 0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[a, 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(math.floor(u[a, 2] * (height - h + 1)))
            j = int(math.floor(u[a, 3] * (width - w + 1)))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "height,width,scale",
    [(300, 451, (0.4, 1.0)), (512, 512, (0.05, 0.4)), (40, 900, (0.4, 1.0)), (7, 5, (0.4, 1.0))],
)
def test_crop_boxes_follow_torchvision_exactly(height, width, scale):
    rng = np.random.default_rng(height * width)
    u = rng.random((400, 10, 4))
    got = ops.crop_boxes_from_uniforms(tf.constant(u), height, width, scale).numpy()
    want = np.array([torchvision_box(u[k], height, width, scale) for k in range(len(u))])
    np.testing.assert_array_equal(got, want)
    assert (got[:, 0] >= 0).all() and (got[:, 0] + got[:, 2] <= height).all()
    assert (got[:, 1] >= 0).all() and (got[:, 1] + got[:, 3] <= width).all()


def test_local_crop_area_and_ratio_are_uniform():
    # A local crop always fits on a square image: area ~ U(0.05, 0.4), log r ~ U.
    n, side = 20000, 1000
    boxes = ops.sample_crop_boxes(tf.constant([3, 4]), side, side, n, (0.05, 0.4)).numpy()
    frac = boxes[:, 2] * boxes[:, 3] / side**2
    logr = np.log(boxes[:, 3] / boxes[:, 2])
    lo, hi = 0.05, 0.4
    assert z_ok(frac.mean(), (lo + hi) / 2, (hi - lo) / math.sqrt(12 * n))
    assert z_ok(frac.var(), (hi - lo) ** 2 / 12, (hi - lo) ** 2 / math.sqrt(180 * n))
    a, b = LOG_RATIO
    assert z_ok(logr.mean(), 0.0, (b - a) / math.sqrt(12 * n))
    assert z_ok(logr.var(), (b - a) ** 2 / 12, (b - a) ** 2 / math.sqrt(180 * n))
    # Uniform within the range: each decile holds 10% of the draws.
    for values, (x0, x1) in ((frac, (lo, hi)), (logr, (a, b))):
        counts, _ = np.histogram(values, bins=10, range=(x0, x1))
        for c in counts:
            assert binom_ok(c, n, 0.1)
    # Offsets uniform over the valid positions.
    rel = (boxes[:, 0] + 0.5) / (side - boxes[:, 2] + 1)
    assert z_ok(rel.mean(), 0.5, 1 / math.sqrt(12 * n))


def test_global_crop_distribution_with_rejection():
    # On a 4:3 image part of (area, ratio) does not fit: the draws are conditioned on
    # fitting (first of 10 attempts), with the centre crop as fallback. Analytic values
    # by integrating over a fine grid of the two uniforms.
    height, width, scale, n = 300, 400, (0.4, 1.0), 20000
    g = (np.arange(1500) + 0.5) / 1500
    ua, ur = np.meshgrid(g, g, indexing="ij")
    target = height * width * (scale[0] + (scale[1] - scale[0]) * ua)
    aspect = np.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * ur)
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    p_fit = ok.mean()
    q = (1 - p_fit) ** 10
    frac_fit = (w * h / (height * width))[ok].mean()
    logr_fit = np.log(w / h)[ok].mean()
    exp_frac = (1 - q) * frac_fit + q * 1.0  # fallback: whole image (4:3 is in range)
    exp_logr = (1 - q) * logr_fit + q * math.log(4 / 3)
    boxes = ops.sample_crop_boxes(tf.constant([5, 6]), height, width, n, scale).numpy()
    frac = boxes[:, 2] * boxes[:, 3] / (height * width)
    logr = np.log(boxes[:, 3] / boxes[:, 2])
    assert 0.5 < p_fit < 0.95  # the test does exercise rejection
    assert z_ok(frac.mean(), exp_frac, frac.std() / math.sqrt(n))
    assert z_ok(logr.mean(), exp_logr, logr.std() / math.sqrt(n))


def test_fallback_center_crop_for_extreme_aspect():
    boxes = ops.sample_crop_boxes(tf.constant([0, 1]), 50, 10000, 5, (0.4, 1.0)).numpy()
    np.testing.assert_array_equal(boxes, [[0, (10000 - 67) // 2, 50, 67]] * 5)
    boxes = ops.sample_crop_boxes(tf.constant([0, 1]), 10000, 50, 5, (0.4, 1.0)).numpy()
    np.testing.assert_array_equal(boxes, [[(10000 - 67) // 2, 0, 67, 50]] * 5)


def test_resize_matches_pil_bicubic():
    image = np.asarray(Image.open(IMAGES / "chelsea.jpg").convert("RGB"))
    pil = Image.fromarray(image)
    for box, size in [((10, 20, 250, 300), 224), ((0, 0, 300, 451), 96), ((5, 7, 40, 30), 96)]:
        top, left, h, w = box
        ours = ops.crop_and_resize(tf.constant(image), tf.constant(box), size).numpy()
        ref = np.asarray(
            pil.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        )
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert ours.dtype == np.uint8
        # PIL resamples in fixed point: off by one level at most.
        assert diff.max() <= 1 and diff.mean() < 0.5, (box, diff.max(), diff.mean())
        tf_ref = tf.image.resize(image[top:top + h, left:left + w], (size, size), "bicubic",
                                 antialias=True)
        tf_ref = np.clip(np.round(tf_ref.numpy()), 0, 255)
        assert np.abs(ours - tf_ref).max() <= 1


def test_batched_crops_equal_the_per_image_path_and_pil():
    """`batch_crops_and_resize` gives the per-image op's pixels exactly (PIL within one
    level), for images of different sizes zero-padded into one batch, with flips."""
    photo = np.asarray(Image.open(IMAGES / "chelsea.jpg").convert("RGB"))[:120, :90]
    # A CIFAR-sized natural image (PIL's intermediate rounding makes noise differ more).
    small = np.asarray(Image.fromarray(photo).resize((32, 32), Image.BICUBIC))
    images = [photo, small, small, photo]
    boxes = tf.constant([[10, 20, 100, 60], [0, 0, 32, 32], [4, 6, 11, 19], [0, 0, 120, 90]])
    flips = tf.constant([False, True, False, True])
    padded = np.zeros((4, 120, 90, 3), np.uint8)
    for i, im in enumerate(images):
        padded[i, : im.shape[0], : im.shape[1]] = im
    for size in (32, 16):
        out = ops.batch_crops_and_resize(tf.constant(padded), boxes, size, flips).numpy()
        assert out.dtype == np.uint8 and out.shape == (4, size, size, 3)
        for i, im in enumerate(images):
            ref = ops.crops_and_resize(tf.constant(im), boxes[i:i + 1], size, flips[i:i + 1])
            np.testing.assert_array_equal(out[i], ref[0].numpy())
            top, left, h, w = boxes[i].numpy().tolist()
            pil = Image.fromarray(im).crop((left, top, left + w, top + h))
            pil = np.asarray(pil.resize((size, size), Image.BICUBIC))
            pil = pil[:, ::-1] if bool(flips[i]) else pil
            assert np.abs(out[i].astype(int) - pil.astype(int)).max() <= 1
    # The full crop of a same-size output is the image itself.
    same = ops.batch_crops_and_resize(tf.constant(small[None]), boxes[1:2], 32)
    np.testing.assert_array_equal(same[0].numpy(), small)


def test_crop_and_flip_batch_equals_crop_and_flip():
    aug = DataAugmentationDINO(local_crops_number=2, global_size=32, local_size=16)
    rng = np.random.default_rng(5)
    images = [tf.constant(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)) for _ in range(3)]
    seeds = [tf.constant([7, i]) for i in range(3)]
    params = [aug.crop_params(im, s) for im, s in zip(images, seeds)]
    batch = aug.crop_and_flip_batch(
        tf.stack(images), tf.stack([b for b, _ in params]), tf.stack([f for _, f in params])
    )
    assert len(batch) == aug.num_crops
    for i, (im, s) in enumerate(zip(images, seeds)):
        for view, crop in enumerate(aug.crop_and_flip(im, s)):
            np.testing.assert_array_equal(batch[view][i].numpy(), crop.numpy())


# -- photometric semantics ------------------------------------------------------------------
def pil_photometric(img, p, i):
    """The official PIL/torchvision ops on a uint8 PIL image with view `i`'s parameters."""
    from PIL import ImageEnhance, ImageFilter, ImageOps

    def hue(im, f):
        h, s, v = im.convert("HSV").split()
        np_h = np.array(h, dtype=np.uint8)
        with np.errstate(over="ignore"):
            np_h += np.array(f * 255).astype(np.uint8)
        return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")

    fns = [
        lambda im: ImageEnhance.Brightness(im).enhance(float(p["brightness"][i])),
        lambda im: ImageEnhance.Contrast(im).enhance(float(p["contrast"][i])),
        lambda im: ImageEnhance.Color(im).enhance(float(p["saturation"][i])),
        lambda im: hue(im, float(p["hue"][i])),
    ]
    if p["jitter"][i]:
        for k in p["order"][i]:
            img = fns[int(k)](img)
    if p["grayscale"][i]:
        img = img.convert("L").convert("RGB")
    if p["blur"][i]:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(p["sigma"][i])))
    if p["solarize"][i]:
        img = ImageOps.solarize(img)
    return np.asarray(img)


def test_photometric_matches_official_pil_ops():
    image = np.asarray(Image.open(IMAGES / "coffee.jpg").convert("RGB"))[100:196, 200:296]
    n = 48
    p = sample_photometric_params(tf.constant([7, 8]), [0.5] * n, [0.5] * n)
    pn = {k: v.numpy() for k, v in p.items()}
    x = tf.constant(image, tf.float32) / 255.0
    errs = []
    for i in range(n):
        ours = apply_photometric(x, p, i).numpy() * 255.0
        ref = pil_photometric(Image.fromarray(image), pn, i).astype(np.float32)
        diff = np.abs(ours - ref)
        if pn["solarize"][i]:  # a pixel at the threshold may land on either side
            diff = np.minimum(diff, np.abs(255.0 - ours - ref))
        errs.append(diff.mean())
        # PIL rounds to uint8 after every op (its HSV round trip alone is off by 0.7 on
        # average) and blurs with 3 box passes: a few levels.
        assert diff.mean() < 4.0, (i, diff.mean(), {k: pn[k][i] for k in pn})
    assert np.median(errs) < 2.5


def test_host_photometric_per_op_reference():
    rng = np.random.default_rng(0)
    x = rng.random((24, 24, 3)).astype(np.float32)
    xt = tf.constant(x)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    # Values in [0, 1] from 1-5 float32 ops (a 3-term luma): a few ulps (1.2e-7 each at 1);
    # 1e-6 is 8 ulps.
    np.testing.assert_allclose(ops.adjust_brightness(xt, 1.3), np.clip(1.3 * x, 0, 1), atol=1e-6)
    # Contrast adds 0.3 x the mean of 576 grey values, which numpy and TF sum in different
    # orders: sum_tolerance(576) of their sum, / 576 (2.6e-6 at mean 0.5), plus the 8 ulps.
    mean_err = float(sum_tolerance(gray.size, gray.sum())) / gray.size
    np.testing.assert_allclose(
        ops.adjust_contrast(xt, 0.7), np.clip(0.7 * x + 0.3 * gray.mean(), 0, 1),
        atol=0.3 * mean_err + 1e-6,
    )
    np.testing.assert_allclose(
        ops.adjust_saturation(xt, 1.2), np.clip(1.2 * x - 0.2 * gray[..., None], 0, 1), atol=1e-6
    )
    np.testing.assert_allclose(ops.to_grayscale(xt), np.repeat(gray[..., None], 3, -1), atol=1e-6)
    sol = ops.solarize(xt).numpy()
    np.testing.assert_allclose(sol, np.where(np.round(x * 255) >= 128, 1 - x, x), atol=1e-6)
    # Blur: 13-tap Gaussian of std sigma with edges extended.
    sigma = 1.3
    t = np.arange(-6, 7)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(x, ((6, 6), (6, 6), (0, 0)), mode="edge")
    rows = sum(k[j] * pad[j:j + 24] for j in range(13))
    ref = sum(k[j] * rows[:, j:j + 24] for j in range(13))
    # Against float64: per pass sum_tolerance(13, programs=1) (1.3e-6 on [0, 1] values) and
    # the float32 kernel's exp (4 ulps) and normalisation (a 13-term sum): ~6e-6 for 2 passes.
    np.testing.assert_allclose(ops.gaussian_blur(xt, sigma), ref, atol=1e-5)
    # Hue: rotating by 1/3 of the circle permutes pure primaries.
    red = tf.constant([[[1.0, 0.0, 0.0]]])
    # The hue is computed in sixths, up to 6 + 5: a few ulps of 11 (9.5e-7 each) per channel.
    np.testing.assert_allclose(ops.adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]], atol=1e-5)


def test_jitter_order_is_the_drawn_permutation():
    x = tf.constant(np.random.default_rng(1).random((16, 16, 3)), tf.float32)
    fns = [
        lambda y: ops.adjust_brightness(y, 1.35),
        lambda y: ops.adjust_contrast(y, 0.65),
        lambda y: ops.adjust_saturation(y, 1.15),
        lambda y: ops.adjust_hue(y, 0.07),
    ]
    outs = {}
    for perm in itertools.permutations(range(4)):
        params = {
            "jitter": tf.constant([True]), "brightness": tf.constant([1.35]),
            "contrast": tf.constant([0.65]), "saturation": tf.constant([1.15]),
            "hue": tf.constant([0.07]), "order": tf.constant([perm], tf.int32),
            "grayscale": tf.constant([False]), "blur": tf.constant([False]),
            "sigma": tf.constant([1.0]), "solarize": tf.constant([False]),
        }
        got = apply_photometric(x, params, 0).numpy()
        want = x
        for k in perm:
            want = fns[k](want)
        # The same TF ops in the same order on the same input (blends with factor 1 and
        # grey weight 0 are exact): equal but for a fused multiply-add, 1e-6 is 8 ulps at 1.
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
        outs[perm] = got
    # The order matters (24 distinct results).
    flat = {np.round(v, 4).tobytes() for v in outs.values()}
    assert len(flat) == 24


# -- parameter distributions ----------------------------------------------------------------
def test_photometric_parameter_distributions():
    n = 20000
    aug = DataAugmentationDINO(local_crops_number=8, jit_compile=False)
    blur_p = [v.blur_p for v in aug.views]
    sol_p = [v.solarize_p for v in aug.views]
    assert blur_p == [1.0, 0.1] + [0.5] * 8 and sol_p == [0.0, 0.2] + [0.0] * 8
    views = [0, 1, 2]  # first global, second global, a local
    p = sample_photometric_params(
        tf.constant([11, 12]), [blur_p[v] for v in views for _ in range(n)],
        [sol_p[v] for v in views for _ in range(n)],
    )
    p = {k: v.numpy().reshape((3, n) + v.shape[1:]) for k, v in p.items()}
    for v in range(3):
        assert binom_ok(p["jitter"][v].sum(), n, 0.8)
        assert binom_ok(p["grayscale"][v].sum(), n, 0.2)
        assert binom_ok(p["blur"][v].sum(), n, blur_p[views[v]])
        assert binom_ok(p["solarize"][v].sum(), n, sol_p[views[v]])
    assert p["blur"][0].all() and not p["solarize"][0].any() and not p["solarize"][2].any()
    cfg = PhotometricConfig()
    for name in ("brightness", "contrast", "saturation", "hue"):
        lo, hi = cfg.factor_range(name)
        vals = p[name].ravel()
        assert vals.min() >= lo and vals.max() <= hi
        assert z_ok(vals.mean(), (lo + hi) / 2, (hi - lo) / math.sqrt(12 * vals.size))
        counts, _ = np.histogram(vals, bins=8, range=(lo, hi))
        assert all(binom_ok(c, vals.size, 1 / 8) for c in counts)
    assert (0.6, 1.4) == cfg.factor_range("brightness") == cfg.factor_range("contrast")
    assert (0.8, 1.2) == cfg.factor_range("saturation")
    sig = p["sigma"].ravel()
    assert sig.min() >= 0.1 and sig.max() <= 2.0
    assert z_ok(sig.mean(), 1.05, 1.9 / math.sqrt(12 * sig.size))
    # The jitter order is a uniform random permutation of the four ops.
    orders = p["order"].reshape(-1, 4)
    codes = orders @ np.array([64, 16, 4, 1])
    perms = {sum(c * 4 ** (3 - i) for i, c in enumerate(q)) for q in itertools.permutations(range(4))}
    assert set(np.unique(codes)) == perms
    counts = np.array([(codes == c).sum() for c in perms])
    assert all(binom_ok(c, len(codes), 1 / 24) for c in counts)
    # Independent across images: consecutive draws uncorrelated.
    b = p["brightness"][2]
    assert abs(np.corrcoef(b[:-1], b[1:])[0, 1]) < 5 / math.sqrt(n)


# -- end to end on images: what actually comes out ------------------------------------------
# One small recipe for the statistical tests (and the pipeline tests): XLA compiles its
# photometric program once per process.
SMALL = dict(local_crops_number=2, global_size=16, local_size=8)


@pytest.fixture(scope="module")
def small_aug():
    return DataAugmentationDINO(**SMALL)


def _run_views(aug, image, n, seed=0, split=False, both=False):
    """The views of `n` draws on one image: full (default), split (uint8 crops), or both."""
    img = tf.constant(image)

    def views(k):
        s = tf.stack([k, tf.constant(seed, tf.int64)])
        crops = aug.crop_and_flip(img, s)
        if split:
            return crops
        full = aug.photometric(crops, s)
        return (full, crops) if both else full

    ds = tf.data.Dataset.range(n).map(views, num_parallel_calls=tf.data.AUTOTUNE).batch(n)
    return tf.nest.map_structure(lambda c: c.numpy(), next(iter(ds)))


def _unnormalize(x):
    return x * STD + MEAN


def test_output_probabilities_on_constant_color(small_aug):
    # A constant colour isolates the ops: crop/blur keep it, grayscale makes R=G=B,
    # jitter moves the colour, solarisation maps it to 1 - x.
    n = 2000
    color = np.array([90, 150, 210], np.uint8)
    image = np.broadcast_to(color, (40, 60, 3)).copy()
    outs = _run_views(small_aug, image, n)
    c = color / 255.0
    solar = np.where(color >= 128, 1 - c, c)
    for v, x in enumerate(outs):
        rgb = _unnormalize(x).reshape(n, -1, 3)
        # 1e-4 separates float32 round-off of the ops (~1e-6 in [0, 1], x std 0.225 and back)
        # from a real change: a uint8 colour step is 3.9e-3, a jitter factor is 1 with
        # probability 0.
        assert np.ptp(rgb, axis=1).max() < 1e-4  # still constant
        rgb = rgb[:, 0]
        gray = np.ptp(rgb, axis=1) < 1e-4
        plain = np.abs(rgb - c).max(axis=1) < 1e-4
        solarized = np.abs(rgb - solar).max(axis=1) < 1e-4
        assert binom_ok(gray.sum(), n, 0.2), v
        # Jitter (p=0.8) and no grayscale: the colour moved, not by solarisation.
        moved = ~gray & ~plain & ~solarized
        assert binom_ok(moved.sum(), n, 0.8 * 0.8), v
        p_sol = 0.2 if v == 1 else 0.0
        assert binom_ok(solarized.sum(), n, 0.2 * 0.8 * p_sol), v
        assert binom_ok(plain.sum(), n, 0.2 * 0.8 * (1 - p_sol)), v


def test_flip_probability_per_view(small_aug):
    n = 2000
    ramp = np.linspace(0, 255, 64).astype(np.uint8)
    image = np.broadcast_to(ramp[None, :, None], (48, 64, 3)).copy()
    outs = _run_views(small_aug, image, n, split=True)
    for x in outs:
        assert x.dtype == np.uint8
        slope = x[:, :, -1].astype(int).mean(axis=(1, 2)) - x[:, :, 0].astype(int).mean(axis=(1, 2))
        flipped = slope < 0
        assert (slope != 0).all()
        assert binom_ok(flipped.sum(), n, 0.5)


def test_blur_probability_per_view_from_outputs():
    # With jitter and grayscale off, a crop differs from its unblurred self iff blurred
    # (radii from 1.0 so that every blur is visible; the draw of the flag is the same).
    cfg = PhotometricConfig(jitter_p=0.0, grayscale_p=0.0, blur_radius=(1.0, 2.0))
    aug = DataAugmentationDINO(**SMALL, photometric_config=cfg)
    n = 2000
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    full, crops = _run_views(aug, image, n, seed=3, both=True)
    for v, (x, c) in enumerate(zip(full, crops)):
        raw = _unnormalize(x)
        c01 = c / 255.0
        solar = np.where(np.round(c01 * 255) >= 128, 1 - c01, c01)
        # 1e-4: float32 round-off (~1e-6) vs a blur of radius >= 1 on random uint8 pixels,
        # which moves some pixel by many 1/255 steps.
        same = np.abs(raw - c01).max(axis=(1, 2, 3)) < 1e-4
        same |= np.abs(raw - solar).max(axis=(1, 2, 3)) < 1e-4
        blurred = ~same
        assert binom_ok(blurred.sum(), n, aug.views[v].blur_p), v


# -- shapes, ranges, determinism ------------------------------------------------------------
def test_call_shapes_dtypes_ranges_and_seeds(small_aug):
    aug = DataAugmentationDINO(jit_compile=False)  # the official sizes
    image = tf.io.decode_jpeg(tf.io.read_file(str(IMAGES / "rocket.jpg")))
    crops = aug(image, seed=[1, 2])
    assert len(crops) == 10
    assert [tuple(c.shape) for c in crops] == [(224, 224, 3)] * 2 + [(96, 96, 3)] * 8
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for c in crops:
        assert c.dtype == tf.float32
        x = c.numpy()
        # (x - mean) / std of [0, 1] values: 2 roundings at |x| <= 2.7 (2.4e-7 per ulp).
        assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
        assert x.std() > 0
    again = aug(image, seed=[1, 2])
    for a, b in zip(crops, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = aug(image, seed=[1, 3])
    assert any(np.abs(a.numpy() - b.numpy()).max() > 0.1 for a, b in zip(crops, other))
    # Split halves compose to the whole, and XLA (default) computes what plain TF does.
    u8 = aug.crop_and_flip(image, seed=[1, 2])
    assert all(c.dtype == tf.uint8 for c in u8)
    for a, b in zip(crops, aug.photometric(u8, seed=[1, 2])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    plain = DataAugmentationDINO(**SMALL, jit_compile=False)
    assert small_aug.jit_compile and not plain.jit_compile
    small = small_aug.crop_and_flip(image, seed=[3, 4])
    for k in range(8):
        for a, b in zip(small_aug.photometric(small, seed=[5, k]),
                        plain.photometric(small, seed=[5, k])):
            # XLA fuses and reorders: the <= 256-pixel contrast mean, two 13-tap blur passes
            # (sum_tolerance(13) each), exp and hue's ulps of 6: ~1e-5 in [0, 1], / std 0.225.
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    # Unseeded calls draw fresh randomness.
    x1 = aug.crop_and_flip(image)[2].numpy()
    x2 = aug.crop_and_flip(image)[2].numpy()
    assert not np.array_equal(x1, x2)


def test_usable_inside_dataset_map(small_aug):
    ds = tf.data.Dataset.from_tensors(tf.zeros([50, 70, 3], tf.uint8)).repeat(3).map(small_aug)
    for crops in ds:
        assert [tuple(c.shape) for c in crops] == [(16, 16, 3)] * 2 + [(8, 8, 3)] * 2


def test_tiny_and_huge_images():
    aug = DataAugmentationDINO(local_crops_number=2, jit_compile=False)
    tiny = aug(tf.constant([[[10, 200, 30]]], tf.uint8), seed=[0, 0])
    assert [tuple(c.shape) for c in tiny] == [(224, 224, 3)] * 2 + [(96, 96, 3)] * 2
    wide = tf.zeros([120, 10000, 3], tf.uint8)
    crops = aug.crop_and_flip(wide, seed=[0, 1])
    assert [tuple(c.shape) for c in crops] == [(224, 224, 3)] * 2 + [(96, 96, 3)] * 2
