"""Multi-head self-attention with the official DINO qkv layout."""

import keras
from keras import ops

from keras_dino.layers.initializers import linear_kernel_initializer
from keras_dino.layers.precision import at_least_float32


class QKVAttention(keras.layers.Layer):
    """The qkv and output projections that every attention of the library shares.

    One dense layer produces q, k and v laid out `(3, num_heads, head_dim)` along the
    last axis, exactly like the official `Attention.qkv` (ViT and XCiT alike), so official
    weights load by a plain transpose; `proj` maps the heads back to the embedding. The
    subclasses (`MultiHeadSelfAttention`, XCiT's `CrossCovarianceAttention` and
    `ClassAttention`) say how q, k and v are combined in `call`.

    Args:
        num_heads: number of attention heads.
        qkv_bias: whether the qkv projection has a bias.
        attn_drop: dropout rate on the attention weights.
        proj_drop: dropout rate on the output projection.

    Example:

    >>> import numpy as np
    >>> layer = QKVAttention(num_heads=2)
    >>> layer.build((1, 5, 8))
    >>> [tuple(w.shape) for w in layer.qkv.weights]
    [(8, 24), (24,)]
    """

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
            raise ValueError(
                f"embedding dim {dim} is not divisible by num_heads {self.num_heads}."
            )
        self.head_dim = dim // self.num_heads
        self.qkv = keras.layers.Dense(
            3 * dim,
            use_bias=self.qkv_bias,
            kernel_initializer=linear_kernel_initializer(),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.proj = keras.layers.Dense(
            dim, kernel_initializer=linear_kernel_initializer(), dtype=self.dtype_policy, name="proj"
        )
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


@keras.saving.register_keras_serializable(package="keras_dino")
class MultiHeadSelfAttention(QKVAttention):
    """Self-attention returning both the output and the attention weights.

    The official ViT `Attention`: q, k and v from `QKVAttention`'s projection, scaled
    dot products, softmax (in float32 under mixed precision), the heads projected back.

    Args:
        num_heads: number of attention heads.
        qkv_bias: whether the qkv projection has a bias.
        qk_scale: override of the default `head_dim ** -0.5` scale.
        attn_drop: dropout rate on the attention weights.
        proj_drop: dropout rate on the output projection.
        use_fused_attention: compute the attention with `keras.ops.dot_product_attention`
            (flash/cuDNN kernels where the backend has them). The weights are then not
            materialised; `return_attention=True` always uses the explicit path.

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadSelfAttention(num_heads=2)
    >>> out, attn = layer(np.zeros((1, 5, 8), "float32"), return_attention=True)
    >>> tuple(out.shape), tuple(attn.shape)
    ((1, 5, 8), (1, 2, 5, 5))
    """

    def __init__(
        self,
        num_heads: int,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_fused_attention: bool = False,
        **kwargs,
    ):
        super().__init__(num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                         proj_drop=proj_drop, **kwargs)
        self.qk_scale = qk_scale
        self.use_fused_attention = use_fused_attention

    def build(self, input_shape):
        super().build(input_shape)
        self.scale = self.qk_scale or self.head_dim**-0.5

    def call(self, x, training=None, return_attention=False):
        batch, tokens, dim = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        q, k, v = self._heads(x)
        if self.use_fused_attention and not return_attention and self.attn_drop_rate == 0.0:
            # dot_product_attention takes (batch, tokens, heads, head_dim).
            out = ops.dot_product_attention(
                ops.transpose(q, (0, 2, 1, 3)),
                ops.transpose(k, (0, 2, 1, 3)),
                ops.transpose(v, (0, 2, 1, 3)),
                scale=self.scale,
            )
            attn = None
        else:
            logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * ops.cast(
                self.scale, q.dtype
            )
            attn = ops.softmax(at_least_float32(logits), axis=-1)
            attn_used = self.attn_drop(ops.cast(attn, v.dtype), training=training)
            out = ops.transpose(ops.matmul(attn_used, v), (0, 2, 1, 3))
        out = ops.reshape(out, (batch, tokens, dim))
        out = self.proj_drop(self.proj(out), training=training)
        if return_attention:
            return out, attn
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "qk_scale": self.qk_scale,
            "use_fused_attention": self.use_fused_attention,
        }
