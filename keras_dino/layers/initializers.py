"""Initialisers of the official DINO modules."""

import keras


def linear_kernel_initializer():
    """Truncated normal with std 0.02, the official init of every `nn.Linear` weight."""
    return keras.initializers.TruncatedNormal(stddev=0.02)
