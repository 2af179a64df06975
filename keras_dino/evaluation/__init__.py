"""Evaluation as in the paper: weighted k-NN, linear probe, attention maps."""

from keras_dino.evaluation.attention_maps import (
    attention_threshold_mask,
    cls_attention_maps,
    save_attention_images,
    upsample_nearest,
)
from keras_dino.evaluation.datasets import eval_transform, image_folder_dataset
from keras_dino.evaluation.features import extract_features
from keras_dino.evaluation.knn import knn_classifier, l2_normalize
from keras_dino.evaluation.linear import (
    EpochCosineSchedule,
    LinearClassifier,
    LinearProbe,
    linear_features,
)

__all__ = [
    "EpochCosineSchedule",
    "LinearClassifier",
    "LinearProbe",
    "attention_threshold_mask",
    "cls_attention_maps",
    "eval_transform",
    "image_folder_dataset",
    "extract_features",
    "knn_classifier",
    "l2_normalize",
    "linear_features",
    "save_attention_images",
    "upsample_nearest",
]
