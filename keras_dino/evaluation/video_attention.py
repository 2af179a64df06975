"""Attention maps over a video, as the official `video_generation.py` draws them.

For every frame: read it (PIL, RGB), optionally resize it (`resize`, torchvision's
`Resize` rule), normalise it, cut it to whole patches, take the last block's attention
of the CLS token to every patch, upsample it to pixels (nearest) and save the mean over
the heads with matplotlib's `inferno` colormap. The files are laid out as the official
tool lays them out, so its commands carry over:

    <output_path>/frames/frame-0000.jpg       frames of a video input (cv2, JPEG)
    <output_path>/attention/attn-<frame>.jpg  one heat map per frame
    <output_path>/video.mp4                   the heat maps as a video (or video.avi)

Frames come from a video file (OpenCV: `pip install "keras-dino[video]"`) or from a
folder of images. The official tool computes the `threshold` masks (the patches that
hold that fraction of each head's attention mass) and does not draw them; here they are
in `FrameAttention.masks`, and `masked=True` draws each head only on its mask.

`frame_attention` is the per-frame step (what a benchmark times); `attention_video`
is the whole tool.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from keras import ops

from keras_dino.errors import VideoInputError  # noqa: F401 (its old home)
from keras_dino.evaluation.attention_maps import (
    attention_input,
    attention_resize_shape,
    attention_threshold_mask,
    cls_attention_maps,
    require_self_attention,
    upsample_nearest,
)

# The official codecs, `cv2.VideoWriter_fourcc(*code)` per container: MPEG-4 Part 2 in
# both. (The official "MP4V" tag makes OpenCV's FFmpeg warn and fall back to "mp4v", the
# same codec: asked for directly here.)
VIDEO_FORMATS = {"mp4": "mp4v", "avi": "XVID"}
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FRAMES_FOLDER = "frames"
ATTENTION_FOLDER = "attention"


def _cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing videos needs OpenCV: pip install \"keras-dino[video]\" "
            "(or pip install opencv-python-headless)."
        ) from error
    return cv2


def _natural_key(name: str):
    """Sorts `frame-9999` before `frame-10000` (plain sorting would not)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _check_format(video_format: str) -> str:
    if video_format not in VIDEO_FORMATS:
        raise VideoInputError(f"unknown video format '{video_format}': use one of "
                              f"{', '.join(VIDEO_FORMATS)}.")
    return video_format


def frame_files(folder: str, pattern: str | None = None) -> list[str]:
    """Sorted image files of a folder: the frames, in order.

    Args:
        folder: a folder of images (jpg, jpeg, png, bmp, webp, tif; not recursive).
        pattern: a regular expression the file names must match (e.g. `attn-.*\\.jpg`).

    Raises:
        FileNotFoundError: `folder` does not exist.
        VideoInputError: it holds no image.

    Example:

    >>> import tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("b.png", "a.jpg"):
    ...     Image.new("RGB", (8, 8)).save(os.path.join(folder, name))
    >>> _ = open(os.path.join(folder, "notes.txt"), "w").close()
    >>> [os.path.basename(f) for f in frame_files(folder)]
    ['a.jpg', 'b.png']
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no folder of frames at {folder}.")
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(FRAME_EXTENSIONS)
             and (pattern is None or re.fullmatch(pattern, n))
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        what = f"matching {pattern}" if pattern else f"({', '.join(FRAME_EXTENSIONS)})"
        raise VideoInputError(f"no frames {what} in {folder}.")
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def read_frame(path: str) -> np.ndarray:
    """A frame file as uint8 RGB `(H, W, 3)`, read with PIL as the official tool does.

    Raises:
        VideoInputError: the file is not a readable image.

    Example:

    >>> import tempfile
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "frame.png")
    >>> Image.new("L", (5, 3)).save(path)
    >>> read_frame(path).shape
    (3, 5, 3)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise VideoInputError(f"frame {path} is not a readable image ({error}).") from error


def video_fps(path: str) -> float:
    """The frame rate a video file declares (OpenCV's `CAP_PROP_FPS`)."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(path)
    try:
        return float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()


def iter_video_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a video file, uint8 RGB `(H, W, 3)`, in order (OpenCV decoding).

    Raises:
        FileNotFoundError: no file at `path`.
        VideoInputError: OpenCV reads no frame from it.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "video.avi")
    >>> frames = [np.full((32, 48, 3), 40 * i, "uint8") for i in range(3)]
    >>> _ = write_video(frames, path, fps=5)
    >>> [f.shape for f in iter_video_frames(path)]
    [(32, 48, 3), (32, 48, 3), (32, 48, 3)]
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path}.")
    cv2 = _cv2()
    capture = cv2.VideoCapture(path)
    try:
        count = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    if count == 0:
        raise VideoInputError(f"OpenCV read no frame from {path}: not a video it can decode.")


def extract_frames(video_path: str, folder: str) -> tuple[list[str], float]:
    """Writes a video's frames to `<folder>/frame-0000.jpg`, ... (the official extraction).

    The frames are written by OpenCV's `imwrite` (JPEG, its default quality), as the
    official tool does before it reads them back with PIL.

    Returns:
        `(paths, fps)`: the written frames in order and the video's frame rate.

    Example:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_video([np.zeros((16, 16, 3), "uint8")] * 2, folder + "/in.mp4", fps=12)
    >>> paths, fps = extract_frames(folder + "/in.mp4", folder + "/frames")
    >>> [os.path.basename(p) for p in paths], fps
    (['frame-0000.jpg', 'frame-0001.jpg'], 12.0)
    """
    cv2 = _cv2()
    fps = video_fps(video_path) if os.path.isfile(video_path) else None
    os.makedirs(folder, exist_ok=True)
    paths = []
    for count, rgb in enumerate(iter_video_frames(video_path)):
        path = os.path.join(folder, f"frame-{count:04}.jpg")
        if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"OpenCV could not write {path}.")
        paths.append(path)
    return paths, fps


def read_frames(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """`(name, RGB uint8 frame)` of a video file or of a folder of frames, in order.

    A folder's frames are its images sorted by name (`name` is the file name); a video's
    are decoded by OpenCV (`name` is `frame-0000.jpg`, ..., the official extraction's).
    """
    if os.path.isdir(path):
        for file in frame_files(path):
            yield os.path.basename(file), read_frame(file)
    elif os.path.isfile(path):
        for count, frame in enumerate(iter_video_frames(path)):
            yield f"frame-{count:04}.jpg", frame
    else:
        raise FileNotFoundError(f"no video file or folder of frames at {path}.")


def frame_input(image, patch_size: int, resize: int | Sequence[int] | None = None) -> np.ndarray:
    """A frame as the official tool feeds it: float32 `(h, w, 3)`, whole patches.

    `ToTensor`, then (with `resize`: one value, the shorter side; two, height and width)
    an antialiased bilinear resize of the float pixels (not rounded back to bytes), then
    `Normalize`, then the last rows and columns that do not fill a patch dropped.

    Example:

    >>> frame_input(np.zeros((300, 451, 3), "uint8"), 16).shape
    (288, 448, 3)
    >>> frame_input(np.zeros((300, 451, 3), "uint8"), 16, resize=100).shape
    (96, 144, 3)
    """
    from keras_dino.preprocessing import normalize_images

    image = np.asarray(image)
    if resize is None:
        return attention_input(image, image.shape[:2], patch_size)[0]
    new_h, new_w = attention_resize_shape(image.shape[0], image.shape[1], resize)
    h, w = new_h - new_h % patch_size, new_w - new_w % patch_size
    if h == 0 or w == 0:
        raise ValueError(f"a frame of {new_h}x{new_w} holds no {patch_size}x{patch_size} patch.")
    x = ops.cast(ops.convert_to_tensor(image), "float32")
    if (new_h, new_w) != image.shape[:2]:
        x = ops.image.resize(x, (new_h, new_w), interpolation="bilinear", antialias=True)
    x = ops.convert_to_numpy(normalize_images(x[None]))[0]
    return x[:h, :w]


@dataclasses.dataclass
class FrameAttention:
    """The attention of one frame.

    Attributes:
        maps: per-head CLS attention over the patches, `(heads, grid_h, grid_w)`.
        heatmap: the official heat map: the maps upsampled to pixels (nearest) and
            averaged over the heads, float32 `(grid_h * patch, grid_w * patch)`.
        masks: per head, the pixels of the smallest set of patches holding `threshold`
            of its attention mass, bool `(heads, H, W)`; None without a threshold.
    """

    maps: np.ndarray
    heatmap: np.ndarray
    masks: np.ndarray | None = None

    def masked_heatmap(self) -> np.ndarray:
        """The heat map with each head kept only on its threshold mask."""
        if self.masks is None:
            raise ValueError("no threshold masks: compute with a threshold.")
        heads = self.maps.shape[0]
        patch = self.heatmap.shape[0] // self.maps.shape[1]
        up = upsample_nearest(self.maps, patch) * self.masks
        return sum(up[i] / heads for i in range(heads)).astype(np.float32)


def frame_attention(backbone, image, resize: int | Sequence[int] | None = None,
                    threshold: float | None = None) -> FrameAttention:
    """The official per-frame step: CLS attention of the last block, as pixels.

    Args:
        backbone: a Vision Transformer (anything with `get_last_selfattention`).
        image: one uint8 RGB frame `(H, W, 3)`.
        resize: resize first (one value: the shorter side; two: height and width).
        threshold: also compute the masks holding this fraction of each head's mass.

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> att = frame_attention(vit_tiny(8, depth=1), np.zeros((30, 41, 3), "uint8"), threshold=0.6)
    >>> att.maps.shape, att.heatmap.shape, att.masks.shape
    ((3, 3, 5), (24, 40), (3, 24, 40))
    """
    require_self_attention(backbone, "attention videos")
    patch = backbone.patch_size
    maps = cls_attention_maps(backbone, frame_input(image, patch, resize))
    heads = maps.shape[0]
    up = upsample_nearest(maps, patch)
    # As the official: the sum over heads of `attention * 1 / heads`, in float32.
    heatmap = sum(up[i] * 1 / heads for i in range(heads)).astype(np.float32)
    masks = None
    if threshold is not None:
        masks = upsample_nearest(attention_threshold_mask(maps, threshold), patch).astype(bool)
    return FrameAttention(maps=maps, heatmap=heatmap, masks=masks)


def heatmap_image(heatmap, cmap: str = "inferno") -> np.ndarray:
    """A heat map as uint8 RGB, scaled from its minimum to its maximum (as `plt.imsave`).

    Example:

    >>> heatmap_image(np.array([[0.0, 1.0]])).tolist()  # inferno's two ends
    [[[0, 0, 3], [252, 254, 164]]]
    """
    from matplotlib import cm

    mappable = cm.ScalarMappable(cmap=cmap)
    mappable.set_clim(None, None)
    return mappable.to_rgba(np.asarray(heatmap), bytes=True)[..., :3]


def save_heatmap(heatmap, path: str, cmap: str = "inferno") -> str:
    """Writes a heat map as the official tool does: `plt.imsave(..., format="jpg")`."""
    from matplotlib import image as mpimg

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mpimg.imsave(path, np.asarray(heatmap), cmap=cmap, format="jpg")
    return path


def attention_file_name(frame_name: str) -> str:
    """`attn-<frame>.jpg`: the official name of a frame's heat map (always JPEG).

    Example:

    >>> attention_file_name("frame-0007.jpg"), attention_file_name("shot.png")
    ('attn-frame-0007.jpg', 'attn-shot.jpg')
    """
    stem, ext = os.path.splitext(os.path.basename(frame_name))
    return f"attn-{stem}.jpg" if ext.lower() != ".jpg" else f"attn-{stem}{ext}"


def write_video(frames: Iterable, path: str, fps: float = 30.0,
                video_format: str | None = None) -> str:
    """Writes frames (uint8 RGB arrays or image files) as an mp4 (MP4V) or avi (XVID).

    The official `cv2.VideoWriter` codecs. Every frame is drawn at the size of the first
    (a frame of another size is resized to it; OpenCV would silently drop it).

    Args:
        frames: uint8 RGB `(H, W, 3)` arrays, or paths of image files.
        path: the video file to write.
        fps: frames per second.
        video_format: `mp4` or `avi`; default: the extension of `path`.

    Returns:
        `path`.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "video.mp4")
    >>> write_video([np.zeros((16, 24, 3), "uint8")] * 3, path, fps=10) == path
    True
    """
    cv2 = _cv2()
    from PIL import Image

    if video_format is None:
        video_format = os.path.splitext(path)[1].lstrip(".").lower()
    _check_format(video_format)
    writer, size, count = None, None, 0
    try:
        for frame in frames:
            rgb = read_frame(frame) if isinstance(frame, str | os.PathLike) else np.asarray(frame)
            if size is None:
                size = (rgb.shape[1], rgb.shape[0])
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_FORMATS[video_format])
                writer = cv2.VideoWriter(path, fourcc, float(fps), size)
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write a {video_format} video to {path}.")
            elif (rgb.shape[1], rgb.shape[0]) != size:
                rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
            writer.write(cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        raise VideoInputError(f"no frames to write to {path}.")
    return path


def generate_video(attention_folder: str, output_path: str, fps: float = 30.0,
                   video_format: str = "mp4") -> str:
    """`<output_path>/video.<format>` from the `attn-*.jpg` of a folder (`--video_only`).

    Example:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for i in range(2):
    ...     _ = save_heatmap(np.eye(8) * i, os.path.join(folder, f"attn-frame-{i:04}.jpg"))
    >>> os.path.basename(generate_video(folder, folder, fps=4, video_format="avi"))
    'video.avi'
    """
    _check_format(video_format)
    files = frame_files(attention_folder, pattern=r"attn-.*\.jpg")
    return write_video(files, os.path.join(output_path, f"video.{video_format}"), fps,
                       video_format)


def attention_video(backbone, input_path: str, output_path: str = ".", *,
                    resize: int | Sequence[int] | None = None, threshold: float | None = 0.6,
                    masked: bool = False, fps: float = 30.0, video_format: str = "mp4",
                    video: bool = True, verbose: int = 1) -> dict:
    """The official `video_generation.py`: heat maps of every frame, and their video.

    A video file's frames are first extracted to `<output_path>/frames/` (and its frame
    rate replaces `fps`); a folder is read as frames. Each frame's heat map goes to
    `<output_path>/attention/attn-<frame>.jpg`, and (with `video`) the heat maps to
    `<output_path>/video.<video_format>`.

    Args:
        backbone: a Vision Transformer.
        input_path: a video file or a folder of frames.
        output_path: where the folders and the video are written.
        resize: resize each frame first (one value: the shorter side; two: height, width).
        threshold: mass kept by each head's mask (used with `masked`).
        masked: draw each head only on its threshold mask (the official draws all).
        fps: frame rate of the video written from a folder of frames.
        video_format: `mp4` or `avi`.
        video: write the video (else only the heat maps).
        verbose: a progress bar over the frames (0: none).

    Returns:
        A summary: `frames` (count), `frames_folder` (None for a folder input),
        `attention_folder`, `video` (path or None), `fps`, `size` (`[width, height]`
        of the heat maps).

    Example:

    >>> import tempfile
    >>> from PIL import Image
    >>> from keras_dino.models import vit_tiny
    >>> folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for i in range(2):
    ...     Image.new("RGB", (40, 30), (60 * i, 90, 20)).save(f"{folder}/f{i}.jpg")
    >>> summary = attention_video(vit_tiny(8, depth=1), folder, out, verbose=0)
    >>> summary["frames"], os.path.basename(summary["video"]), summary["size"]
    (2, 'video.mp4', [40, 24])
    >>> sorted(os.listdir(os.path.join(out, "attention")))
    ['attn-f0.jpg', 'attn-f1.jpg']
    """
    import keras

    _check_format(video_format)
    if masked and threshold is None:
        raise ValueError("masked=True needs a threshold.")
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"no video file or folder of frames at {input_path}.")
    frames_folder = None
    if os.path.isfile(input_path):
        frames_folder = os.path.join(output_path, FRAMES_FOLDER)
        files, video_rate = extract_frames(input_path, frames_folder)
        fps = video_rate or fps
    else:
        files = frame_files(input_path)
    attention_folder = os.path.join(output_path, ATTENTION_FOLDER)
    os.makedirs(attention_folder, exist_ok=True)
    bar = keras.utils.Progbar(len(files), unit_name="frame") if verbose else None
    written, size = [], None
    for file in files:
        att = frame_attention(backbone, read_frame(file), resize,
                              threshold if masked else None)
        heatmap = att.masked_heatmap() if masked else att.heatmap
        size = [int(heatmap.shape[1]), int(heatmap.shape[0])]
        written.append(save_heatmap(heatmap, os.path.join(attention_folder,
                                                          attention_file_name(file))))
        if bar is not None:
            bar.add(1)
    video_path = None
    if video:
        video_path = write_video(written, os.path.join(output_path, f"video.{video_format}"),
                                 fps, video_format)
    return {"frames": len(files), "frames_folder": frames_folder,
            "attention_folder": attention_folder, "video": video_path, "fps": float(fps),
            "size": size}
