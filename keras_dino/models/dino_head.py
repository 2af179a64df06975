"""The DINO projection head."""

import keras
from keras import ops

from keras_dino.layers.activations import gelu_exact
from keras_dino.layers.batch_norm import BatchNorm
from keras_dino.layers.initializers import linear_kernel_initializer
from keras_dino.layers.precision import at_least_float32
from keras_dino.layers.weight_norm_dense import WeightNormDense


@keras.saving.register_keras_serializable(package="keras_dino")
class DINOHead(keras.Model):
    """MLP, L2 normalisation, then a weight-normalised projection to `out_dim` logits.

    Official layout: `nlayers` dense layers (hidden `hidden_dim`, GELU between them, an
    optional batch norm after each hidden dense layer, `keras_dino.layers.BatchNorm`:
    PyTorch's, in training mode for the teacher too) down to `bottleneck_dim`, L2
    normalisation, and `last_layer`, a bias-free weight-normalised dense layer whose
    gain `g` is fixed at 1 (and not trainable) when `norm_last_layer` is True. Dense
    weights are initialised truncated-normal with std 0.02 and zero biases. The last
    layer computes in float32 under mixed precision.

    Args:
        out_dim: number of prototypes (65536 in the paper).
        use_bn: batch norm in the MLP.
        norm_last_layer: keep the last layer's weight norm fixed at 1.
        nlayers: number of dense layers of the MLP (at least 1).
        hidden_dim: hidden width of the MLP.
        bottleneck_dim: width before the last layer.
        in_dim: width of the input features; when given the head is built at once,
            otherwise on its first call.

    Example:

    >>> import numpy as np
    >>> head = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    >>> tuple(head(np.zeros((4, 192), "float32")).shape)
    (4, 64)
    """

    def __init__(
        self,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        in_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if nlayers < 1:
            raise ValueError(f"nlayers must be at least 1; got {nlayers}.")
        self.out_dim = out_dim
        self.use_bn = use_bn
        self.norm_last_layer = norm_last_layer
        self.nlayers = nlayers
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        policy = self.dtype_policy
        widths = [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        # `mlp` mirrors the official nn.Sequential: the index of each entry is the index
        # of the matching module in the official checkpoint (`head.mlp.<i>`).
        self.mlp = []
        for i, width in enumerate(widths):
            self.mlp.append(
                keras.layers.Dense(
                    width,
                    kernel_initializer=linear_kernel_initializer(),
                    dtype=policy,
                    name=f"mlp_{len(self.mlp)}",
                )
            )
            if i < nlayers - 1:
                if use_bn:
                    self.mlp.append(BatchNorm(dtype=policy, name=f"mlp_{len(self.mlp)}"))
                self.mlp.append(
                    keras.layers.Activation(
                        gelu_exact,
                        dtype=policy,
                        name=f"mlp_{len(self.mlp)}",
                    )
                )
        # The 65,536-way projection and everything after it stay in (at least) float32.
        last_dtype = "float32" if policy.compute_dtype in ("float16", "bfloat16") else policy
        self.last_layer = WeightNormDense(
            out_dim, train_g=not norm_last_layer, dtype=last_dtype, name="last_layer"
        )
        self.in_dim = in_dim
        if in_dim is not None:
            self.build((None, in_dim))

    def build(self, input_shape):
        if self.built:
            return
        self.in_dim = input_shape[-1]
        shape = tuple(input_shape)
        for layer in self.mlp:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.last_layer.build((None, self.bottleneck_dim))
        self.built = True

    def call(self, x, training=None):
        for layer in self.mlp:
            if isinstance(layer, BatchNorm):
                x = layer(x, training=training)
            else:
                x = layer(x)
        x = at_least_float32(x)
        # F.normalize(x, dim=-1, p=2): x / max(||x||, 1e-12).
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        x = x / ops.maximum(norm, 1e-12)
        return self.last_layer(x)

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor(
            tuple(x.shape[:-1]) + (self.out_dim,), dtype=self.last_layer.compute_dtype
        )

    def get_config(self):
        return {
            **super().get_config(),
            "out_dim": self.out_dim,
            "use_bn": self.use_bn,
            "norm_last_layer": self.norm_last_layer,
            "nlayers": self.nlayers,
            "hidden_dim": self.hidden_dim,
            "bottleneck_dim": self.bottleneck_dim,
            "in_dim": self.in_dim,
        }
