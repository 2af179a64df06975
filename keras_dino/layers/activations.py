"""Activations used by the DINO models."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
def gelu_exact(x):
    """GELU in its exact erf form, as `torch.nn.GELU()` (Keras defaults to the tanh form).

    Example:

    >>> float(gelu_exact(1.0))  # doctest: +ELLIPSIS
    0.841...
    """
    return ops.gelu(x, approximate=False)
