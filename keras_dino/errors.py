"""The exceptions keras_dino raises, in one place.

Every class derives from `KerasDinoError` (catch it to catch any of them) and from the
builtin exception the same mistake raised before (`ValueError`, `KeyError`, `OSError`,
...), so `except ValueError` keeps working. Messages are short and name the fix.

This module imports nothing from keras_dino: any module may import it.

Example:

>>> from keras_dino import errors
>>> issubclass(errors.UnknownPresetError, (errors.KerasDinoError, KeyError, ValueError))
True
>>> print(errors.UnknownPresetError("unknown preset 'dino_vits61'; did you mean 'dino_vits16'?"))
unknown preset 'dino_vits61'; did you mean 'dino_vits16'?
"""

import difflib
from collections.abc import Iterable

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKeyError",
    "CheckpointShapeError",
    "DataSourceNotFoundError",
    "InputError",
    "InputWarning",
    "KerasDinoError",
    "MissingArchitectureError",
    "NonFiniteLossError",
    "PretrainedDownloadError",
    "UnknownPresetError",
    "UnknownPresetOrFileError",
    "UnsafeCheckpointError",
    "VideoInputError",
    "WrongModelError",
    "did_you_mean",
]


class KerasDinoError(Exception):
    """The base of every keras_dino exception."""


class _PlainMessage:
    """`str()` is the message as written (KeyError quotes its argument)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def did_you_mean(name, known: Iterable[str], n: int = 1, cutoff: float = 0.6,
                 spell=repr) -> str:
    """`"did you mean 'x'?"` for the names of `known` closest to `name`, or `""`.

    The one "did you mean" of keras_dino's messages (presets, architectures, tools):
    up to `n` names, closest first, each written by `spell` (quoted by default).

    Example:

    >>> did_you_mean("dino_vits61", ["dino_vits16", "dino_vitb16", "dino_resnet50"])
    "did you mean 'dino_vits16'?"
    >>> did_you_mean("resnt50", ["resnet50", "resnet101", "vit_small"], n=2)
    "did you mean 'resnet50' or 'resnet101'?"
    >>> did_you_mean("vit_small", ["arch_a"], spell=lambda c: f"--arch={c}")
    ''

    The words of a snake_case name in another order come first:

    >>> did_you_mean("teacher_momentum", ["center_momentum", "momentum_teacher"])
    "did you mean 'momentum_teacher'?"
    """
    known = list(known)
    words = sorted(str(name).lower().split("_"))
    swapped = [c for c in known if c != name and sorted(c.lower().split("_")) == words]
    close = swapped + [c for c in difflib.get_close_matches(str(name), known, n, cutoff)
                       if c not in swapped]
    close = [spell(c) for c in close[:n]]
    if not close:
        return ""
    names = ", ".join(close[:-1]) + " or " + close[-1] if len(close) > 1 else close[0]
    return f"did you mean {names}?"


# ------------------------------------------------------------------------------ presets


class UnknownPresetError(_PlainMessage, KerasDinoError, KeyError, ValueError):
    """A preset name that does not exist; the message suggests the closest names.

    A `KeyError` (a missing key of `keras_dino.list_presets()`) and a `ValueError`.
    """


class UnknownPresetOrFileError(UnknownPresetError, FileNotFoundError):
    """A name that is neither a preset nor an existing file (a `FileNotFoundError` too)."""


class PretrainedDownloadError(KerasDinoError, OSError):
    """A preset's weights could not be downloaded.

    The message names the URL that failed and the cache path where a manually downloaded
    copy of the file is picked up.

    Example:

    >>> issubclass(PretrainedDownloadError, OSError)
    True
    """


# -------------------------------------------------------------------------- checkpoints


class CheckpointError(KerasDinoError):
    """The base of the errors about checkpoint files and their contents."""


class CheckpointFormatError(CheckpointError, ValueError):
    """The file is not a readable checkpoint: wrong format, truncated, or corrupt."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """The checkpoint asks for something outside the allow-list (it would run code)."""


class CheckpointKeyError(_PlainMessage, CheckpointError, KeyError):
    """A state dict's keys do not match the model: lists the missing and unexpected ones.

    Example:

    >>> print(CheckpointKeyError("missing keys (1): norm.bias"))
    missing keys (1): norm.bias
    """


class CheckpointShapeError(CheckpointError, ValueError):
    """A tensor of the checkpoint does not have the shape the model expects.

    Example:

    >>> issubclass(CheckpointShapeError, ValueError)
    True
    """


class ArchitectureMismatchError(CheckpointError, ValueError):
    """The checkpoint holds another network than the one asked for (family, width, depth,
    patch size)."""


class MissingArchitectureError(CheckpointError, ValueError):
    """The checkpoint does not record an argument its network needs and that its tensors
    cannot tell (the number of attention heads of a custom width): the caller must pass it.

    Example:

    >>> issubclass(MissingArchitectureError, ValueError)
    True
    """


# ------------------------------------------------------------------------------- inputs


class InputError(KerasDinoError, ValueError):
    """Inputs a function cannot use as given (dtype, value range, shape, type)."""


class InputWarning(UserWarning):
    """Inputs that work but are probably not what was meant (e.g. pixels in [0, 1] where
    0..255 is expected)."""


class WrongModelError(InputError, TypeError):
    """A model of the wrong kind for the function, e.g. a `DINO` training model where a
    backbone is expected."""


class DataSourceNotFoundError(InputError, FileNotFoundError):
    """A training or evaluation source (folder, file, TFDS name) that does not exist."""


class VideoInputError(InputError):
    """A video or frame folder that cannot be used: empty, unreadable, wrong format."""


# ----------------------------------------------------------------------------- training


class NonFiniteLossError(KerasDinoError, FloatingPointError):
    """The DINO loss became NaN or infinite."""
