"""`DINO`'s training step on each backend.

The arithmetic is the model's (`DINO._forward`: the loss; `DINO._after_update`: the
teacher EMA, the center and the logged metrics); this module holds what differs between
backends: how the gradient is taken and how the state is threaded through the step.
"""

import keras
from keras import ops

from keras_dino import distribute


def _read(variable):
    """The value of `variable` now, not a view of it: TensorFlow hands the variable itself
    to `ops`, and torch assigns in place."""
    return ops.copy(ops.convert_to_tensor(variable))


def tensorflow_step(model, data):
    """One step under TensorFlow (eager, `tf.function` or a `tf.distribute` replica)."""
    import tensorflow as tf

    crops = model._crops(data)
    model._set_base_lr(crops)
    before = _read(model.optimizer.iterations)
    step = ops.cast(before, "float32")
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss, teacher_output = model._forward(crops, step)
        scaled = model.optimizer.scale_loss(loss / distribute.num_replicas())
    grads = tape.gradient(scaled, variables)
    model.optimizer.apply(grads, variables)
    logs = model._after_update(loss, teacher_output, step, len(crops), before)
    if distribute.in_multi_worker_mode():
        # Keras reduces the logs of a multi-worker step with
        # strategy.reduce("MEAN", value, axis=0), which fails for scalars
        # (tensorflow/tensorflow#72388); rank 1 comes back as the scalar.
        logs = {key: ops.reshape(value, (1,)) for key, value in logs.items()}
    return logs


def torch_step(model, data):
    """One step under torch."""
    import torch

    crops = model._crops(data)
    model._set_base_lr(crops)
    before = _read(model.optimizer.iterations)
    step = ops.cast(before, "float32")
    variables = model.trainable_variables
    model.zero_grad()
    loss, teacher_output = model._forward(crops, step)
    model.optimizer.scale_loss(loss).backward()
    grads = [v.value.grad for v in variables]
    with torch.no_grad():
        model.optimizer.apply(grads, variables)
        return model._after_update(loss.detach(), teacher_output, step, len(crops), before)


def _current(scope, variable, fallback):
    value = scope.get_current_value(variable)
    return fallback if value is None else value


def jax_step(model, state, data):
    """One stateless step under JAX: `(logs, new state)` from `(state, data)`."""
    import jax

    trainable, non_trainable, optimizer_values, metrics_values = state
    crops = model._crops(data)
    model._set_base_lr(crops)
    optimizer_map = list(zip(model.optimizer.variables, optimizer_values))

    def loss_fn(trainable_values, non_trainable_values):
        mapping = (
            list(zip(model.trainable_variables, trainable_values))
            + list(zip(model.non_trainable_variables, non_trainable_values))
            + optimizer_map
        )
        with keras.StatelessScope(state_mapping=mapping) as scope:
            before = _read(model.optimizer.iterations)
            step = ops.cast(before, "float32")
            loss, teacher_output = model._forward(crops, step)
            scaled = model.optimizer.scale_loss(loss)
        updated = [
            _current(scope, v, old)
            for v, old in zip(model.non_trainable_variables, non_trainable_values)
        ]
        return scaled, (loss, teacher_output, step, before, updated)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(trainable, non_trainable)
    loss, teacher_output, step, before, non_trainable = aux
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    groups = [
        (model.trainable_variables, trainable),
        (model.non_trainable_variables, non_trainable),
        (model.optimizer.variables, optimizer_values),
        (model.metrics_variables, metrics_values),
    ]
    mapping = [pair for variables, values in groups for pair in zip(variables, values)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model._after_update(loss, teacher_output, step, len(crops), before)
    non_trainable = [
        _current(scope, v, old) for v, old in zip(model.non_trainable_variables, non_trainable)
    ]
    metrics_values = [
        _current(scope, v, old) for v, old in zip(model.metrics_variables, metrics_values)
    ]
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


STEPS = {"tensorflow": tensorflow_step, "torch": torch_step, "jax": jax_step}
