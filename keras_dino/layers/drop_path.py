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

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        mask = ops.floor(keep + noise)
        return inputs / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
