"""`DINO`'s hyper-parameters: one frozen `DINOConfig`, and the run's and the data's.

`DINOConfig` is the one description of DINO's hyper-parameters: each is one field with
its default (the official `main_dino.py` default where the official script has the
argument), its help text and its checks. `keras_dino.DINO`, its schedules, the flags of
`keras-dino train` and the `args` of `checkpoint.pth` are all derived from it, so a new
setting is one field here (and the code that uses it). Importing this module imports no
Keras: the command-line tool defines its flags from it before choosing a backend.
"""

import dataclasses
import numbers
import types
import typing

_SAME = object()


class ReadOnlyDict(dict):
    """A `dict` that cannot change: the nested settings of a frozen `DINOConfig`.

    Example:

    >>> d = ReadOnlyDict(depth=2)
    >>> d["depth"], d == {"depth": 2}
    (2, True)
    """

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a DINOConfig is frozen: make a new one with dataclasses.replace(config, ...)."
        )

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self):
        return hash(repr(sorted(self.items(), key=lambda item: str(item[0]))))

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _setting(default, help, *, official=False, flag=True, flag_default=_SAME, choices=None,
             bounds=None, recorded=True):
    """A `DINOConfig` field.

    `help`: what it means (the flag's help); `official`: an argument of the official
    `main_dino.py` (same name and default); `flag`: `keras-dino train` has a flag for it,
    whose default is `flag_default` where it differs from the model's; `choices`, `bounds`
    (`(low, high)`, either None): the allowed values, checked by the config and the flag;
    `recorded`: written to the `args` of `checkpoint.pth`.
    """
    metadata = dict(help=" ".join(help.split()), official=official, flag=flag,
                    choices=choices, bounds=bounds, recorded=recorded)
    if flag_default is not _SAME:
        metadata["flag_default"] = flag_default
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DINOConfig:
    """DINO's hyper-parameters, frozen: the one place they and their defaults are written.

    The fields of the official `main_dino.py` keep its names and defaults; keras_dino's
    own follow. `keras_dino.DINO(**fields)` and `DINO(config=DINOConfig(...))` build the
    same model and `model.config` gives it back; a different value is a new config
    (`dataclasses.replace(config, lr=1e-4)`), checked again. The checks run at
    construction, so every `DINOConfig` is a valid one. The crop settings belong to the
    data (`keras_dino.data.DataAugmentationDINO`), the seed, mixed precision and the
    output to the run (`RUN_DEFAULTS`).

    Example:

    >>> config = DINOConfig(arch="vit_tiny", epochs=10, warmup_epochs=1)
    >>> config.lr, config.momentum_teacher
    (0.0005, 0.996)
    >>> dataclasses.replace(config, lr=1e-4).lr
    0.0001
    >>> DINOConfig(momentum_teacher=1.5)
    Traceback (most recent call last):
    ...
    ValueError: momentum_teacher must be in [0, 1]; got 1.5.
    """

    # --- the official main_dino.py arguments (names and defaults) ---
    arch: str = _setting("vit_small", """Architecture: vit_tiny, vit_small, vit_base, a
        torchvision ResNet (resnet18, resnet50, ...), an XCiT (xcit_small_12_p16,
        xcit_medium_24_p8, ...), or a custom name with vit_kwargs or resnet_kwargs.""",
                         official=True)
    patch_size: int = _setting(16, "Size in pixels of input square patches.", official=True,
                               bounds=(1, None))
    out_dim: int = _setting(65536, "Dimensionality of the DINO head output.", official=True,
                            bounds=(1, None))
    norm_last_layer: bool = _setting(True, "Weight-normalize the last layer of the head.",
                                     official=True)
    momentum_teacher: float = _setting(0.996, "Base EMA parameter for the teacher update.",
                                       official=True, bounds=(0.0, 1.0))
    use_bn_in_head: bool = _setting(False, "Batch norm in the projection head.", official=True)
    warmup_teacher_temp: float = _setting(0.04, "Initial teacher temperature.", official=True)
    teacher_temp: float = _setting(0.04, "Final teacher temperature.", official=True)
    warmup_teacher_temp_epochs: int = _setting(0, "Teacher temperature warm-up epochs.",
                                               official=True, bounds=(0, None))
    weight_decay: float = _setting(0.04, "Initial weight decay.", official=True,
                                   bounds=(0.0, None))
    weight_decay_end: float = _setting(0.4, "Final weight decay (cosine schedule).",
                                       official=True, bounds=(0.0, None))
    clip_grad: float = _setting(3.0, "Per-parameter gradient norm clipping (0 disables).",
                                official=True, bounds=(0.0, None))
    batch_size_per_gpu: int | None = _setting(None, """Batch size per replica (the model's
        default, None, records the batch its training step sees; the command's is the
        official 64).""", official=True, flag_default=64, bounds=(1, None))
    epochs: int = _setting(100, "Number of epochs of training.", official=True,
                           bounds=(1, None))
    freeze_last_layer: int = _setting(1, "Epochs during which the head's last layer is "
                                      "frozen.", official=True, bounds=(0, None))
    lr: float = _setting(0.0005, "Peak learning rate at batch size 256 (linear scaling).",
                         official=True, bounds=(0.0, None))
    warmup_epochs: int = _setting(10, "Linear learning-rate warm-up epochs.", official=True,
                                  bounds=(0, None))
    min_lr: float = _setting(1e-6, "Final learning rate of the cosine schedule.",
                             official=True, bounds=(0.0, None))
    optimizer: str = _setting("adamw", "Optimizer.", official=True,
                              choices=("adamw", "sgd", "lars"))
    drop_path_rate: float = _setting(0.1, "Stochastic depth rate.", official=True,
                                     bounds=(0.0, 1.0))
    local_crops_number: int = _setting(8, """Number of small local views (the training
        step checks that it gets 2 + local_crops_number crops).""", official=True,
                                       bounds=(0, None))
    # --- keras_dino's own ---
    final_momentum_teacher: float = _setting(1.0, """End of the teacher momentum's cosine
        from momentum_teacher (officially 1.0). A short run ends better with the teacher
        still following the student: equal to momentum_teacher, the momentum is held
        constant.""", bounds=(0.0, 1.0))
    batch_size: int | None = _setting(None, """Global batch size that scales the learning
        rate (lr * batch_size / 256): the effective batch of one optimizer step; by
        default the batch of a step times the replicas times
        gradient_accumulation_steps.""", recorded=False)
    student_temp: float = _setting(0.1, "Student temperature (official: 0.1, fixed).")
    center_momentum: float = _setting(0.9, "Momentum of the center of the teacher outputs "
                                      "(official: 0.9, fixed).", bounds=(0.0, 1.0))
    vit_kwargs: dict = _setting({}, """Overrides of a Vision Transformer backbone (e.g.
        embed_dim, depth, num_heads for a custom size, use_fused_attention).""", flag=False)
    resnet_kwargs: dict = _setting({}, """Overrides of a ResNet backbone (e.g. layers,
        stem_width, stage_widths for a small custom one).""", flag=False)
    head_kwargs: dict = _setting({}, "DINOHead arguments (hidden_dim, bottleneck_dim, "
                                 "nlayers).", flag=False)
    steps_per_epoch: int | None = _setting(None, """Batches per epoch the schedules are built
        for; by default the number of steps fit runs per epoch. Must be a multiple of
        gradient_accumulation_steps.""", recorded=False, bounds=(1, None))
    gradient_accumulation_steps: int = _setting(1, """Micro-batches of batch_size_per_gpu
        per optimizer step: the official step on this many times the batch (e.g. the
        official ViT-S/16 batch of 1024 on one GPU: batch_size_per_gpu=128,
        gradient_accumulation_steps=8).""", bounds=(1, None))
    freeze_blocks: int = _setting(0, """Continuing from trained weights: the student's
        embedding (patch embedding, class and position tokens, registers; a ResNet's stem)
        and first N blocks (a ResNet's first N stages) stay fixed, not updated nor
        weight-decayed, and so do the teacher's copies (0: off).""", bounds=(0, None))
    layer_decay: float = _setting(1.0, """Layer-wise learning-rate decay r, as in BEiT and
        DINOv2 fine-tuning: of L blocks (ResNet stages) counted from 0, block i learns at
        r**(L-i) of the learning rate (the last block at r), the embedding at r**(L+1), the
        last norm and the head at the full rate (1: off). In (0, 1].""", bounds=(0.0, 1.0))

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = _checked(field, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        for name in ("warmup_teacher_temp", "teacher_temp", "student_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{name} must be > 0 (a softmax temperature: the official teacher "
                    f"temperature is 0.04, the student's 0.1); got {getattr(self, name)}.")
        if self.warmup_teacher_temp_epochs > self.epochs:
            raise ValueError(
                f"warmup_teacher_temp_epochs ({self.warmup_teacher_temp_epochs}) cannot "
                f"exceed epochs ({self.epochs})."
            )
        from keras_dino.models.official_names import check_guards

        check_guards(self.freeze_blocks, self.layer_decay)  # the backbone's depth: at build
        if self.steps_per_epoch:
            from keras_dino.optim.schedules import check_epoch_of_whole_steps

            check_epoch_of_whole_steps(self.steps_per_epoch, self.gradient_accumulation_steps)

    def __hash__(self):
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    @classmethod
    def settings(cls) -> tuple:
        """The fields, each a `dataclasses.Field` whose `metadata` says what it means.

        Example:

        >>> [f.name for f in DINOConfig.settings()][:3]
        ['arch', 'patch_size', 'out_dim']
        """
        return dataclasses.fields(cls)

    @classmethod
    def official_defaults(cls) -> dict:
        """`{name: default}` of the official `main_dino.py` arguments among the fields.

        Example:

        >>> DINOConfig.official_defaults()["batch_size_per_gpu"]
        64
        """
        return {f.name: f.metadata.get("flag_default", _default(f))
                for f in dataclasses.fields(cls) if f.metadata["official"]}

    def to_dict(self) -> dict:
        """Every field as plain Python data (`get_config`, JSON).

        Example:

        >>> DINOConfig(vit_kwargs={"depth": 1}).to_dict()["vit_kwargs"]
        {'depth': 1}
        """
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def checkpoint_args(self) -> dict:
        """The fields recorded in the `args` of `checkpoint.pth` (nested ones when set)."""
        return {f.name: _plain(value) for f in dataclasses.fields(self)
                if f.metadata["recorded"]
                and ((value := getattr(self, f.name)) or not isinstance(value, dict))}

    @classmethod
    def from_args(cls, args: dict, **overrides) -> "DINOConfig":
        """The config of a checkpoint's `args` (other arguments ignored), then `overrides`.

        Example:

        >>> DINOConfig.from_args({"lr": 0.001, "seed": 3}, epochs=5).lr
        0.001
        """
        names = {f.name for f in dataclasses.fields(cls) if f.metadata["recorded"]}
        values = {k: v for k, v in dict(args).items() if k in names}
        return cls(**{**values, **overrides})

    @classmethod
    def split_arguments(cls, kwargs: dict) -> tuple[dict, dict]:
        """`kwargs` split into the config's fields and the rest."""
        names = {f.name for f in dataclasses.fields(cls)}
        return ({k: v for k, v in kwargs.items() if k in names},
                {k: v for k, v in kwargs.items() if k not in names})


def _default(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def kind_of(field) -> tuple[type, bool]:
    """`(type, None allowed)` of a `DINOConfig` field: `(int, True)` for `int | None`."""
    kind = field.type
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return kind, False


def _checked(field, value):
    """`value` for `field` in its type, or a `TypeError`/`ValueError` naming the field."""
    name, meta = field.name, field.metadata
    kind, optional = kind_of(field)
    if value is None and (optional or kind is dict):
        return ReadOnlyDict() if kind is dict else None
    if name == "gradient_accumulation_steps" and value is None:
        return 1  # off, as in earlier versions
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict; got {value!r}.")
        value = ReadOnlyDict(value)
    elif kind is bool:
        if isinstance(value, str) or value not in (0, 1):
            raise TypeError(f"{name} must be True or False; got {value!r}.")
        value = bool(value)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
            raise ValueError(f"{name} must be a whole number; got {value!r}.")
        value = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number; got {value!r}.")
        value = float(value)
    else:
        value = str(value)
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {sorted(meta['choices'])}; got '{value}'.")
    low, high = meta["bounds"] or (None, None)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be >= {low}; got {value}.")
        raise ValueError(f"{name} must be in [{low:g}, {high:g}]; got {value}.")
    return value


# The official main_dino.py arguments among DINO's hyper-parameters, with their defaults
# (derived from DINOConfig, where they are written).
OFFICIAL_DEFAULTS = DINOConfig.official_defaults()

# Official main_dino.py arguments that belong to the data, not to the model: DINO records
# them (checkpoint `args`) from the `data_settings` given to `fit`, defaults otherwise.
DATA_DEFAULTS = dict(global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4))
# Official main_dino.py arguments that describe the run rather than the model (where the
# data came from, the seed, mixed precision, the output, the processes): DINO records
# them in the checkpoints' `args` from `set_run_settings`, these defaults otherwise.
RUN_DEFAULTS = dict(
    use_fp16=False,
    data_path="/path/to/imagenet/train/",
    output_dir=".",
    saveckp_freq=20,
    seed=0,
    num_workers=10,
    dist_url="env://",
    local_rank=0,
    rank=0,
    gpu=0,
    world_size=1,
)
def refuse_data_arguments(kwargs: dict) -> None:
    """A `TypeError` for crop settings passed to the model instead of the data."""
    for key in DATA_DEFAULTS:
        if key in kwargs:
            raise TypeError(
                f"DINO does not take {key}: it is a setting of the data "
                "(keras_dino.data.DataAugmentationDINO). DINO records the crop settings in "
                "its checkpoints from fit(..., data_settings=the augmentation or the "
                "MultiCropInfo of multicrop_dataset(return_info=True))."
            )


def data_settings_values(data_settings, local_crops_number: int) -> dict:
    """The crop scales of `data_settings`, checked against the model's local crops.

    `data_settings` is a `keras_dino.data.DataAugmentationDINO`, the `MultiCropInfo` of
    `multicrop_dataset(..., return_info=True)`, or a dict with `global_crops_scale` and
    `local_crops_scale` (and optionally `local_crops_number`).

    Example:

    >>> data_settings_values({"global_crops_scale": (0.3, 1)}, local_crops_number=8)
    {'global_crops_scale': (0.3, 1.0)}
    """
    source = getattr(data_settings, "augmentation", data_settings)
    if isinstance(source, dict):
        values = {k: source[k] for k in DATA_DEFAULTS if k in source}
        local = source.get("local_crops_number", local_crops_number)
    else:
        values = {k: getattr(source, k) for k in DATA_DEFAULTS}
        local = source.local_crops_number
    if local != local_crops_number:
        raise ValueError(
            f"the data makes {local} local crops per image, but this DINO was built with "
            f"local_crops_number={local_crops_number}."
        )
    return {k: tuple(float(x) for x in v) for k, v in values.items()}


def run_settings_values(values: dict) -> dict:
    """`values` checked against `RUN_DEFAULTS` (names and types), or a `TypeError`.

    Example:

    >>> run_settings_values({"seed": 7, "use_fp16": False})
    {'seed': 7, 'use_fp16': False}
    """
    unknown = sorted(set(values) - set(RUN_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown run settings {unknown}: the official main_dino.py run arguments are "
            f"{sorted(RUN_DEFAULTS)} (model hyper-parameters are DINO's own arguments)."
        )
    out = {}
    for key, value in values.items():
        kind = type(RUN_DEFAULTS[key])
        if kind is bool:
            out[key] = bool(value)
        elif kind is int:
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"{key} must be an integer; got {value!r}.")
            out[key] = int(value)
        else:
            out[key] = str(value)
    return out
