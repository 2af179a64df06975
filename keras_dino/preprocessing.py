"""Turning raw images into the normalised input the official evaluation feeds the model."""

import warnings

import numpy as np
from keras import ops

from keras_dino.errors import InputWarning

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """`(x / 255 - mean) / std` on 0..255 NHWC images, in float32.

    Example:

    >>> import numpy as np
    >>> x = normalize_images(np.full((1, 2, 2, 3), 255, "uint8"))
    >>> [round(float(v), 4) for v in np.asarray(x)[0, 0, 0]]
    [2.2489, 2.4286, 2.64]
    """
    x = ops.cast(images, "float32")
    x = _ieee_divide(x, 255.0)
    x = x - ops.convert_to_tensor(mean, "float32")
    return _ieee_divide(x, std)


def _ieee_divide(x, divisor):
    """`x / divisor` rounded as IEEE division, like torchvision's `div(255)` and `Normalize`.

    XLA (the JAX backend) rewrites a division by a broadcast value into a multiplication
    by its reciprocal, which is up to 1 ulp off; dividing by a tensor of the full shape
    keeps the exact division (when called eagerly).
    """
    divisor = ops.convert_to_tensor(divisor, "float32")
    return x / ops.broadcast_to(divisor, ops.shape(x))


def preprocess_images(images, size: int = 224, resize_size: int | None = None):
    """Raw images to model input, as the official `eval_*.py` transforms do.

    Resizes the shorter side to `resize_size` (256 for `size=224`, i.e. `size * 8 / 7`)
    with antialiased bicubic interpolation, center-crops `size x size`, and normalises
    with the ImageNet mean and std, all channels-last.

    Args:
        images: uint8 (or float 0..255) images, `(H, W, 3)` or a batch `(B, H, W, 3)`
            of images of one size, or a list of `(H, W, 3)` images of any sizes (each
            resized and cropped on its own, then stacked).
        size: side of the square output.
        resize_size: shorter side after the resize; defaults to `round(size * 256 / 224)`.

    Returns:
        float32 `(B, size, size, 3)` (or `(size, size, 3)` for a single image).

    Example:

    >>> import numpy as np
    >>> x = preprocess_images(np.zeros((300, 451, 3), "uint8"))
    >>> tuple(x.shape)
    (224, 224, 3)
    """
    if isinstance(images, (list, tuple)) and len({np.shape(i) for i in images}) > 1:
        if any(np.ndim(i) != 3 for i in images):
            raise ValueError("a list of images holds (H, W, 3) images; got shapes "
                             f"{sorted({np.shape(i) for i in images})}.")
        return ops.stack([preprocess_images(i, size, resize_size) for i in images])
    _warn_if_unit_range(images)
    images = ops.convert_to_tensor(images)
    single = len(images.shape) == 3
    if single:
        images = images[None]
    if len(images.shape) != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected RGB images (H, W, 3) or (B, H, W, 3); got shape {tuple(images.shape)}."
        )
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("preprocess_images needs images of known height and width.")
    resize_size = resize_size or int(round(size * 256 / 224))
    # torchvision Resize(int): the shorter side becomes resize_size, the other is truncated.
    if height <= width:
        new_h, new_w = resize_size, int(resize_size * width / height)
    else:
        new_h, new_w = int(resize_size * height / width), resize_size
    x = ops.cast(images, "float32")
    if (new_h, new_w) != (height, width):
        x = ops.image.resize(x, (new_h, new_w), interpolation="bicubic", antialias=True)
        # PIL produces uint8: round and clip like it does.
        x = ops.clip(ops.round(x), 0.0, 255.0)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"images of {height}x{width} are too small to crop {size}x{size}.")
    x = x[:, top : top + size, left : left + size, :]
    x = normalize_images(x)
    return x[0] if single else x


def _warn_if_unit_range(images) -> None:
    """Warns (once per call site) when NumPy float images lie in [0, 1], not 0..255.

    Only NumPy arrays are looked at: their values are on the host (no device sync, nothing
    traced).
    """
    if not isinstance(images, np.ndarray) or images.size == 0:
        return
    if not np.issubdtype(images.dtype, np.floating):
        return
    high, low = float(np.nanmax(images)), float(np.nanmin(images))
    if 0.0 < high <= 1.0 and low >= 0.0:
        warnings.warn(
            f"preprocess_images takes pixels in 0..255, but these float images lie in [0, 1] "
            f"(max {high:.3g}): pass images * 255 (or the uint8 images).",
            InputWarning, stacklevel=3)


class EvalConfig:
    """The official evaluation view, the one definition of evaluation pixels.

    torchvision's `Resize(resize_size, BICUBIC)` (the shorter side to `resize_size`, the
    other scaled and truncated), `CenterCrop(size)` (offsets rounded half to even),
    `ToTensor()` and `Normalize(mean, std)`, on images decoded by PIL: what the official
    `eval_knn.py`, `eval_linear.py` and friends feed the model. `load` reproduces it
    with PIL itself, so the pixels are the official ones bit for bit; `to_dict` records
    it (in export metadata, like timm's `pretrained_cfg`); `preprocess_images` applies the
    same recipe to arrays with Keras ops, and the SavedModel's `serve_bytes` in TensorFlow.

    Args:
        size: side of the center crop (224).
        resize_size: shorter side before the crop; default `round(size * 256 / 224)`.
        mean, std: the normalisation (ImageNet's).

    Example:

    >>> config = EvalConfig(224)
    >>> config.resize_size, config.resized_shape(480, 640), config.crop_offsets(256, 341)
    (256, (256, 341), (16, 58))
    """

    def __init__(self, size: int = 224, resize_size: int | None = None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        self.size = int(size)
        self.resize_size = int(resize_size or round(size * 256 / 224))
        if self.resize_size < self.size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than size {self.size}.")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def to_dict(self) -> dict:
        """The recipe as JSON-ready values (recorded in export metadata).

        Example:

        >>> EvalConfig(32, 32).to_dict()["resize_size"], EvalConfig().to_dict()["decoder"]
        (32, 'PIL')
        """
        return {
            "size": self.size, "resize_size": self.resize_size, "interpolation": "bicubic",
            "crop": "center", "decoder": "PIL", "mean": list(self.mean), "std": list(self.std),
        }

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's `Resize(int)` output size: `(new_height, new_width)`.

        Example:

        >>> EvalConfig(224).resized_shape(300, 200)
        (384, 256)
        """
        if height <= width:
            return self.resize_size, int(self.resize_size * width / height)
        return int(self.resize_size * height / width), self.resize_size

    def crop_offsets(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's `CenterCrop` offsets `(top, left)` (Python's round, half to even).

        Example:

        >>> EvalConfig(224).crop_offsets(256, 257)  # 16.5 rounds to 16
        (16, 16)
        """
        return round((height - self.size) / 2.0), round((width - self.size) / 2.0)

    def load(self, path):
        """One image file as the official evaluation sees it: float32 `[size, size, 3]`.

        Example:

        >>> import pathlib
        >>> from keras_dino.datasets import cifar10_mini
        >>> image = sorted(pathlib.Path(cifar10_mini("test")).rglob("*.jpg"))[0]
        >>> EvalConfig(32, 32).load(image).shape
        (32, 32, 3)
        """
        import numpy as np
        from PIL import Image

        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        height, width = image.height, image.width
        new_h, new_w = self.resized_shape(height, width)
        if (new_h, new_w) != (height, width):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top, left = self.crop_offsets(new_h, new_w)
        image = image.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(image, np.float32) / np.float32(255)
        return ((x - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)
