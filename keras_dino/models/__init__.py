"""The DINO models: Vision Transformer backbones, the DINO head and the multi-crop wrapper."""

from keras_dino.models.dino import DINO
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper, group_crops_by_resolution
from keras_dino.models.vision_transformer import (
    ARCHITECTURES,
    VisionTransformer,
    vit_base,
    vit_small,
    vit_tiny,
)

__all__ = [
    "ARCHITECTURES",
    "DINO",
    "DINOHead",
    "MultiCropWrapper",
    "VisionTransformer",
    "group_crops_by_resolution",
    "vit_base",
    "vit_small",
    "vit_tiny",
]
