"""PyTorch `.pth` checkpoints without PyTorch and without running pickled code.

The format and its two directions live in their own modules; this one gathers them:

* `torch_reader`: `read_torch_checkpoint` (zip and legacy `torch.save` files, through the
  allow-list unpickler of `safe_unpickle`) and `read_checkpoint` (picks the `.pth` or the
  `.npz` reader from the file's content);
* `torch_writer`: `write_torch_checkpoint` (the standard pickler and `zipfile`);
* `npz_format`: the `.npz` twins, read and written;
* `checkpoint_types`: `CheckpointArgs` and the errors.

They import only the standard library and numpy (and `ml_dtypes`, lazily, for bfloat16).
"""

from keras_dino.checkpoints.checkpoint_types import (  # noqa: F401
    CheckpointArgs,
    CheckpointFormatError,
    UnsafeCheckpointError,
    _bfloat16,
)
from keras_dino.checkpoints.npz_format import read_npz_checkpoint, write_npz_checkpoint
from keras_dino.checkpoints.torch_reader import read_checkpoint, read_torch_checkpoint
from keras_dino.checkpoints.torch_writer import write_torch_checkpoint

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
