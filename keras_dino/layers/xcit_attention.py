"""The two attentions of XCiT: cross-covariance attention and class attention.

Both keep the official qkv layout (one dense layer, `(3, heads, head_dim)` along the last
axis), so official weights load by a plain transpose; softmaxes run in float32 under
mixed precision.
"""

import keras
from keras import ops

from keras_dino.layers.attention import QKVAttention
from keras_dino.layers.precision import at_least_float32


def _l2_normalize_last(x, epsilon=1e-12):
    """`torch.nn.functional.normalize(x, dim=-1)`: x / max(|x|, eps)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="keras_dino")
class CrossCovarianceAttention(QKVAttention):
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
class ClassAttention(QKVAttention):
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
