"""`load_pretrained`: official DINO weights (presets or local files) as Keras models."""

import json
import os
import warnings
import zipfile

import keras
import numpy as np

from keras_dino.checkpoints import converters, official
from keras_dino.checkpoints.weights import (  # noqa: F401 (their old home)
    file_sha256,
    preset_file,
    preset_url,
    resolve_weights,
)
from keras_dino.errors import PretrainedDownloadError  # noqa: F401 (its old home)
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper
from keras_dino.models.presets import PRESETS  # noqa: F401 (the released weights, as data)
from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer


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
    if model_kwargs.pop("linear_head", None) not in (None, False):
        # The loader builds backbones; the classifier task wraps one and calls this loader.
        raise TypeError(
            "load_pretrained loads backbones; for a backbone with its ImageNet linear "
            "classifier call keras_dino.load_pretrained_classifier(name_or_path, "
            "linear_weights) (linear_weights may be left out for a preset).")
    weights = resolve_weights(name_or_path, "full_checkpoint" if with_head else "backbone")
    if weights.preset is not None:
        arch = arch or weights.preset.arch
        patch_size = patch_size or weights.preset.patch_size
    path = weights.path
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
        if args.get("teacher_weights") and checkpoint_key == "teacher":
            # A distillation run (DINO(teacher=...)): `args` describe its student.
            warnings.warn(
                f"{path} is a distillation run: its 'teacher' is the frozen network it "
                f"learned from ({args['teacher_weights']}); the network it trained is "
                "checkpoint_key='student' (--checkpoint_key=student).", stacklevel=2)
            args = _as_dict(args.get("teacher_args"))
    elif "student" in checkpoint or "teacher" in checkpoint:
        raise official.CheckpointKeyError(
            f"checkpoint_key '{checkpoint_key}' is not in {path}; it has "
            f"{', '.join(k for k in checkpoint if isinstance(checkpoint[k], dict))}."
        )
    else:
        state = checkpoint
    state = {k: np.asarray(v) for k, v in state.items()}
    backbone_state, head_state = official.split_backbone_and_head(state)
    backbone = converters.convert(backbone_state, arch, patch_size, args, model_kwargs)
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
    if isinstance(model, (str, os.PathLike)):
        # Named before loading: an unknown name fails here, and a preset is named by its URL.
        source = resolve_weights(model, download=False).describe()
        if load_kwargs.get("checkpoint_key", "teacher") != "teacher":
            source += f", {load_kwargs['checkpoint_key']} weights"
        loaded = load_pretrained(model, **load_kwargs)
        return getattr(loaded, "backbone", loaded), source
    if load_kwargs:
        raise ValueError("load_kwargs only applies when `model` is a preset name or a file path.")
    backbones = converters.backbone_classes()
    if hasattr(model, "teacher") and isinstance(getattr(model, "backbone", None), backbones):
        which = "student" if getattr(model, "distillation", None) is not None else "teacher"
        return model.backbone, f"{which} backbone of the in-memory keras_dino DINO '{model.name}'"
    if isinstance(model, MultiCropWrapper):
        return model.backbone, f"backbone of the in-memory MultiCropWrapper '{model.name}'"
    if isinstance(model, backbones):
        return model, f"in-memory {type(model).__name__} '{model.name}'"
    raise TypeError(
        "expected a keras_dino backbone (VisionTransformer, ResNet, XCiT), a DINO model (its "
        "teacher backbone), a MultiCropWrapper, a preset name or a checkpoint path; got "
        f"{type(model).__name__}."
    )
