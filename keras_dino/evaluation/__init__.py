"""Evaluation as in the paper (k-NN, linear probe, retrieval, copy detection, video and
attention segmentation) and the tools on features and attention maps."""

from keras_dino.evaluation.attention_maps import (
    attention_input,
    attention_resize_shape,
    attention_threshold_mask,
    cls_attention_maps,
    save_attention_examples,
    save_attention_images,
    save_threshold_masks,
    upsample_nearest,
)
from keras_dino.evaluation.attention_segmentation import (
    attention_segmentation_masks,
    evaluate_attention_segmentation,
    image_attention_jaccard,
    jaccard_index,
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
from keras_dino.evaluation.video_attention import (
    FrameAttention,
    attention_video,
    frame_attention,
    generate_video,
    read_frames,
    write_video,
)
from keras_dino.evaluation.video_segmentation import (
    evaluate_video_segmentation,
    propagate_labels,
    segment_video,
)

__all__ = [
    "EpochCosineSchedule",
    "FrameAttention",
    "LinearClassifier",
    "LinearProbe",
    "attention_input",
    "attention_resize_shape",
    "attention_segmentation_masks",
    "attention_threshold_mask",
    "attention_video",
    "cls_attention_maps",
    "evaluate_attention_segmentation",
    "evaluate_linear_probe",
    "evaluate_video_segmentation",
    "image_attention_jaccard",
    "image_folder_arrays",
    "image_folder_dataset",
    "extract_features",
    "frame_attention",
    "generate_video",
    "jaccard_index",
    "knn_accuracy",
    "knn_classifier",
    "l2_normalize",
    "labelled_arrays",
    "linear_features",
    "linear_recipe",
    "load_linear_checkpoint",
    "load_pretrained_classifier",
    "propagate_labels",
    "read_frames",
    "save_attention_examples",
    "save_attention_images",
    "save_linear_checkpoint",
    "save_threshold_masks",
    "segment_video",
    "train_linear_probe",
    "train_transform",
    "upsample_nearest",
    "write_video",
]
