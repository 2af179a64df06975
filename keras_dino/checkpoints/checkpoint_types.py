"""The data types of checkpoint files: `CheckpointArgs`, the errors, torch storage dtypes.

Standard library and numpy only (and `ml_dtypes`, lazily, for bfloat16).
"""

from __future__ import annotations

import argparse
import os
import zipfile
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from keras_dino.errors import CheckpointFormatError, UnsafeCheckpointError  # noqa: F401

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


class CheckpointArgs(dict):
    """The `args` of a DINO checkpoint, as plain data.

    The official `main_dino.py` pickles its `argparse.Namespace` under `checkpoint["args"]`.
    The readers never construct a `Namespace` from a file: they return this `dict` subclass,
    which holds the same fields and also allows attribute access, so code written for the
    official checkpoints (`checkpoint["args"].arch`) keeps working.

    `write_torch_checkpoint` writes every `CheckpointArgs` (and every real
    `argparse.Namespace`) as an `argparse.Namespace`, so official code can read the file.
    A plain `dict` stays a `dict`.

    Names that are also `dict` methods (`keys`, `items`, `copy`, ...) are reachable with item
    access only.

    Example:

    >>> args = CheckpointArgs(arch="vit_small", patch_size=16)
    >>> args.arch, args["patch_size"]
    ('vit_small', 16)
    >>> args.to_namespace()
    Namespace(arch='vit_small', patch_size=16)
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"checkpoint args have no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> Iterable[str]:
        return [*super().__dir__(), *(k for k in self if isinstance(k, str))]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"CheckpointArgs({fields})"

    def __setstate__(self, state: Any) -> None:
        # Called by the restricted unpickler for the BUILD of a pickled `argparse.Namespace`.
        if isinstance(state, tuple) and len(state) == 2:
            parts = state
        else:
            parts = (state, None)
        for part in parts:
            if part is None:
                continue
            if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
                raise _Malformed("the pickled argparse.Namespace state is not a dict of fields")
            self.update(part)

    def to_namespace(self) -> argparse.Namespace:
        """Returns a real `argparse.Namespace` with the same fields."""
        return argparse.Namespace(**self)


# --------------------------------------------------------------------------------------------
# Internal errors raised while unpickling; turned into the public errors with the path
# --------------------------------------------------------------------------------------------


class _Refused(Exception):
    """Something outside the allow-list was requested; `args[0]` says what."""


class _Malformed(Exception):
    """The pickle or the archive is structurally wrong; `args[0]` says how."""


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

# torch storage class name -> numpy dtype string ("bfloat16" is resolved through ml_dtypes).
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_DTYPE_STORAGES = {v: k for k, v in _STORAGE_DTYPES.items()}


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(
            "this checkpoint holds bfloat16 tensors, which numpy can only represent with the "
            "'ml_dtypes' package: pip install ml_dtypes"
        ) from exc
    return np.dtype(ml_dtypes.bfloat16)


def _numpy_dtype(name: str) -> np.dtype:
    return _bfloat16() if name == "bfloat16" else np.dtype(name)



# --------------------------------------------------------------------------------------------
# File-level helpers of the readers
# --------------------------------------------------------------------------------------------

_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError)


def _format_error(path: str, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"cannot read {path}: {what}")


def _read_head(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(0, os.SEEK_END)
        return head, f.tell()


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise _format_error(
            path,
            f"it starts like a zip archive but its directory cannot be read ({exc}); the file "
            "is probably truncated (an interrupted download or copy) or corrupt",
        ) from None


