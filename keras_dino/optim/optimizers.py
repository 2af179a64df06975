"""The official DINO optimizers with torch's arithmetic, on every backend.

DINO needs what Keras optimizers do not give: a weight decay that changes every
iteration (and is not frozen at trace time on JAX), decay skipped exactly for biases and
1-D tensors of the official model, per-parameter gradient clipping of the cross-replica
gradient, and a head layer that is frozen for the first epochs with no update at all
(no moments, no decay, no step count). All of it happens in `update_step`, which every
backend calls once per variable with the already all-reduced gradient.

Gradient accumulation lives there too, because clipping, freezing and the per-parameter
step counts must act on the accumulated gradient: Keras' own `gradient_accumulation_steps`
counts `iterations` per micro-batch and clips before its accumulators, so it is not used.
"""

import math

import keras
from keras import ops

from keras_dino.optim.schedules import DINOSchedules


def check_accumulation_steps(value) -> int:
    """`gradient_accumulation_steps` as an int >= 1 (None is 1), or a `ValueError`.

    >>> check_accumulation_steps(None), check_accumulation_steps(8)
    (1, 8)
    """
    steps = 1 if value is None else value
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise ValueError(
            f"gradient_accumulation_steps must be a whole number >= 1; got {value!r}."
        )
    return int(steps)


class _ScheduleLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, schedules: DINOSchedules):
        self.schedules = schedules

    def __call__(self, step):
        return self.schedules.lr(step)

    def get_config(self):
        return {}


class DINOOptimizer(keras.optimizers.Optimizer):
    """Base of the DINO optimizers: schedules, decay groups, clipping and freezing.

    Args:
        schedules: the run's `DINOSchedules` (learning rate, weight decay, freezing).
        clip_grad: per-parameter gradient norm limit (0 disables it), applied as the
            official `clip_gradients`: `g *= clip / (||g|| + 1e-6)` when that is < 1.
        gradient_accumulation_steps: `k`; the optimizer steps once every `k` calls of
            `apply`, with the mean of their (all-reduced) gradients, clipped and frozen
            as one official gradient. `iterations` counts those optimizer steps, so the
            schedules advance once per `k` calls. Masked arithmetic, no branching: the
            update is computed at every call and kept at the `k`-th.

    Call `configure(variables, decay=..., official_ndim=..., freezable=...)` before the
    optimizer is built; `keras_dino.DINO.compile` does it. Its `frozen` and `lr_scale`
    lists (from `DINO.parameter_groups()`: `freeze_blocks`, `layer_decay`) fix a
    variable for the whole run (no update, no weight decay, no moments, no step count)
    and multiply a variable's learning rate, decoupled weight decay included.
    """

    def __init__(
        self,
        schedules: DINOSchedules | None = None,
        clip_grad: float = 3.0,
        gradient_accumulation_steps: int | None = 1,
        **kwargs,
    ):
        if schedules is None:
            raise ValueError(
                f"{type(self).__name__} takes its learning rate, weight decay and "
                "last-layer freezing from a schedules object: build it with "
                "keras_dino.DINO(...).make_optimizer(), or pass "
                "DINOSchedules.from_config(config, steps_per_epoch)."
            )
        kwargs.setdefault("learning_rate", _ScheduleLearningRate(schedules))
        # Keras' own accumulation stays off (see the module docstring).
        super().__init__(**kwargs)
        self.schedules = schedules
        self.clip_grad = float(clip_grad or 0.0)
        self.accumulation_steps = check_accumulation_steps(gradient_accumulation_steps)
        self._flags = {}
        self._guards = {}  # variable key -> (frozen, lr multiplier); absent: (False, 1.0)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.accumulation_steps > 1:
            self.accumulated_gradients = self.add_optimizer_variables(
                variables, "accumulated_gradient"
            )
            # Calls of `apply` since the last optimizer step (0 .. k-1). Assigned in the
            # replica context under tf.distribute, with the same value on every replica.
            self.micro_step = self.add_variable(
                (), initializer="zeros", dtype="float32", aggregation="only_first_replica",
                name="micro_step",
            )

    def apply(self, grads, trainable_variables=None):
        if self.accumulation_steps == 1:
            return super().apply(grads, trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        iterations = ops.convert_to_tensor(self.iterations)
        micro = ops.convert_to_tensor(self.micro_step)
        boundary = self._is_boundary(micro)
        # New tensors, computed before `apply` changes the variables (in place on torch).
        next_iterations = ops.where(boundary, iterations + 1, iterations)
        next_micro = ops.where(boundary, ops.zeros_like(micro), micro + 1.0)
        super().apply(grads, trainable_variables)  # counts one iteration: corrected here
        self.iterations.assign(next_iterations)
        self.micro_step.assign(next_micro)

    def _is_boundary(self, micro=None):
        micro = ops.convert_to_tensor(self.micro_step) if micro is None else micro
        return ops.greater_equal(micro, float(self.accumulation_steps - 1))

    def _accumulate(self, grad, variable):
        """`(mean of the k gradients, whether this call steps)`; resets at the step."""
        acc = self.accumulated_gradients[self._get_variable_index(variable)]
        total = ops.convert_to_tensor(acc) + grad
        boundary = self._is_boundary()
        self.assign(acc, ops.where(boundary, ops.zeros_like(total), total))
        return total / float(self.accumulation_steps), boundary

    def configure(self, variables, decay, official_ndim, freezable, frozen=None, lr_scale=None):
        """Per-variable flags: weight decay, the official tensor rank, frozen-at-start,
        and optionally frozen for the whole run and the learning-rate multiplier."""
        for v, d, n, f in zip(variables, decay, official_ndim, freezable, strict=True):
            self._flags[self._var_key(v)] = (bool(d), int(n), bool(f))
        frozen = [False] * len(variables) if frozen is None else frozen
        lr_scale = [1.0] * len(variables) if lr_scale is None else lr_scale
        for v, fixed, scale in zip(variables, frozen, lr_scale, strict=True):
            if fixed or float(scale) != 1.0:
                self._guards[self._var_key(v)] = (bool(fixed), float(scale))
            else:  # configured again: the defaults, nothing stored
                self._guards.pop(self._var_key(v), None)

    def lr_scale_of(self, variable) -> float:
        """The learning-rate multiplier of `variable` (1.0 unless `configure` set one)."""
        return self._guards.get(self._var_key(variable), (False, 1.0))[1]

    def is_frozen(self, variable) -> bool:
        """Whether `configure` fixed `variable` for the whole run."""
        return self._guards.get(self._var_key(variable), (False, 1.0))[0]

    def _flags_of(self, variable):
        # Unconfigured variables behave like weight matrices that are never frozen.
        return self._flags.get(self._var_key(variable), (True, 2, False))

    def _clip(self, grad):
        if not self.clip_grad:
            return grad
        norm = ops.sqrt(ops.sum(ops.square(grad)))
        coef = self.clip_grad / (norm + 1e-6)
        return ops.where(coef < 1.0, grad * coef, grad)

    def _commit(self, active, pairs):
        """Assigns `(variable, new value)` pairs, or keeps the old values if not active."""
        for var, new in pairs:
            if active is True:
                self.assign(var, new)
            else:
                self.assign(var, ops.where(active, new, ops.convert_to_tensor(var)))

    def update_step(self, gradient, variable, learning_rate):
        decay, ndim, freezable = self._flags_of(variable)
        frozen, scale = self._guards.get(self._var_key(variable), (False, 1.0))
        if frozen:  # fixed for the whole run: no update, decay, moments or step count
            return
        step = self.iterations
        lr = ops.cast(learning_rate, variable.dtype)
        if scale != 1.0:  # layer-wise decay; the base rate's arithmetic is untouched at 1
            lr = lr * scale
        wd = ops.cast(self.schedules.wd(step), variable.dtype) if decay else None
        active = self.schedules.last_layer_trains(step) if freezable else True
        grad = ops.cast(gradient, variable.dtype)
        if self.accumulation_steps > 1:
            grad, boundary = self._accumulate(grad, variable)
            active = boundary if active is True else ops.logical_and(active, boundary)
        grad = self._clip(grad)
        self._apply(grad, variable, lr, wd, ndim, active)

    def _apply(self, grad, variable, lr, wd, ndim, active):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.pop("learning_rate", None)
        return {
            **config,
            "clip_grad": self.clip_grad,
            "gradient_accumulation_steps": self.accumulation_steps,
        }


class AdamW(DINOOptimizer):
    """torch.optim.AdamW arithmetic: per-parameter step counts, eps 1e-8 outside the sqrt.

    `p *= 1 - lr * wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)`, where `k` counts the
    steps this parameter was actually updated (a frozen layer's count lags).

    Example:

    >>> from keras_dino.optim.schedules import DINOSchedules
    >>> from keras_dino.training.hparams import DINOConfig
    >>> opt = AdamW(DINOSchedules.from_config(DINOConfig(epochs=1, warmup_epochs=0), 10))
    >>> opt.beta_1, opt.epsilon
    (0.9, 1e-08)
    """

    def __init__(self, schedules=None, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="adamw", **kw):
        super().__init__(schedules, name=name, **kw)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.exp_avg = self.add_optimizer_variables(variables, "exp_avg")
        self.exp_avg_sq = self.add_optimizer_variables(variables, "exp_avg_sq")
        self.steps = [
            self.add_variable((), initializer="zeros", dtype="float32", name=f"step_{i}")
            for i, _ in enumerate(variables)
        ]

    def _apply(self, grad, variable, lr, wd, ndim, active):
        i = self._get_variable_index(variable)
        m, v, k = self.exp_avg[i], self.exp_avg_sq[i], self.steps[i]
        k_new = k + 1.0
        p = variable * (1.0 - lr * wd) if wd is not None else variable
        m_new = m + (grad - m) * (1.0 - self.beta_1)
        v_new = v * self.beta_2 + grad * grad * (1.0 - self.beta_2)
        # 1 - beta^k as -expm1(k log beta): in float32, 1 - 0.999^k loses 1e-5 of its value
        # to cancellation (torch computes it in double).
        k_cast = ops.cast(k_new, variable.dtype)
        bias1 = -ops.expm1(k_cast * math.log(self.beta_1))
        bias2 = -ops.expm1(k_cast * math.log(self.beta_2))
        denom = ops.sqrt(v_new) / ops.sqrt(bias2) + self.epsilon
        p_new = p - (lr / bias1) * (m_new / denom)
        self._commit(active, [(m, m_new), (v, v_new), (k, k_new), (variable, p_new)])

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


class SGD(DINOOptimizer):
    """torch.optim.SGD with momentum 0.9 and coupled weight decay, as the official option.

    `g += wd * p; buf = momentum * buf + g; p -= lr * buf`.
    """

    def __init__(self, schedules=None, momentum=0.9, name="sgd", **kwargs):
        super().__init__(schedules, name=name, **kwargs)
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def _apply(self, grad, variable, lr, wd, ndim, active):
        buf = self.momentum_buffers[self._get_variable_index(variable)]
        if wd is not None:
            grad = grad + wd * variable
        buf_new = buf * self.momentum + grad
        self._commit(active, [(buf, buf_new), (variable, variable - lr * buf_new)])

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


class LARS(DINOOptimizer):
    """The official LARS: weight decay and trust ratio `eta ||p|| / ||dp||` on tensors
    that are not 1-D, then momentum.
    """

    def __init__(self, schedules=None, momentum=0.9, eta=0.001, name="lars", **kwargs):
        super().__init__(schedules, name=name, **kwargs)
        self.momentum = momentum
        self.eta = eta

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.mu = self.add_optimizer_variables(variables, "mu")

    def _apply(self, grad, variable, lr, wd, ndim, active):
        mu = self.mu[self._get_variable_index(variable)]
        if ndim != 1:
            if wd is not None:
                grad = grad + wd * variable
            param_norm = ops.sqrt(ops.sum(ops.square(variable)))
            update_norm = ops.sqrt(ops.sum(ops.square(grad)))
            ratio = self.eta * param_norm / ops.where(update_norm > 0, update_norm, 1.0)
            q = ops.where((param_norm > 0) & (update_norm > 0), ratio, 1.0)
            grad = grad * q
        mu_new = mu * self.momentum + grad
        self._commit(active, [(mu, mu_new), (variable, variable - lr * mu_new)])

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "eta": self.eta}


OPTIMIZERS = {"adamw": AdamW, "sgd": SGD, "lars": LARS}
