"""The official DINO optimizers with torch's arithmetic, and the schedules that drive them.

`AdamW`, `SGD` and `LARS` take their learning rate, weight decay and last-layer freezing
from a schedule object (`DINOSchedules` for pre-training, the linear probe's epoch
cosine); `DINOSchedules` also holds the teacher's momentum and temperature. Keras only:
training and evaluation both build on it.
"""

from keras_dino.optim.optimizers import LARS, SGD, AdamW, DINOOptimizer
from keras_dino.optim.schedules import DINOSchedules, cosine_scheduler, teacher_temp_schedule

__all__ = [
    "LARS",
    "SGD",
    "AdamW",
    "DINOOptimizer",
    "DINOSchedules",
    "cosine_scheduler",
    "teacher_temp_schedule",
]
