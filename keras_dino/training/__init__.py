"""Training: the `DINO` model, its schedules, the official optimizers, cross-replica helpers."""

from keras_dino.training.optimizers import LARS, SGD, AdamW, DINOOptimizer
from keras_dino.training.schedules import DINOSchedules, cosine_scheduler, teacher_temp_schedule

__all__ = [
    "LARS",
    "SGD",
    "AdamW",
    "DINOOptimizer",
    "DINOSchedules",
    "cosine_scheduler",
    "teacher_temp_schedule",
]
