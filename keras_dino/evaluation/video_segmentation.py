"""Video object segmentation by label propagation: the official eval_video_segmentation.py.

The first frame's annotation is carried through a video by the patch features of the
backbone's last block (the normalised tokens of `get_intermediate_layers(n=1)`, without
the CLS token): each patch of a new frame takes the labels of its `topk` most similar
patches (cosine similarity, temperature 0.1, softmax-like weights) among the first
frame and the `n_last_frames` preceding ones, looking only within
`size_mask_neighborhood` patches of its own position. The soft labels are upsampled by
the patch size (bilinear), each label's map is scaled to [0, 1], the argmax is taken
and resized to the frame's size (nearest), as the official tool does.

Frames are read as the official reader does: decoded (PIL here), resized with OpenCV's
bilinear resize (reproduced in `resize_like_cv2`, no OpenCV needed) so that the shorter
side is `scale_size` (480) and the longer one a multiple of 64 below its proportional
size, divided by 255 and normalised with the official tool's mean and std (note its std
0.228 for red, not 0.229).

Example, on a sequence of two identical frames:

>>> import glob, tempfile
>>> from keras_dino.models import vit_tiny
>>> from keras_dino.evaluation.davis import write_indexed_png
>>> root = tempfile.mkdtemp()
>>> frames = os.path.join(root, "JPEGImages", "480p", "blob")
>>> os.makedirs(frames)
>>> os.makedirs(frames.replace("JPEGImages", "Annotations"))
>>> for t in range(2):
...     Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(f"{frames}/{t:05d}.jpg")
>>> label = np.zeros((64, 64), np.uint8); label[16:48, 16:48] = 1
>>> write_indexed_png(f"{frames.replace('JPEGImages', 'Annotations')}/00000.png", label)
>>> written = segment_video(vit_tiny(16, depth=1), sorted(glob.glob(f"{frames}/*.jpg")),
...                         os.path.join(root, "out"), scale_size=64, verbose=0)
>>> [os.path.basename(p) for p in written]
['00000.png', '00001.png']
"""

import os
import time

import numpy as np
from keras import ops
from PIL import Image

from keras_dino.evaluation import davis
from keras_dino.evaluation.retrieval import resize_like_torch
from keras_dino.preprocessing import normalize_images

# The official video reader's normalisation (its std for red is 0.228).
VIDEO_MEAN = (0.485, 0.456, 0.406)
VIDEO_STD = (0.228, 0.224, 0.225)
TEMPERATURE = 0.1
_COEF_BITS = 11  # OpenCV's fixed-point bilinear weights: 2048 = 1.0
_COEF_SCALE = 1 << _COEF_BITS


def official_frame_size(height: int, width: int, scale_size: int = 480) -> tuple:
    """`(height, width)` the official reader resizes a frame to.

    The shorter side becomes `scale_size`; the other keeps the aspect ratio and is
    rounded down to a multiple of 64. (The official reader of annotations swaps the two
    sides of a square frame, which scrambles its labels; both use the frame's rule here.)

    Example:

    >>> official_frame_size(480, 854), official_frame_size(1080, 720)
    ((480, 832), (704, 480))
    """
    if height > width:
        return int((scale_size * height / width) // 64 * 64), int(scale_size)
    return int(scale_size), int((scale_size * width / height) // 64 * 64)


def _cv2_taps(n_in: int, n_out: int, clamp_weights: bool):
    """OpenCV's bilinear source indices and 11-bit weights along one axis."""
    scale = n_in / n_out
    source = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    low = np.floor(source).astype(np.int64)
    frac = (source - low.astype(np.float32)).astype(np.float32)
    if clamp_weights:  # columns: OpenCV zeroes the weight outside the image
        frac = np.where((low < 0) | (low >= n_in - 1), np.float32(0), frac)
        low = np.clip(low, 0, n_in - 1)
    w0 = np.rint((np.float32(1) - frac) * _COEF_SCALE).astype(np.int64)
    w1 = np.rint(frac * _COEF_SCALE).astype(np.int64)
    return np.clip(low, 0, n_in - 1), np.clip(low + 1, 0, n_in - 1), w0, w1


def resize_like_cv2(image, size) -> np.ndarray:
    """`cv2.resize(image, (width, height))` (bilinear) of a uint8 image, bit for bit.

    OpenCV resizes 8-bit images in fixed point: 11-bit weights, a horizontal pass into
    integers, then a vertical pass with its vectorised rounding. `size` is
    `(height, width)`.

    Example:

    >>> resize_like_cv2(np.array([[0, 100], [200, 255]], np.uint8)[..., None], (1, 1))[..., 0]
    array([[139]], dtype=uint8)
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"resize_like_cv2 resizes uint8 images; got {image.dtype}.")
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    height, width = int(size[0]), int(size[1])
    x0, x1, a0, a1 = _cv2_taps(image.shape[1], width, clamp_weights=True)
    y0, y1, b0, b1 = _cv2_taps(image.shape[0], height, clamp_weights=False)
    src = image.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    out = np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def read_frame(path, scale_size: int = 480):
    """A video frame as the official reader gives it: `(H', W', 3)` float32, normalised.

    Returns `(frame, (height, width))` with the frame's original size.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "00000.jpg")
    >>> Image.fromarray(np.zeros((48, 100, 3), np.uint8)).save(path)
    >>> frame, size = read_frame(path, scale_size=64)
    >>> frame.shape, size
    ((64, 128, 3), (48, 100))
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frame {path} not found.")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"frame {path} cannot be decoded: {error}") from error
    height, width = pixels.shape[:2]
    resized = resize_like_cv2(pixels, official_frame_size(height, width, scale_size))
    frame = normalize_images(resized[None], VIDEO_MEAN, VIDEO_STD)
    return ops.convert_to_numpy(frame)[0], (height, width)


def read_first_annotation(path, patch_size: int, frame_size: tuple, scale_size: int = 480):
    """The first frame's labels: `(one_hot, labels)`.

    `one_hot` is `(h, w, C)` float32 at the patch grid (the annotation resized with
    nearest neighbours to the resized frame's size divided by the patch size; C is one
    more than the largest index present), `labels` the annotation as read. `frame_size`
    is the original frame's `(height, width)`, which the annotation must have.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "00000.png")
    >>> davis.write_indexed_png(path, np.kron(np.eye(2, dtype=np.uint8), np.ones((32, 32))))
    >>> one_hot, labels = read_first_annotation(path, 16, (64, 64), scale_size=64)
    >>> one_hot.shape, labels.shape
    ((4, 4, 2), (64, 64))
    """
    labels = davis.read_label_map(path)
    if labels.shape != tuple(frame_size):
        raise ValueError(f"annotation {path} is {labels.shape[1]}x{labels.shape[0]} but its "
                         f"frame is {frame_size[1]}x{frame_size[0]}.")
    height, width = official_frame_size(*labels.shape, scale_size)
    small = np.asarray(Image.fromarray(labels).resize(
        (width // patch_size, height // patch_size), Image.NEAREST))
    one_hot = np.eye(int(small.max()) + 1, dtype=np.float32)[small]
    return one_hot, labels


def frame_features(backbone, frame):
    """Patch features of the last block `(h * w, dim)` and the grid `(h, w)` of a frame.

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> features, grid = frame_features(vit_tiny(16, depth=1), np.zeros((64, 96, 3), "float32"))
    >>> tuple(features.shape), grid
    ((24, 192), (4, 6))
    """
    if not hasattr(backbone, "get_intermediate_layers") or not hasattr(backbone, "patch_size"):
        raise TypeError(f"label propagation needs a Vision Transformer's patch tokens; "
                        f"{type(backbone).__name__} has none.")
    patch = backbone.patch_size
    grid = (frame.shape[0] // patch, frame.shape[1] // patch)
    x = ops.convert_to_tensor(np.asarray(frame, np.float32)[None, :grid[0] * patch,
                                                            :grid[1] * patch])
    tokens = ops.stop_gradient(backbone.get_intermediate_layers(x, n=1)[0])
    return tokens[0, backbone.num_prefix_tokens:], grid


def neighborhood_mask(height: int, width: int, size: int) -> np.ndarray:
    """`(h*w, h*w)` 1/0: target patch (row) may take labels from source patch (column).

    A source is allowed when it lies within `size` patches of the target along both
    axes (a square window), as the official `restrict_neighborhood`.

    Example:

    >>> neighborhood_mask(1, 3, 1).astype(int).tolist()
    [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    """
    rows, cols = np.divmod(np.arange(height * width), width)
    near = ((np.abs(rows[:, None] - rows[None, :]) <= size)
            & (np.abs(cols[:, None] - cols[None, :]) <= size))
    return near.astype(np.float32)


def propagate_labels(target_features, context_features, context_labels, topk: int = 5,
                     mask=None):
    """Soft labels of a target frame from context frames: `(h*w, C)`.

    `target_features` `(T, dim)`, `context_features` a list of `(S, dim)` and
    `context_labels` a list of `(S, C)`, one per context frame. The affinity of a source
    and a target patch is `exp(cos / 0.1)` (times `mask` `(T, S)` if given); each target
    keeps its `topk` largest affinities over all context frames (ties with the k-th
    kept, as the official `aff < min(topk)` test) and averages their labels with
    those weights.

    Example:

    >>> f = np.eye(3, dtype="float32")
    >>> labels = np.eye(3, dtype="float32")
    >>> np.argmax(np.asarray(propagate_labels(f, [f], [labels], topk=1)), axis=1).tolist()
    [0, 1, 2]
    """
    def normalize(x):
        x = ops.cast(ops.convert_to_tensor(x), "float32")
        return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)

    target = normalize(target_features)
    sources = ops.concatenate([normalize(f) for f in context_features], axis=0)
    labels = ops.concatenate([ops.convert_to_tensor(lb, "float32") for lb in context_labels],
                             axis=0)
    affinity = ops.exp(ops.matmul(target, ops.transpose(sources)) / TEMPERATURE)  # (T, n*S)
    if mask is not None:
        affinity = affinity * ops.tile(ops.convert_to_tensor(mask, "float32"),
                                       (1, len(context_features)))
    kth = ops.top_k(affinity, k=topk, sorted=True)[0][:, -1:]
    affinity = ops.where(affinity < kth, ops.zeros_like(affinity), affinity)
    affinity = affinity / ops.sum(affinity, axis=1, keepdims=True)
    return ops.matmul(affinity, labels)


def labels_from_soft(soft, grid, patch_size: int, frame_size) -> np.ndarray:
    """The official label map of a frame from its soft labels `(h*w, C)`: `(H, W)` uint8.

    Upsampled by `patch_size` (bilinear, torch's scale-factor mapping), each label's map
    min-max scaled (when its maximum is positive), argmax, then nearest-neighbour resized
    to `frame_size` `(height, width)` with PIL.

    Example:

    >>> soft = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> labels_from_soft(soft, (1, 2), 2, (2, 4)).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    soft = ops.reshape(ops.convert_to_tensor(soft, "float32"), (1, grid[0], grid[1], -1))
    up = ops.convert_to_numpy(resize_like_torch(soft, float(patch_size)))[0]
    low, high = up.min(axis=(0, 1)), up.max(axis=(0, 1))
    scaled = up.copy()
    positive = high > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled[..., positive] = (up[..., positive] - low[positive]) / (high - low)[positive]
    # torch.max returns the first NaN when a positive map is constant (0/0): the same here.
    nan_channels = np.flatnonzero(np.isnan(scaled).any(axis=(0, 1)))
    if nan_channels.size:
        labels = np.full(up.shape[:2], nan_channels[0], np.uint8)
    else:
        labels = np.argmax(scaled, axis=-1).astype(np.uint8)
    return np.asarray(Image.fromarray(labels).resize((frame_size[1], frame_size[0]),
                                                     Image.NEAREST))


def segment_video(backbone, frame_list, output_dir, first_annotation=None, n_last_frames: int = 7,
                  size_mask_neighborhood: int = 12, topk: int = 5, scale_size: int = 480,
                  palette=None, verbose: int = 1, timings=None) -> list:
    """Propagates the first annotation through `frame_list`; writes one PNG per frame.

    `output_dir` receives `<frame>.png` label maps, palette-indexed like the DAVIS
    annotations (the first frame's is the annotation itself, as the official tool).
    `first_annotation` defaults to the first frame's DAVIS annotation path. Returns the
    written paths. `timings`, a dict, receives the seconds spent on `features` and
    `propagation`.

    See the module docstring for an example.
    """
    import keras

    if len(frame_list) < 1:
        raise ValueError("a video needs at least one frame.")
    first_annotation = first_annotation or davis.annotation_file(frame_list[0])
    patch = backbone.patch_size
    timings = {} if timings is None else timings
    timings.setdefault("features", 0.0)
    timings.setdefault("propagation", 0.0)
    os.makedirs(output_dir, exist_ok=True)

    first_frame, size = read_frame(frame_list[0], scale_size)
    first_labels, original = read_first_annotation(first_annotation, patch, size, scale_size)
    start = time.perf_counter()
    first_features, grid = frame_features(backbone, first_frame)
    timings["features"] += time.perf_counter() - start
    if first_labels.shape[:2] != grid:
        raise ValueError(f"the annotation's patch grid {first_labels.shape[:2]} differs from "
                         f"the frame's {grid}.")
    written = [os.path.join(output_dir, "00000.png")]
    davis.write_indexed_png(written[0], original, palette)
    context = []  # (features, soft labels) of the last n frames, oldest first
    first_soft = first_labels.reshape(-1, first_labels.shape[-1])
    mask = (neighborhood_mask(*grid, size_mask_neighborhood)
            if size_mask_neighborhood > 0 else None)
    bar = keras.utils.Progbar(len(frame_list) - 1, verbose=verbose, unit_name="frame")
    for t, path in enumerate(frame_list[1:], start=1):
        frame, frame_size = read_frame(path, scale_size)
        if frame_size != size:
            raise ValueError(f"frame {path} is {frame_size[1]}x{frame_size[0]} but the first "
                             f"frame is {size[1]}x{size[0]}: a video's frames share one size.")
        start = time.perf_counter()
        features, _ = frame_features(backbone, frame)
        timings["features"] += time.perf_counter() - start
        start = time.perf_counter()
        soft = propagate_labels(features, [first_features] + [f for f, _ in context],
                                [first_soft] + [s for _, s in context], topk, mask)
        labels = labels_from_soft(soft, grid, patch, size)
        timings["propagation"] += time.perf_counter() - start
        context.append((features, soft))
        if n_last_frames > 0:  # 0: every previous frame, as the official queue.Queue(0)
            context = context[-n_last_frames:]
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        written.append(os.path.join(output_dir, name))
        davis.write_indexed_png(written[-1], labels, palette)
        bar.update(t)
    return written


def evaluate_video_segmentation(backbone, data_path, output_dir, subset: str = "val",
                                sequences=None, n_last_frames: int = 7,
                                size_mask_neighborhood: int = 12, topk: int = 5,
                                scale_size: int = 480, verbose: int = 1, say=print) -> dict:
    """Segments every sequence of a DAVIS-2017 set; scores it where annotations exist.

    Writes `<output_dir>/<sequence>/<frame>.png` (the official layout). A sequence whose
    every frame has an annotation is scored with `davis.sequence_measures`. Returns
    `{"sequences", "frames", "scored_sequences", "per_sequence", "timings", ...}` plus,
    when some sequence was scored, `davis.summarize_measures`' J and F figures (percent).

    Example: see `examples/eval_video_segmentation.py`.
    """
    names = list(sequences) if sequences else davis.sequence_names(data_path, subset)
    per_sequence, frames, timings = {}, 0, {}
    for i, name in enumerate(names):
        frame_list = davis.frame_files(data_path, name)
        annotations = [davis.annotation_file(p) for p in frame_list]
        ground_truth = None
        if all(os.path.isfile(p) for p in annotations):  # checked before the long part
            ground_truth = [davis.read_label_map(p) for p in annotations]
            _check_objects(ground_truth, annotations)
        say(f"[{i}/{len(names)}] Begin to segmentate video {name}.")
        written = segment_video(backbone, frame_list, os.path.join(output_dir, name),
                                n_last_frames=n_last_frames,
                                size_mask_neighborhood=size_mask_neighborhood, topk=topk,
                                scale_size=scale_size, verbose=verbose, timings=timings)
        frames += len(written)
        if ground_truth is not None:
            results = [davis.read_label_map(p) for p in written]
            per_sequence[name] = davis.sequence_measures(ground_truth, results)
        else:
            say(f"{name}: not every frame has an annotation: segmented, not scored.")
    result = {"sequences": len(names), "frames": frames, "scored_sequences": len(per_sequence),
              "per_sequence": per_sequence,
              "timings": {k: round(v, 3) for k, v in timings.items()}}
    if per_sequence:
        result.update(davis.summarize_measures(per_sequence))
    return result


def _check_objects(ground_truth, paths):
    """Refuses annotations of other sizes or with an object index the first frame lacks."""
    first = set(np.unique(ground_truth[0]).tolist()) | {0, davis.VOID_LABEL}
    for labels, path in zip(ground_truth[1:], paths[1:]):
        if labels.shape != ground_truth[0].shape:
            raise ValueError(f"{path} is {labels.shape[1]}x{labels.shape[0]} but the first "
                             f"annotation is {ground_truth[0].shape[1]}x"
                             f"{ground_truth[0].shape[0]}.")
        extra = set(np.unique(labels).tolist()) - first
        if extra:
            raise ValueError(f"{path} holds object index {sorted(extra)} that the first "
                             f"annotation {paths[0]} does not have.")
