"""Image retrieval on revisited Oxford and Paris, as the official `eval_image_retrieval.py`.

The benchmark (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018) ranks every
database image for each query by cosine similarity of global descriptors and scores
the rankings with mean average precision under two protocols: Medium (positives: easy
and hard images; junk: junk) and Hard (positives: hard; junk: junk and easy). Junk
images are removed from the ranking before precision is counted.

On-disk layout (`--data_path`): `<root>/<dataset>/gnd_<dataset>.pkl` (`imlist`,
`qimlist`, `gnd`: one dict per query with `bbx`, `easy`, `hard`, `junk`) and
`<root>/<dataset>/jpg/<name>.jpg`.
"""

import os

import numpy as np
from keras import ops

from keras_dino.preprocessing import normalize_images

DATASETS = ("roxford5k", "rparis6k")
SCALES = (1.0, 1 / 2**0.5, 0.5)  # the official multi-scale descriptor


def load_ground_truth(path) -> dict:
    """The `gnd_<dataset>.pkl` file, read without running pickled code.

    Example:

    ```python
    gnd = load_ground_truth("data/roxford5k/gnd_roxford5k.pkl")
    len(gnd["imlist"]), len(gnd["qimlist"]), sorted(gnd["gnd"][0])
    # 4993, 70, ['bbx', 'easy', 'hard', 'junk']
    ```
    """
    from keras_dino.checkpoints.safe_unpickle import unpickle_data

    with open(path, "rb") as f:
        cfg = unpickle_data(f.read(), os.fspath(path))
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise ValueError(f"{path} is not a revisited Oxford/Paris ground truth: it needs "
                         "'imlist', 'qimlist' and 'gnd'.")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise ValueError(f"{path}: {len(cfg['gnd'])} ground-truth entries for "
                         f"{len(cfg['qimlist'])} queries.")
    return cfg


def protocol(gnd, name: str) -> list:
    """`[{"ok": positives, "junk": ignored}]` per query for `easy`, `medium` or `hard`.

    Example:

    >>> protocol([{"easy": [1], "hard": [2], "junk": [3]}], "hard")
    [{'ok': [2], 'junk': [3, 1]}]
    """
    parts = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
             "hard": (("hard",), ("junk", "easy"))}
    if name not in parts:
        raise ValueError(f"unknown protocol '{name}'; known: {', '.join(parts)}.")
    ok, junk = parts[name]
    return [{"ok": [int(i) for k in ok for i in g[k]],
             "junk": [int(i) for k in junk for i in g.get(k, [])]} for g in gnd]


def average_precision(positions, num_positives: int) -> float:
    """The benchmark's AP: trapezoids of precision over recall steps of 1/num_positives.

    `positions`: 0-based ranks of the positives in the ranking with junk removed,
    increasing.

    Example:

    >>> average_precision([0, 2], 2)  # (1 + 1)/4 + (1/2 + 2/3)/4
    0.7916666666666666
    """
    positions = np.asarray(positions, np.float64)
    found = np.arange(len(positions), dtype=np.float64)
    before = np.where(positions == 0, 1.0, found / np.maximum(positions, 1))
    after = (found + 1) / (positions + 1)
    return float(np.sum((before + after) / 2) / num_positives)


def mean_average_precision(ranks, ground_truth, kappas=(1, 5, 10)):
    """mAP and mean precision at `kappas` over queries, junk excluded (revisited benchmark).

    Args:
        ranks: `(num_database, num_queries)`: column q lists database indices, best first.
        ground_truth: `protocol(...)` entries, one per query.
        kappas: the k of precision@k. As the benchmark defines it, a query whose last
            positive comes before rank k counts precision at that rank instead.

    Returns:
        `(map, aps, mp_at_k, p_at_k)`; queries without positives get NaN and are left
        out of the means.

    Example:

    >>> ranks = np.array([[0], [2], [1]])  # one query: image 0, then 2, then 1
    >>> m, aps, mpk, _ = mean_average_precision(ranks, [{"ok": [0, 1], "junk": [2]}], [1, 5])
    >>> round(m, 4), mpk.tolist()  # junk image 2 removed: positives at ranks 0, 1
    (1.0, [1.0, 1.0])
    """
    ranks = np.asarray(ranks)
    kappas = list(kappas)
    aps = np.full(len(ground_truth), np.nan)
    precisions = np.full((len(ground_truth), len(kappas)), np.nan)
    for q, entry in enumerate(ground_truth):
        ok = np.asarray(entry["ok"], np.int64)
        if not len(ok):
            continue
        column = ranks[:, q]
        is_junk = np.isin(column, np.asarray(entry.get("junk", []), np.int64))
        kept = column[~is_junk]
        positions = np.flatnonzero(np.isin(kept, ok))
        aps[q] = average_precision(positions, len(ok))
        one_based = positions + 1
        for j, k in enumerate(kappas):
            cutoff = min(int(one_based.max()), k) if len(one_based) else k
            precisions[q, j] = np.sum(one_based <= cutoff) / cutoff
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("no query has a positive image under this protocol.")
    return (float(aps[valid].mean()), aps, precisions[valid].mean(axis=0), precisions)


def load_image(path, imsize: int | None = 224, bbx=None):
    """One image as the official tool sees it: RGB, `thumbnail((imsize, imsize))`, normalised.

    `bbx` (x1, y1, x2, y2) crops a query to its box first (the revisited benchmark's
    own protocol; the official DINO script does not crop). Returns float32 `(H, W, 3)`.

    Example:

    ```python
    x = load_image("data/roxford5k/jpg/all_souls_000013.jpg", 224)   # (168, 224, 3)
    ```
    """
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as the official dataset class
    with Image.open(path) as image:
        image = image.convert("RGB")
        if bbx is not None:
            image = image.crop(tuple(int(round(float(v))) for v in bbx))
        if imsize is not None:
            image.thumbnail((imsize, imsize), Image.LANCZOS)
        pixels = np.asarray(image)
    return ops.convert_to_numpy(normalize_images(pixels))


def _patch_multiple(x, backbone):
    """Drops the last rows/columns that a stride-`patch` embedding would ignore."""
    from keras_dino.models.vision_transformer import VisionTransformer

    if not isinstance(backbone, VisionTransformer):  # ResNet, XCiT: any size
        return x
    patch = backbone.patch_size
    height, width = (x.shape[1] // patch) * patch, (x.shape[2] // patch) * patch
    return x[:, :height, :width]


def _torch_bilinear_taps(n_in: int, scale: float):
    """Source indices and weights of torch's bilinear resize by `scale_factor` on one axis.

    torch maps output pixel `d` to `(d + 0.5) / scale - 0.5` (clamped at 0) when a scale
    factor is given, not `n_in / n_out`, and interpolates its two neighbours.
    """
    n_out = int(np.floor(n_in * scale))
    source = np.maximum((np.arange(n_out) + 0.5) / scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = (source - low).astype(np.float32)
    return low, high, 1.0 - frac, frac


def resize_like_torch(x, scale: float):
    """`torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear")`, NHWC.

    Output size `floor(n * scale)`, torch's scale-factor coordinate mapping, no
    antialiasing: the official multi-scale descriptor's resize, exactly.

    Example:

    >>> tuple(resize_like_torch(np.zeros((1, 15, 20, 3), "float32"), 0.5).shape)
    (1, 7, 10, 3)
    """
    x = ops.convert_to_tensor(x)
    for axis in (1, 2):
        low, high, w_low, w_high = _torch_bilinear_taps(int(x.shape[axis]), scale)
        shape = [1, 1, 1, 1]
        shape[axis] = len(low)
        w_low, w_high = (ops.convert_to_tensor(np.reshape(w, shape), x.dtype)
                         for w in (w_low, w_high))
        x = ops.take(x, low, axis=axis) * w_low + ops.take(x, high, axis=axis) * w_high
    return x


def global_descriptor(backbone, image, multiscale: bool = False):
    """The official retrieval descriptor of one image `(H, W, 3)`: `(E,)`, not normalised.

    Single scale: the backbone's output. Multi-scale (`utils.multi_scale`): the mean of
    the outputs at scales 1, 1/√2 and 1/2, divided by its norm.

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> global_descriptor(vit_tiny(16, depth=1), np.zeros((40, 50, 3), "float32"), True).shape
    (192,)
    """
    x = ops.convert_to_tensor(np.asarray(image, np.float32)[None])
    if not multiscale:
        return ops.convert_to_numpy(backbone(_patch_multiple(x, backbone), training=False))[0]
    total = 0.0
    for scale in SCALES:
        scaled = x if scale == 1.0 else resize_like_torch(x, scale)
        total = total + ops.convert_to_numpy(
            backbone(_patch_multiple(scaled, backbone), training=False))[0]
    total = total / len(SCALES)
    return total / np.linalg.norm(total)


def l2_normalize_rows(features) -> np.ndarray:
    """Rows of a matrix divided by their L2 norm, in float64 (eps 1e-12).

    Example:

    >>> l2_normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _descriptors(backbone, paths, imsize, multiscale, boxes=None, verbose=1, what="images"):
    import keras

    bar = keras.utils.Progbar(len(paths), unit_name=what) if verbose else None
    out = []
    for i, path in enumerate(paths):
        box = boxes[i] if boxes is not None else None
        out.append(global_descriptor(backbone, load_image(path, imsize, box), multiscale))
        if bar:
            bar.update(i + 1)
    return l2_normalize_rows(np.stack(out))


def evaluate_retrieval(backbone, data_path, dataset: str = "roxford5k", imsize: int = 224,
                       multiscale: bool = False, crop_queries: bool = False,
                       kappas=(1, 5, 10), verbose: int = 1) -> dict:
    """mAP and mP@k (percent) of a backbone on revisited Oxford or Paris, Medium and Hard.

    As the official `eval_image_retrieval.py`: database and queries resized by
    `thumbnail(imsize)`, whole queries unless `crop_queries` (the benchmark's
    bounding boxes), L2-normalised descriptors, cosine ranking, junk removed per
    protocol.

    Returns:
        `{"mAP_medium", "mAP_hard", "mP@k_medium", "mP@k_hard", "num_database",
        "num_queries"}`; the `mP@k` entries are `{k: value}`.

    Example:

    ```python
    stats = evaluate_retrieval(keras_dino.load_pretrained("dino_vits16"), "data/",
                               "roxford5k", multiscale=True)
    stats["mAP_medium"], stats["mAP_hard"]
    ```
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}'; known: {', '.join(DATASETS)}.")
    root = os.path.join(os.fspath(data_path), dataset)
    cfg = load_ground_truth(os.path.join(root, f"gnd_{dataset}.pkl"))
    images = os.path.join(root, "jpg")
    database = [os.path.join(images, f"{name}.jpg") for name in cfg["imlist"]]
    queries = [os.path.join(images, f"{name}.jpg") for name in cfg["qimlist"]]
    missing = [p for p in database + queries if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {dataset} are missing under "
                                f"{images}, e.g. {missing[0]}.")
    boxes = [g.get("bbx") for g in cfg["gnd"]] if crop_queries else None
    db = _descriptors(backbone, database, imsize, multiscale, verbose=verbose, what="database")
    qs = _descriptors(backbone, queries, imsize, multiscale, boxes, verbose, "queries")
    ranks = np.argsort(-(db @ qs.T), axis=0, kind="stable")
    stats = {"num_database": len(database), "num_queries": len(queries)}
    for name in ("medium", "hard"):
        m, _, mpk, _ = mean_average_precision(ranks, protocol(cfg["gnd"], name), kappas)
        stats[f"mAP_{name}"] = 100.0 * m
        stats[f"mP@k_{name}"] = {int(k): 100.0 * float(v) for k, v in zip(kappas, mpk)}
    return stats
