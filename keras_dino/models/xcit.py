"""XCiT (cross-covariance image transformer) as DINO uses it: no classifier, CLS out.

The official model is `xcit.py` of facebookresearch/xcit, which `main_dino.py` and
`hubconf.py` load through `torch.hub` (`--arch xcit_small_12_p16`, ...); DINO removes its
`head`. Channels-last, any input size (the positions are Fourier features of the grid
at hand), numerically the official model (see tests/test_xcit.py).
"""

import keras
from keras import ops

from keras_dino.layers.initializers import TruncNormal
from keras_dino.layers.transformer_block import LAYER_NORM_EPSILON
from keras_dino.layers.xcit_blocks import (
    ClassAttentionBlock,
    ConvPatchEmbedding,
    FourierPositionEncoding,
    XCABlock,
)
from keras_dino.models.image_inputs import check_images, check_rgb_images

# The official registry (xcit.py): width, depth, heads, layer-scale init, tokens_norm;
# each at patch 16 and 8. DINO released small_12 and medium_24.
_SIZES = {
    "nano_12": (128, 12, 4, 1.0, False),
    "tiny_12": (192, 12, 4, 1.0, True),
    "small_12": (384, 12, 8, 1.0, True),
    "tiny_24": (192, 24, 4, 1e-5, True),
    "small_24": (384, 24, 8, 1e-5, True),
    "medium_24": (512, 24, 8, 1e-5, True),
    "large_24": (768, 24, 16, 1e-5, True),
}
XCITS = {
    f"xcit_{size}_p{patch}": dict(patch_size=patch, embed_dim=e, depth=d, num_heads=h, eta=eta,
                                  tokens_norm=norm)
    for size, (e, d, h, eta, norm) in _SIZES.items()
    for patch in (16, 8)
}


@keras.saving.register_keras_serializable(package="keras_dino")
class XCiT(keras.Model):
    """XCiT backbone returning the CLS embedding, as the official model with `head` removed.

    Patch tokens from a convolutional embedding plus Fourier positions go through
    `depth` XCA blocks (cross-covariance attention, local patch interaction, MLP); the
    CLS token joins them for `cls_attn_layers` class-attention blocks; the output is the
    final LayerNorm of the CLS token.

    Args:
        patch_size: 16 or 8 (the stride of the convolutional embedding).
        embed_dim: token width.
        depth: number of XCA blocks.
        num_heads: heads of both attentions.
        mlp_ratio: MLP hidden size relative to `embed_dim`.
        qkv_bias: bias in the qkv projections (True for every DINO model).
        drop_rate: dropout after the projections and the positions.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, the same rate for every XCA block (as
            the official model; its class-attention blocks have none).
        cls_attn_layers: number of class-attention blocks.
        eta: initial value of the layer scales (1.0 for the 12-block models, 1e-5
            for the 24-block ones).
        tokens_norm: class-attention blocks normalise every token, not only CLS.

    Example:

    >>> import numpy as np
    >>> model = XCiT(patch_size=16, embed_dim=32, depth=1, num_heads=4)
    >>> images = np.zeros((2, 64, 80, 3), "float32")  # any H, W
    >>> tuple(model(images).shape)
    (2, 32)
    >>> tuple(model.get_last_selfattention(images).shape)  # CLS over [CLS, 4 x 5 patches]
    (2, 4, 1, 21)
    """

    def __init__(self, patch_size: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, cls_attn_layers: int = 2, eta: float = 1.0,
                 tokens_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.num_prefix_tokens = 1  # the class token; the patches follow it
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.cls_attn_layers = cls_attn_layers
        self.eta = eta
        self.tokens_norm = tokens_norm
        policy = self.dtype_policy
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eta=eta, drop=drop_rate,
                      attn_drop=attn_drop_rate, dtype=policy)
        self.patch_embed = ConvPatchEmbedding(patch_size, embed_dim, dtype=policy,
                                              name="patch_embed")
        self.pos_embeder = FourierPositionEncoding(embed_dim, dtype=policy, name="pos_embeder")
        self.pos_drop = keras.layers.Dropout(drop_rate, dtype=policy, name="pos_drop")
        self.blocks = [XCABlock(num_heads, drop_path=drop_path_rate, **common, name=f"blocks_{i}")
                       for i in range(depth)]
        self.cls_attn_blocks = [
            ClassAttentionBlock(num_heads, tokens_norm=tokens_norm, **common,
                                name=f"cls_attn_blocks_{i}")
            for i in range(cls_attn_layers)
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=policy,
                                                    name="norm")

    def build(self, input_shape=None):
        if self.built:
            return
        check_rgb_images(input_shape)
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, self.embed_dim),
                                         initializer=TruncNormal(stddev=0.02))
        self.patch_embed.build((None, None, None, 3))
        self.pos_embeder.build((None, None, None, self.embed_dim))
        tokens = (None, None, self.embed_dim)
        for block in [*self.blocks, *self.cls_attn_blocks]:
            block.build(tokens)
        self.norm.build(tokens)
        self.pos_drop.build(tokens)
        self.built = True

    def _patch_tokens(self, images, training=None):
        """`(patch tokens with position encodings (B, N, E), grid_h, grid_w)`."""
        check_images(images)
        if not self.built:
            self.build(tuple(images.shape))
        grid = self.patch_embed(images, training=training)
        batch, grid_h, grid_w = ops.shape(grid)[0], ops.shape(grid)[1], ops.shape(grid)[2]
        x = ops.reshape(grid, (batch, grid_h * grid_w, self.embed_dim))
        x = self.pos_drop(x + ops.cast(self.pos_embeder(grid), x.dtype), training=training)
        return x, grid_h, grid_w

    def _xca_outputs(self, images, blocks, norm):
        """The patch tokens leaving the XCA blocks `blocks` (sorted indices)."""
        if blocks and not 0 <= blocks[0] <= blocks[-1] < len(self.blocks):
            raise ValueError(f"block indices must be in [0, {len(self.blocks) - 1}]; "
                             f"got {blocks}.")
        x, grid_h, grid_w = self._patch_tokens(images, training=False)
        outputs = []
        for i, block in enumerate(self.blocks[: blocks[-1] + 1] if blocks else []):
            x = block(x, grid_h=grid_h, grid_w=grid_w, training=False)
            if i in blocks:
                outputs.append(self.norm(x) if norm else x)
        return outputs

    def _tokens(self, images, training=None, return_attention=False):
        """All tokens after the class-attention blocks, `(B, 1 + N, E)`, before the norm."""
        x, grid_h, grid_w = self._patch_tokens(images, training=training)
        batch = ops.shape(x)[0]
        for block in self.blocks:
            x = block(x, grid_h=grid_h, grid_w=grid_w, training=training)
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (batch, 1, self.embed_dim))
        x = ops.concatenate([cls, x], axis=1)
        attn = None
        for block in self.cls_attn_blocks:
            x, attn = block(x, training=training, return_attention=True)
        return (x, attn) if return_attention else x

    def __call__(self, *args, **kwargs):
        # Checked before Keras wraps errors of `call` in its own report; the values of
        # NumPy pixels only (before Keras turns them into tensors: no device sync).
        if args:
            check_images(args[0])
        return super().__call__(*args, **kwargs)

    def call(self, images, training=None):
        return self.norm(self._tokens(images, training=training))[:, 0]

    def patch_grid(self, height, width):
        """`(rows, columns)` of the patch grid of `height x width` images (ints or tensors):
        each stride-2 convolution rounds up.

        Example:

        >>> XCiT(patch_size=16, embed_dim=32, depth=1, num_heads=4).patch_grid(32, 40)
        (2, 3)
        """
        for _ in range(len(self.patch_embed.widths)):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def forward_intermediates(self, images, n_last_blocks: int = 1,
                              return_attention: bool = False, *, blocks=None,
                              norm: bool = True):
        """One inference pass, as `VisionTransformer.forward_intermediates`.

        `"blocks"`: the normalised tokens `(B, 1 + N, E)` of the last class-attention block
        (`n_last_blocks` 0 or 1); with `return_attention`, `"attention"`: its class
        attention `(B, heads, 1, 1 + N)`. With `blocks` (0-based indices of the XCA
        blocks, which carry no class token: it joins in the class-attention blocks),
        `"blocks"` holds their patch tokens `(B, N, E)` instead, through the final norm
        unless `norm=False`, and the pass stops after the last of them.

        Example:

        >>> import numpy as np
        >>> model = XCiT(patch_size=16, embed_dim=32, depth=1, num_heads=4)
        >>> out = model.forward_intermediates(np.zeros((1, 32, 48, 3), "float32"), 1, True)
        >>> tuple(out["blocks"][0].shape), tuple(out["attention"].shape)
        ((1, 7, 32), (1, 4, 1, 7))
        """
        if blocks is not None:
            return {"blocks": self._xca_outputs(images, sorted(blocks), norm)}
        if n_last_blocks not in (0, 1):
            raise ValueError("an XCiT's tokens with a class token leave its last block only: "
                             f"n_last_blocks must be 0 or 1; got {n_last_blocks}.")
        tokens, attn = self._tokens(images, training=False, return_attention=True)
        result = {"blocks": [self.norm(tokens)] if n_last_blocks else []}
        if return_attention:
            result["attention"] = attn
        return result

    def compute_output_spec(self, images, training=None):
        return keras.KerasTensor((images.shape[0], self.embed_dim), dtype=self.compute_dtype)

    def get_last_selfattention(self, images):
        """The class attention of the last block: `(B, heads, 1, 1 + N)`, float32.

        XCiT's only token-to-token attention: the CLS query over [CLS, patch tokens]
        (its XCA blocks attend over channels). Row 0 has the layout of a ViT's
        `get_last_selfattention(x)[:, :, 0]`, so the attention-map tools work unchanged.

        Example:

        >>> import numpy as np
        >>> model = XCiT(patch_size=8, embed_dim=32, depth=1, num_heads=4)
        >>> tuple(model.get_last_selfattention(np.zeros((1, 32, 24, 3), "float32")).shape)
        (1, 4, 1, 13)
        """
        if not self.cls_attn_blocks:
            raise ValueError("this XCiT has no class-attention block to take attention from.")
        return self._tokens(images, training=False, return_attention=True)[1]

    def forward_features(self, images, training=None):
        """Every token after the final norm, `(B, 1 + N, E)`: CLS, then row-major patches.

        As a ViT's `forward_features`; the official model returns the CLS token only.
        The patch tokens here are those of the last class-attention block, which
        reproduces the official arithmetic (each block adds the normalised tokens to
        themselves, then doubles them).

        Example:

        >>> import numpy as np
        >>> model = XCiT(patch_size=16, embed_dim=32, depth=1, num_heads=4)
        >>> tuple(model.forward_features(np.zeros((1, 32, 48, 3), "float32")).shape)
        (1, 7, 32)
        """
        return self.norm(self._tokens(images, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "cls_attn_layers": self.cls_attn_layers,
            "eta": self.eta,
            "tokens_norm": self.tokens_norm,
        }


def xcit(arch: str = "xcit_small_12_p16", **kwargs) -> XCiT:
    """An official XCiT by its name (`xcit_small_12_p16`, `xcit_medium_24_p8`, ...).

    Example:

    >>> model = xcit("xcit_medium_24_p8")
    >>> model.embed_dim, model.depth, model.patch_size, model.eta
    (512, 24, 8, 1e-05)
    """
    if arch not in XCITS:
        raise ValueError(f"unknown XCiT '{arch}'; known: {', '.join(XCITS)}.")
    name = kwargs.pop("name", arch)
    return XCiT(**{**XCITS[arch], **kwargs}, name=name)
