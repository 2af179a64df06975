"""Building blocks of the DINO backbones (ViT, ResNet, XCiT) and head."""

from keras_dino.layers.attention import MultiHeadSelfAttention, QKVAttention
from keras_dino.layers.drop_path import DropPath
from keras_dino.layers.initializers import TruncNormal
from keras_dino.layers.patch_embedding import PatchEmbedding
from keras_dino.layers.position_embedding import bicubic_resize_matrix, interpolate_pos_encoding
from keras_dino.layers.transformer_block import MLP, TransformerBlock
from keras_dino.layers.weight_norm_dense import WeightNormDense
from keras_dino.layers.xcit_attention import ClassAttention, CrossCovarianceAttention
from keras_dino.layers.xcit_blocks import (
    ClassAttentionBlock,
    ConvPatchEmbedding,
    FourierPositionEncoding,
    LocalPatchInteraction,
    XCABlock,
)

__all__ = [
    "MLP",
    "ClassAttention",
    "ClassAttentionBlock",
    "ConvPatchEmbedding",
    "CrossCovarianceAttention",
    "FourierPositionEncoding",
    "LocalPatchInteraction",
    "XCABlock",
    "DropPath",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "QKVAttention",
    "TransformerBlock",
    "TruncNormal",
    "WeightNormDense",
    "bicubic_resize_matrix",
    "interpolate_pos_encoding",
]
