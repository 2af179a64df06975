"""Reading `torch.save` checkpoints (zip, and the legacy format) without torch.

A checkpoint written by `torch.save` (since torch 1.6) is a zip archive:

* `<archive>/data.pkl`: a pickle (protocol 2) of the saved object. Every tensor in it is a call
  to `torch._utils._rebuild_tensor_v2` on a *persistent id*
  `("storage", torch.FloatStorage, "<key>", "cpu", numel)`.
* `<archive>/data/<key>`: the raw bytes of each storage, stored uncompressed and 64-byte
  aligned.
* `<archive>/byteorder`, `<archive>/version`, `<archive>/.format_version`,
  `<archive>/.storage_alignment` and `<archive>/.data/serialization_id`: small metadata records.

The pickle is read by `safe_unpickle` (no code runs); tensors come back as numpy arrays.
`read_checkpoint` picks this reader or the `.npz` one from the file's content. Standard
library and numpy only.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from keras_dino.checkpoints.checkpoint_types import (
    _ZIP_READ_ERRORS,
    PathLike,
    _format_error,
    _Malformed,
    _numpy_dtype,
    _open_zip,
    _read_head,
)
from keras_dino.checkpoints.npz_format import read_npz_checkpoint
from keras_dino.checkpoints.safe_unpickle import _unpickle

# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

# torch's legacy (pre-1.6, non-zip) format starts with a protocol-2 pickle of this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEADER = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
def read_torch_checkpoint(path: PathLike) -> Any:
    """Reads a `torch.save` checkpoint without importing torch or running pickled code.

    Tensors come back as numpy arrays of the same dtype and shape (C-contiguous copies;
    0-d tensors such as the optimizer `step` become 0-d arrays). Containers keep their types
    (`dict`, `collections.OrderedDict` with its `_metadata` attribute, `list`, `tuple`),
    numpy scalars stay numpy scalars, and a pickled `argparse.Namespace` becomes a
    `CheckpointArgs` (a `dict` subclass with attribute access); nothing is constructed from
    the file other than these.

    Args:
        path: a `.pth` file in the zip format that `torch.save` writes since torch 1.6.

    Returns:
        The saved object, e.g. a state dict `{name: np.ndarray}` for released backbones, or
        `{"student": ..., "teacher": ..., "optimizer": {"state": {int: {...}},
        "param_groups": [...]}, "epoch": int, "args": CheckpointArgs, "dino_loss": {...}}`
        for a full DINO training checkpoint.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allow-list (the message
            names it); nothing it asked for has run.
        CheckpointFormatError: the file is not a torch zip checkpoint, is truncated or is
            corrupt, or uses the legacy pre-1.6 format.
        ImportError: it holds bfloat16 tensors and `ml_dtypes` is not installed.

    Example:

    >>> state = read_torch_checkpoint("dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
    >>> state["pos_embed"].shape  # doctest: +SKIP
    (1, 197, 384)
    """
    path = os.fspath(path)
    head, size = _read_head(path)
    if size == 0:
        raise _format_error(path, "the file is empty (0 bytes)")
    if head.startswith(_LEGACY_HEADER) or head[257:262] == b"ustar":
        raise _format_error(
            path,
            "it uses the legacy (pre-1.6, non-zip) torch serialization format, which this "
            "reader does not support; re-save it with a current torch "
            "(torch.save(torch.load(path, weights_only=False), path)) or use its .npz twin",
        )
    if head.startswith(b"PK") or zipfile.is_zipfile(path):
        with _open_zip(path) as archive:
            return _read_torch_zip(archive, path)
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        with open(path, "rb") as f:
            _unpickle(f.read(), path, None)  # Unsafe content is reported as such.
        raise _format_error(
            path, "it is a bare pickle, not a checkpoint written by torch.save (a zip archive)"
        )
    raise _format_error(
        path,
        f"not a PyTorch checkpoint: torch.save writes a zip archive, but the file starts with "
        f"{head[:16]!r}",
    )


def _read_torch_zip(archive: zipfile.ZipFile, path: str) -> Any:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        if names and all(n.endswith(".npy") for n in names):
            raise _format_error(
                path,
                "it is a NumPy .npz archive, not a torch checkpoint; use read_npz_checkpoint() "
                "or read_checkpoint()",
            )
        raise _format_error(
            path,
            "the zip archive has no '<archive>/data.pkl' record, so it was not written by "
            f"torch.save (first entries: {names[:3]})",
        )
    prefix = pickles[0][: -len("/data.pkl")]
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
        raise _format_error(
            path, "it is a TorchScript archive (torch.jit.save), not a torch.save checkpoint"
        )

    def read_record(name: str) -> bytes:
        try:
            return archive.read(name)
        except KeyError:
            raise _Malformed(f"record {name!r} is missing (truncated or incomplete file)") from None
        except _ZIP_READ_ERRORS as exc:
            raise _Malformed(
                f"record {name!r} cannot be read ({exc}); the file is corrupt"
            ) from None

    try:
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = read_record(f"{prefix}/byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise _Malformed(f"unknown byte order {byteorder!r:.20}")
        data = read_record(pickles[0])
    except _Malformed as exc:
        raise _format_error(path, exc.args[0]) from None

    def load_storage(key: str, dtype_name: str, numel: int) -> np.ndarray:
        name = f"{prefix}/data/{key}"
        dtype = _numpy_dtype(dtype_name)
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise _Malformed(
                f"storage record {name!r} is missing (the file is truncated or incomplete)"
            ) from None
        expected = numel * dtype.itemsize
        if info.file_size != expected:
            raise _Malformed(
                f"storage record {name!r} holds {info.file_size} bytes, expected {expected} "
                f"({numel} x {dtype.name})"
            )
        raw = read_record(name)
        if len(raw) != expected:
            raise _Malformed(f"storage record {name!r} is truncated")
        stored = dtype.newbyteorder("<" if byteorder == "little" else ">")
        array = np.frombuffer(raw, dtype=stored, count=numel)
        return array if stored == dtype else array.astype(dtype)

    return _unpickle(data, path, load_storage)

def read_checkpoint(path: PathLike) -> Any:
    """Reads a `.pth` (torch zip) or `.npz` checkpoint, chosen by content, not by file name.

    Args:
        path: a file written by `torch.save` or an `.npz` twin.

    Returns:
        What `read_torch_checkpoint` or `read_npz_checkpoint` returns.

    Example:

    >>> state = read_checkpoint("backbone_vit_mini16.pth")  # doctest: +SKIP
    >>> sorted(state)[:2]  # doctest: +SKIP
    ['blocks.0.attn.proj.bias', 'blocks.0.attn.proj.weight']
    """
    path = os.fspath(path)
    head, size = _read_head(path)
    if size and (head.startswith(b"PK") or zipfile.is_zipfile(path)):
        with _open_zip(path) as archive:
            names = archive.namelist()
        if names and all(n.endswith(".npy") for n in names):
            return read_npz_checkpoint(path)
    return read_torch_checkpoint(path)

