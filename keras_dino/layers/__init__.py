"""Building blocks of the DINO Vision Transformer and head."""

from keras_dino.layers.attention import MultiHeadSelfAttention
from keras_dino.layers.drop_path import DropPath
from keras_dino.layers.initializers import TruncNormal
from keras_dino.layers.patch_embedding import PatchEmbedding
from keras_dino.layers.position_embedding import bicubic_resize_matrix, interpolate_pos_encoding
from keras_dino.layers.transformer_block import MLP, TransformerBlock
from keras_dino.layers.weight_norm_dense import WeightNormDense

__all__ = [
    "MLP",
    "DropPath",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "TransformerBlock",
    "TruncNormal",
    "WeightNormDense",
    "bicubic_resize_matrix",
    "interpolate_pos_encoding",
]
