"""`load_pretrained`: official DINO weights (presets or local files) as Keras models."""

import json
import os
import pathlib
import zipfile

import keras
import numpy as np

from keras_dino.checkpoints import official
from keras_dino.errors import (  # noqa: F401 (PretrainedDownloadError: its old home)
    ArchitectureMismatchError,
    PretrainedDownloadError,
    UnknownPresetOrFileError,
)
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper
from keras_dino.models.presets import PRESETS, get_preset, unknown_preset_message
from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer

# `PRESETS`: the released weights, as data (`keras_dino.models.presets`).


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


def _fetch(name: str, with_head: bool, file: str | None = None) -> str:
    url = preset_url(name, with_head, file)
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
    return _fetch(name, False, file)


def _as_dict(args) -> dict:
    if args is None:
        return {}
    if isinstance(args, str):
        return json.loads(args)
    if isinstance(args, dict):
        return dict(args)
    return dict(vars(args))


def read_state(path) -> dict:
    """Reads `.pth` (without torch or pickled code) or `.npz` checkpoints by content.

    Example:

    >>> state = read_state("dino_deitsmall16_pretrain.pth")  # doctest: +SKIP
    >>> state["pos_embed"].shape  # doctest: +SKIP
    (1, 197, 384)
    """
    from keras_dino.checkpoints.torch_format import read_checkpoint

    return read_checkpoint(path)


def _backbone_kwargs(state_dict, arch, patch_size, args, overrides):
    num_heads = overrides.pop("num_heads", None)
    args_arch = args.get("arch")
    for name in (arch, args_arch):
        if name in ARCHITECTURES and num_heads is None:
            num_heads = ARCHITECTURES[name]["num_heads"]
    vit_kwargs = args.get("vit_kwargs") or {}
    if num_heads is None and "num_heads" in vit_kwargs:
        num_heads = vit_kwargs["num_heads"]
    config = official.infer_backbone_config(state_dict, num_heads=num_heads)
    if arch in ARCHITECTURES:
        expected = ARCHITECTURES[arch]
        found = (config["embed_dim"], config["depth"])
        if found != (expected["embed_dim"], expected["depth"]):
            raise ArchitectureMismatchError(
                f"the checkpoint holds a model of width {found[0]} and depth {found[1]}, "
                f"not a {arch} (width {expected['embed_dim']}, depth {expected['depth']})."
            )
    if patch_size is not None and patch_size != config["patch_size"]:
        raise ArchitectureMismatchError(
            f"patch_size={patch_size} was asked for, but the checkpoint's patch embedding "
            f"has patch size {config['patch_size']}."
        )
    config.update(overrides)
    return config


def _build_resnet(state_dict, arch, overrides):
    """A `ResNet` whose shape is read off a torchvision-layout state dict."""
    from keras_dino.models.resnet import RESNETS, ResNet, resnet_name

    config = official.infer_resnet_config(state_dict)
    config.update({k: v for k, v in overrides.items() if k != "num_heads"})
    backbone = ResNet(**config, name=arch if arch and arch not in RESNETS else "resnet")
    if arch in RESNETS and resnet_name(backbone) != arch:
        raise ArchitectureMismatchError(f"the checkpoint holds a {resnet_name(backbone)} ResNet, not a {arch}.")
    official.load_state_dict(official.backbone_variable_map(backbone), state_dict, "backbone")
    return backbone


def _build_xcit(state_dict, arch, patch_size, args, overrides):
    """An `XCiT` whose shape is read off an official XCiT state dict."""
    from keras_dino.models.xcit import XCITS, XCiT

    config = official.infer_xcit_config(state_dict)
    expected = XCITS.get(arch) or XCITS.get(args.get("arch"))
    if expected:
        config["eta"], config["tokens_norm"] = expected["eta"], expected["tokens_norm"]
    if arch in XCITS:
        keys = ("patch_size", "embed_dim", "depth", "num_heads")
        if any(config[k] != expected[k] for k in keys):
            raise ArchitectureMismatchError(
                f"the checkpoint holds an XCiT of patch {config['patch_size']}, width "
                f"{config['embed_dim']}, depth {config['depth']}, {config['num_heads']} heads, "
                f"not a {arch}.")
    if patch_size is not None and patch_size != config["patch_size"]:
        raise ArchitectureMismatchError(f"patch_size={patch_size} was asked for, but the checkpoint's XCiT "
                         f"has patch size {config['patch_size']}.")
    config.update({k: v for k, v in overrides.items() if k != "num_heads"})
    backbone = XCiT(**config, name=arch if arch else "xcit")
    official.load_state_dict(official.backbone_variable_map(backbone), state_dict, "backbone")
    return backbone


def _check_family(state_dict, arch):
    """A checkpoint of one kind of network asked for as another: name both."""
    from keras_dino.models.resnet import RESNETS
    from keras_dino.models.xcit import XCITS

    families = {"Vision Transformer": ARCHITECTURES, "ResNet": RESNETS, "XCiT": XCITS}
    asked = next((family for family, names in families.items() if arch in names), None)
    if official.is_resnet_state(state_dict):
        held = "ResNet"
    elif official.is_xcit_state(state_dict):
        held = "XCiT"
    else:
        held = "Vision Transformer"
    if asked is not None and asked != held:
        article = {"XCiT": "an"}
        raise ArchitectureMismatchError(f"the checkpoint holds {article.get(held, 'a')} {held} backbone, but "
                         f"arch='{arch}' is {article.get(asked, 'a')} {asked}.")


def _build_backbone(state_dict, arch, patch_size, args, overrides):
    _check_family(state_dict, arch)
    if official.is_resnet_state(state_dict):
        return _build_resnet(state_dict, arch, overrides)
    if official.is_xcit_state(state_dict):
        return _build_xcit(state_dict, arch, patch_size, args, overrides)
    config = _backbone_kwargs(state_dict, arch, patch_size, args, dict(overrides))
    backbone = VisionTransformer(**config)
    official.load_state_dict(official.backbone_variable_map(backbone), state_dict, "backbone")
    return backbone


def _build_head(head_state, args):
    if not head_state:
        raise official.CheckpointKeyError(
            "with_head=True needs a checkpoint that contains the DINO head (a full training "
            "checkpoint); this one holds a backbone only."
        )
    config = official.infer_head_config(head_state)
    config["norm_last_layer"] = bool(args.get("norm_last_layer", True))
    head = DINOHead(**config)
    official.load_state_dict(official.head_variable_map(head), head_state, "DINO head")
    return head


def load_pretrained(
    name_or_path,
    arch: str | None = None,
    patch_size: int | None = None,
    checkpoint_key: str = "teacher",
    with_head: bool = False,
    **model_kwargs,
):
    """Official DINO weights as a Keras model.

    Args:
        name_or_path: a preset name (downloaded once into the Keras cache; the 10
            released ViT, ResNet-50 and XCiT weights: `keras_dino.list_presets()` lists
            them with their accuracy and size), or a local file: a released backbone
            `.pth`, a full training `checkpoint.pth`, the same as `.npz`, or a keras_dino
            `.keras` / `.weights.h5` file. `.pth` files are read without torch and
            without running pickled code.
        arch: `vit_tiny`, `vit_small` or `vit_base` (or a ResNet or XCiT name);
            inferred from the tensors if omitted (and needed for `.weights.h5` files). A file of torchvision ResNet tensors
            (`conv1.weight`, `layer1.0...`) builds a `ResNet` of the tensors' shape; a
            torchvision name (`resnet50`) is then checked against it, any other name
            names the model.
        patch_size: checked against the checkpoint (inferred if omitted).
        checkpoint_key: `"teacher"` or `"student"` for full training checkpoints.
        with_head: also build the DINO head; returns a `MultiCropWrapper` whose
            `backbone` and `head` hold the weights.
        **model_kwargs: extra `VisionTransformer` arguments (e.g. `num_heads` for
            non-standard widths, `drop_path_rate`, `use_fused_attention`).

    Returns:
        A `VisionTransformer` (or a `ResNet`, an `XCiT`), a `MultiCropWrapper` when
        `with_head`. A backbone with its ImageNet linear classifier is the classifier's
        to load: `keras_dino.load_pretrained_classifier`.

    Example:

    ```python
    model = keras_dino.load_pretrained("dino_vits16")
    features = model(keras_dino.preprocess_images(images))      # (B, 384)
    attention = model.get_last_selfattention(x)                  # (B, 6, 197, 197)
    ```
    """
    name_or_path = os.fspath(name_or_path)
    if model_kwargs.pop("linear_head", None) not in (None, False):
        # The loader builds backbones; the classifier task wraps one and calls this loader.
        raise TypeError(
            "load_pretrained loads backbones; for a backbone with its ImageNet linear "
            "classifier call keras_dino.load_pretrained_classifier(name_or_path, "
            "linear_weights) (linear_weights may be left out for a preset).")
    if name_or_path in PRESETS:
        preset = PRESETS[name_or_path]
        arch = arch or preset.arch
        patch_size = patch_size or preset.patch_size
        path = _fetch(name_or_path, with_head)
    else:
        path = name_or_path
        if not os.path.exists(path):
            raise UnknownPresetOrFileError(
                unknown_preset_message(path, "neither a preset nor an existing file"))
    if path.endswith(".keras"):
        return keras.saving.load_model(path)
    if path.endswith(".weights.h5"):
        return _load_keras_weights(path, arch, patch_size, with_head, model_kwargs)

    checkpoint = read_state(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    args = _as_dict(checkpoint.get("args"))
    if checkpoint_key in checkpoint and isinstance(checkpoint[checkpoint_key], dict):
        state = checkpoint[checkpoint_key]
    elif "student" in checkpoint or "teacher" in checkpoint:
        raise KeyError(
            f"checkpoint_key '{checkpoint_key}' is not in {path}; it has "
            f"{', '.join(k for k in checkpoint if isinstance(checkpoint[k], dict))}."
        )
    else:
        state = checkpoint
    state = {k: np.asarray(v) for k, v in state.items()}
    backbone_state, head_state = official.split_backbone_and_head(state)
    backbone = _build_backbone(backbone_state, arch, patch_size, args, model_kwargs)
    if not with_head:
        return backbone
    head = _build_head(head_state, args)
    return MultiCropWrapper(backbone, head)


def _h5_num_blocks(path):
    """Number of transformer blocks saved in a VisionTransformer `.weights.h5` (or None)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            blocks = f.get("blocks")
            return None if blocks is None else len(blocks.keys())
    except OSError:
        return None  # not readable as HDF5: load_weights reports it.


def _load_keras_weights(path, arch, patch_size, with_head, model_kwargs):
    if with_head:
        raise ValueError(
            f"with_head=True is not supported for {path}: a .weights.h5 file holds weights "
            "only, which cannot say how to build the DINO head; save the MultiCropWrapper as a "
            ".keras file and load that instead."
        )
    if arch not in ARCHITECTURES and not model_kwargs:
        raise ValueError(
            f"{path} holds weights only; pass arch= (one of {', '.join(ARCHITECTURES)}) "
            "and patch_size=, or the VisionTransformer arguments, to build the model."
        )
    config = dict(ARCHITECTURES.get(arch, {}))
    config.update(model_kwargs)
    config["patch_size"] = patch_size or config.get("patch_size", 16)
    model = VisionTransformer(**config)
    model.build((None, None, None, 3))
    # Keras silently ignores the extra blocks of a deeper model's file: check the depth.
    saved_depth = _h5_num_blocks(path)
    if saved_depth is not None and saved_depth != model.depth:
        raise ValueError(
            f"could not load {path} into a {config}: the file holds {saved_depth} "
            f"transformer blocks, the model has {model.depth}."
        )
    try:
        model.load_weights(path)
    except (ValueError, KeyError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"could not load {path} into a {config}: {error}") from error
    return model


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


def resolve_backbone(model, **load_kwargs):
    """The backbone that `model` names, and a line saying where its weights come from.

    The one place every tool turns "a model, a preset or a file" into a backbone:
    `model` is a backbone (`VisionTransformer`, `ResNet`), a `keras_dino.DINO` (its
    teacher backbone, the one DINO evaluates), a `MultiCropWrapper` (its backbone), a
    preset name or a checkpoint path (read with `load_pretrained(model, **load_kwargs)`).

    Returns:
        `(backbone, source)`; `source` names the preset and its URL, or the file and its
        sha256, or the in-memory model.

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> backbone, source = resolve_backbone(resnet("resnet18", name="rn18"))
    >>> source
    "in-memory ResNet 'rn18'"
    """
    from keras_dino.models.resnet import ResNet
    from keras_dino.models.xcit import XCiT

    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if name in PRESETS:
            source = f"preset '{name}' ({preset_url(name)})"
        else:
            path = pathlib.Path(name)
            if not path.is_file():
                raise UnknownPresetOrFileError(
                    unknown_preset_message(name, "neither a preset nor an existing file"))
            source = f"checkpoint {path.resolve()} (sha256 {file_sha256(path)})"
        if load_kwargs.get("checkpoint_key", "teacher") != "teacher":
            source += f", {load_kwargs['checkpoint_key']} weights"
        loaded = load_pretrained(name, **load_kwargs)
        return getattr(loaded, "backbone", loaded), source
    if load_kwargs:
        raise ValueError("load_kwargs only applies when `model` is a preset name or a file path.")
    backbones = (VisionTransformer, ResNet, XCiT)
    if hasattr(model, "teacher") and isinstance(getattr(model, "backbone", None), backbones):
        return model.backbone, f"teacher backbone of the in-memory keras_dino DINO '{model.name}'"
    if isinstance(model, MultiCropWrapper):
        return model.backbone, f"backbone of the in-memory MultiCropWrapper '{model.name}'"
    if isinstance(model, backbones):
        return model, f"in-memory {type(model).__name__} '{model.name}'"
    raise TypeError(
        "expected a keras_dino backbone (VisionTransformer, ResNet, XCiT), a DINO model (its "
        "teacher backbone), a MultiCropWrapper, a preset name or a checkpoint path; got "
        f"{type(model).__name__}."
    )
