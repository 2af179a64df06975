"""What `DINO` accepts as training data: a tuple of NHWC crops, 2 global ones first.

The checks run twice: once on the structure `fit` is given (before the first step, so a
wrong input fails before any compilation), and once inside the traced step on the
tensors themselves.
"""

_FIX = ("keras_dino.data.multicrop_dataset(images, batch_size) makes them from images (a "
        "folder, a tf.data.Dataset or arrays).")


def crops_of(data, local_crops_number: int) -> list:
    """The list of crops of one training element, or a `ValueError` naming the problem.

    Example:

    >>> import numpy as np
    >>> crops = crops_of((np.zeros((2, 8, 8, 3)),) * 4, local_crops_number=2)
    >>> len(crops)
    4
    """
    if isinstance(data, dict):
        raise ValueError("DINO trains on tuples of crops, not dicts.")
    if isinstance(data, (tuple, list)) and len(data) == 1 and isinstance(data[0], (tuple, list)):
        data = data[0]
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise ValueError(
            "each training element must be a tuple of crops: 2 global crops first, then "
            f"the local crops; got {type(data).__name__}. {_FIX}"
        )
    crops = list(data)
    for i, crop in enumerate(crops):
        if len(crop.shape) != 4 or crop.shape[-1] != 3:
            raise ValueError(
                f"crop {i} must be a float NHWC batch (B, H, W, 3); got shape {tuple(crop.shape)}."
            )
    expected = 2 + local_crops_number
    if len(crops) != expected:
        raise ValueError(
            f"this DINO was built for 2 global + {local_crops_number} local crops "
            f"({expected}), but the data gives {len(crops)}: set local_crops_number to the "
            "augmentation's."
        )
    return crops


def _crop_shapes(x):
    """Shapes of one element's crops for inputs whose structure is known up front."""
    if type(x).__module__.startswith("tensorflow.python.distribute"):
        return None  # per-replica specs (tf.distribute datasets): the first step checks
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec"):
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) == 1 and isinstance(spec[0], tuple):
            spec = spec[0]
        if not isinstance(spec, tuple):
            return [getattr(spec, "shape", None)]
        return [getattr(s, "shape", None) for s in spec]
    if isinstance(x, (tuple, list)):
        return [getattr(a, "shape", None) for a in x]
    if hasattr(x, "shape"):
        return [x.shape]
    return None  # generators and PyDatasets are checked by the first step


def check_training_input(x) -> None:
    """Names a wrong input structure before training starts (not mid-step).

    Example:

    >>> import numpy as np
    >>> check_training_input(np.zeros((4, 8, 8, 3)))
    Traceback (most recent call last):
    ...
    ValueError: each training element must be a tuple of crops: ...
    """
    shapes = _crop_shapes(x)
    if shapes is None:
        return
    if len(shapes) < 2:
        raise ValueError(
            "each training element must be a tuple of crops: 2 global crops first, then the "
            f"local crops; got a single tensor of shape {tuple(shapes[0] or ())}. {_FIX}"
        )
    for i, shape in enumerate(shapes):
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"crop {i} must be a float NHWC batch (B, H, W, 3); got shape "
                f"{None if shape is None else tuple(shape)}."
            )
