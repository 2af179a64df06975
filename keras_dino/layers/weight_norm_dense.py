"""A bias-free dense layer with weight normalisation, DINO's `last_layer`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
class WeightNormDense(keras.layers.Layer):
    """`y = x @ (v * g / ||v||)`, the column norms of `v` taken per output unit.

    The official DINO head wraps its last `nn.Linear` in `torch.nn.utils.weight_norm`
    (`weight_v`, `weight_g`, no bias) and, with `norm_last_layer=True`, keeps `g` at 1
    and out of the optimizer. Here `kernel_v` is `(in, out)` (the transpose of
    `weight_v`) and `kernel_g` is `(out,)`. The layer computes in float32 by default,
    which DINO's 65,536-way output needs under mixed precision.

    Args:
        units: output size.
        train_g: whether `kernel_g` is trainable (`not norm_last_layer`).

    Example:

    >>> import numpy as np
    >>> layer = WeightNormDense(4)
    >>> tuple(layer(np.ones((2, 3), "float32")).shape)
    (2, 4)
    """

    def __init__(self, units: int, train_g: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.units = units
        self.train_g = train_g

    def build(self, input_shape):
        fan_in = input_shape[-1]
        bound = fan_in**-0.5  # torch nn.Linear's default init, before weight_norm.
        self.kernel_v = self.add_weight(
            name="kernel_v",
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )
        self.kernel_g = self.add_weight(
            name="kernel_g",
            shape=(self.units,),
            initializer="ones",
            trainable=self.train_g,
        )

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        norm = ops.sqrt(ops.sum(ops.square(self.kernel_v), axis=0))
        return ops.matmul(x, self.kernel_v) * (self.kernel_g / norm)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "train_g": self.train_g}
