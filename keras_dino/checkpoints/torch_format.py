"""Read and write PyTorch `.pth` checkpoints without PyTorch and without running pickled code.

A checkpoint written by `torch.save` (since torch 1.6) is a zip archive:

* `<archive>/data.pkl`: a pickle (protocol 2) of the saved object. Every tensor in it is a call
  to `torch._utils._rebuild_tensor_v2` on a *persistent id*
  `("storage", torch.FloatStorage, "<key>", "cpu", numel)`.
* `<archive>/data/<key>`: the raw bytes of each storage, stored uncompressed and 64-byte
  aligned.
* `<archive>/byteorder`, `<archive>/version`, `<archive>/.format_version`,
  `<archive>/.storage_alignment` and `<archive>/.data/serialization_id`: small metadata records.

`pickle.load` would import and call whatever globals the pickle names, so a checkpoint from
the internet can run arbitrary code. `read_torch_checkpoint` instead uses an unpickler whose
`find_class` admits a short allow-list (tensor rebuilders, storage types, `OrderedDict`,
`argparse.Namespace`, numpy scalars and dtypes, `_codecs.encode` for latin-1 bytes, `set`,
`frozenset`, `slice`) and maps every admitted name to a local, data-only implementation.
Anything else raises `UnsafeCheckpointError` before it can run. Tensors come back as numpy
arrays.

`write_torch_checkpoint` writes the same format from numpy arrays, so that the official DINO
code (`torch.load(..., weights_only=False)`, `restart_from_checkpoint`,
`load_pretrained_weights`) reads it, and `torch.load(..., weights_only=True)` reads it whenever
it holds no `args` namespace.

`read_npz_checkpoint` reads the `.npz` twins of the official fixtures (JSON values stored as
0-d unicode arrays) into the same nested structure, and `read_checkpoint` picks the right
reader from the file content.

This module imports only the standard library and numpy (and `ml_dtypes`, lazily, for
bfloat16 tensors).
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import json
import os
import pickle
import secrets
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = [
    "CheckpointArgs",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "read_checkpoint",
    "read_npz_checkpoint",
    "read_torch_checkpoint",
    "write_torch_checkpoint",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint: wrong format, truncated, or corrupt."""


class UnsafeCheckpointError(ValueError):
    """The checkpoint asks for something outside the allow-list (it would run code)."""


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
# Restricted unpickling
# --------------------------------------------------------------------------------------------


class _SafeCallable:
    """What `find_class` hands to the pickle: a callable that runs only our own code.

    Pickle's BUILD opcode can set attributes on any object it holds; `__setstate__` refuses,
    so a pickle cannot tamper with the functions below.
    """

    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[..., Any]):
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"modify {self._name!r}")

    def __repr__(self) -> str:
        return f"<allowed global {self._name}>"


class _StorageType:
    """Stands for `torch.FloatStorage` & co. inside persistent ids."""

    __slots__ = ("name", "dtype_name")

    def __init__(self, name: str, dtype_name: str):
        self.name = name
        self.dtype_name = dtype_name

    def __call__(self, *args: Any) -> Any:
        raise _Refused(f"call 'torch.{self.name}'")

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"modify 'torch.{self.name}'")


class _LoadedStorage:
    """A storage read from the archive: a flat numpy array."""

    __slots__ = ("array", "key")

    def __init__(self, key: str, array: np.ndarray):
        self.key = key
        self.array = array

    def __setstate__(self, state: Any) -> None:
        raise _Refused("modify a storage")


class _PickledDtype:
    """A `numpy.dtype` being unpickled: numeric kinds only, no fields or sub-arrays."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 5:
            raise _Malformed(f"unexpected numpy dtype state {state!r:.100}")
        byteorder = state[1]
        if any(part is not None for part in state[2:5]):
            raise _Refused("load a numpy dtype with fields or sub-arrays")
        if byteorder in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(byteorder)
        elif byteorder not in ("|", "="):
            raise _Malformed(f"unexpected numpy byte order {byteorder!r:.20}")


class _PickledArray:
    """A plain numeric `numpy.ndarray` being unpickled (`_reconstruct` + BUILD)."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Malformed(f"unexpected numpy array state {state!r:.100}")
        shape, dtype, is_fortran, raw = state[-4:]
        if not isinstance(dtype, _PickledDtype):
            raise _Refused("load a numpy array whose dtype is not a plain numeric dtype")
        if not isinstance(raw, bytes):
            raise _Refused("load a numpy array whose data is not raw bytes")
        shape = _int_tuple(shape, "numpy array shape")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(raw) != count * dtype.dtype.itemsize:
            raise _Malformed(
                f"numpy array data has {len(raw)} bytes, expected "
                f"{count * dtype.dtype.itemsize} for shape {shape} and {dtype.dtype}"
            )
        flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
        self.array = flat.reshape(shape, order="F" if is_fortran else "C").copy()


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Malformed(f"{what} is not a tuple of non-negative ints: {value!r:.100}")
    return tuple(value)


def _tensor_from_storage(
    storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any
) -> np.ndarray:
    if not isinstance(storage, _LoadedStorage):
        raise _Malformed(f"a tensor refers to {type(storage).__name__}, not to a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _Malformed(f"bad tensor storage offset {offset!r:.50}")
    size = _int_tuple(size, "tensor size")
    stride = _int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise _Malformed(f"tensor size {size} and stride {stride} differ in length")
    flat = storage.array
    if 0 in size:
        return np.empty(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise _Malformed(
            f"tensor (offset {offset}, size {size}, stride {stride}) reaches past the end of "
            f"storage {storage.key!r} ({flat.size} elements)"
        )
    count = int(np.prod(size, dtype=np.int64)) if size else 1
    if count > max(16 * flat.size, 1 << 28):
        raise _Malformed(
            f"tensor of size {size} is a view far larger than its storage {storage.key!r} "
            f"({flat.size} elements)"
        )
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data: Any, *_ignored: Any) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _Malformed("a parameter wraps something that is not a tensor")
    return data


def _codecs_encode(text: Any, encoding: Any = "utf-8", *extra: Any) -> bytes:
    # Pickle protocol 2 stores `bytes` as `_codecs.encode(<latin-1 str>, "latin1")`.
    if extra or encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused(f"call '_codecs.encode' with encoding {encoding!r:.30}")
    return text.encode("latin-1")


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, _PickledDtype):
        raise _Refused("build a numpy scalar of a non-numeric dtype")
    if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise _Malformed(f"bad numpy scalar data for {dtype.dtype}: {data!r:.50}")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


def _numpy_dtype_ctor(spec: Any, align: Any = False, copy: Any = False) -> _PickledDtype:
    if not isinstance(spec, str) or len(spec) > 5:
        raise _Refused(f"build numpy dtype {spec!r:.40}")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise _Refused(f"build numpy dtype {spec!r}") from None
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"build numpy dtype {spec!r} (only numeric dtypes are allowed)")
    return _PickledDtype(dtype)


def _numpy_ndarray(*_args: Any) -> Any:
    raise _Refused("call 'numpy.ndarray' directly")


def _numpy_reconstruct(subtype: Any, shape: Any = None, dtype_code: Any = None) -> _PickledArray:
    if subtype is not _ALLOWED_GLOBALS["numpy.ndarray"]:
        raise _Refused("reconstruct a numpy array subclass")
    return _PickledArray()


def _empty_bytes(*args: Any) -> bytes:
    if args:
        raise _Refused("call 'builtins.bytes' with arguments")
    return b""


def _bytearray(*args: Any) -> bytearray:
    if len(args) > 1 or (args and not isinstance(args[0], bytes)):
        raise _Refused("call 'builtins.bytearray' with arguments other than bytes")
    return bytearray(*args)


def _safe_container(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], list | tuple | set | frozenset)):
            raise _Refused(f"call 'builtins.{kind.__name__}' on {type(args[0]).__name__}")
        return kind(*args)

    return build


def _safe_slice(*args: Any) -> slice:
    if not 1 <= len(args) <= 3 or not all(a is None or isinstance(a, int) for a in args):
        raise _Refused("call 'builtins.slice' with arguments other than ints")
    return slice(*args)


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if len(args) > 1 or (args and not isinstance(args[0], list | tuple | dict)):
        raise _Refused("call 'collections.OrderedDict' with unexpected arguments")
    return collections.OrderedDict(*args)


def _build_allow_list() -> dict[str, Any]:
    allowed: dict[str, Any] = {}

    def add(name: str, fn: Callable[..., Any]) -> None:
        allowed[name] = _SafeCallable(name, fn)

    add("torch._utils._rebuild_tensor_v2", _tensor_from_storage)
    add("torch._utils._rebuild_tensor", _tensor_from_storage)
    add("torch._utils._rebuild_parameter", _rebuild_parameter)
    for storage in _STORAGE_DTYPES:
        allowed[f"torch.{storage}"] = _StorageType(storage, _STORAGE_DTYPES[storage])
    add("collections.OrderedDict", _ordered_dict)
    # A real type: the pickle creates it with NEWOBJ; CheckpointArgs.__setstate__ fills it.
    allowed["argparse.Namespace"] = CheckpointArgs
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        add(f"{module}.scalar", _numpy_scalar)
        add(f"{module}._reconstruct", _numpy_reconstruct)
    add("numpy.dtype", _numpy_dtype_ctor)
    add("numpy.ndarray", _numpy_ndarray)
    add("_codecs.encode", _codecs_encode)
    add("builtins.set", _safe_container(set))
    add("builtins.frozenset", _safe_container(frozenset))
    add("builtins.slice", _safe_slice)
    add("builtins.bytes", _empty_bytes)
    add("builtins.bytearray", _bytearray)
    return allowed


_ALLOWED_GLOBALS = _build_allow_list()


def _python3_name(module: str, name: str) -> str:
    # Protocol 2 pickles name Python 2 modules (`__builtin__.exec`, `commands.Popen`); the
    # standard find_class maps them back, so the allow-list and error messages use the
    # names that would actually have been imported.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: io.BytesIO,
        load_storage: Callable[[str, str, int], np.ndarray] | None,
    ):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._storages: dict[str, _LoadedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = _python3_name(module, name)
        try:
            return _ALLOWED_GLOBALS[full]
        except KeyError:
            raise _Refused(f"load {full!r}") from None

    def persistent_load(self, pid: Any) -> _LoadedStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Malformed(f"unsupported persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"persistent id names {storage_type!r:.60}, not a storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _Malformed(f"bad storage reference {pid!r:.100}")
        if self._load_storage is None:
            raise _Malformed("the pickle refers to tensor storages but is not inside a zip")
        storage = self._storages.get(key)
        if storage is None:
            array = self._load_storage(key, storage_type.dtype_name, numel)
            storage = self._storages[key] = _LoadedStorage(key, array)
        elif storage.array.size != numel or storage.array.dtype != _numpy_dtype(
            storage_type.dtype_name
        ):
            raise _Malformed(f"storage {key!r} is referenced with two different types or sizes")
        return storage


def _finalize(obj: Any, memo: dict[int, Any]) -> Any:
    """Replaces the unpickling placeholders by numpy objects, in place where possible."""
    if isinstance(obj, np.ndarray | str | bytes | int | float | np.generic) or obj is None:
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _PickledDtype):
        result: Any = obj.dtype
    elif isinstance(obj, _PickledArray):
        if obj.array is None:
            raise _Malformed("a numpy array was created but never filled")
        result = obj.array
    elif isinstance(obj, _LoadedStorage):
        result = obj.array.copy()
    elif isinstance(obj, dict):
        memo[key] = obj
        for k, v in list(obj.items()):
            new = _finalize(v, memo)
            if new is not v:
                obj[k] = new
        return obj
    elif isinstance(obj, list):
        memo[key] = obj
        for i, v in enumerate(obj):
            new = _finalize(v, memo)
            if new is not v:
                obj[i] = new
        return obj
    elif isinstance(obj, tuple | set | frozenset):
        items = [_finalize(v, memo) for v in obj]
        changed = any(a is not b for a, b in zip(items, obj))
        result = type(obj)(items) if changed else obj
    else:
        result = obj
    memo[key] = result
    return result


def _unpickle(
    data: bytes,
    path: str,
    load_storage: Callable[[str, str, int], np.ndarray] | None,
) -> Any:
    unpickler = _RestrictedUnpickler(io.BytesIO(data), load_storage)
    try:
        obj = unpickler.load()
        return _finalize(obj, {})
    except _Refused as exc:
        raise UnsafeCheckpointError(
            f"refusing to {exc.args[0]} from {path}: only tensors, containers and plain data "
            "are allowed"
        ) from None
    except _Malformed as exc:
        raise CheckpointFormatError(f"cannot read {path}: {exc.args[0]}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError,
            AttributeError, RecursionError, struct.error) as exc:  # fmt: skip
        if isinstance(exc, CheckpointFormatError | UnsafeCheckpointError):
            raise
        raise CheckpointFormatError(
            f"cannot read {path}: its pickle is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

# torch's legacy (pre-1.6, non-zip) format starts with a protocol-2 pickle of this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEADER = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
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


def _npz_value(key: str, array: np.ndarray) -> Any:
    if array.ndim == 0 and array.dtype.kind == "U":
        text = str(array[()])
        try:
            return json.loads(text)
        except ValueError:
            return text
    return array


def read_npz_checkpoint(path: PathLike) -> Any:
    """Reads an `.npz` twin of a checkpoint into the structure `read_torch_checkpoint` returns.

    Loads with `allow_pickle=False`. Two layouts are understood (see the fixtures README):

    * a plain state dict: keys unchanged -> `collections.OrderedDict` of arrays;
    * a flattened full DINO checkpoint: `student/<k>`, `teacher/<k>`, `dino_loss/center`,
      `optimizer/state/<idx>/{exp_avg,exp_avg_sq,step}`, `optimizer/param_groups` (JSON),
      `epoch` and `args` (JSON of `vars(args)`) -> `{"student": OrderedDict, "teacher":
      OrderedDict, "optimizer": {"state": {int: {name: array}}, "param_groups": [dict]},
      "epoch": int, "args": CheckpointArgs, "dino_loss": OrderedDict}`, in file order.

    Other `<a>/<b>` keys go to `result[a][b]`; 0-d unicode arrays are decoded as JSON. JSON
    has no tuples or numpy scalars, so the values that the `.pth` holds as tuples (e.g.
    `betas`) or numpy floats (`lr`) come back as lists and Python floats.

    Args:
        path: an `.npz` file.

    Returns:
        The nested checkpoint structure described above.

    Raises:
        CheckpointFormatError: the file is not a readable `.npz` archive.
        UnsafeCheckpointError: an entry is a pickled object array.

    Example:

    >>> ckpt = read_npz_checkpoint("golden/checkpoint.npz")  # doctest: +SKIP
    >>> ckpt["args"].arch, ckpt["optimizer"]["state"][0]["step"]  # doctest: +SKIP
    ('vit_mini', array(6., dtype=float32))
    """
    path = os.fspath(path)
    head, size = _read_head(path)
    if size == 0:
        raise _format_error(path, "the file is empty (0 bytes)")
    if not (head.startswith(b"PK") or zipfile.is_zipfile(path)):
        raise _format_error(path, f"not an .npz archive (the file starts with {head[:16]!r})")
    with _open_zip(path) as archive:
        names = archive.namelist()
    bad = [n for n in names if not n.endswith(".npy")]
    if bad:
        hint = (
            "; it looks like a torch checkpoint, use read_torch_checkpoint()"
            if any(n.endswith("data.pkl") for n in bad)
            else ""
        )
        raise _format_error(path, f"not an .npz archive: entry {bad[0]!r} is not an array{hint}")

    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise UnsafeCheckpointError(
                            f"refusing to load {key!r} from {path}: it is a pickled object array"
                        ) from None
                    raise _format_error(path, f"entry {key!r} is corrupt ({exc})") from None
    except _ZIP_READ_ERRORS as exc:
        raise _format_error(path, f"the archive is corrupt or truncated ({exc})") from None

    full_heads = {"student", "teacher", "optimizer", "dino_loss"}
    is_full = any(
        k in ("epoch", "args") or ("/" in k and k.split("/", 1)[0] in full_heads) for k in arrays
    )
    if not is_full:
        return collections.OrderedDict(arrays)

    result: dict[str, Any] = {}
    for key, array in arrays.items():
        head_key, _, rest = key.partition("/")
        if not rest:
            value = _npz_value(key, array)
            if key == "epoch" and array.ndim == 0 and array.dtype.kind in "iu":
                value = int(array)
            elif key == "args" and isinstance(value, dict):
                value = CheckpointArgs(value)
            result[key] = value
        elif head_key == "optimizer":
            optimizer = result.setdefault("optimizer", {"state": {}})
            if rest.startswith("state/"):
                idx, _, name = rest[len("state/") :].partition("/")
                if not idx.isdigit() or not name:
                    raise _format_error(path, f"unexpected optimizer key {key!r}")
                optimizer["state"].setdefault(int(idx), {})[name] = array
            else:
                optimizer[rest] = _npz_value(key, array)
        else:
            group = result.setdefault(head_key, collections.OrderedDict())
            if not isinstance(group, dict):
                raise _format_error(path, f"key {key!r} clashes with key {head_key!r}")
            group[rest] = _npz_value(key, array)
    return result


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


# --------------------------------------------------------------------------------------------
# Writing: a protocol-2 pickle emitter for the data types of a checkpoint
# --------------------------------------------------------------------------------------------


class _PickleEmitter:
    """Writes the subset of pickle protocol 2 that `torch.save` produces for checkpoints.

    `pickle.Pickler` cannot be used: it checks every global it writes by importing it, and
    the globals of a torch checkpoint (`torch._utils._rebuild_tensor_v2`, ...) need torch.
    """

    _BATCH = 1000

    def __init__(self) -> None:
        self._out = bytearray()
        self._memo: dict[tuple[str, str], int] = {}
        self._active: set[int] = set()
        self.storages: list[tuple[str, np.ndarray]] = []
        self._storage_keys: dict[int, str] = {}

    def dump(self, obj: Any) -> bytes:
        self._out += b"\x80\x02"
        self._save(obj, "obj")
        self._out += b"."
        return bytes(self._out)

    # -- scalars --------------------------------------------------------------------------

    def _global(self, module: str, name: str) -> None:
        idx = self._memo.get((module, name))
        if idx is not None:
            self._out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
            return
        idx = len(self._memo)
        self._memo[(module, name)] = idx
        self._out += f"c{module}\n{name}\n".encode("ascii")
        self._out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def _int(self, value: int) -> None:
        if 0 <= value < 256:
            self._out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self._out += b"M" + struct.pack("<H", value)
        elif -(2**31) <= value < 2**31:
            self._out += b"J" + struct.pack("<i", value)
        else:
            nbytes = (value.bit_length() >> 3) + 1
            raw = value.to_bytes(nbytes, "little", signed=True)
            if value < 0 and nbytes > 1 and raw[-1] == 0xFF and raw[-2] & 0x80:
                raw = raw[:-1]
            if len(raw) < 256:
                self._out += b"\x8a" + bytes([len(raw)]) + raw
            else:
                self._out += b"\x8b" + struct.pack("<i", len(raw)) + raw

    def _str(self, value: str) -> None:
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) >= 2**32:
            raise ValueError("strings of 4 GiB or more cannot be written with pickle protocol 2")
        self._out += b"X" + struct.pack("<I", len(raw)) + raw

    def _tuple_of_ints(self, values: tuple[int, ...]) -> None:
        if not values:
            self._out += b")"
            return
        if len(values) > 3:
            self._out += b"("
        for v in values:
            self._int(v)
        self._out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")

    # -- dispatch -------------------------------------------------------------------------

    def _save(self, obj: Any, where: str) -> None:
        if obj is None:
            self._out += b"N"
        elif isinstance(obj, bool):
            self._out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, np.ndarray):
            self._array(obj, where)
        elif isinstance(obj, np.generic):
            value = obj.item()
            if isinstance(value, np.generic) or not isinstance(
                value, bool | int | float | str | bytes
            ):
                raise TypeError(
                    f"cannot write the numpy scalar {obj!r} at {where} to a torch checkpoint"
                )
            self._save(value, where)
        elif isinstance(obj, int):
            self._int(int(obj))
        elif isinstance(obj, float):
            self._out += b"G" + struct.pack(">d", float(obj))
        elif isinstance(obj, str):
            self._str(str.__str__(obj))
        elif isinstance(obj, bytes | bytearray):
            # What pickle protocol 2 (and torch.save) writes for bytes.
            self._global("_codecs", "encode")
            self._str(bytes(obj).decode("latin-1"))
            self._str("latin1")
            self._out += b"\x86R"
        elif isinstance(obj, CheckpointArgs | argparse.Namespace):
            self._namespace(obj, where)
        elif isinstance(obj, dict | list | tuple):
            if id(obj) in self._active:
                raise ValueError(f"cannot write a self-referencing container at {where}")
            self._active.add(id(obj))
            try:
                if isinstance(obj, dict):
                    self._dict(obj, where)
                elif isinstance(obj, list):
                    self._list(obj, where)
                else:
                    self._tuple(obj, where)
            finally:
                self._active.discard(id(obj))
        elif hasattr(obj, "__array__") and not isinstance(obj, type):
            self._array(np.asarray(obj), where)
        else:
            raise TypeError(
                f"cannot write {type(obj).__module__}.{type(obj).__qualname__} at {where} to a "
                "torch checkpoint; supported are numpy arrays, dict/OrderedDict, list, tuple, "
                "str, bytes, int, float, bool, None and CheckpointArgs/argparse.Namespace"
            )

    def _items(self, items: list[tuple[Any, Any]], where: str) -> None:
        for start in range(0, len(items), self._BATCH):
            self._out += b"("
            for key, value in items[start : start + self._BATCH]:
                self._save(key, f"{where} (a key)")
                self._save(value, f"{where}[{key!r}]")
            self._out += b"u"

    def _dict(self, obj: dict, where: str) -> None:
        if isinstance(obj, collections.OrderedDict):
            self._global("collections", "OrderedDict")
            self._out += b")R"
        else:
            self._out += b"}"
        self._items(list(obj.items()), where)
        state = getattr(obj, "__dict__", None)
        if isinstance(obj, collections.OrderedDict) and state:
            # e.g. the `_metadata` that torch's state_dict() attaches.
            self._save(dict(state), f"{where}.__dict__")
            self._out += b"b"

    def _list(self, obj: list, where: str) -> None:
        self._out += b"]"
        for start in range(0, len(obj), self._BATCH):
            self._out += b"("
            for i, value in enumerate(obj[start : start + self._BATCH], start):
                self._save(value, f"{where}[{i}]")
            self._out += b"e"

    def _tuple(self, obj: tuple, where: str) -> None:
        if not obj:
            self._out += b")"
            return
        if len(obj) > 3:
            self._out += b"("
        for i, value in enumerate(obj):
            self._save(value, f"{where}[{i}]")
        self._out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(obj), b"t")

    def _namespace(self, obj: CheckpointArgs | argparse.Namespace, where: str) -> None:
        fields = dict(obj) if isinstance(obj, CheckpointArgs) else dict(vars(obj))
        bad = [k for k in fields if not isinstance(k, str)]
        if bad:
            raise TypeError(f"argument names must be str, got {bad[0]!r} at {where}")
        self._global("argparse", "Namespace")
        self._out += b")\x81}"
        self._items(list(fields.items()), where)
        self._out += b"b"

    def _array(self, array: np.ndarray, where: str) -> None:
        dtype_name = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
        storage_type = _DTYPE_STORAGES.get(dtype_name)
        if storage_type is None or array.dtype.fields is not None:
            raise TypeError(
                f"cannot write an array of dtype {array.dtype} at {where}: torch storages "
                f"exist for {sorted(_DTYPE_STORAGES)}"
            )
        key = self._storage_keys.get(id(array))
        if key is None:
            data = np.ascontiguousarray(array)
            if data.dtype.byteorder == ">" or (
                data.dtype.byteorder == "=" and sys.byteorder == "big"
            ):
                data = data.astype(data.dtype.newbyteorder("<"))
            key = str(len(self.storages))
            self.storages.append((key, data))
            self._storage_keys[id(array)] = key
        shape = tuple(int(n) for n in array.shape)
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * max(shape[i + 1], 1)
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1

        self._global("torch._utils", "_rebuild_tensor_v2")
        self._out += b"(("
        self._str("storage")
        self._global("torch", storage_type)
        self._str(key)
        self._str("cpu")
        self._int(numel)
        self._out += b"tQ"
        self._int(0)
        self._tuple_of_ints(shape)
        self._tuple_of_ints(tuple(strides))
        self._out += b"\x89"
        self._global("collections", "OrderedDict")
        self._out += b")RtR"


# --------------------------------------------------------------------------------------------
# Writing: a zip writer with torch's layout (stored entries, 64-byte aligned data)
# --------------------------------------------------------------------------------------------

_ALIGNMENT = 64
_U32 = 0xFFFFFFFF
_DOS_DATE_1980 = (0 << 9) | (1 << 5) | 1  # 1980-01-01


def _record_bytes(data: bytes | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(data.reshape(-1).view(np.uint8))
    return memoryview(data)


def _write_zip(
    f: io.BufferedWriter,
    records: list[tuple[str, memoryview, int]],
    force_zip64: bool = False,
) -> None:
    """Writes `(name, data, crc32)` records as a zip archive laid out like torch's."""
    central: list[bytes] = []
    offset = 0
    for name, view, crc in records:
        raw_name = name.encode("utf-8")
        size = view.nbytes
        zip64 = force_zip64 or size >= _U32
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        pad = -(offset + 30 + len(raw_name) + len(extra) + 4) % _ALIGNMENT
        extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding, as torch does
        version = 45 if zip64 else 20
        header_size = _U32 if zip64 else size
        f.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                version,
                0x0800,  # UTF-8 names
                0,  # stored
                0,
                _DOS_DATE_1980,
                crc,
                header_size,
                header_size,
                len(raw_name),
                len(extra),
            )
        )
        f.write(raw_name)
        f.write(extra)
        f.write(view)

        cd_zip64 = []
        cd_size = size
        cd_offset = offset
        if force_zip64 or size >= _U32:
            cd_zip64 += [size, size]
            cd_size = _U32
        if force_zip64 or offset >= _U32:
            cd_zip64.append(offset)
            cd_offset = _U32
        cd_extra = (
            struct.pack(f"<HH{len(cd_zip64)}Q", 1, 8 * len(cd_zip64), *cd_zip64)
            if cd_zip64
            else b""
        )
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                version,
                45 if cd_zip64 else 20,
                0x0800,
                0,
                0,
                _DOS_DATE_1980,
                crc,
                cd_size,
                cd_size,
                len(raw_name),
                len(cd_extra),
                0,
                0,
                0,
                0,
                cd_offset,
            )
            + raw_name
            + cd_extra
        )
        offset += 30 + len(raw_name) + len(extra) + size

    cd_start = offset
    for entry in central:
        f.write(entry)
    cd_length = sum(len(e) for e in central)
    count = len(central)
    zip64_end = force_zip64 or count >= 0xFFFF or cd_start >= _U32 or cd_length >= _U32
    if zip64_end:
        end64_offset = cd_start + cd_length
        f.write(
            struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_length, cd_start
            )
        )
        f.write(struct.pack("<IIQI", 0x07064B50, 0, end64_offset, 1))
    f.write(
        struct.pack(
            "<IHHHHIIH",
            0x06054B50,
            0,
            0,
            0xFFFF if zip64_end else count,
            0xFFFF if zip64_end else count,
            _U32 if zip64_end else cd_length,
            _U32 if zip64_end else cd_start,
            0,
        )
    )


def _archive_name(path: str) -> str:
    stem = os.path.basename(path)
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".")
    return cleaned or "archive"


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
    emitter = _PickleEmitter()
    pickled = emitter.dump(obj)

    prefix = _archive_name(path)
    contents: list[tuple[str, bytes | np.ndarray]] = [
        (f"{prefix}/data.pkl", pickled),
        (f"{prefix}/.format_version", b"1"),
        (f"{prefix}/.storage_alignment", str(_ALIGNMENT).encode()),
        (f"{prefix}/byteorder", b"little"),
    ]
    contents += [(f"{prefix}/data/{key}", array) for key, array in emitter.storages]
    contents.append((f"{prefix}/version", b"3\n"))
    records = []
    combined_crc = 0
    for name, data in contents:
        view = _record_bytes(data)
        crc = zlib.crc32(view)
        combined_crc = zlib.crc32(crc.to_bytes(4, "little"), combined_crc)
        records.append((name, view, crc))
    # torch.save writes a 40-digit id: 20 random digits and 20 derived from the content.
    serialization_id = f"{secrets.randbits(64):020d}{combined_crc:020d}".encode()
    records.append(
        (
            f"{prefix}/.data/serialization_id",
            memoryview(serialization_id),
            zlib.crc32(serialization_id),
        )
    )

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
