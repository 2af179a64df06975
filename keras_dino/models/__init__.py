"""The networks: Vision Transformer, ResNet and XCiT backbones, the DINO head, the multi-crop wrapper.

The released weights are described by `presets` (`list_presets()`); `keras_dino.load_pretrained`
loads them.

The `DINO` training model that pairs them is `keras_dino.DINO` (`keras_dino.training.dino`).
"""

from keras_dino.models.backbones import build_backbone
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper, group_crops_by_resolution
from keras_dino.models.presets import PRESETS, Preset, get_preset, list_presets
from keras_dino.models.resnet import RESNETS, ResNet
from keras_dino.models.vision_transformer import (
    ARCHITECTURES,
    VisionTransformer,
    vit_base,
    vit_small,
    vit_tiny,
)
from keras_dino.models.xcit import XCITS, XCiT, xcit

__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "MultiCropWrapper",
    "PRESETS",
    "Preset",
    "RESNETS",
    "ResNet",
    "VisionTransformer",
    "XCITS",
    "XCiT",
    "build_backbone",
    "get_preset",
    "group_crops_by_resolution",
    "list_presets",
    "vit_base",
    "vit_small",
    "vit_tiny",
    "xcit",
]

