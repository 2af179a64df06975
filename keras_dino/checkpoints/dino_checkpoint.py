"""Official `checkpoint.pth` <-> `keras_dino.DINO`, both ways.

`load_official_checkpoint` rebuilds a DINO model from an official full training
checkpoint (hyper-parameters from its `args`, student, teacher, center, optimizer
moments and per-parameter steps, and the epoch to resume from).
`save_official_checkpoint` writes the same layout (keys, `module.` prefixes, tensor
layouts, optimizer indices and param groups) so that the official `main_dino.py` can
resume from it and its `eval_*.py` tools can read it. Neither needs torch.
"""

import os

import numpy as np
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.checkpoints.checkpoint_types import CheckpointArgs
from keras_dino.checkpoints.npz_format import write_npz_checkpoint
from keras_dino.checkpoints.teacher import load_teacher, teacher_args
from keras_dino.checkpoints.torch_reader import read_checkpoint
from keras_dino.checkpoints.torch_writer import write_torch_checkpoint
from keras_dino.models.backbones import backbone_config

# Per-optimizer: official name of each slot variable, and the param-group defaults.
_SLOTS = {
    "adamw": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    "sgd": {"momentum_buffer": "momentum_buffers"},
    "lars": {"mu": "mu"},
}
_GROUP_DEFAULTS = {
    "adamw": dict(
        betas=(0.9, 0.999),
        eps=1e-08,
        amsgrad=False,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
        decoupled_weight_decay=True,
    ),
    "sgd": dict(
        momentum=0.9,
        dampening=0,
        nesterov=False,
        maximize=False,
        foreach=None,
        differentiable=False,
        fused=None,
    ),
    "lars": dict(momentum=0.9, eta=0.001, weight_decay_filter=None, lars_adaptation_filter=None),
}


def _strip_module(state: dict) -> dict:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _model_config(cls, args: dict, overrides: dict):
    """The `cls.config_class` (`DINOConfig`) of a checkpoint's `args`, then `overrides`."""
    batch = {}
    if args.get("batch_size_per_gpu") is not None:
        # The effective batch of one optimizer step (the official batch), which scales the
        # learning rate; the model's own `batch_size_per_gpu` is the micro-batch of the
        # accumulation this run uses.
        per_gpu = int(args["batch_size_per_gpu"])
        batch["batch_size"] = per_gpu * int(args.get("world_size", 1))
        accumulation = int(
            overrides.get("gradient_accumulation_steps",
                          args.get("gradient_accumulation_steps")) or 1
        )
        batch["batch_size_per_gpu"] = None if per_gpu % accumulation else per_gpu // accumulation
    config = cls.config_class.from_args(args, **{**batch, **overrides})
    # Names an unknown architecture before anything is built.
    backbone_config(config.arch, config.patch_size, dict(config.vit_kwargs),
                    dict(config.resnet_kwargs))
    return config


def official_param_order(model) -> list:
    """Trainable student parameters in the official optimizer index order.

    The official `get_params_groups` puts the decayed parameters (not biases, not 1-D)
    first and the others second, each in `named_parameters` order; indices run over
    both groups.
    """
    groups = model.parameter_groups()
    return groups.official_order(), len(groups.regularized)


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def load_official_checkpoint(path, cls, **overrides):
    """Rebuilds a compiled `cls` (`keras_dino.DINO`) from an official full training checkpoint.

    Example:

    ```python
    model = keras_dino.DINO.from_official_checkpoint("checkpoint.pth")
    model.compile(steps_per_execution=10)   # keeps the restored optimizer state
    model.fit(dataset)                      # resumes at the checkpoint's epoch
    ```
    """
    checkpoint = read_checkpoint(os.fspath(path))
    required = ("student", "teacher", "optimizer", "epoch", "args", "dino_loss")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not an official DINO training checkpoint: expected the keys "
            f"{', '.join(required)}; found {found}."
        )
    args = dict(checkpoint["args"])
    if args.get("teacher_weights") and "teacher" not in overrides:
        # A distillation run: the frozen teacher is the checkpoint's own `teacher`.
        teacher = load_teacher(_strip_module(checkpoint["teacher"]), {},
                               args=args.get("teacher_args"))
        overrides = dict(overrides, teacher=teacher.network)
    overrides, model_arguments = cls.config_class.split_arguments(overrides)
    model = cls(config=_model_config(cls, args, overrides), **model_arguments)
    if args.get("teacher_weights") and model.distillation is not None:
        model.distillation.source = args["teacher_weights"]
    data = {k: args[k] for k in cls.DATA_DEFAULTS if k in args}
    if data:
        model.set_data_settings(data)
    model.set_run_settings(**{k: args[k] for k in cls.RUN_DEFAULTS if k in args})
    official.load_state_dict(model.student_map, _strip_module(checkpoint["student"]), "student")
    official.load_state_dict(model.teacher_map, _strip_module(checkpoint["teacher"]), "teacher")
    center = np.asarray(checkpoint["dino_loss"]["center"], np.float32)
    if center.shape != tuple(model.center.shape):
        raise official.CheckpointShapeError(
            f"shape mismatch for 'dino_loss.center': the checkpoint has {center.shape}, the "
            f"model expects {tuple(model.center.shape)}."
        )
    model.center.assign(center)
    model.compile()
    _load_optimizer_state(model, checkpoint["optimizer"])
    model._resume_epoch = int(checkpoint["epoch"])
    return model


def _load_optimizer_state(model, state_dict):
    optimizer = _inner(model.optimizer)
    name = model.config.optimizer
    order, _ = official_param_order(model)
    index_of = {id(v): i for i, v in enumerate(model.trainable_variables)}
    state = state_dict.get("state", {})
    unknown = sorted(int(i) for i in state if not 0 <= int(i) < len(order))
    if unknown:
        raise official.CheckpointKeyError(
            f"the optimizer state has entries {unknown} for parameters the model does not "
            f"have ({len(order)} trainable parameters)."
        )
    for idx, slots in state.items():
        pname = order[int(idx)]
        variable, kind = model.student_map[pname]
        i = index_of[id(variable)]
        for official_slot, attr in _SLOTS[name].items():
            if official_slot not in slots:
                raise official.CheckpointKeyError(
                    f"optimizer state {idx} ('{pname}') has no '{official_slot}' "
                    f"(has {', '.join(slots)}); was the checkpoint trained with {name}?"
                )
            value = official._TO_KERAS[kind](np.asarray(slots[official_slot]))
            slot_var = getattr(optimizer, attr)[i]
            if tuple(value.shape) != tuple(slot_var.shape):
                raise official.CheckpointShapeError(
                    f"shape mismatch for optimizer '{official_slot}' of '{pname}': "
                    f"{tuple(value.shape)} vs {tuple(slot_var.shape)}."
                )
            slot_var.assign(value.astype(np.float32))
        if name == "adamw":
            optimizer.steps[i].assign(float(np.asarray(slots["step"])))


def _current_epoch(model) -> int:
    steps = model.schedules.steps_per_epoch
    iterations = int(ops.convert_to_numpy(_inner(model.optimizer).iterations))
    if steps and iterations:
        return iterations // steps
    return model._resume_epoch


def official_checkpoint_dict(model) -> dict:
    """The official `save_dict` of a DINO model, as numpy arrays and plain data."""
    if getattr(model, "optimizer", None) is None:
        model.compile()
    optimizer = _inner(model.optimizer)
    name = model.config.optimizer
    # main_dino.py wraps the teacher in DistributedDataParallel (keys `module.*`) when
    # the networks have BatchNorm, and only then.
    has_batch_norm = any(kind == "buffer" for _, kind in model.student_map.values())
    iterations = int(ops.convert_to_numpy(optimizer.iterations))

    # BatchNorm counters: the official student backbone runs once per crop resolution
    # (globals, then locals) per iteration, its head and the teacher once.
    student_calls = 2 if model.config.local_crops_number > 0 else 1

    def network(mapping, prefix, backbone_calls):
        out = {}
        for key, value in official.state_dict_of(mapping).items():
            out[prefix + key] = value
            if key.endswith(".running_var"):  # BatchNorm buffers end with this counter.
                calls = backbone_calls if key.startswith("backbone.") else 1
                out[prefix + key[: -len("running_var")] + "num_batches_tracked"] = np.array(
                    iterations * calls, np.int64
                )
        return out

    order, n_decayed = official_param_order(model)
    index_of = {id(v): i for i, v in enumerate(model.trainable_variables)}
    state = {}
    for idx, pname in enumerate(order):
        variable, kind = model.student_map[pname]
        i = index_of[id(variable)]
        if name == "adamw":
            step = float(ops.convert_to_numpy(optimizer.steps[i]))
            if step == 0:
                continue  # torch keeps no state for a parameter never updated.
            entry = {"step": np.array(step, np.float32)}
        else:
            if iterations == 0:
                continue
            entry = {}
        for official_slot, attr in _SLOTS[name].items():
            slot = ops.convert_to_numpy(getattr(optimizer, attr)[i])
            entry[official_slot] = np.ascontiguousarray(official._TO_OFFICIAL[kind](slot))
        state[idx] = entry
    last = max(iterations - 1, 0)
    lr = float(model.schedules.lr(last)) if model.schedules.steps_per_epoch else 0.0
    wd = float(model.schedules.wd(last)) if model.schedules.steps_per_epoch else 0.0
    groups = [
        dict(_GROUP_DEFAULTS[name], lr=lr, weight_decay=wd, params=list(range(n_decayed))),
        dict(
            _GROUP_DEFAULTS[name],
            lr=lr,
            weight_decay=0.0,
            params=list(range(n_decayed, len(order))),
        ),
    ]
    config = model.config
    args = dict(model.run_settings)
    args.update(config.checkpoint_args())
    args.update({k: tuple(v) for k, v in model.data_settings.items()})
    # `batch_size_per_gpu` is the official one: the per-GPU batch of one optimizer step,
    # `gradient_accumulation_steps` micro-batches of the model's `batch_size_per_gpu`.
    if config.batch_size:
        args["batch_size_per_gpu"] = int(config.batch_size) // int(args["world_size"])
    elif config.batch_size_per_gpu is not None:
        args["batch_size_per_gpu"] = config.batch_size_per_gpu * config.gradient_accumulation_steps
    elif iterations:
        # The global batch the step scaled the learning rate by (lr * batch / 256).
        args["batch_size_per_gpu"] = int(round(model.schedules.base_lr * 256 / config.lr))
    teacher_prefix = "module." if has_batch_norm else ""
    if getattr(model, "distillation", None) is not None:
        # A frozen teacher of another architecture: `teacher` holds its own keys, `args`
        # where it came from and what its tensors do not say (num_heads).
        args["teacher_weights"] = str(model.teacher_weights)
        args["teacher_args"] = teacher_args(model.teacher)
        teacher_bn = any(kind == "buffer" for _, kind in model.teacher_map.values())
        teacher_prefix = "module." if teacher_bn else ""
    return {
        "student": network(model.student_map, "module.", student_calls),
        "teacher": network(model.teacher_map, teacher_prefix, 1),
        "optimizer": {"state": state, "param_groups": groups},
        "epoch": _current_epoch(model),
        "args": CheckpointArgs(args),
        "dino_loss": {"center": np.ascontiguousarray(ops.convert_to_numpy(model.center))},
    }


def save_official_checkpoint(model, path) -> str:
    """Writes the official `checkpoint.pth` (or its flattened `.npz` twin) of a model."""
    path = os.fspath(path)
    checkpoint = official_checkpoint_dict(model)
    if path.endswith(".npz"):
        write_npz_checkpoint(checkpoint, path)
    else:
        write_torch_checkpoint(checkpoint, path)
    return path
