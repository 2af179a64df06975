"""`DINO`'s hyper-parameters: the official ones, keras_dino's additions, the data's.

`DINO` owns every training setting; this module names them, holds their defaults and
validates values, so that the model, its config and the checkpoints' `args` agree.
"""

# Hyper-parameters with the names and defaults of the official main_dino.py.
OFFICIAL_DEFAULTS = dict(
    arch="vit_small",
    patch_size=16,
    out_dim=65536,
    norm_last_layer=True,
    momentum_teacher=0.996,
    use_bn_in_head=False,
    warmup_teacher_temp=0.04,
    teacher_temp=0.04,
    warmup_teacher_temp_epochs=0,
    weight_decay=0.04,
    weight_decay_end=0.4,
    clip_grad=3.0,
    batch_size_per_gpu=64,
    epochs=100,
    freeze_last_layer=1,
    lr=0.0005,
    warmup_epochs=10,
    min_lr=1e-6,
    optimizer="adamw",
    drop_path_rate=0.1,
    local_crops_number=8,
)
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
# keras_dino's hyper-parameters beyond the official ones, recorded in the checkpoints'
# `args` too (the official code hard-codes the center's and the student's; it has no
# gradient accumulation: its `batch_size_per_gpu` is recorded as the effective batch; nor
# the guards for continuing from trained weights, `freeze_blocks` and `layer_decay`).
EXTRA_RECORDED = (
    "final_momentum_teacher",
    "center_momentum",
    "student_temp",
    "gradient_accumulation_steps",
    "freeze_blocks",
    "layer_decay",
)


def check_momentum(name: str, value) -> float:
    """`value` as a float in [0, 1], or a `ValueError` naming `name`.

    Example:

    >>> check_momentum("momentum_teacher", 0.99)
    0.99
    """
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value}.")
    return float(value)


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
