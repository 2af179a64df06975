"""Initialisers of the official DINO modules."""

import math

import keras
from keras import ops

# Distance kept from +-1 before erfinv (a few float32 steps near 1).
_OPEN = 2.0**-23


@keras.saving.register_keras_serializable(package="keras_dino")
class TruncNormal(keras.initializers.RandomNormal):
    """The official `trunc_normal_`: a normal `(mean, stddev)` cut at ABSOLUTE bounds.

    DINO calls `trunc_normal_(w, std=.02)`, whose bounds are `a=-2, b=2` in absolute
    value, i.e. +-100 standard deviations: the values are N(0, 0.02) and their standard
    deviation is 0.02. `keras.initializers.TruncatedNormal(stddev=0.02)` instead cuts at
    +-2 standard deviations, which shrinks the standard deviation to 0.0176. Sampling
    follows the official inverse-CDF method.

    Args:
        mean: mean of the normal.
        stddev: standard deviation of the normal.
        lower: smallest value (absolute, not in standard deviations).
        upper: largest value.
        seed: an int or a `keras.random.SeedGenerator`.

    Example:

    >>> import numpy as np
    >>> w = np.asarray(TruncNormal(stddev=0.02, seed=0)((200, 200)))
    >>> bool(abs(w.std() - 0.02) < 5e-4)
    True
    """

    def __init__(self, mean=0.0, stddev=0.02, lower=-2.0, upper=2.0, seed=None):
        super().__init__(mean=mean, stddev=stddev, seed=seed)
        if not lower < upper:
            raise ValueError(f"lower must be below upper; got {lower} and {upper}.")
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, shape, dtype=None):
        scale = self.stddev * math.sqrt(2.0)

        def cdf(value):
            return 0.5 * (1.0 + math.erf((value - self.mean) / scale))

        low, high = 2.0 * cdf(self.lower) - 1.0, 2.0 * cdf(self.upper) - 1.0
        u = keras.random.uniform(shape, minval=low, maxval=high, dtype="float32", seed=self.seed)
        # A float32 uniform can land on -1.0 itself (or round to +-1.0), where erfinv is
        # infinite and the clip would make a 100-sigma weight: about one layer in 30 of
        # 512x512 got one. Keep u strictly inside (-1, 1): at most ~5.3 sigma.
        u = ops.clip(u, -1.0 + _OPEN, 1.0 - _OPEN)
        x = ops.erfinv(u) * scale + self.mean
        return ops.cast(ops.clip(x, self.lower, self.upper), dtype or keras.backend.floatx())

    def get_config(self):
        return {**super().get_config(), "lower": self.lower, "upper": self.upper}


def linear_kernel_initializer():
    """The official init of every `nn.Linear` weight: `trunc_normal_(std=.02)`.

    Example:

    >>> linear_kernel_initializer().stddev
    0.02
    """
    return TruncNormal(stddev=0.02)
