"""Image to patch tokens, the official `PatchEmbed` in channels-last layout."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
class PatchEmbedding(keras.layers.Layer):
    """A `patch_size`-strided convolution that turns NHWC images into patch tokens.

    The output is `(batch, grid_h * grid_w, embed_dim)` in row-major patch order, the
    order of the official `proj(x).flatten(2).transpose(1, 2)`.

    Example:

    >>> import numpy as np
    >>> tuple(PatchEmbedding(16, 8)(np.zeros((1, 32, 48, 3), "float32")).shape)
    (1, 6, 8)
    """

    def __init__(self, patch_size: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = None

    def build(self, input_shape):
        # torch's default Conv2d init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)),
        # the same bound for the bias.
        bound = (input_shape[-1] * self.patch_size * self.patch_size) ** -0.5
        self.proj = keras.layers.Conv2D(
            self.embed_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build(input_shape)

    def call(self, images):
        x = self.proj(images)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.embed_dim))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.embed_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
        }
