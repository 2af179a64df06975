"""A new DINO run that starts from released or earlier weights (`DINO.from_pretrained`).

What the file holds decides what starts from it:

* a backbone (a preset, a released `*_pretrain.pth`, a backbone `.npz`, a `.keras`
  backbone): the student's and the teacher's backbones; both heads start fresh (the
  teacher's a copy of the student's, as at any start) and the center at zero;
* a full training checkpoint (official `checkpoint.pth` or its `.npz`, or a `.keras`
  DINO): the student and the teacher, backbone and head, and the center.

Only weights carry over: the optimizer state, the epoch and the schedules start anew
with the new run's hyper-parameters. The architecture comes from the file unless the
arguments name one; a mismatch is an error that names both.
"""

import logging
import os

import numpy as np

from keras_dino.checkpoints import converters, official
from keras_dino.checkpoints.weights import resolve_weights
from keras_dino.models.official_names import backbone_variable_map, head_variable_map

logger = logging.getLogger("keras_dino")

_ARCH_KEYS = ("arch", "patch_size", "vit_kwargs", "resnet_kwargs")


class WarmStart:
    """The weights of a file, sorted into what a DINO model can start from.

    Attributes:
        source: what was read (a path or a preset name).
        student, teacher: backbone state dicts (official names).
        student_head, teacher_head: head state dicts, or None for a backbone file.
        center: the `(1, out_dim)` center, or None.
        args: the file's training arguments (`args` of a full checkpoint), or {}.
    """

    def __init__(self, source, student, teacher=None, student_head=None, teacher_head=None,
                 center=None, args=None):
        self.source = source
        self.student = student
        self.teacher = teacher if teacher is not None else student
        self.student_head = student_head
        self.teacher_head = teacher_head if teacher_head is not None else student_head
        self.center = center
        self.args = dict(args or {})

    @property
    def has_head(self) -> bool:
        return self.student_head is not None


def _split(state: dict, what: str):
    state = {k: np.asarray(v) for k, v in state.items()}
    backbone, head = official.split_backbone_and_head(state)
    if not backbone:
        raise official.CheckpointKeyError(f"{what} holds no backbone weights.")
    return backbone, (head or None)


def read_warm_start(weights, checkpoint_key: str | None = None) -> WarmStart:
    """Reads `weights` (a preset name or a file) without building a model.

    Example:

    ```python
    start = read_warm_start("dino_vits16")            # a released backbone
    start.has_head                                    # False: the heads start fresh
    ```
    """
    from keras_dino.checkpoints.torch_format import read_checkpoint

    source = os.fspath(weights)
    path = resolve_weights(source).path
    if path.endswith(".keras"):
        return _keras_warm_start(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    if "student" in checkpoint and "teacher" in checkpoint:
        student, student_head = _split(checkpoint["student"], f"{path} ('student')")
        teacher, teacher_head = _split(checkpoint["teacher"], f"{path} ('teacher')")
        args = checkpoint.get("args")
        args = dict(args) if isinstance(args, dict) else dict(vars(args)) if args else {}
        if args.get("teacher_weights") and checkpoint_key != "teacher":
            # A distillation checkpoint: the student is the network of the run's
            # architecture (its `teacher` is the frozen teacher of another one).
            checkpoint_key = "student"
        if checkpoint_key in ("student", "teacher"):  # one network for both
            student, student_head = (student, student_head) if checkpoint_key == "student" else (
                teacher, teacher_head)
            teacher, teacher_head = student, student_head
        center = checkpoint.get("dino_loss", {}).get("center")
        return WarmStart(source, student, teacher, student_head, teacher_head,
                         None if center is None else np.asarray(center, np.float32), args)
    if checkpoint_key and isinstance(checkpoint.get(checkpoint_key), dict):
        checkpoint = checkpoint[checkpoint_key]
    backbone, head = _split(checkpoint, path)
    return WarmStart(source, backbone, student_head=head)


def _keras_warm_start(path) -> WarmStart:
    import keras

    from keras_dino.models.multicrop import MultiCropWrapper
    from keras_dino.models.official_names import multicrop_variable_map

    model = keras.saving.load_model(path)
    if hasattr(model, "student_map") and hasattr(model, "teacher_map"):  # a DINO
        student = official.state_dict_of(model.student_map)
        teacher = official.state_dict_of(model.teacher_map)
        s_backbone, s_head = _split(student, path)
        t_backbone, t_head = _split(teacher, path)
        center = np.asarray(keras.ops.convert_to_numpy(model.center), np.float32)
        config = model.config.to_dict()
        args = {k: config[k] for k in (*_ARCH_KEYS, "norm_last_layer")}
        return WarmStart(path, s_backbone, t_backbone, s_head, t_head, center, args)
    if isinstance(model, MultiCropWrapper):
        backbone, head = _split(official.state_dict_of(multicrop_variable_map(model)), path)
        return WarmStart(path, backbone, student_head=head)
    return WarmStart(path, official.state_dict_of(backbone_variable_map(model)))


def _head_arguments(start: WarmStart, kwargs: dict) -> dict:
    """The file's head shape, for arguments the caller left out."""
    if not start.has_head:
        return {}
    config = official.infer_head_config(start.student_head)
    head_kwargs = {k: config[k] for k in ("hidden_dim", "bottleneck_dim", "nlayers")}
    out = {"out_dim": config["out_dim"], "use_bn_in_head": config["use_bn"]}
    if "norm_last_layer" in start.args:
        out["norm_last_layer"] = bool(start.args["norm_last_layer"])
    out = {k: v for k, v in out.items() if k not in kwargs}
    out["head_kwargs"] = {**head_kwargs, **(kwargs.get("head_kwargs") or {})}
    return out


def dino_from_pretrained(cls, weights, checkpoint_key: str | None = None,
                         load_heads: bool = True, **kwargs):
    """`cls(**kwargs)` (a `keras_dino.DINO`) whose networks start from `weights`.

    See `keras_dino.DINO.from_pretrained`.
    """
    start = read_warm_start(weights, checkpoint_key)
    if not load_heads:
        start.student_head = start.teacher_head = start.center = None
    # The file's architecture, unless the arguments name one (then it must fit).
    architecture = converters.dino_arguments(start.student, kwargs, start.args, start.source)
    arguments = {**kwargs, **architecture}
    arguments = {**_head_arguments(start, kwargs), **arguments}
    model = cls(**arguments)
    # With a frozen teacher (`teacher=`, distillation), only the student starts from the file.
    distilling = getattr(model, "distillation", None) is not None
    pairs = [(model.student.backbone, start.student, "student backbone")]
    if not distilling:
        pairs.append((model.teacher.backbone, start.teacher, "teacher backbone"))
    for backbone, state, what in pairs:
        official.load_state_dict(backbone_variable_map(backbone), state, what)
    if start.has_head:
        try:
            official.load_state_dict(
                head_variable_map(model.student.head), start.student_head, "student head"
            )
            if not distilling:
                official.load_state_dict(
                    head_variable_map(model.teacher.head), start.teacher_head, "teacher head"
                )
        except (official.CheckpointKeyError, official.CheckpointShapeError) as error:
            raise ValueError(
                f"the DINO heads of {start.source} do not fit the head asked for "
                f"(out_dim={model.config.out_dim}, head_kwargs={dict(model.config.head_kwargs)}"
                "); leave those arguments out to continue with the file's heads, or pass "
                f"load_heads=False to start from its backbones alone: {error}"
            ) from error
        if start.center is not None and tuple(start.center.shape) == tuple(model.center.shape):
            model.center.assign(start.center)
    logger.info("DINO starts from %s (%s).", start.source,
                "backbones, heads and center" if start.has_head else "backbones; fresh heads")
    return model
