"""DINO's per-iteration schedules: learning rate, weight decay, teacher momentum and
temperature, computed inside the compiled step from the iteration counter.

`cosine_scheduler` is the official numpy recipe (used to check and to document);
`DINOSchedules` evaluates the same values with `keras.ops` from a step tensor, so the
schedules follow the optimizer's own counter on every backend and under
`steps_per_execution > 1` without any host round trip.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np
from keras import ops


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """The official per-iteration schedule: linear warm-up, then cosine to `final_value`.

    Example:

    >>> cosine_scheduler(1e-3, 1e-6, epochs=2, niter_per_ep=3, warmup_epochs=1).round(6).tolist()
    [0.0, 0.0005, 0.001, 0.001, 0.00075, 0.000251]
    """
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_epochs > 0 else []
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, schedule))


def teacher_temp_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int, epochs: int
) -> np.ndarray:
    """The official per-epoch teacher temperature: linear warm-up, then constant."""
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(epochs - warmup_teacher_temp_epochs) * teacher_temp,
        )
    )


def _linspace_at(index, start, stop, num):
    """`np.linspace(start, stop, num)[index]` for a float tensor `index < num`."""
    if num <= 1:
        return ops.full_like(index, start)
    return start + (stop - start) * index / float(num - 1)


def _cosine_at(step, base, final, total, warmup, start_warmup=0.0):
    """`cosine_scheduler(...)[step]` for a float32 step tensor (clamped to the end)."""
    step = ops.minimum(step, float(total - 1))
    decay_len = float(total - warmup)
    cosine = final + 0.5 * (base - final) * (
        1.0 + ops.cos(math.pi * ops.maximum(step - warmup, 0.0) / decay_len)
    )
    if warmup <= 0:
        return cosine
    warm = _linspace_at(step, start_warmup, base, warmup)
    return ops.where(step < warmup, warm, cosine)


@dataclasses.dataclass
class DINOSchedules:
    """All the per-iteration values of a DINO run, as functions of the step.

    Built from a DINO's config (`DINOSchedules.from_config`), where the settings and their
    defaults are written. `steps_per_epoch` must be set (it is, at the start of `fit`)
    before the values are evaluated; `base_lr` is the learning rate already scaled by
    `global batch / 256`.

    Example:

    >>> from keras_dino.training.hparams import DINOConfig
    >>> s = DINOSchedules.from_config(DINOConfig(lr=1e-3, epochs=2, warmup_epochs=1), 3)
    >>> round(float(s.lr(4)), 6)
    0.00075
    """

    base_lr: float
    min_lr: float
    epochs: int
    warmup_epochs: int
    weight_decay: float
    weight_decay_end: float
    momentum_teacher: float
    final_momentum_teacher: float
    warmup_teacher_temp: float
    teacher_temp: float
    warmup_teacher_temp_epochs: int
    freeze_last_layer: int
    steps_per_epoch: int | None = None

    @classmethod
    def from_config(cls, config, steps_per_epoch: int | None = None) -> "DINOSchedules":
        """The schedules of a `keras_dino.training.hparams.DINOConfig`.

        Every schedule setting is the config's field of the same name; `base_lr` starts
        as the config's `lr`, scaled by the global batch when training starts.
        `steps_per_epoch` counts optimizer steps.

        Example:

        >>> from keras_dino.training.hparams import DINOConfig
        >>> config = DINOConfig(lr=1e-3, epochs=2, warmup_epochs=1)
        >>> round(float(DINOSchedules.from_config(config, steps_per_epoch=3).lr(4)), 6)
        0.00075
        """
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                  if f.name not in ("base_lr", "steps_per_epoch") and hasattr(config, f.name)}
        return cls(**values, base_lr=config.lr, steps_per_epoch=steps_per_epoch)

    def traced_values(self) -> tuple:
        """The settings a traced training step holds as constants.

        `base_lr` is left out: the step sets it from the batch's shape while it is traced,
        and a new shape traces a new step anyway.
        """
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if f.name != "base_lr")

    def _check(self):
        if not self.steps_per_epoch:
            raise ValueError(
                "the DINO schedules need the number of steps per epoch; fit() sets it from "
                "the data, or pass steps_per_epoch= to fit (e.g. for an infinite dataset)."
            )
        return self.epochs * self.steps_per_epoch

    @staticmethod
    def _step(step):
        return ops.cast(ops.convert_to_tensor(step), "float32")

    def epoch(self, step):
        self._check()
        return ops.floor(self._step(step) / float(self.steps_per_epoch))

    def lr(self, step):
        total = self._check()
        warmup = self.warmup_epochs * self.steps_per_epoch
        return _cosine_at(self._step(step), self.base_lr, self.min_lr, total, warmup)

    def wd(self, step):
        total = self._check()
        return _cosine_at(self._step(step), self.weight_decay, self.weight_decay_end, total, 0)

    def momentum(self, step):
        total = self._check()
        return _cosine_at(
            self._step(step), self.momentum_teacher, self.final_momentum_teacher, total, 0
        )

    def one_minus_momentum(self, step):
        """`1 - momentum(step)` computed without cancellation (the EMA's weight of the
        student: 0.0067 at momentum 0.9933 loses 1e-5 of its value as `1 - m` in float32)."""
        total = self._check()
        step = ops.minimum(self._step(step), float(total - 1))
        final_gap = 1.0 - self.final_momentum_teacher
        span = self.final_momentum_teacher - self.momentum_teacher
        return final_gap + 0.5 * span * (1.0 + ops.cos(math.pi * step / float(total)))

    def teacher_temperature(self, step):
        epoch = ops.minimum(self.epoch(step), float(self.epochs - 1))
        warm = _linspace_at(
            epoch, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs
        )
        return ops.where(epoch < self.warmup_teacher_temp_epochs, warm, self.teacher_temp)

    def last_layer_trains(self, step):
        """False while the head's last layer is frozen (epoch < freeze_last_layer)."""
        return self.epoch(step) >= float(self.freeze_last_layer)


def check_epoch_of_whole_steps(steps_per_epoch: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps per epoch of `steps_per_epoch` batches, `k` batches a step.

    >>> check_epoch_of_whole_steps(6, 2)
    3
    """
    steps, k = int(steps_per_epoch), int(gradient_accumulation_steps)
    if steps % k:
        raise ValueError(
            f"an epoch of {steps} batches is not a whole number of optimizer steps with "
            f"gradient_accumulation_steps={k}: make the steps per epoch a multiple of {k} "
            f"(e.g. steps_per_epoch={max(steps // k, 1) * k})."
        )
    return steps // k


class ScheduleSetup(keras.callbacks.Callback):
    """Fixes a `DINO`'s schedules' steps per epoch from `fit`, and its resume point.

    `fit` counts batches; with gradient accumulation the schedules count optimizer steps,
    one every `gradient_accumulation_steps` batches. `DINO.fit` adds this callback first
    among the callbacks; it is not meant to be added by hand.
    """

    def on_train_begin(self, logs=None):
        model = self.model
        self._warn_on_a_schedule_that_fit_outruns(model.config)
        steps = model.config.steps_per_epoch or self.params.get("steps")
        if not steps:
            raise ValueError(
                "DINO needs the number of steps per epoch for its schedules, and fit could "
                "not tell it (an infinite or unsized dataset): pass steps_per_epoch= to fit."
            )
        iterations = check_epoch_of_whole_steps(steps, model.config.gradient_accumulation_steps)
        model.schedules.steps_per_epoch = iterations
        # The step holds the schedules' settings as constants: trace a new one only when
        # they changed since the current step was made (a second `fit` reuses it).
        traced = model.schedules.traced_values()
        if traced != getattr(model, "_schedules_traced", None):
            model.make_train_function(force=True)
            model._schedules_traced = traced
        if model._resume_epoch and int(ops.convert_to_numpy(model.optimizer.iterations)) == 0:
            model.optimizer.iterations.assign(model._resume_epoch * iterations)

    def _warn_on_a_schedule_that_fit_outruns(self, config):
        """A `UserWarning` when `fit` does not run the schedules the model was built for:
        more epochs than its `epochs` (the schedules hold their final values after), or
        another number of steps an epoch than its `steps_per_epoch` (they would end early
        or late)."""
        fit_steps, fit_epochs = self.params.get("steps"), self.params.get("epochs")
        if config.steps_per_epoch and fit_steps and fit_steps != config.steps_per_epoch:
            warnings.warn(
                f"fit runs {fit_steps} steps per epoch, but the schedules count "
                f"{config.steps_per_epoch} (steps_per_epoch={config.steps_per_epoch} of the "
                "model): lr, weight decay, teacher momentum and temperature would follow "
                "other epochs than the run's. Leave steps_per_epoch out of the model (fit's "
                "is taken) or give both the same value.", UserWarning, stacklevel=2)
        if fit_epochs and fit_epochs > config.epochs:
            warnings.warn(
                f"fit(epochs={fit_epochs}) runs past the schedules of the model "
                f"(epochs={config.epochs}): after epoch {config.epochs} the lr, weight decay, "
                "teacher momentum and temperature hold their final values. Give the model "
                f"epochs={fit_epochs}, or leave epochs out of fit (it takes the model's).",
                UserWarning, stacklevel=2)
