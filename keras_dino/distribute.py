"""The few cross-replica operations DINO's step and synchronised `BatchNorm` need.

A leaf: it imports Keras only, so layers, models and training may all use it.

Under JAX (`keras.distribution.DataParallel`) the compiled step sees the global batch,
so batch sums are already global and plain assignments are right. Under a
`tf.distribute` strategy the step runs per replica: sums must be all-reduced and
mirrored variables must be assigned from the cross-replica context. torch runs on one
device. TensorFlow is imported only when the TensorFlow backend is active.
"""

import keras


def _tf_replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def num_replicas() -> int:
    """Replicas whose batches make up the global batch of one step (1 outside TF)."""
    context = _tf_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def in_multi_worker_mode() -> bool:
    """Whether the step runs under a `MultiWorkerMirroredStrategy` of several workers."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return False
    strategy = tf.distribute.get_strategy()
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def cross_replica_sum(value):
    """Sum of `value` over the replicas of a `tf.distribute` step; `value` elsewhere."""
    context = _tf_replica_context()
    if context is None:
        return value
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def assign_all(pairs) -> None:
    """Assigns `(variable, value)` pairs; values must be identical on every replica."""
    context = _tf_replica_context()
    if context is None:
        for variable, value in pairs:
            variable.assign(value)
        return

    def merge(strategy, variables, values):
        for variable, value in zip(variables, values):
            strategy.extended.update(
                variable.value, lambda v, x: v.assign(x), args=(value,), group=False
            )

    variables = [v for v, _ in pairs]
    values = [value for _, value in pairs]
    context.merge_call(merge, args=(variables, values))
