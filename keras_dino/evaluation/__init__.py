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
from keras_dino.evaluation.dense_features import (
    FEATURE_KINDS,
    block_output,
    cls_features,
    feature_function,
    last_blocks_cls,
    mean_patch_features,
    patch_features,
)
from keras_dino.evaluation.feature_maps import (
    draw_correspondences,
    feature_images,
    foreground_mask,
    mutual_nearest_neighbours,
    pca_rgb,
    principal_components,
    upsample_grid,
)
from keras_dino.evaluation.feature_shards import (
    list_images,
    read_feature_shards,
    write_feature_shards,
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
    "FEATURE_KINDS",
    "FrameAttention",
    "LinearClassifier",
    "LinearProbe",
    "attention_input",
    "attention_resize_shape",
    "attention_segmentation_masks",
    "attention_threshold_mask",
    "attention_video",
    "block_output",
    "cls_attention_maps",
    "cls_features",
    "draw_correspondences",
    "evaluate_attention_segmentation",
    "evaluate_linear_probe",
    "evaluate_video_segmentation",
    "extract_features",
    "feature_function",
    "feature_images",
    "foreground_mask",
    "frame_attention",
    "generate_video",
    "image_attention_jaccard",
    "image_folder_arrays",
    "image_folder_dataset",
    "jaccard_index",
    "knn_accuracy",
    "knn_classifier",
    "l2_normalize",
    "labelled_arrays",
    "last_blocks_cls",
    "linear_features",
    "linear_recipe",
    "list_images",
    "load_linear_checkpoint",
    "load_pretrained_classifier",
    "mean_patch_features",
    "mutual_nearest_neighbours",
    "patch_features",
    "pca_rgb",
    "principal_components",
    "propagate_labels",
    "read_feature_shards",
    "read_frames",
    "save_attention_examples",
    "save_attention_images",
    "save_linear_checkpoint",
    "save_threshold_masks",
    "segment_video",
    "train_linear_probe",
    "train_transform",
    "upsample_grid",
    "upsample_nearest",
    "write_feature_shards",
    "write_video",
]
