"""`.npz` checkpoints: the flattened twins of `.pth` files, read and written.

The official fixtures come with `.npz` twins (JSON values as 0-d unicode arrays), and
keras_dino writes its checkpoints as `.npz` too when asked; both read back into the
nested structure that `read_torch_checkpoint` returns. Loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import collections
import json
import os
import zipfile
from typing import Any

import numpy as np

from keras_dino.checkpoints.checkpoint_types import (
    _ZIP_READ_ERRORS,
    CheckpointArgs,
    PathLike,
    UnsafeCheckpointError,
    _format_error,
    _open_zip,
    _read_head,
)


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


def write_npz_checkpoint(checkpoint: dict, path: PathLike) -> str:
    """Writes a full DINO checkpoint dict as a flat `.npz` (the fixtures' layout), atomically.

    The inverse of `read_npz_checkpoint` for full checkpoints: `student/<k>`,
    `teacher/<k>`, `dino_loss/center`, `optimizer/state/<idx>/<slot>`, and JSON for
    `optimizer/param_groups`, `epoch` and `args`.
    """
    path = os.fspath(path)
    flat = {}
    for net in ("student", "teacher"):
        for key, value in checkpoint[net].items():
            flat[f"{net}/{key}"] = value
    flat["dino_loss/center"] = checkpoint["dino_loss"]["center"]
    for idx, slots in checkpoint["optimizer"]["state"].items():
        for slot, value in slots.items():
            flat[f"optimizer/state/{idx}/{slot}"] = value
    flat["optimizer/param_groups"] = np.array(json.dumps(checkpoint["optimizer"]["param_groups"]))
    flat["epoch"] = np.array(checkpoint["epoch"], np.int64)
    flat["args"] = np.array(json.dumps(dict(checkpoint["args"])))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)
    return path
