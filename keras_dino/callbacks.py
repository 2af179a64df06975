"""Keras callbacks that configure and report DINO's teacher EMA and centering.

The updates themselves run inside the compiled training step, exactly once per step:
a batch-level callback fires once per `steps_per_execution` chunk and, on JAX, forces a
state sync, so it cannot do them. These callbacks carry the configuration into the
step when training starts and put the current values in the epoch logs.
"""

import math

import keras
import numpy as np
from keras import ops


class TeacherEMA(keras.callbacks.Callback):
    """The teacher's exponential moving average of the student, applied every step.

    `teacher = m * teacher + (1 - m) * student` after each optimizer step, with `m`
    following a cosine from `momentum_teacher` to `final_momentum` over the run.

    Args:
        momentum_teacher: start value; defaults to the model's `momentum_teacher`.
        final_momentum: end value, 1.0 officially.

    Example:

    ```python
    model.fit(ds, epochs=100, callbacks=[keras_dino.callbacks.TeacherEMA(0.996)])
    ```
    """

    def __init__(self, momentum_teacher: float | None = None, final_momentum: float = 1.0):
        super().__init__()
        for name, value in (("momentum_teacher", momentum_teacher),
                            ("final_momentum", final_momentum)):
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"TeacherEMA: {name} must be in [0, 1], got {value}")
        self.momentum_teacher = momentum_teacher
        self.final_momentum = final_momentum

    def on_train_begin(self, logs=None):
        schedules = self.model.schedules
        if self.momentum_teacher is not None:
            schedules.momentum_teacher = float(self.momentum_teacher)
        schedules.final_momentum_teacher = float(self.final_momentum)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            step = float(ops.convert_to_numpy(self.model.optimizer.iterations))
            logs["momentum"] = float(self.model.schedules.momentum(max(step - 1, 0)))


class Centering(keras.callbacks.Callback):
    """The running center of the teacher outputs, updated every step.

    `center = m * center + (1 - m) * mean(teacher logits over the global batch)`.

    Args:
        center_momentum: `m`; defaults to the model's `center_momentum` (0.9).

    Example:

    ```python
    model.fit(ds, callbacks=[keras_dino.callbacks.Centering(center_momentum=0.9)])
    ```
    """

    def __init__(self, center_momentum: float | None = None):
        super().__init__()
        self.center_momentum = center_momentum

    def on_train_begin(self, logs=None):
        if self.center_momentum is not None:
            self.model.center_momentum = float(self.center_momentum)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            center = ops.convert_to_numpy(self.model.center)
            logs["center_momentum"] = self.model.center_momentum
            logs["center_norm"] = float(np.linalg.norm(center))


class NonFiniteLossError(FloatingPointError):
    """The DINO loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with a clear error when the loss stops being finite.

    Raising (rather than setting `stop_training`) ends `fit` before `on_epoch_end`, so
    `ModelCheckpoint` and `BackupAndRestore` keep the last good checkpoint instead of
    writing the diverged weights over it.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(
                f"the DINO loss is {loss} at training step {step} (epoch {self._epoch + 1}, "
                f"batch {batch + 1}); training stopped. Checkpoints written before this "
                "step were kept. Lower the learning rate, raise warmup, or check the data."
            )
