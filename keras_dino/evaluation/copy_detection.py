"""Copy detection on Copydays, as the official `eval_copy_detection.py`.

Each query image (the originals, the "strong" attacks, JPEG qualities 3-75 and crops
10-80%) searches the originals (plus optional distractors) by cosine similarity of a
descriptor made of the last block's CLS token and the GeM-pooled (p = 4) patch tokens,
optionally PCA-whitened with statistics learned on a separate image folder. Each query
block is scored by mean average precision over the top 20 results (the Holidays
package's AP). The paper's headline is the `strong` block (0.858 mAP for ViT-B/8 with
distractors and whitening, as reported by the official repository).

Layout (`--data_path`): `original/*.jpg`, `strong/*.jpg`, `jpegqual/<q>/*.jpg`,
`crops/<c>/*.jpg`. A `strong` image's positives are the originals whose file names share
its first 4 characters; in every other block, the i-th file (in sorted order) matches
the i-th original.
"""

import os

import numpy as np
from keras import ops

from keras_dino.evaluation.retrieval import average_precision, l2_normalize_rows
from keras_dino.preprocessing import normalize_images

BLOCKS = (["original", "strong"] + [f"jpegqual/{q}" for q in (3, 5, 8, 10, 15, 20, 30, 50, 75)]
          + [f"crops/{c}" for c in (10, 15, 20, 30, 40, 50, 60, 70, 80)])
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp")


def image_files(folder, extensions=IMAGE_EXTENSIONS) -> list:
    """Sorted image paths of a folder (not recursive).

    Example:

    ```python
    image_files("copydays/original")[:2]   # ['.../200000.jpg', '.../200100.jpg']
    ```
    """
    names = sorted(n for n in os.listdir(folder) if n.rsplit(".", 1)[-1].lower() in extensions)
    return [os.path.join(folder, n) for n in names]


def load_square(path, imsize: int = 320):
    """The official view: RGB, resized to `imsize x imsize` (PIL bicubic), normalised.

    Example:

    ```python
    x = load_square("copydays/strong/200000.jpg", 320)   # (320, 320, 3) float32
    ```
    """
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize((imsize, imsize), Image.BICUBIC)
        pixels = np.asarray(image)
    return ops.convert_to_numpy(normalize_images(pixels))


def gem(tokens, p: float = 4.0, eps: float = 1e-6):
    """Generalised mean pooling over the token axis: `mean(clamp(x, eps)^p)^(1/p)`.

    Example:

    >>> float(gem(np.full((1, 5, 1), 3.0, "float32"))[0, 0])  # a constant pools to itself
    3.0
    """
    x = ops.maximum(ops.convert_to_tensor(tokens), eps)
    return ops.power(ops.mean(ops.power(x, p), axis=1), 1.0 / p)


def copy_detection_features(backbone, images):
    """The official descriptor: `[CLS, GeM_4(patch tokens)]` of the last block, `(B, 2E)`.

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> tuple(copy_detection_features(vit_tiny(16, depth=1), np.zeros((2, 32, 48, 3))).shape)
    (2, 384)
    """
    if not hasattr(backbone, "get_intermediate_layers"):
        raise ValueError(f"copy detection uses a Vision Transformer's tokens; a "
                         f"{type(backbone).__name__} has none (the official tool is ViT-only).")
    tokens = backbone.get_intermediate_layers(ops.convert_to_tensor(images, "float32"), 1)[0]
    patches = tokens[:, backbone.num_prefix_tokens:]
    return ops.concatenate([tokens[:, 0], gem(patches)], axis=-1)


class PCAWhitening:
    """PCA whitening as the official `utils.PCA`: `x -> diag(λ^-whit) Vᵀ (x - mean)`.

    Learned from features F: the mean, and the eigen-decomposition of `FᵀF / n` (the
    official tool computes this second moment without centring); eigenvalues below
    `1e-5` of the largest are raised to it, and the `dim` largest are kept.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> features = rng.normal(size=(500, 8)) * np.arange(1, 9)
    >>> pca = PCAWhitening(whit=0.5).fit(features)
    >>> second_moment = features.T @ features / len(features)
    >>> bool(np.allclose(pca.dvt @ second_moment @ pca.dvt.T, np.eye(8)))
    True
    """

    def __init__(self, dim: int | None = None, whit: float = 0.5):
        self.dim = dim
        self.whit = whit
        self.mean = None
        self.dvt = None
        self.energy_kept = None

    def fit(self, features) -> "PCAWhitening":
        features = np.asarray(features, np.float64)
        self.mean = features.mean(axis=0)
        eigenvalues, eigenvectors = np.linalg.eigh(features.T @ features / len(features))
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-5)
        order = np.argsort(eigenvalues)[::-1][: self.dim or len(eigenvalues)]
        self.energy_kept = float(eigenvalues[order].sum() / eigenvalues.sum())
        self.dvt = np.diag(eigenvalues[order] ** -self.whit) @ eigenvectors[:, order].T
        return self

    def transform(self, features):
        """Centred by the learned mean, then projected and whitened."""
        if self.dvt is None:
            raise ValueError("fit the PCAWhitening first.")
        return (np.asarray(features, np.float64) - self.mean) @ self.dvt.T


def _features(backbone, paths, imsize, batch_size, verbose, what):
    import keras

    bar = keras.utils.Progbar(len(paths), unit_name=what) if verbose else None
    out = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([load_square(p, imsize) for p in paths[start:start + batch_size]])
        out.append(ops.convert_to_numpy(copy_detection_features(backbone, batch)))
        if bar:
            bar.update(min(start + batch_size, len(paths)))
    return np.concatenate(out).astype(np.float64)


def evaluate_copy_detection(backbone, data_path, whitening_path=None, distractors_path=None,
                            imsize: int = 320, batch_size: int = 16, topk: int = 20,
                            verbose: int = 1) -> dict:
    """mAP (over the top `topk` results) of every Copydays query block.

    Args:
        backbone: a `VisionTransformer`.
        data_path: the Copydays root (see the module docstring).
        whitening_path: a folder of images to learn PCA whitening from (the paper: 20k
            YFCC100M images); None or missing: no whitening.
        distractors_path: a folder of images added to the database (the paper: 10k
            YFCC100M images); None or missing: none.
        imsize: side of the square resize.

    Returns:
        `{block name: mAP}` for every block present (`original`, `strong`,
        `jpegqual/<q>`, `crops/<c>`), plus `num_database` and `whitened`.

    Example:

    ```python
    stats = evaluate_copy_detection(keras_dino.load_pretrained("dino_vitb8"), "copydays/",
                                    whitening_path="yfcc20k/", distractors_path="yfcc10k/")
    stats["strong"]
    ```
    """
    root = os.fspath(data_path)
    originals = image_files(os.path.join(root, "original"))
    if not originals:
        raise FileNotFoundError(f"no images under {os.path.join(root, 'original')}: not a "
                                "Copydays folder.")
    blocks = [b for b in BLOCKS if os.path.isdir(os.path.join(root, b))]
    queries = {b: image_files(os.path.join(root, b)) for b in blocks}
    database = _features(backbone, originals, imsize, batch_size, verbose, "originals")
    if distractors_path and os.path.isdir(distractors_path):
        distractors = image_files(distractors_path)
        database = np.concatenate([database, _features(backbone, distractors, imsize,
                                                       batch_size, verbose, "distractors")])
    query_features = {b: _features(backbone, queries[b], imsize, batch_size, verbose, b)
                      for b in blocks}
    whitening = None
    if whitening_path and os.path.isdir(whitening_path):
        whitening = PCAWhitening(dim=database.shape[-1]).fit(
            _features(backbone, image_files(whitening_path), imsize, batch_size, verbose,
                      "whitening"))
        database = whitening.transform(database)
        query_features = {b: whitening.transform(f) for b, f in query_features.items()}
    database = l2_normalize_rows(database)
    names = [os.path.basename(p) for p in originals]
    stats = {"num_database": len(database), "whitened": whitening is not None}
    for block in blocks:
        similarity = l2_normalize_rows(query_features[block]) @ database.T
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :topk]
        aps = []
        for i, path in enumerate(queries[block]):
            if block == "strong":
                positives = [j for j, n in enumerate(names) if n[:4] == os.path.basename(path)[:4]]
            else:
                positives = [i]
            found = np.flatnonzero(np.isin(top[i], positives))
            aps.append(average_precision(found, len(positives)) if positives else 0.0)
        stats[block] = float(np.mean(aps))
    return stats
