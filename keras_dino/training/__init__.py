"""Training: the `DINO` model, its hyper-parameters and the distribution a training
script sets up.

The optimizers and schedules it compiles with live in `keras_dino.optim`; they are
re-exported here, where a training script looks for them, on first use: importing
`keras_dino.training.hparams` (what the command-line tool defines its flags from) imports
no Keras.
"""

import importlib

__all__ = [
    "LARS",
    "SGD",
    "AdamW",
    "DINOConfig",
    "DINOOptimizer",
    "DINOSchedules",
    "cosine_scheduler",
    "teacher_temp_schedule",
]


def __getattr__(name):
    if name == "DINOConfig":
        return importlib.import_module("keras_dino.training.hparams").DINOConfig
    if name in __all__:
        return getattr(importlib.import_module("keras_dino.optim"), name)
    raise AttributeError(f"module 'keras_dino.training' has no attribute {name!r}")
