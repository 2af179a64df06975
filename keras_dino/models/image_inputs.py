"""The one input check every backbone makes: channels-last RGB float images, normalised."""

import numpy as np

from keras_dino.errors import InputError

# Normalised ImageNet pixels lie in [-2.2, 2.7]; 0..255 pixels go far above.
_RAW_PIXEL_MAX = 25.0
_FIX = ("pass keras_dino.preprocess_images(images) (resize, crop, normalise) or "
        "keras_dino.normalize_images(images)")


def check_rgb_images(shape) -> None:
    """Raises an `InputError` naming the shape unless it is a batch `(B, H, W, 3)` (or
    unknown).

    Example:

    >>> check_rgb_images((2, 32, 32, 3))
    >>> check_rgb_images((2, 3, 32, 32))
    Traceback (most recent call last):
    ...
    keras_dino.errors.InputError: expected channels-last RGB images (..., H, W, 3); got shape (2, 3, 32, 32).
    >>> check_rgb_images((32, 32, 3))
    Traceback (most recent call last):
    ...
    keras_dino.errors.InputError: got one image of shape (32, 32, 3); the backbone takes a batch (B, H, W, 3): add a batch axis (images[None]).
    """
    try:
        rank = len(shape)
    except (TypeError, ValueError):  # None, or a tf.TensorShape of unknown rank
        return
    if rank and shape[-1] not in (None, 3):
        raise InputError(
            f"expected channels-last RGB images (..., H, W, 3); got shape {tuple(shape)}."
        )
    if rank == 3:
        raise InputError(f"got one image of shape {tuple(shape)}; the backbone takes a batch "
                         "(B, H, W, 3): add a batch axis (images[None]).")
    if rank != 4:
        raise InputError(f"expected a batch of channels-last RGB images (B, H, W, 3); got "
                         f"shape {tuple(shape)}.")


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return name.rsplit(".", 1)[-1]  # torch.uint8 -> uint8


def check_images(images) -> None:
    """Raises an `InputError` that names the fix for images a backbone cannot take.

    Checked: the shape (`(..., H, W, 3)`), the dtype (float; integer images are raw
    pixels), and, for NumPy arrays (values on the host: no device sync, nothing traced),
    the range: float pixels in 0..255 instead of normalised values.

    Example:

    >>> check_images(np.zeros((1, 32, 32, 3), "float32"))
    >>> check_images(np.zeros((1, 32, 32, 3), "uint8"))
    Traceback (most recent call last):
    ...
    keras_dino.errors.InputError: got uint8 images; the backbone takes normalised float images: pass keras_dino.preprocess_images(images) (resize, crop, normalise) or keras_dino.normalize_images(images).
    """
    check_rgb_images(getattr(images, "shape", None))
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        return
    name = _dtype_name(dtype)
    if "float" not in name:
        raise InputError(
            f"got {name} images; the backbone takes normalised float images: {_FIX}.")
    check_value_range(images)


def check_value_range(images) -> None:
    """For a NumPy array: raises an `InputError` on float pixels in 0..255 (not normalised).

    Example:

    >>> check_value_range(np.full((1, 8, 8, 3), 200.0, "float32"))
    Traceback (most recent call last):
    ...
    keras_dino.errors.InputError: the images hold values 0..255 (max 200); the backbone takes normalised images: pass keras_dino.preprocess_images(images) (resize, crop, normalise) or keras_dino.normalize_images(images).
    """
    if not isinstance(images, np.ndarray) or images.size == 0:
        return
    if not np.issubdtype(images.dtype, np.floating):
        return
    high, low = float(np.nanmax(images)), float(np.nanmin(images))
    if high > _RAW_PIXEL_MAX and low >= 0.0:
        raise InputError(
            f"the images hold values 0..255 (max {high:g}); the backbone takes normalised "
            f"images: {_FIX}.")
