"""Precision helpers shared by the layers, the head and the loss."""

import keras
from keras import ops


def at_least_float32(x):
    """Casts half-precision tensors to float32; float32 and float64 pass unchanged.

    Softmax, the head's last layer and the loss use it under mixed precision.

    Example:

    >>> import numpy as np
    >>> keras.backend.standardize_dtype(at_least_float32(np.ones(2, "float16")).dtype)
    'float32'
    """
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    return x
