"""The DINO Vision Transformer, numerically identical to the official model."""

import numbers

import keras
from keras import ops

from keras_dino.layers.initializers import TruncNormal
from keras_dino.layers.patch_embedding import PatchEmbedding
from keras_dino.layers.position_embedding import interpolate_pos_encoding
from keras_dino.layers.transformer_block import LAYER_NORM_EPSILON, TransformerBlock
from keras_dino.models.image_inputs import check_images, check_rgb_images


@keras.saving.register_keras_serializable(package="keras_dino")
class VisionTransformer(keras.Model):
    """Vision Transformer backbone returning the CLS embedding, as in official DINO.

    Takes NHWC images of any height and width that are multiples of `patch_size`
    (normalised as by `keras_dino.preprocess_images`); the position embeddings,
    learned for `img_size`, are interpolated exactly as the official
    `interpolate_pos_encoding` does. The official method names are kept:
    `get_last_selfattention` and `get_intermediate_layers`.

    Args:
        img_size: training resolution, which fixes the number of position embeddings.
        patch_size: side of the square patches.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden size relative to `embed_dim`.
        qkv_bias: bias in the qkv projections (True for every DINO model).
        qk_scale: override of the attention scale.
        drop_rate: dropout after the projections and the position embedding.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increased linearly to this rate over the blocks.
        use_fused_attention: use `keras.ops.dot_product_attention` in the blocks.
        remat: rematerialise the blocks in training (`keras.remat`): their
            activations are recomputed in the backward pass instead of kept, trading
            about a third more compute for memory, so that ViT-S/8 or ViT-B/16 fit
            larger batches. Outputs and gradients are unchanged; the drop-path masks
            are drawn outside the recomputed part so both passes use the same ones.
            Dropout (`drop_rate`, `attn_drop_rate`) cannot be combined with it.
        num_register_tokens: learned register tokens (Darcet et al., "Vision
            Transformers Need Registers", 2024), the weight `register_tokens`
            `(1, R, E)`: inserted after the class token once the position embeddings are
            added (as DINOv2: the registers get no position embedding). Every token
            sequence of the model is then `[CLS, R registers, patches]`;
            `num_prefix_tokens` (1 + R) says where the patches start. 0 (default) is the
            official DINO model.

    Token layout: `forward_features`, `get_intermediate_layers` and the rows and columns
    of `get_last_selfattention` hold `num_prefix_tokens` tokens (the class token, then the
    registers) followed by the `H // patch_size * W // patch_size` patches, row-major.
    Height and width may also be unknown until the graph runs (a TensorFlow function
    traced with `None` spatial dimensions, as the ONNX export does): the position
    embeddings are then interpolated in the graph.

    Example:

    >>> import numpy as np
    >>> model = vit_tiny(patch_size=16)
    >>> images = np.zeros((2, 64, 96, 3), "float32")  # any H, W multiples of 16
    >>> tuple(model(images).shape)
    (2, 192)
    >>> tuple(model.get_last_selfattention(images).shape)
    (2, 3, 25, 25)
    >>> registers = vit_tiny(patch_size=16, depth=1, num_register_tokens=4)
    >>> registers.num_prefix_tokens, tuple(registers.forward_features(images).shape)
    (5, (2, 29, 192))
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_fused_attention: bool = False,
        remat: bool = False,
        num_register_tokens: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 < patch_size <= img_size:
            raise ValueError(f"patch_size must be in [1, img_size={img_size}]; got {patch_size}.")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.qk_scale = qk_scale
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.use_fused_attention = use_fused_attention
        if remat and (drop_rate or attn_drop_rate):
            raise ValueError(
                "remat=True cannot replay dropout: its recomputation would draw new "
                f"masks (drop_rate={drop_rate}, attn_drop_rate={attn_drop_rate}); "
                "set both to 0 (DINO uses 0) or remat=False. Drop path is supported."
            )
        self.remat = remat
        if (isinstance(num_register_tokens, bool)
                or not isinstance(num_register_tokens, numbers.Integral)
                or num_register_tokens < 0):
            raise ValueError(
                f"num_register_tokens must be a non-negative integer; got {num_register_tokens!r}."
            )
        self.num_register_tokens = int(num_register_tokens)
        # Tokens before the patches in every token sequence: the class token, the registers.
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.num_patches = (img_size // patch_size) ** 2
        policy = self.dtype_policy

        self.patch_embed = PatchEmbedding(patch_size, embed_dim, dtype=policy, name="patch_embed")
        self.pos_drop = keras.layers.Dropout(drop_rate, dtype=policy, name="pos_drop")
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = [
            TransformerBlock(
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rate,
                use_fused_attention=use_fused_attention,
                dtype=policy,
                name=f"blocks_{i}",
            )
            for i, rate in enumerate(rates)
        ]
        self.norm = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, dtype=policy, name="norm"
        )

    def build(self, input_shape=None):
        if self.built:
            return
        # Checked before any weight exists, so a wrong call leaves the model unbuilt.
        check_rgb_images(input_shape)
        channels = 3
        self.cls_token = self.add_weight(
            name="cls_token", shape=(1, 1, self.embed_dim), initializer=TruncNormal(stddev=0.02)
        )
        self.pos_embed = self.add_weight(
            name="pos_embed",
            shape=(1, self.num_patches + 1, self.embed_dim),
            initializer=TruncNormal(stddev=0.02),
        )
        if self.num_register_tokens:
            self.register_tokens = self.add_weight(
                name="register_tokens",
                shape=(1, self.num_register_tokens, self.embed_dim),
                initializer=keras.initializers.RandomNormal(stddev=1e-6),  # as DINOv2
            )
        self.patch_embed.build((None, self.img_size, self.img_size, channels))
        token_shape = (None, self.num_patches + self.num_prefix_tokens, self.embed_dim)
        for block in self.blocks:
            block.build(token_shape)
        self.norm.build(token_shape)
        self.pos_drop.build(token_shape)
        self.built = True

    # The official model's methods, channels-last.
    def patch_grid(self, height, width):
        """`(rows, columns)` of the patch grid of `height x width` images (ints or tensors).

        Example:

        >>> vit_tiny(patch_size=16, depth=1).patch_grid(64, 96)
        (4, 6)
        """
        return height // self.patch_size, width // self.patch_size

    def _grid(self, images):
        check_images(images)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:  # known when the graph runs (TensorFlow)
            shape = ops.shape(images)
            height, width = shape[1], shape[2]
            if height is None or width is None:  # a symbolic Keras input: never known
                raise ValueError(
                    "VisionTransformer needs the image height and width to be known when "
                    f"the model is built (got shape {tuple(images.shape)}): position "
                    "embeddings are interpolated per grid size. Give the input a static "
                    "spatial shape."
                )
        return self.patch_grid(height, width)

    def interpolate_pos_encoding(self, grid_h, grid_w):
        """Position embeddings `(1, 1 + grid_h * grid_w, E)` for a patch grid.

        For the class token and the patches (registers have none); `grid_h` and `grid_w`
        are ints, or scalar tensors in a graph traced with a dynamic image size.

        Example:

        >>> model = vit_tiny(patch_size=16, depth=1)
        >>> tuple(model.interpolate_pos_encoding(4, 6).shape)
        (1, 25, 192)
        """
        if not self.built:
            self.build()
        pos_embed = ops.convert_to_tensor(self.pos_embed)
        return interpolate_pos_encoding(pos_embed, grid_h, grid_w)

    def prepare_tokens(self, images, training=None):
        """`[CLS, registers, patches]`: position embeddings added to the class token and
        the patches, then the register tokens inserted after the class token.

        Example:

        >>> import numpy as np
        >>> model = vit_tiny(patch_size=16, depth=1)
        >>> tuple(model.prepare_tokens(np.zeros((2, 64, 96, 3), "float32")).shape)
        (2, 25, 192)
        """
        grid_h, grid_w = self._grid(images)
        if not self.built:  # e.g. get_last_selfattention called before any forward pass
            self.build(tuple(images.shape))
        x = self.patch_embed(images)
        batch = ops.shape(x)[0]
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (batch, 1, self.embed_dim))
        x = ops.concatenate([cls, x], axis=1)
        x = x + ops.cast(self.interpolate_pos_encoding(grid_h, grid_w), x.dtype)
        if self.num_register_tokens:
            registers = ops.broadcast_to(ops.cast(self.register_tokens, x.dtype),
                                         (batch, self.num_register_tokens, self.embed_dim))
            x = ops.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        return self.pos_drop(x, training=training)

    def _run_blocks(self, x, training=None):
        for block in self.blocks:
            if self.remat and training:
                x = _rematerialised(block, x, block.keep_masks(x, training=True))
            else:
                x = block(x, training=training)
        return x

    def __call__(self, *args, **kwargs):
        # Checked before Keras wraps errors of `call` in its own report; the values of
        # NumPy pixels only (before Keras turns them into tensors: no device sync).
        if args:
            check_images(args[0])
        return super().__call__(*args, **kwargs)

    def call(self, images, training=None):
        x = self.prepare_tokens(images, training=training)
        return self.norm(self._run_blocks(x, training=training))[:, 0]

    def forward_features(self, images, training=None):
        """All normalised output tokens `(B, P + N, E)`, class token first.

        `P = num_prefix_tokens` (the class token and the registers); token
        `P + r * grid_w + c` is the patch in row `r`, column `c`.

        Example:

        >>> import numpy as np
        >>> model = vit_tiny(patch_size=16, depth=1)
        >>> tokens = model.forward_features(np.zeros((2, 64, 96, 3), "float32"))
        >>> tuple(tokens.shape), tuple(tokens[:, model.num_prefix_tokens:].shape)  # all, patches
        ((2, 25, 192), (2, 24, 192))
        """
        x = self.prepare_tokens(images, training=training)
        return self.norm(self._run_blocks(x, training=training))

    def get_last_selfattention(self, images):
        """Attention weights of the last block, `(B, heads, P + N, P + N)`, in float32.

        Row 0 is the class token's attention: `attn[:, :, 0, P:]` (`P =
        num_prefix_tokens`) reshaped to `(B, heads, H // patch_size, W // patch_size)`
        gives DINO's attention maps.

        Example:

        >>> import numpy as np
        >>> model = vit_tiny(patch_size=16, depth=1)
        >>> attn = model.get_last_selfattention(np.zeros((2, 64, 96, 3), "float32"))
        >>> tuple(attn.shape)
        (2, 3, 25, 25)
        >>> p = model.num_prefix_tokens
        >>> maps = keras.ops.convert_to_numpy(attn)[:, :, 0, p:].reshape(2, 3, 4, 6)
        """
        return self.forward_intermediates(images, n_last_blocks=0, return_attention=True)[
            "attention"]

    def get_intermediate_layers(self, images, n: int = 1):
        """The normalised tokens `(B, P + N, E)` output by each of the last `n` blocks.

        Returns a list of `n` tensors, the last block's last (as the official method).

        Example:

        >>> import numpy as np
        >>> model = vit_tiny(patch_size=16, depth=2)
        >>> layers = model.get_intermediate_layers(np.zeros((2, 64, 96, 3), "float32"), n=2)
        >>> len(layers), tuple(layers[-1].shape)
        (2, (2, 25, 192))
        """
        if not 1 <= n <= self.depth:
            raise ValueError(f"n must be in [1, {self.depth}]; got {n}.")
        return self.forward_intermediates(images, n_last_blocks=n)["blocks"]

    def forward_intermediates(self, images, n_last_blocks: int = 1,
                              return_attention: bool = False, *, blocks=None,
                              norm: bool = True):
        """One inference pass: what every feature of the model is read from.

        Returns a dict: `"blocks"`, the tokens `(B, P + N, E)` output by each of the last
        `n_last_blocks` blocks (the last block's last, as `get_intermediate_layers`;
        `P = num_prefix_tokens`), or by the blocks of the 0-based indices `blocks`, in
        order, through the final norm unless `norm=False`; and with `return_attention`,
        `"attention"`: the last block's attention `(B, heads, P + N, P + N)` (as
        `get_last_selfattention`). The pass stops after the last block it needs. The
        exports trace this method, so they compute what the model computes.

        Example:

        >>> import numpy as np
        >>> model = vit_tiny(patch_size=16, depth=2)
        >>> out = model.forward_intermediates(np.zeros((1, 32, 48, 3), "float32"), 2, True)
        >>> len(out["blocks"]), tuple(out["attention"].shape)
        (2, (1, 3, 7, 7))
        """
        if blocks is None:
            if not 0 <= n_last_blocks <= self.depth:
                raise ValueError(f"n_last_blocks must be in [0, {self.depth}]; "
                                 f"got {n_last_blocks}.")
            blocks = range(self.depth - n_last_blocks, self.depth)
        blocks = sorted(blocks)
        if blocks and not 0 <= blocks[0] <= blocks[-1] < self.depth:
            raise ValueError(f"block indices must be in [0, {self.depth - 1}]; got {blocks}.")
        last = self.depth - 1 if return_attention else (blocks[-1] if blocks else -1)
        x = self.prepare_tokens(images, training=False)
        result = {"blocks": []}
        for i, block in enumerate(self.blocks[: last + 1]):
            if return_attention and i == self.depth - 1:
                x, result["attention"] = block(x, training=False, return_attention=True)
            else:
                x = block(x, training=False)
            if i in blocks:
                result["blocks"].append(self.norm(x) if norm else x)
        return result

    def compute_output_spec(self, images, training=None):
        return keras.KerasTensor((images.shape[0], self.embed_dim), dtype=self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qk_scale": self.qk_scale,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "use_fused_attention": self.use_fused_attention,
            "remat": self.remat,
            "num_register_tokens": self.num_register_tokens,
        }


def _rematerialised(block, x, keep_masks):
    """`block(x)` in training whose activations are recomputed for the gradient."""
    if keep_masks is None:
        return keras.remat(lambda tokens: block(tokens, training=True))(x)
    return keras.remat(
        lambda tokens, attn_mask, mlp_mask: block(
            tokens, training=True, keep_masks=(attn_mask, mlp_mask)
        )
    )(x, *keep_masks)


def _factory(embed_dim, depth, num_heads, doc_name):
    def make(patch_size: int = 16, **kwargs) -> VisionTransformer:
        # The recipe's values are defaults: e.g. `depth=2` gives a shallow test model.
        config = dict(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4,
            qkv_bias=True,
            name=f"{doc_name}{patch_size}",
        )
        config.update(kwargs)
        return VisionTransformer(patch_size=patch_size, **config)

    make.__name__ = doc_name.rstrip("_")
    make.__doc__ = f"""The official `{make.__name__}`: embed dim {embed_dim}, depth {depth}, {num_heads} heads.

    Args:
        patch_size: 16 and 8 are the released sizes; any size dividing the images works.
        **kwargs: other `VisionTransformer` arguments (`drop_path_rate`, `img_size`, ...);
            they may also override the recipe's `depth`, `embed_dim` or `num_heads`.

    Example:

    >>> model = {make.__name__}(patch_size=8, drop_path_rate=0.1)
    >>> model.embed_dim
    {embed_dim}
    """
    return make


vit_tiny = _factory(192, 12, 3, "vit_tiny_")
vit_small = _factory(384, 12, 6, "vit_small_")
vit_base = _factory(768, 12, 12, "vit_base_")

ARCHITECTURES = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}
