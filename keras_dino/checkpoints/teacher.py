"""The frozen teacher of a distillation run (`DINO(teacher=...)`).

A trained network of any architecture teaches a (smaller) student; the teacher does not
move: no EMA, its variables (BatchNorm statistics included) stay bit for bit what they
were, and it runs in inference mode. What it is made from:

* a full training checkpoint (official `checkpoint.pth`, its `.npz`, ours): the network
  under `checkpoint_key` (`"teacher"` by default), backbone and DINO head;
* a backbone (a preset name, a released `*_pretrain.pth`, a backbone `.npz`, a Keras
  backbone): that backbone and a new head, `DINOHead` of the student's head arguments,
  randomly initialised from the fixed seed `RANDOM_HEAD_SEED` (weights of rank 2 and more
  drawn N(0, 0.02) by numpy, biases 0, norms 1) and frozen: a fixed random projection of
  the teacher's features that the student learns to reproduce;
* a `MultiCropWrapper` (backbone and head) or a `.keras` file of one (or of a DINO: its
  teacher), taken as they are.
"""

import os
from dataclasses import dataclass, replace

import keras
import numpy as np

from keras_dino.checkpoints import converters, official
from keras_dino.checkpoints.weights import resolve_weights
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper
from keras_dino.models.official_names import head_variable_map

RANDOM_HEAD_SEED = 0


@dataclass
class Teacher:
    """A frozen teacher network and where it came from.

    Attributes:
        network: the `MultiCropWrapper` (backbone and head).
        source: what it was read from (a path, a preset name, or the in-memory model).
        head_from_file: whether the head holds trained weights (False: the seeded random
            head of a backbone-only teacher).

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> teacher = load_teacher(resnet("resnet18", name="rn18"), dict(out_dim=16))
    >>> teacher.source, teacher.head_from_file, teacher.network.head.out_dim
    ("in-memory ResNet 'rn18'", False, 16)
    """

    network: MultiCropWrapper
    source: str
    head_from_file: bool


def random_head(in_dim: int, head_config: dict, seed: int = RANDOM_HEAD_SEED) -> DINOHead:
    """The frozen random `DINOHead` of a backbone-only teacher (for a seed, the same on
    every backend).

    Example:

    >>> a = random_head(8, dict(out_dim=16, hidden_dim=8, bottleneck_dim=4))
    >>> b = random_head(8, dict(out_dim=16, hidden_dim=8, bottleneck_dim=4))
    >>> all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights))
    True
    """
    config = dict(head_config)
    config.setdefault("norm_last_layer", True)
    head = DINOHead(**config, in_dim=in_dim, name="teacher_head")
    rng = np.random.default_rng(seed)
    for variable in head.weights:  # creation order: the same on every backend
        if len(variable.shape) >= 2:
            values = np.clip(rng.normal(0.0, 0.02, tuple(variable.shape)), -2.0, 2.0)
            variable.assign(values.astype(keras.backend.standardize_dtype(variable.dtype)))
    return head


def _with_random_head(backbone, head_config, source) -> Teacher:
    head = random_head(backbone.embed_dim, head_config)
    return Teacher(MultiCropWrapper(backbone, head, name="teacher"), source, False)


def _from_state(state: dict, args: dict, head_config: dict, source: str) -> Teacher:
    state = {k: np.asarray(v) for k, v in official.strip_prefixes(state, ("module.",)).items()}
    backbone_state, head_state = official.split_backbone_and_head(state)
    if not backbone_state:
        raise official.CheckpointKeyError(f"{source} holds no backbone weights for the teacher.")
    backbone = converters.convert(backbone_state, args.get("arch"), None, args, None, source)
    if not head_state:
        return _with_random_head(backbone, head_config, source)
    config = official.infer_head_config(head_state)
    config["norm_last_layer"] = bool(args.get("norm_last_layer", True))
    config["in_dim"] = backbone.embed_dim
    head = DINOHead(**config, name="teacher_head")
    official.load_state_dict(head_variable_map(head), head_state, f"teacher head of {source}")
    return Teacher(MultiCropWrapper(backbone, head, name="teacher"), source, True)


def load_teacher(teacher, head_config: dict, checkpoint_key: str = "teacher",
                 args: dict | None = None) -> Teacher:
    """The frozen teacher `teacher` names (see the module docstring).

    `teacher`: a preset name, a file, a Keras backbone, a `MultiCropWrapper`, or an
    official state dict (backbone and head keys, e.g. a checkpoint's `teacher` entry;
    `args` then gives its architecture where the tensors do not: `arch`, `vit_kwargs`).
    `head_config`: the student's `DINOHead` arguments, for a backbone-only teacher.

    Example:

    ```python
    teacher = load_teacher("out/quickstart/checkpoint.pth", dict(out_dim=1024))
    teacher.network.head.out_dim, teacher.head_from_file     # (1024, True)
    ```
    """
    if isinstance(teacher, MultiCropWrapper):
        return Teacher(teacher, f"in-memory MultiCropWrapper '{teacher.name}'", True)
    if isinstance(teacher, converters.backbone_classes()):
        return _with_random_head(teacher, head_config,
                                 f"in-memory {type(teacher).__name__} '{teacher.name}'")
    if isinstance(teacher, dict):
        return _from_state(teacher, dict(args or {}), head_config, "the checkpoint's teacher")
    if not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(
            "teacher must be a preset name, a weights file, a keras_dino backbone or a "
            f"MultiCropWrapper; got {type(teacher).__name__}.")
    source = os.fspath(teacher)
    weights = resolve_weights(source)
    path = weights.path
    if path.endswith(".keras"):
        model = keras.saving.load_model(path)
        if isinstance(getattr(model, "teacher", None), MultiCropWrapper):  # a DINO
            return Teacher(model.teacher, source, True)
        return replace(load_teacher(model, head_config), source=source)
    from keras_dino.checkpoints.torch_format import read_checkpoint

    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    file_args = checkpoint.get("args")
    file_args = (dict(file_args) if isinstance(file_args, dict)
                 else dict(vars(file_args)) if file_args else {})
    if weights.preset is not None:
        file_args.setdefault("arch", weights.preset.arch)
    if "student" in checkpoint or "teacher" in checkpoint:
        if not isinstance(checkpoint.get(checkpoint_key), dict):
            found = ", ".join(k for k in checkpoint if isinstance(checkpoint[k], dict))
            raise KeyError(f"teacher checkpoint key '{checkpoint_key}' is not in {path}; "
                           f"it has {found}.")
        state = checkpoint[checkpoint_key]
        if file_args.get("teacher_weights") and checkpoint_key == "teacher":
            # A distillation checkpoint: its `args` describe the student.
            file_args = dict(file_args.get("teacher_args") or {})
    else:
        state = checkpoint
    return _from_state(state, file_args, head_config, source)


def teacher_args(network: MultiCropWrapper) -> dict:
    """What a checkpoint records of a teacher's architecture beyond its tensors
    (`arch`, `vit_kwargs.num_heads`), for `load_teacher(state, args=...)`.

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> teacher_args(MultiCropWrapper(resnet("resnet18"), DINOHead(8, in_dim=512)))
    {'norm_last_layer': True}
    """
    backbone = network.backbone
    out = {"norm_last_layer": bool(network.head.norm_last_layer)}
    heads = getattr(backbone, "num_heads", None)
    if isinstance(heads, int):
        out["vit_kwargs"] = {"num_heads": heads}
    return out


def frozen_teacher(teacher, out_dim: int | None, head_config: dict,
                   checkpoint_key: str = "teacher") -> Teacher:
    """`load_teacher`, frozen, with the student's `out_dim` checked against its head.

    `out_dim` None takes the teacher head's (65,536 for a backbone-only teacher, whose
    random head is built with it). A trained teacher head of another width is an error
    naming both.

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> teacher = frozen_teacher(resnet("resnet18"), 32, dict(hidden_dim=16, bottleneck_dim=8))
    >>> teacher.network.head.out_dim, teacher.network.trainable_variables
    (32, [])
    """
    config = dict(head_config, out_dim=65536 if out_dim is None else out_dim)
    loaded = load_teacher(teacher, config, checkpoint_key)
    teacher_dim = int(loaded.network.head.out_dim)
    if out_dim is not None and int(out_dim) != teacher_dim:
        raise ValueError(
            f"out_dim={out_dim} but the teacher's head ({loaded.source}) has out_dim="
            f"{teacher_dim}: the student's head must match it; pass out_dim={teacher_dim} "
            "or leave it out.")
    loaded.network.build()
    loaded.network.trainable = False
    # Every variable, whatever the flags of the layers it was restored with (a teacher
    # deserialised from a config comes back built with trainable variables).
    for variable in loaded.network.weights:
        variable.trainable = False
    return loaded
