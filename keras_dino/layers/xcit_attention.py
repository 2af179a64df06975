"""The two attentions of XCiT: cross-covariance attention and class attention.

Both keep the official qkv layout (one dense layer, `(3, heads, head_dim)` along the last
axis), so official weights load by a plain transpose; softmaxes run in float32 under
mixed precision.
"""

import keras
from keras import ops

from keras_dino.layers.initializers import linear_kernel_initializer
from keras_dino.layers.precision import at_least_float32


class _QKVAttention(keras.layers.Layer):
    """qkv and output projections shared by the two attentions."""

    def __init__(self, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop
        self.proj_drop_rate = proj_drop
        self.attn_drop = keras.layers.Dropout(attn_drop, dtype=self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(proj_drop, dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {self.num_heads}.")
        self.head_dim = dim // self.num_heads
        self.qkv = keras.layers.Dense(3 * dim, use_bias=self.qkv_bias,
                                      kernel_initializer=linear_kernel_initializer(),
                                      dtype=self.dtype_policy, name="qkv")
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(dim, kernel_initializer=linear_kernel_initializer(),
                                       dtype=self.dtype_policy, name="proj")
        self.proj.build(input_shape)
        self.attn_drop.build(None)
        self.proj_drop.build(None)

    def _heads(self, x):
        """q, k, v of shape `(B, heads, N, head_dim)`."""
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        return qkv[0], qkv[1], qkv[2]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "qkv_bias": self.qkv_bias,
            "attn_drop": self.attn_drop_rate,
            "proj_drop": self.proj_drop_rate,
        }


def _l2_normalize_last(x, epsilon=1e-12):
    """`torch.nn.functional.normalize(x, dim=-1)`: x / max(|x|, eps)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="keras_dino")
class CrossCovarianceAttention(_QKVAttention):
    """XCA: attention over channels, `softmax(q̂ k̂ᵀ · τ)` of size head_dim x head_dim.

    Queries and keys are l2-normalised along the token axis and the learnable
    temperature τ (one per head, shape `(heads, 1, 1)` as the official parameter)
    scales their cross-covariance; the values are mixed channel-wise, so the cost is
    linear in the number of tokens.

    Example:

    >>> import numpy as np
    >>> layer = CrossCovarianceAttention(num_heads=2)
    >>> out, attn = layer(np.ones((1, 5, 8), "float32"), return_attention=True)
    >>> tuple(out.shape), tuple(attn.shape)  # attention: (B, heads, d, d)
    ((1, 5, 8), (1, 2, 4, 4))
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.temperature = self.add_weight(shape=(self.num_heads, 1, 1), initializer="ones",
                                           name="temperature")

    def call(self, x, training=None, return_attention=False):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        q, k, v = (ops.transpose(t, (0, 1, 3, 2)) for t in self._heads(x))  # (B, h, d, N)
        q, k = _l2_normalize_last(q), _l2_normalize_last(k)
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * ops.cast(self.temperature,
                                                                           q.dtype)
        attn = ops.softmax(at_least_float32(logits), axis=-1)
        weights = self.attn_drop(ops.cast(attn, v.dtype), training=training)
        out = ops.transpose(ops.matmul(weights, v), (0, 3, 1, 2))  # (B, N, h, d)
        out = ops.reshape(out, (batch, tokens, self.num_heads * self.head_dim))
        out = self.proj_drop(self.proj(out), training=training)
        return (out, attn) if return_attention else out


@keras.saving.register_keras_serializable(package="keras_dino")
class ClassAttention(_QKVAttention):
    """CaiT's class attention: only the CLS token queries, over all tokens.

    Returns the projected CLS token followed by the *input* patch tokens unchanged, as
    the official layer does (its caller adds the result to its own input, so the patch
    tokens get their normalised selves added).

    Example:

    >>> import numpy as np
    >>> layer = ClassAttention(num_heads=2)
    >>> out, attn = layer(np.ones((1, 5, 8), "float32"), return_attention=True)
    >>> tuple(out.shape), tuple(attn.shape)  # attention: (B, heads, 1, 1 + N)
    ((1, 5, 8), (1, 2, 1, 5))
    """

    def call(self, x, training=None, return_attention=False):
        batch = ops.shape(x)[0]
        q, k, v = self._heads(x)
        query = q[:, :, 0:1]  # (B, h, 1, d)
        logits = ops.sum(query * k, axis=-1, keepdims=True) * (self.head_dim**-0.5)
        attn = ops.softmax(at_least_float32(ops.transpose(logits, (0, 1, 3, 2))), axis=-1)
        weights = self.attn_drop(ops.cast(attn, v.dtype), training=training)
        cls = ops.reshape(ops.matmul(weights, v), (batch, 1, self.num_heads * self.head_dim))
        cls = self.proj_drop(self.proj(cls), training=training)
        out = ops.concatenate([cls, x[:, 1:]], axis=1)
        return (out, attn) if return_attention else out
