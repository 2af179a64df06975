"""The pieces of XCiT besides its attentions: convolutional patch embedding, Fourier
positions, local patch interaction, and the two kinds of blocks. Channels-last.

Every convolution pads like torch (`padding=k // 2` on both sides) and BatchNorms have
PyTorch's semantics (`keras_dino.layers.BatchNorm`, synchronised across replicas as
the official SyncBatchNorm).
"""

import math

import keras
from keras import ops

from keras_dino.layers.activations import gelu_exact
from keras_dino.layers.batch_norm import BatchNorm
from keras_dino.layers.drop_path import DropPath
from keras_dino.layers.transformer_block import LAYER_NORM_EPSILON, MLP
from keras_dino.layers.xcit_attention import ClassAttention, CrossCovarianceAttention


def _pad1(x):
    return ops.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])


def _torch_conv_init(fan_in):
    """torch's default Conv2d init: kaiming_uniform(a=√5) weights, U(±1/√fan_in) bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return (keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            keras.initializers.RandomUniform(-bound, bound))


@keras.saving.register_keras_serializable(package="keras_dino")
class ConvPatchEmbedding(keras.layers.Layer):
    """XCiT's patch embedding: 3x3 stride-2 convolutions with BatchNorm and GELU.

    Patch 16: four convolutions to E/8, E/4, E/2, E channels; patch 8: three, to E/4,
    E/2, E. Each halves the grid, rounding up (`ceil(n / 2)`), so any image size works.

    Example:

    >>> import numpy as np
    >>> layer = ConvPatchEmbedding(patch_size=16, embed_dim=32)
    >>> tuple(layer(np.zeros((1, 64, 40, 3), "float32")).shape)  # (B, H/16, ceil(40/16), E)
    (1, 4, 3, 32)
    """

    def __init__(self, patch_size: int = 16, embed_dim: int = 768, **kwargs):
        super().__init__(**kwargs)
        if patch_size not in (8, 16):
            raise ValueError(f"XCiT's convolutional patch embedding has patch size 8 or 16; "
                             f"got {patch_size}.")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        stages = 4 if patch_size == 16 else 3
        self.widths = [embed_dim // 2 ** (stages - 1 - i) for i in range(stages)]
        self.convs, self.norms = [], []
        for i, width in enumerate(self.widths):
            self.convs.append(keras.layers.Conv2D(
                width, 3, strides=2, padding="valid", use_bias=False,
                kernel_initializer=_torch_conv_init(9 * (3 if i == 0 else self.widths[i - 1]))[0],
                dtype=self.dtype_policy, name=f"proj_{2 * i}_conv"))
            self.norms.append(BatchNorm(dtype=self.dtype_policy, name=f"proj_{2 * i}_bn"))

    def build(self, input_shape):
        channels = 3
        for conv, norm, width in zip(self.convs, self.norms, self.widths):
            conv.build((None, None, None, channels))
            norm.build((None, None, None, width))
            channels = width

    def call(self, images, training=None):
        x = images
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i:
                x = gelu_exact(x)
            x = norm(conv(_pad1(x)), training=training)
        return x

    def compute_output_shape(self, input_shape):
        def half(n, times):
            for _ in range(times):
                n = None if n is None else (n + 1) // 2
            return n

        times = len(self.widths)
        return (input_shape[0], half(input_shape[1], times), half(input_shape[2], times),
                self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size,
                "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="keras_dino")
class FourierPositionEncoding(keras.layers.Layer):
    """Sine/cosine features of each patch's (row, column), projected to the token width.

    As the official `PositionalEncodingFourier`: positions 1..n scaled to (0, 2π] per
    axis, 32 frequencies `10000^(2⌊i/2⌋/32)` with sines and cosines interleaved, rows
    then columns (64 channels), then a 1x1 convolution to `embed_dim`. Computed for the
    grid at hand: no interpolation, any size. Called on the patch grid `(B, h, w, C)`,
    whose shape alone it reads.

    Example:

    >>> import numpy as np
    >>> layer = FourierPositionEncoding(embed_dim=16)
    >>> tuple(layer(np.zeros((2, 3, 5, 16), "float32")).shape)  # (1, h * w, E), row-major
    (1, 15, 16)
    """

    def __init__(self, embed_dim: int = 768, hidden_dim: int = 32,
                 temperature: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        kernel_init, bias_init = _torch_conv_init(2 * hidden_dim)
        self.token_projection = keras.layers.Conv2D(
            embed_dim, 1, kernel_initializer=kernel_init, bias_initializer=bias_init,
            dtype=self.dtype_policy, name="token_projection")

    def build(self, input_shape=None):
        self.token_projection.build((None, None, None, 2 * self.hidden_dim))
        self.built = True

    def _axis(self, n):
        steps = ops.cast(ops.arange(1, n + 1), "float32")
        position = steps / (ops.cast(n, "float32") + 1e-6) * (2 * math.pi)
        index = ops.cast(ops.arange(self.hidden_dim) // 2 * 2, "float32")
        dim_t = ops.power(self.temperature, index / self.hidden_dim)
        angles = position[:, None] / dim_t  # (n, hidden)
        both = ops.stack([ops.sin(angles[:, 0::2]), ops.cos(angles[:, 1::2])], axis=-1)
        return ops.reshape(both, (n, self.hidden_dim))

    def call(self, patch_grid):
        grid_h, grid_w = ops.shape(patch_grid)[1], ops.shape(patch_grid)[2]
        rows, cols = self._axis(grid_h), self._axis(grid_w)
        rows = ops.broadcast_to(rows[:, None, :], (grid_h, grid_w, self.hidden_dim))
        cols = ops.broadcast_to(cols[None, :, :], (grid_h, grid_w, self.hidden_dim))
        features = ops.concatenate([rows, cols], axis=-1)[None]
        encoding = self.token_projection(ops.cast(features, self.compute_dtype))
        return ops.reshape(encoding, (1, grid_h * grid_w, self.embed_dim))

    def compute_output_shape(self, input_shape):
        rows, cols = input_shape[1], input_shape[2]
        return (1, None if rows is None or cols is None else rows * cols, self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="keras_dino")
class LocalPatchInteraction(keras.layers.Layer):
    """LPI: depthwise 3x3 convolution, GELU, BatchNorm, depthwise 3x3 convolution.

    Mixes each patch token with its 3x3 neighbourhood on the patch grid.

    Example:

    >>> import numpy as np
    >>> layer = LocalPatchInteraction()
    >>> tuple(layer(np.zeros((2, 6, 8), "float32"), grid_h=2, grid_w=3).shape)  # grid 2x3
    (2, 6, 8)
    """

    def build(self, input_shape):
        dim = input_shape[-1]
        kernel_init, bias_init = _torch_conv_init(9)
        self.conv1, self.conv2 = (
            keras.layers.DepthwiseConv2D(3, padding="valid", depthwise_initializer=kernel_init,
                                         bias_initializer=bias_init, dtype=self.dtype_policy,
                                         name=name)
            for name in ("conv1", "conv2")
        )
        self.bn = BatchNorm(dtype=self.dtype_policy, name="bn")
        for layer in (self.conv1, self.bn, self.conv2):
            layer.build((None, None, None, dim))

    def call(self, tokens, grid_h, grid_w, training=None):
        batch, dim = ops.shape(tokens)[0], tokens.shape[-1]
        x = ops.reshape(tokens, (batch, grid_h, grid_w, dim))
        x = self.bn(gelu_exact(self.conv1(_pad1(x))), training=training)
        x = self.conv2(_pad1(x))
        return ops.reshape(x, (batch, grid_h * grid_w, dim))

    def compute_output_shape(self, input_shape):
        return input_shape


class _LayerScaleBlock(keras.layers.Layer):
    """Shared parts: LayerNorms, the MLP, drop path and the `gamma` layer scales."""

    GAMMAS = ()

    def __init__(self, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eta: float = 1.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.eta = eta
        self.drop_rate = drop
        self.attn_drop_rate = attn_drop
        self.drop_path_rate = drop_path
        self.drop_path = DropPath(drop_path, dtype=self.dtype_policy)

    def _norm(self, name):
        return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                               dtype=self.dtype_policy, name=name)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.mlp = MLP(int(dim * self.mlp_ratio), drop=self.drop_rate, dtype=self.dtype_policy,
                       name="mlp")
        self.mlp.build(input_shape)
        for name in self.GAMMAS:
            setattr(self, name, self.add_weight(
                shape=(dim,), initializer=keras.initializers.Constant(self.eta), name=name))

    def _scaled(self, gamma, x, training):
        return self.drop_path(ops.cast(gamma, x.dtype) * x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "eta": self.eta,
            "drop": self.drop_rate,
            "attn_drop": self.attn_drop_rate,
            "drop_path": self.drop_path_rate,
        }


@keras.saving.register_keras_serializable(package="keras_dino")
class XCABlock(_LayerScaleBlock):
    """An XCiT block: `x += γ1·XCA(norm1 x)`, `x += γ3·LPI(norm3 x)`, `x += γ2·MLP(norm2 x)`.

    Example:

    >>> import numpy as np
    >>> block = XCABlock(num_heads=2)
    >>> tuple(block(np.zeros((1, 6, 8), "float32"), grid_h=2, grid_w=3).shape)
    (1, 6, 8)
    """

    GAMMAS = ("gamma1", "gamma2", "gamma3")

    def build(self, input_shape):
        super().build(input_shape)
        self.norm1, self.norm2, self.norm3 = (self._norm(f"norm{i}") for i in (1, 2, 3))
        self.attn = CrossCovarianceAttention(self.num_heads, self.qkv_bias,
                                             self.attn_drop_rate, self.drop_rate,
                                             dtype=self.dtype_policy, name="attn")
        self.local_mp = LocalPatchInteraction(dtype=self.dtype_policy, name="local_mp")
        for layer in (self.norm1, self.norm2, self.norm3, self.attn, self.local_mp):
            layer.build(input_shape)

    def call(self, x, grid_h, grid_w, training=None, return_attention=False):
        out, attn = self.attn(self.norm1(x), training=training, return_attention=True)
        x = x + self._scaled(self.gamma1, out, training)
        x = x + self._scaled(self.gamma3, self.local_mp(self.norm3(x), grid_h=grid_h,
                                                        grid_w=grid_w, training=training), training)
        x = x + self._scaled(self.gamma2, self.mlp(self.norm2(x), training=training), training)
        return (x, attn) if return_attention else x


@keras.saving.register_keras_serializable(package="keras_dino")
class ClassAttentionBlock(_LayerScaleBlock):
    """A class-attention block, with the official layer's exact arithmetic.

    `x += γ1·CA(norm1 x)` (the patch tokens get their normalised selves added), then
    `norm2` on every token (`tokens_norm=True`, as all DINO XCiTs) or on the CLS token
    only, then `x += [γ2·MLP(cls), patch tokens]`: the MLP sees the CLS token only and
    the patch tokens are doubled, as in the official code.

    Example:

    >>> import numpy as np
    >>> block = ClassAttentionBlock(num_heads=2)
    >>> tuple(block(np.zeros((1, 7, 8), "float32")).shape)
    (1, 7, 8)
    """

    GAMMAS = ("gamma1", "gamma2")

    def __init__(self, num_heads: int, tokens_norm: bool = True, **kwargs):
        super().__init__(num_heads, **kwargs)
        self.tokens_norm = tokens_norm

    def build(self, input_shape):
        super().build(input_shape)
        self.norm1, self.norm2 = self._norm("norm1"), self._norm("norm2")
        self.attn = ClassAttention(self.num_heads, self.qkv_bias, self.attn_drop_rate,
                                   self.drop_rate, dtype=self.dtype_policy, name="attn")
        for layer in (self.norm1, self.norm2, self.attn):
            layer.build(input_shape)

    def call(self, x, training=None, return_attention=False):
        out, attn = self.attn(self.norm1(x), training=training, return_attention=True)
        x = x + self._scaled(self.gamma1, out, training)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = ops.concatenate([self.norm2(x[:, :1]), x[:, 1:]], axis=1)
        cls = ops.cast(self.gamma2, x.dtype) * self.mlp(x[:, :1], training=training)
        x = x + self.drop_path(ops.concatenate([cls, x[:, 1:]], axis=1), training=training)
        return (x, attn) if return_attention else x

    def get_config(self):
        return {**super().get_config(), "tokens_norm": self.tokens_norm}
