"""Unpickling without running code: an allow-list of data-only globals.

`pickle.load` imports and calls whatever globals a pickle names, so a checkpoint from the
internet can run arbitrary code. `unpickle` uses an unpickler whose `find_class` admits a
short allow-list (tensor rebuilders, storage types, `OrderedDict`, `argparse.Namespace`,
numpy scalars and dtypes, `_codecs.encode` for latin-1 bytes, `set`, `frozenset`,
`slice`) and maps every admitted name to a local, data-only implementation. Anything else
raises before it can run. Standard library and numpy only.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_dino.checkpoints.checkpoint_types import (
    _STORAGE_DTYPES,
    CheckpointArgs,
    CheckpointFormatError,
    UnsafeCheckpointError,
    _Malformed,
    _numpy_dtype,
    _Refused,
)

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



def unpickle_data(data: bytes, path: str = "<pickle>") -> Any:
    """A plain-data pickle (lists, dicts, strings, numbers, numpy arrays), loaded safely.

    For data files that are pickles, such as the revisited Oxford/Paris ground truth
    (`gnd_roxford5k.pkl`): the same allow-list as the `.pth` reader, so a pickle that
    would import or call anything else raises `UnsafeCheckpointError` before it runs.

    Example:

    >>> import pickle
    >>> unpickle_data(pickle.dumps({"imlist": ["a", "b"], "gnd": [{"easy": [0]}]}))
    {'imlist': ['a', 'b'], 'gnd': [{'easy': [0]}]}
    """
    return _unpickle(data, path, None)
