"""The pre-norm transformer block of the official DINO Vision Transformer."""

import keras

from keras_dino.layers.activations import gelu_exact
from keras_dino.layers.attention import MultiHeadSelfAttention
from keras_dino.layers.drop_path import DropPath
from keras_dino.layers.initializers import linear_kernel_initializer

LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="keras_dino")
class MLP(keras.layers.Layer):
    """Two dense layers with the exact (erf) GELU in between.

    Example:

    >>> import numpy as np
    >>> tuple(MLP(hidden_dim=16)(np.zeros((2, 3, 4), "float32")).shape)
    (2, 3, 4)
    """

    def __init__(self, hidden_dim: int, drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.drop_rate = drop
        self.drop = keras.layers.Dropout(drop, dtype=self.dtype_policy)

    def build(self, input_shape):
        init = linear_kernel_initializer
        self.fc1 = keras.layers.Dense(
            self.hidden_dim, kernel_initializer=init(), dtype=self.dtype_policy, name="fc1"
        )
        self.fc1.build(input_shape)
        self.fc2 = keras.layers.Dense(
            input_shape[-1], kernel_initializer=init(), dtype=self.dtype_policy, name="fc2"
        )
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.drop.build(None)

    def call(self, x, training=None):
        x = gelu_exact(self.fc1(x))
        x = self.drop(x, training=training)
        return self.drop(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "drop": self.drop_rate}


@keras.saving.register_keras_serializable(package="keras_dino")
class TransformerBlock(keras.layers.Layer):
    """`x + attn(norm1(x))` then `x + mlp(norm2(x))`, each branch with drop path.

    Args:
        num_heads: attention heads.
        mlp_ratio: hidden size of the MLP relative to the embedding size.
        qkv_bias: bias in the qkv projection.
        drop: dropout after the projections.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        use_fused_attention: see `MultiHeadSelfAttention`.

    Example:

    >>> import numpy as np
    >>> block = TransformerBlock(num_heads=2)
    >>> y, attn = block(np.zeros((1, 5, 8), "float32"), return_attention=True)
    >>> tuple(y.shape), tuple(attn.shape)
    ((1, 5, 8), (1, 2, 5, 5))
    """

    def __init__(
        self,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_fused_attention: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.qk_scale = qk_scale
        self.drop_rate = drop
        self.attn_drop_rate = attn_drop
        self.drop_path_rate = drop_path
        self.use_fused_attention = use_fused_attention
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, dtype=policy, name="norm1"
        )
        self.attn = MultiHeadSelfAttention(
            num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            use_fused_attention=use_fused_attention,
            dtype=policy,
            name="attn",
        )
        self.drop_path = DropPath(drop_path, dtype=policy, name="drop_path")
        self.norm2 = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, dtype=policy, name="norm2"
        )
        self.mlp = None

    def build(self, input_shape):
        dim = input_shape[-1]
        self.norm1.build(input_shape)
        self.attn.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp = MLP(
            int(dim * self.mlp_ratio), drop=self.drop_rate, dtype=self.dtype_policy, name="mlp"
        )
        self.mlp.build(input_shape)
        self.drop_path.build(input_shape)

    def keep_masks(self, x, training=None):
        """The drop-path keep masks of both branches, or None when nothing is dropped.

        Drawn in the order `call` draws them, so passing them back as `keep_masks`
        gives the same output; a rematerialised block uses this to replay them.

        Example:

        >>> import numpy as np
        >>> block = TransformerBlock(num_heads=2, drop_path=0.5)
        >>> x = np.zeros((4, 5, 8), "float32")
        >>> masks = block.keep_masks(x, training=True)
        >>> [tuple(m.shape) for m in masks]
        [(4, 1, 1), (4, 1, 1)]
        >>> y = block(x, training=True, keep_masks=masks)
        """
        if not training or self.drop_path_rate == 0.0:
            return None
        return self.drop_path.keep_mask(x), self.drop_path.keep_mask(x)

    def call(self, x, training=None, return_attention=False, keep_masks=None):
        attn_mask, mlp_mask = keep_masks if keep_masks is not None else (None, None)
        y = self.attn(self.norm1(x), training=training, return_attention=return_attention)
        if return_attention:
            y, attn = y
        x = x + self.drop_path(y, training=training, keep_mask=attn_mask)
        y = self.mlp(self.norm2(x), training=training)
        x = x + self.drop_path(y, training=training, keep_mask=mlp_mask)
        if return_attention:
            return x, attn
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qk_scale": self.qk_scale,
            "drop": self.drop_rate,
            "attn_drop": self.attn_drop_rate,
            "drop_path": self.drop_path_rate,
            "use_fused_attention": self.use_fused_attention,
        }
