"""Training: the `DINO` model and the distribution a training script sets up.

The optimizers and schedules it compiles with live in `keras_dino.optim`; they are
re-exported here, where a training script looks for them.
"""

from keras_dino.optim import (
    LARS,
    SGD,
    AdamW,
    DINOOptimizer,
    DINOSchedules,
    cosine_scheduler,
    teacher_temp_schedule,
)

__all__ = [
    "LARS",
    "SGD",
    "AdamW",
    "DINOOptimizer",
    "DINOSchedules",
    "cosine_scheduler",
    "teacher_temp_schedule",
]
