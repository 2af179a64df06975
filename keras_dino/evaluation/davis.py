"""The DAVIS-2017 data layout and its semi-supervised measures, J (region) and F (boundary).

The measures follow the DAVIS-2017 benchmark's definitions: per object and per frame,
J is the intersection over union of the binary masks (1 when both are empty) and F the
F-measure of their boundaries matched within a tolerance of `ceil(0.008 * diagonal)`
pixels (a disk); the first and last frames of a sequence are left out (the first is
given, the last is not scored by the benchmark). Per object: the mean over frames, the
recall (share of frames above 0.5) and the decay (first quarter's mean minus last
quarter's). The data set's means are over all objects of all sequences; J&F is their
average.

On-disk layout (as distributed by the benchmark):

    <root>/JPEGImages/480p/<sequence>/00000.jpg ...
    <root>/Annotations/480p/<sequence>/00000.png ...   palette PNGs: 0 background,
                                                        1..K objects, 255 void
    <root>/ImageSets/2017/val.txt                       one sequence name per line
"""

import os

import numpy as np
from PIL import Image

from keras_dino.evaluation.attention_segmentation import voc_palette

VOID_LABEL = 255
BOUNDARY_TOLERANCE = 0.008


def davis_palette() -> np.ndarray:
    """The 256x3 uint8 palette of the DAVIS annotations and of the official outputs.

    Index 0 is black, 1..21 the PASCAL VOC colours (with 191 where VOC has 192), and
    22..255 grey levels equal to the index, as the palette file the official
    `eval_video_segmentation.py` downloads.

    Example:

    >>> davis_palette()[:3].tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    """
    palette = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)
    voc = np.asarray(voc_palette(), np.uint8).reshape(256, 3)[:22]
    palette[:22] = np.where(voc == 192, 191, voc)
    return palette


def write_indexed_png(path, labels, palette=None):
    """Writes a `(H, W)` label map as a palette-indexed PNG (the DAVIS annotation format).

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "00001.png")
    >>> write_indexed_png(path, np.array([[0, 1], [2, 1]], np.uint8))
    >>> read_label_map(path).tolist()
    [[0, 1], [2, 1]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D (H, W); got shape {labels.shape} for {path}.")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette((davis_palette() if palette is None else np.asarray(palette, np.uint8))
                     .ravel().tolist())
    image.save(path, format="PNG")


def read_label_map(path) -> np.ndarray:
    """The label indices `(H, W)` of a palette PNG (or a one-channel image), uint8.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> write_indexed_png(path, np.eye(2, dtype=np.uint8))
    >>> read_label_map(path).dtype
    dtype('uint8')
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation {path} not found.")
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path} is a {image.mode} image; annotations are palette-indexed "
                             "(mode P) or one-channel (mode L) PNGs holding object indices.")
        return np.array(image, dtype=np.uint8)


def sequence_names(root, subset: str = "val") -> list:
    """The sequences of `<root>/ImageSets/2017/<subset>.txt`, in file order.

    Example:

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "ImageSets", "2017"))
    >>> _ = open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w").write("cows\\ndog\\n")
    >>> sequence_names(root)
    ['cows', 'dog']
    """
    path = os.path.join(root, "ImageSets", "2017", f"{subset}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --data_path must be a DAVIS-2017 root "
                                "(JPEGImages/480p, Annotations/480p, ImageSets/2017).")
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no sequence.")
    return names


def frame_files(root, sequence: str, resolution: str = "480p") -> list:
    """The sorted `.jpg` frames of a sequence (`JPEGImages/<resolution>/<sequence>/`).

    Example:

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "JPEGImages", "480p", "dog"))
    >>> frame_files(root, "dog")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no .jpg frames in ...
    """
    folder = os.path.join(root, "JPEGImages", resolution, sequence)
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.endswith(".jpg")) if os.path.isdir(folder) else []
    if not files:
        raise FileNotFoundError(f"no .jpg frames in {folder} (sequence {sequence!r}).")
    return files


def annotation_file(frame_path: str) -> str:
    """The annotation of a frame: `JPEGImages` -> `Annotations`, `.jpg` -> `.png`.

    Example:

    >>> annotation_file("/d/JPEGImages/480p/dog/00003.jpg")
    '/d/Annotations/480p/dog/00003.png'
    """
    head, name = os.path.split(frame_path)
    parts = head.split(os.sep)
    if "JPEGImages" not in parts:
        raise ValueError(f"{frame_path} is not under a JPEGImages folder.")
    index = len(parts) - 1 - parts[::-1].index("JPEGImages")
    parts[index] = "Annotations"
    return os.path.join(os.sep.join(parts), os.path.splitext(name)[0] + ".png")


# ---------------------------------------------------------------------------- measures


def region_similarity(annotation, segmentation) -> float:
    """J: intersection over union of two binary masks; 1 when both are empty.

    Example:

    >>> region_similarity(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]))
    0.3333333333333333
    """
    annotation, segmentation = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"masks of different sizes: annotation {annotation.shape}, "
                         f"segmentation {segmentation.shape}.")
    union = np.sum(annotation | segmentation)
    return 1.0 if union == 0 else float(np.sum(annotation & segmentation) / union)


def mask_boundary(mask) -> np.ndarray:
    """The one-pixel boundary of a binary mask, as the benchmark draws it.

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour (the last row and column compare along the border only).

    Example:

    >>> mask_boundary(np.pad(np.ones((2, 2), bool), 1)).astype(int).tolist()
    [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    seg = np.asarray(mask, bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def dilate_disk(mask, radius: int) -> np.ndarray:
    """Binary dilation by a disk `x² + y² <= radius²`, nothing beyond the image border.

    Example:

    >>> dilate_disk(np.pad([[True]], 2), 1).astype(int).tolist()[1:4]
    [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    """
    mask = np.asarray(mask, bool)
    radius = int(radius)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        half = int(np.floor(np.sqrt(radius * radius - dy * dy)))
        # Horizontal run [-half, half] of row shifts, then the vertical shift dy.
        row = np.zeros_like(mask)
        for dx in range(-half, half + 1):
            row[:, max(dx, 0):width + min(dx, 0)] |= mask[:, max(-dx, 0):width - max(dx, 0)]
        out[max(dy, 0):height + min(dy, 0)] |= row[max(-dy, 0):height - max(dy, 0)]
    return out


def boundary_f_measure(annotation, segmentation, bound_th: float = BOUNDARY_TOLERANCE) -> float:
    """F: the F-measure of the two masks' boundaries matched within a tolerance.

    The tolerance is `bound_th` pixels when it is 1 or more, else `ceil(bound_th *
    image diagonal)`; a boundary pixel is matched when the other boundary passes within
    that disk. Both boundaries empty: 1; one of them empty: 0.

    Example:

    >>> square = np.pad(np.ones((4, 4), bool), 4)
    >>> boundary_f_measure(square, square), boundary_f_measure(square, np.zeros_like(square))
    (1.0, 0.0)
    """
    annotation, segmentation = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"masks of different sizes: annotation {annotation.shape}, "
                         f"segmentation {segmentation.shape}.")
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(annotation.shape))
    fg_boundary, gt_boundary = mask_boundary(segmentation), mask_boundary(annotation)
    n_fg, n_gt = int(fg_boundary.sum()), int(gt_boundary.sum())
    if n_fg == 0 or n_gt == 0:
        precision, recall = (1.0 if n_fg == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
    else:
        precision = np.sum(fg_boundary & dilate_disk(gt_boundary, radius)) / n_fg
        recall = np.sum(gt_boundary & dilate_disk(fg_boundary, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def measure_statistics(per_frame) -> tuple:
    """Mean, recall (share above 0.5) and decay of one object's per-frame measure.

    The decay is the mean of the first of four equal bins minus that of the last.

    Example:

    >>> [round(v, 3) for v in measure_statistics([1.0, 1.0, 0.4, 0.2])]
    [0.65, 0.5, 0.7]
    """
    values = np.asarray(per_frame, np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def sequence_measures(annotations, results) -> dict:
    """J and F per object of one sequence, from its label maps (first and last left out).

    `annotations` and `results` are lists of `(H, W)` label maps, frame by frame,
    starting with the first frame. Void pixels (255) of the annotations count as
    background, objects are the indices 1..K of the first annotation, and a result
    index above K is an error (the benchmark refuses it too).

    Returns `{"J": [(mean, recall, decay) per object], "F": [...]}`.

    Example:

    >>> a = [np.array([[0, 1], [1, 1]], np.uint8)] * 3
    >>> sequence_measures(a, a)["J"]
    [(1.0, 1.0, 0.0)]
    """
    if len(annotations) != len(results):
        raise ValueError(f"{len(annotations)} annotations but {len(results)} results.")
    first = np.where(annotations[0] == VOID_LABEL, 0, annotations[0])
    num_objects = int(first.max())
    scored = range(1, len(annotations) - 1)
    j_values = np.zeros((num_objects, len(scored)))
    f_values = np.zeros((num_objects, len(scored)))
    for column, t in enumerate(scored):
        gt = np.where(annotations[t] == VOID_LABEL, 0, annotations[t])
        res = np.asarray(results[t])
        if gt.shape != res.shape:
            raise ValueError(f"frame {t}: annotation {gt.shape} and result {res.shape} differ "
                             "in size.")
        if res.max(initial=0) > num_objects:
            raise ValueError(f"frame {t}: the result holds object {int(res.max())} but the "
                             f"first annotation has {num_objects} objects.")
        for obj in range(num_objects):
            j_values[obj, column] = region_similarity(gt == obj + 1, res == obj + 1)
            f_values[obj, column] = boundary_f_measure(gt == obj + 1, res == obj + 1)
    return {"J": [measure_statistics(v) for v in j_values],
            "F": [measure_statistics(v) for v in f_values]}


def summarize_measures(per_sequence: dict) -> dict:
    """The benchmark's means over all objects of all sequences, in percent.

    `per_sequence` maps a sequence name to `sequence_measures`' result. Returns
    `J_mean`, `J_recall`, `J_decay`, the same for F, and `JF_mean`.

    Example:

    >>> summarize_measures({"a": {"J": [(0.5, 1.0, 0.0)], "F": [(0.7, 1.0, 0.1)]}})["JF_mean"]
    60.0
    """
    summary = {}
    for measure in ("J", "F"):
        stats = np.array([s for seq in per_sequence.values() for s in seq[measure]], np.float64)
        if stats.size == 0:
            raise ValueError("no object to score: the sequences have no annotated objects.")
        for column, name in enumerate(("mean", "recall", "decay")):
            summary[f"{measure}_{name}"] = 100.0 * float(np.mean(stats[:, column]))
    summary["JF_mean"] = (summary["J_mean"] + summary["F_mean"]) / 2
    return {key: round(value, 4) for key, value in summary.items()}
