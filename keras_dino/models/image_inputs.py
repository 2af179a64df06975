"""The one input check every backbone makes: channels-last RGB images."""


def check_rgb_images(shape) -> None:
    """Raises a `ValueError` naming the shape unless it is `(..., H, W, 3)` (or unknown).

    Example:

    >>> check_rgb_images((2, 32, 32, 3))
    >>> check_rgb_images((2, 3, 32, 32))
    Traceback (most recent call last):
    ...
    ValueError: expected channels-last RGB images (..., H, W, 3); got shape (2, 3, 32, 32).
    """
    if shape is not None and shape[-1] not in (None, 3):
        raise ValueError(
            f"expected channels-last RGB images (..., H, W, 3); got shape {tuple(shape)}."
        )
