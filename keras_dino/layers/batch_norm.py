"""Batch normalisation with PyTorch's semantics, synchronised across replicas."""

import keras
from keras import ops

from keras_dino.distribute import cross_replica_sum
from keras_dino.layers.precision import at_least_float32


@keras.saving.register_keras_serializable(package="keras_dino")
class BatchNorm(keras.layers.Layer):
    """`torch.nn.BatchNorm{1,2}d` / `SyncBatchNorm` over the last (channel) axis.

    Three things differ from `keras.layers.BatchNormalization`, and each matters for
    DINO and for the official checkpoints:

    * the mode follows `training` only. Keras runs a non-trainable BatchNormalization
      in inference mode, but the DINO teacher (not trained by the optimizer, only by
      EMA) runs its BatchNorms in training mode, on batch statistics, as the official
      teacher does;
    * the running variance is updated with the unbiased batch variance (`n / (n - 1)`)
      and `momentum` is PyTorch's (the weight of the new batch, 0.1);
    * with `synchronized=True` (the default) the batch statistics are those of the
      global batch, as the official code's `SyncBatchNorm`: all-reduced across the
      replicas of a `tf.distribute` step, and already global under JAX's
      `keras.distribution.DataParallel`, whose compiled step sees the whole batch.

    Statistics are computed in float32 under mixed precision. The variables are named
    like Keras' (`gamma`, `beta`, `moving_mean`, `moving_variance`); PyTorch calls them
    `weight`, `bias`, `running_mean`, `running_var`.

    Args:
        momentum: weight of the current batch in the running statistics (0.1).
        epsilon: added to the variance (1e-5).
        synchronized: use the statistics of the global batch across replicas.

    Example:

    >>> import numpy as np
    >>> bn = BatchNorm()
    >>> x = np.arange(8, dtype="float32").reshape(4, 2)
    >>> y = bn(x, training=True)
    >>> [round(v, 4) for v in np.asarray(bn.moving_variance).tolist()]  # 0.9 + 0.1 * unbiased var
    [1.5667, 1.5667]
    """

    def __init__(self, momentum: float = 0.1, epsilon: float = 1e-5, synchronized: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (PyTorch's convention); got {momentum}")
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized
        self.supports_masking = False

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"BatchNorm needs a known channel axis; got shape {input_shape}.")
        shape = (channels,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta", autocast=False)
        # Replicas assign identical values (synchronised statistics): "mean" lets a
        # tf.distribute replica assign them.
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean",
            autocast=False, aggregation="mean",
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance",
            autocast=False, aggregation="mean",
        )

    def _batch_moments(self, x):
        """Mean, biased variance and element count of the (global) batch, two-pass."""
        axes = tuple(range(len(x.shape) - 1))
        count = 1
        for axis in axes:
            count = count * ops.shape(x)[axis]
        count = ops.cast(count, x.dtype)
        total_sum = self._sum_over_replicas
        total, count = total_sum((ops.sum(x, axis=axes), count))
        mean = total / count
        (squares,) = total_sum((ops.sum(ops.square(x - mean), axis=axes),))
        return mean, squares / count, count

    def _sum_over_replicas(self, values):
        if not self.synchronized:
            return values
        return tuple(cross_replica_sum(v) for v in values)

    def call(self, inputs, training=None):
        x = at_least_float32(inputs)
        if training:
            mean, variance, count = self._batch_moments(x)
            unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * (1.0 - m) + mean * m)
            self.moving_variance.assign(self.moving_variance * (1.0 - m) + unbiased * m)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = ops.cast(self.gamma, x.dtype) * ops.rsqrt(variance + self.epsilon)
        outputs = (x - mean) * scale + ops.cast(self.beta, x.dtype)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        }
