"""Stochastic depth ("drop path") as in the official DINO `DropPath`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
class DropPath(keras.layers.Layer):
    """Drops whole residual branches per sample during training.

    In training, each sample's input is zeroed with probability `rate` and the kept
    samples are scaled by `1 / (1 - rate)`; at inference it is the identity.

    Args:
        rate: probability of dropping the branch, in `[0, 1)`.
        seed: optional seed of the layer's random generator.

    Example:

    >>> import numpy as np
    >>> layer = DropPath(0.5, seed=1)
    >>> x = np.ones((4, 3, 2), "float32")
    >>> bool(np.all(np.asarray(layer(x, training=False)) == 1))
    True
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1); got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def keep_mask(self, inputs):
        """Draws the per-sample keep mask `(B, 1, ..., 1)` of 0s and 1s for `inputs`.

        `call` draws it itself; drawing it beforehand and passing it as `keep_mask`
        lets a rematerialised block replay the same mask in its backward pass.

        Example:

        >>> import numpy as np
        >>> layer = DropPath(0.5, seed=1)
        >>> x = np.ones((4, 3, 2), "float32")
        >>> mask = layer.keep_mask(x)
        >>> tuple(mask.shape)
        (4, 1, 1)
        >>> y = layer(x, training=True, keep_mask=mask)  # kept samples scaled by 2
        """
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        return ops.floor(keep + noise)

    def call(self, inputs, training=None, keep_mask=None):
        if not training or self.rate == 0.0:
            return inputs
        if keep_mask is None:
            keep_mask = self.keep_mask(inputs)
        return inputs / (1.0 - self.rate) * ops.cast(keep_mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
