"""Writing `torch.save` checkpoints from numpy arrays, without torch.

The pickle comes from the standard library's pickler (protocol 2, as `torch.save`): one
dispatch entry writes torch's globals (`torch._utils._rebuild_tensor_v2`, the storage
types) without importing them, and `persistent_id` turns each storage into torch's
`("storage", <type>, "<key>", "cpu", numel)`. The archive comes from `zipfile`: stored
records, each one's data 64-byte aligned by a padding extra field, as torch does (which
`torch.load(..., mmap=True)` requires). Standard library and numpy only.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import secrets
import sys
import zipfile
import zlib
from typing import Any

import numpy as np

from keras_dino.checkpoints.checkpoint_types import _DTYPE_STORAGES, CheckpointArgs, PathLike

_ALIGNMENT = 64
_PADDING_FIELD = 0x4246  # "FB", torch's padding extra field
_DATE_1980 = (1980, 1, 1, 0, 0, 0)
_SCALARS = (bool, int, float, str, bytes, type(None))


class _Global:
    """A global of the torch namespace, written by name (torch is never imported)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise TypeError(f"{self.module}.{self.name} is a marker for the pickle writer")


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_CODECS_ENCODE = _Global("_codecs", "encode")


class _Storage:
    """One tensor storage: its key in the archive (`data/<key>`) and its element count."""

    def __init__(self, key: str, storage_type: str, numel: int):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _Tensor:
    """An array to write as a tensor over `storage` (C-contiguous strides)."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape


class _Normalizer:
    """Checks the object tree and turns it into what the pickler writes.

    numpy scalars become Python scalars, `CheckpointArgs` an `argparse.Namespace`, arrays
    `_Tensor`s (one storage per array object: an array appearing twice shares it).
    Anything else, and self-referencing containers, are errors naming where they are.
    """

    def __init__(self):
        self.storages: list[tuple[str, np.ndarray]] = []
        self._keys: dict[int, _Storage] = {}
        self._active: set[int] = set()

    def __call__(self, obj: Any, where: str = "obj") -> Any:
        if isinstance(obj, np.ndarray):
            return self._tensor(obj, where)
        if isinstance(obj, np.generic):
            value = obj.item()
            if not isinstance(value, _SCALARS):
                raise TypeError(f"cannot write the numpy scalar {obj!r} at {where} to a torch "
                                "checkpoint")
            return value
        if isinstance(obj, bytearray):
            return bytes(obj)
        if isinstance(obj, _SCALARS):
            return str.__str__(obj) if isinstance(obj, str) else obj
        if isinstance(obj, CheckpointArgs | argparse.Namespace):
            fields = dict(obj) if isinstance(obj, CheckpointArgs) else dict(vars(obj))
            bad = [k for k in fields if not isinstance(k, str)]
            if bad:
                raise TypeError(f"argument names must be str, got {bad[0]!r} at {where}")
            return argparse.Namespace(**{k: self(v, f"{where}.{k}") for k, v in fields.items()})
        if isinstance(obj, dict | list | tuple):
            return self._container(obj, where)
        if hasattr(obj, "__array__") and not isinstance(obj, type):
            return self._tensor(np.asarray(obj), where)
        raise TypeError(
            f"cannot write {type(obj).__module__}.{type(obj).__qualname__} at {where} to a "
            "torch checkpoint; supported are numpy arrays, dict/OrderedDict, list, tuple, str, "
            "bytes, int, float, bool, None and CheckpointArgs/argparse.Namespace"
        )

    def _container(self, obj, where):
        if id(obj) in self._active:
            raise ValueError(f"cannot write a self-referencing container at {where}")
        self._active.add(id(obj))
        try:
            if isinstance(obj, dict):
                items = {self(k, f"{where} (a key)"): self(v, f"{where}[{k!r}]")
                         for k, v in obj.items()}
                if not isinstance(obj, collections.OrderedDict):
                    return items
                out = collections.OrderedDict(items)
                # e.g. the `_metadata` that torch's state_dict() attaches.
                out.__dict__.update(self(dict(vars(obj)), f"{where}.__dict__"))
                return out
            values = [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]
            return values if isinstance(obj, list) else tuple(values)
        finally:
            self._active.discard(id(obj))

    def _tensor(self, array: np.ndarray, where: str) -> _Tensor:
        storage = self._keys.get(id(array))
        if storage is None:
            storage_type = _DTYPE_STORAGES.get(array.dtype.name)
            if storage_type is None or array.dtype.fields is not None:
                raise TypeError(
                    f"cannot write an array of dtype {array.dtype} at {where}: torch storages "
                    f"exist for {sorted(_DTYPE_STORAGES)}"
                )
            data = np.ascontiguousarray(array)
            if data.dtype.byteorder == ">" or (
                data.dtype.byteorder == "=" and sys.byteorder == "big"
            ):
                data = data.astype(data.dtype.newbyteorder("<"))
            storage = _Storage(str(len(self.storages)), storage_type, int(data.size))
            self.storages.append((storage.key, data))
            self._keys[id(array)] = storage
        return _Tensor(storage, tuple(int(n) for n in array.shape))


class _TorchPickler(pickle._Pickler):
    """The standard (pure-Python) pickler, plus torch's globals, storages and tensors."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)
        self._storage_types: dict[str, _Global] = {}  # one object each: memoised once

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = self._storage_types.setdefault(obj.storage_type,
                                                  _Global("torch", obj.storage_type))
            return ("storage", kind, obj.key, "cpu", obj.numel)
        return None

    def _save_global_marker(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def _save_tensor(self, obj: _Tensor):
        strides = [1] * len(obj.shape)
        for i in range(len(obj.shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * max(obj.shape[i + 1], 1)
        args = (obj.storage, 0, obj.shape, tuple(strides), False, collections.OrderedDict())
        self.save_reduce(_REBUILD_TENSOR, args)

    def _save_bytes(self, obj: bytes):
        # Protocol 2's bytes, empty ones included, as torch's weights-only loader admits.
        self.save_reduce(_CODECS_ENCODE, (obj.decode("latin-1"), "latin1"), obj=obj)

    dispatch[_Global] = _save_global_marker
    dispatch[_Tensor] = _save_tensor
    dispatch[bytes] = _save_bytes


def _pickle(obj: Any) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    """`(data.pkl bytes, [(key, array)] storages)` of a checkpoint object."""
    normalize = _Normalizer()
    tree = normalize(obj)
    out = io.BytesIO()
    _TorchPickler(out).dump(tree)
    return out.getvalue(), normalize.storages


def _write_zip(f, records, force_zip64: bool = False) -> None:
    """Writes `(name, bytes or array)` records as stored zip entries, data 64-byte aligned."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in records:
            view = memoryview(data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray)
                              else data)
            info = zipfile.ZipInfo(name, date_time=_DATE_1980)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = view.nbytes
            # zipfile adds a 20-byte zip64 field to the local header in this case.
            zip64 = force_zip64 or info.file_size * 1.05 > zipfile.ZIP64_LIMIT
            header = 30 + len(name.encode("utf-8")) + (20 if zip64 else 0) + 4
            pad = -(f.tell() + header) % _ALIGNMENT
            info.extra = _PADDING_FIELD.to_bytes(2, "little") + pad.to_bytes(2, "little")
            info.extra += b"Z" * pad
            with archive.open(info, "w", force_zip64=zip64) as entry:
                entry.write(view)


def _archive_name(path: str) -> str:
    stem = os.path.basename(path)
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".")
    return cleaned or "archive"


def _records(obj: Any, prefix: str) -> list[tuple[str, Any]]:
    pickled, storages = _pickle(obj)
    records = [
        (f"{prefix}/data.pkl", pickled),
        (f"{prefix}/.format_version", b"1"),
        (f"{prefix}/.storage_alignment", str(_ALIGNMENT).encode()),
        (f"{prefix}/byteorder", b"little"),
    ]
    records += [(f"{prefix}/data/{key}", array) for key, array in storages]
    records.append((f"{prefix}/version", b"3\n"))
    # torch.save writes a 40-digit id: 20 random digits and 20 derived from the content.
    combined = 0
    for _, data in records:
        crc = zlib.crc32(data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data)
        combined = zlib.crc32(crc.to_bytes(4, "little"), combined)
    records.append((f"{prefix}/.data/serialization_id",
                    f"{secrets.randbits(64):020d}{combined:020d}".encode()))
    return records


def write_torch_checkpoint(obj: Any, path: PathLike, *, _force_zip64: bool = False) -> None:
    """Writes `obj` in the zip format of `torch.save`, without torch.

    The file loads with `torch.load(path, weights_only=False)` and, when it holds no
    `argparse.Namespace`, with `torch.load(path, weights_only=True)` (torch >= 1.6), into the
    same structure with numpy arrays turned into CPU tensors, so the official DINO code can
    resume from it or load its weights. The write is atomic: the file is written under a
    temporary name in the same folder and then renamed, so `path` never holds a partial
    checkpoint.

    Conversions:

    * `np.ndarray` (and anything with `__array__`) -> a contiguous tensor of the same shape
      and dtype (float16/32/64, bfloat16 via ml_dtypes, int8/16/32/64, uint8, bool,
      complex64/128); 0-d arrays -> 0-d tensors. The same array object appearing twice
      shares one storage.
    * `CheckpointArgs` and `argparse.Namespace` -> `argparse.Namespace` (so
      `checkpoint["args"].arch` works in the official code). A plain `dict` stays a `dict`:
      wrap `args` in `CheckpointArgs(...)` to get a Namespace.
    * `collections.OrderedDict` (with its `__dict__`, e.g. torch's `_metadata`), `dict`,
      `list`, `tuple`, `str`, `bytes`, `int`, `float`, `bool`, `None` -> themselves.
    * numpy scalars -> the equivalent Python scalar (`np.float64(1e-3)` -> `1e-3`), which
      keeps the file readable by `torch.load(weights_only=True)`.

    Args:
        obj: the object to save, e.g. a state dict or a full DINO `save_dict`.
        path: the destination file; its name without extension becomes the archive's
            folder name, as with `torch.save`.

    Raises:
        TypeError: `obj` holds a value of another type (the message says where).

    Example:

    >>> state = {"weight": np.ones((4, 3), np.float32), "bias": np.zeros(4, np.float32)}
    >>> write_torch_checkpoint(state, "linear.pth")  # doctest: +SKIP
    >>> # torch.nn.Linear(3, 4).load_state_dict(torch.load("linear.pth"))
    """
    path = os.fspath(path)
    records = _records(obj, _archive_name(path))
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_zip(f, records, force_zip64=_force_zip64)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
