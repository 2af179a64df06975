"""Checkpoint I/O: PyTorch `.pth` and `.npz` files, read and written without torch."""

from keras_dino.checkpoints.torch_format import (
    CheckpointArgs,
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_checkpoint,
    read_npz_checkpoint,
    read_torch_checkpoint,
    write_npz_checkpoint,
    write_torch_checkpoint,
)

__all__ = [
    "CheckpointArgs",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "read_checkpoint",
    "read_npz_checkpoint",
    "read_torch_checkpoint",
    "write_npz_checkpoint",
    "write_torch_checkpoint",
]
