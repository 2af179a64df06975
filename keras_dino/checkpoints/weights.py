"""Where weights come from: a preset name (downloaded once into the Keras cache) or a file.

`resolve_weights` is the one place a "preset or file" argument becomes a local path.
"""

import dataclasses
import os
import pathlib

import keras

from keras_dino.errors import PretrainedDownloadError, UnknownPresetOrFileError
from keras_dino.models.presets import PRESETS, Preset, get_preset, unknown_preset_message


def preset_url(name: str, with_head: bool = False, file: str | None = None) -> str:
    """Official download URL of a preset's backbone, full checkpoint or linear classifier.

    Args:
        name: a preset (`dino_vits16`, ..., `dino_resnet50`).
        with_head: the full training checkpoint rather than the backbone.
        file: `backbone`, `full_checkpoint` or `linear` (the released ImageNet linear
            classifier); overrides `with_head`.

    Example:

    >>> preset_url("dino_vits16")
    'https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth'
    >>> preset_url("dino_resnet50", file="linear").rsplit("/", 1)[1]
    'dino_resnet50_linearweights.pth'
    """
    return get_preset(name).url(file or ("full_checkpoint" if with_head else "backbone"))


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return pathlib.Path(base) / "models" / "keras_dino"  # parents[2] of a file is KERAS_HOME


def _fetch(name: str, file: str) -> str:
    url = preset_url(name, file=file)
    fname = url.rsplit("/", 1)[1]
    target = _cache_dir() / fname
    if target.is_file():
        return str(target)
    try:
        return keras.utils.get_file(
            fname, origin=url, cache_dir=str(target.parents[2]), cache_subdir="models/keras_dino"
        )
    except Exception as error:  # network errors come in many types; all end here.
        raise PretrainedDownloadError(
            f"could not download the '{name}' weights from {url} ({type(error).__name__}: "
            f"{error}). If this machine is offline, download that file elsewhere and put it "
            f"at {target}, or pass its local path to load_pretrained."
        ) from error


def preset_file(name: str, file: str = "backbone") -> str:
    """Local path of one of a preset's files, downloaded once into the Keras cache.

    `file` is `backbone`, `full_checkpoint` or `linear` (see `preset_url`). Offline,
    raises `PretrainedDownloadError` naming the URL and the cache path where a copy
    downloaded elsewhere is picked up.

    Example:

    ```python
    path = preset_file("dino_vits16", "linear")  # ~/.keras/models/keras_dino/...
    ```
    """
    return _fetch(name, file)


def file_sha256(path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks.

    Example:

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Weights:
    """A resolved "preset or file": the local `path`, and the `preset` it came from (or None).

    `file` is the preset file that was asked for (`backbone`, `full_checkpoint`, `linear`).

    Example:

    >>> weights = resolve_weights("dino_vitb8", "linear", download=False)
    >>> weights.name, weights.preset.arch, weights.path.rsplit("/", 1)[1]
    ('dino_vitb8', 'vit_base', 'dino_vitbase8_linearweights.pth')
    """

    path: str
    preset: Preset | None = None
    file: str = "backbone"

    @property
    def name(self) -> str:
        """The preset name, or the path as given."""
        return self.preset.name if self.preset is not None else self.path

    def describe(self) -> str:
        """Where the weights come from, for logs and export metadata: the preset and its
        URL, or the file's absolute path and its sha256.

        Example:

        >>> resolve_weights("dino_vits16", download=False).describe()
        "preset 'dino_vits16' (https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth)"
        """
        if self.preset is not None:
            return f"preset '{self.preset.name}' ({self.preset.url(self.file)})"
        return f"checkpoint {pathlib.Path(self.path).resolve()} (sha256 {file_sha256(self.path)})"


def resolve_weights(name_or_path, file: str = "backbone", download: bool = True) -> Weights:
    """A preset name or a local file, as a local file.

    A preset's `file` (`backbone`, `full_checkpoint` or `linear`) is downloaded once into
    the Keras cache (with `download=False` the path is that of the cached copy, which may
    not exist yet). Anything else must be an existing file; a name that is neither
    raises `UnknownPresetOrFileError` with the closest preset names.

    Example:

    >>> resolve_weights("dino_vits16", download=False).path.endswith("dino_deitsmall16_pretrain.pth")
    True
    >>> resolve_weights("dino_vitl16")
    Traceback (most recent call last):
    ...
    keras_dino.errors.UnknownPresetOrFileError: 'dino_vitl16' is neither a preset nor an existing file; did you mean ...
    """
    name = os.fspath(name_or_path)
    if name in PRESETS:
        if download:
            path = _fetch(name, file)
        else:
            path = str(_cache_dir() / preset_url(name, file=file).rsplit("/", 1)[1])
        return Weights(path, PRESETS[name], file)
    if not os.path.isfile(name):
        raise UnknownPresetOrFileError(
            unknown_preset_message(name, "neither a preset nor an existing file"))
    return Weights(name, None, file)
