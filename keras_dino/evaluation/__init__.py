"""Evaluation as in the paper: weighted k-NN, linear probe, attention maps."""

from keras_dino.evaluation.attention_maps import (
    attention_input,
    attention_threshold_mask,
    cls_attention_maps,
    save_attention_examples,
    save_attention_images,
    save_threshold_masks,
    upsample_nearest,
)
from keras_dino.evaluation.classifier import linear_recipe, load_pretrained_classifier
from keras_dino.evaluation.datasets import (
    image_folder_arrays,
    image_folder_dataset,
    labelled_arrays,
    train_transform,
)
from keras_dino.evaluation.features import extract_features
from keras_dino.evaluation.knn import knn_accuracy, knn_classifier, l2_normalize
from keras_dino.evaluation.linear import (
    EpochCosineSchedule,
    LinearClassifier,
    LinearProbe,
    evaluate_linear_probe,
    linear_features,
    load_linear_checkpoint,
    save_linear_checkpoint,
    train_linear_probe,
)

__all__ = [
    "EpochCosineSchedule",
    "LinearClassifier",
    "LinearProbe",
    "attention_input",
    "attention_threshold_mask",
    "cls_attention_maps",
    "evaluate_linear_probe",
    "image_folder_arrays",
    "image_folder_dataset",
    "extract_features",
    "knn_accuracy",
    "knn_classifier",
    "l2_normalize",
    "labelled_arrays",
    "linear_features",
    "linear_recipe",
    "load_linear_checkpoint",
    "load_pretrained_classifier",
    "save_attention_examples",
    "save_attention_images",
    "save_linear_checkpoint",
    "save_threshold_masks",
    "train_linear_probe",
    "train_transform",
    "upsample_nearest",
]
