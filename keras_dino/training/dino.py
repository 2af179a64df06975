"""`DINO`: self-distillation with no labels, trained with `model.fit`."""

import dataclasses
import functools
import inspect
import types

import keras
from keras import ops

from keras_dino import callbacks as dino_callbacks
from keras_dino import distribute
from keras_dino.checkpoints import dino_checkpoint, warm_start
from keras_dino.checkpoints.teacher import frozen_teacher
from keras_dino.errors import did_you_mean
from keras_dino.losses import batch_center, dino_loss, teacher_entropy
from keras_dino.models.backbones import build_backbone
from keras_dino.models.dino_head import DINOHead
from keras_dino.models.multicrop import MultiCropWrapper
from keras_dino.models.official_names import (
    ParameterGroups,
    multicrop_variable_map,
    parameter_groups,
)
from keras_dino.optim.optimizers import OPTIMIZERS, DINOOptimizer
from keras_dino.optim.schedules import DINOSchedules, ScheduleSetup
from keras_dino.training.hparams import (
    DATA_DEFAULTS,
    OFFICIAL_DEFAULTS,
    RUN_DEFAULTS,
    DINOConfig,
    data_settings_values,
    refuse_data_arguments,
    run_settings_values,
)
from keras_dino.training.inputs import check_training_input, crops_of
from keras_dino.training.steps import STEPS


def _refuse_unknown_arguments(kwargs: dict) -> None:
    """A `ValueError` naming the misspelt settings (`DINO(lrate=...)`) and the closest
    names, for keywords that are neither `DINOConfig` fields nor a Keras layer's."""
    layer_arguments = inspect.signature(keras.layers.Layer.__init__).parameters
    unknown = [k for k in kwargs if k not in layer_arguments and k not in (
        "input_shape", "input_dim", "batch_input_shape", "batch_size", "weights")]
    if not unknown:
        return
    own = [p for p in inspect.signature(DINO.__init__).parameters if p not in ("self", "kwargs")]
    known = [f.name for f in dataclasses.fields(DINOConfig)] + own
    hints = {k: did_you_mean(k, known) for k in unknown}
    named = ", ".join(f"{k!r} ({hint})" if hint else repr(k) for k, hint in hints.items())
    raise ValueError(f"DINO has no setting {named}; keras_dino.DINOConfig.settings() lists "
                     "them.")


@keras.saving.register_keras_serializable(package="keras_dino")
class DINO(keras.Model):
    """A DINO student/teacher pair with the complete official training recipe.

    Train with `model.fit(dataset)`, each element a tuple of crops: the 2 global crops
    first, then the local crops, each a float32 NHWC batch, already normalised (see
    `keras_dino.data.multicrop_dataset`). One step: the student sees every crop (one
    backbone call per resolution, one head call), the teacher the 2 global crops; the
    loss is the cross-entropy between the centered, sharpened teacher and the student
    over all pairs of different views; the gradient (of the global batch) is clipped
    per parameter; the optimizer steps with the per-iteration learning rate and weight
    decay (the head's last layer frozen for `freeze_last_layer` epochs); then, inside
    the same compiled step, the teacher follows the student by EMA and the center
    follows the teacher outputs.

    The hyper-parameters are the fields of one frozen
    `keras_dino.training.hparams.DINOConfig`, with the names and defaults of the official
    `main_dino.py` (`arch`, `patch_size`, `out_dim`, ..., `local_crops_number`) and
    keras_dino's own (`final_momentum_teacher`, `batch_size`, `student_temp`,
    `center_momentum`, `vit_kwargs`, `resnet_kwargs`, `head_kwargs`, `steps_per_epoch`,
    `gradient_accumulation_steps`, `freeze_blocks`, `layer_decay`); see its fields for what each means. Pass them by name,
    `DINO(arch="vit_small", lr=1e-4)`, or as a config, `DINO(config=config, lr=1e-4)` (the
    names given replace the config's). `model.config` is the config that runs, and what
    `get_config()` and the checkpoints' `args` record; a different value is a new model
    (`DINO(config=dataclasses.replace(model.config, ...))`). The crop settings belong to
    the data and reach the checkpoints through `fit(..., data_settings=...)`.

    Args:
        config: a `DINOConfig`; by default its defaults.
        photometric: a layer applied to the crops inside the compiled step before the
            networks see them, e.g. `keras_dino.data.MultiCropPhotometric()` for split
            mode, where the host sends uint8 crops and the colour jitter, grayscale, blur,
            solarisation and normalisation run on the accelerator.
        teacher: distillation, a small model from a big one (None: self-distillation).
            A frozen teacher of any architecture trains the student built from the
            arguments above: a preset name, a weights file (a full training
            `checkpoint.pth` or `.npz`: its `teacher_checkpoint_key` network, backbone and
            trained head, whose `out_dim` the student's must equal and which an `out_dim` left out
            takes; a released backbone `.pth`; a `.keras` file), a keras_dino backbone or
            a `MultiCropWrapper`. A backbone alone gets a frozen `DINOHead` of the
            student's head arguments, randomly initialised from a fixed seed
            (`keras_dino.checkpoints.teacher.random_head`). The teacher does not follow
            the student (momentum 1, recorded so), runs in inference mode, and none of
            its variables changes, BatchNorm statistics included; the loss, the center
            and the temperature schedule are the official ones. `model.backbone` is then
            the student's (the small model the run evaluates and exports); the
            checkpoints' `teacher` holds the teacher's own keys and `args` record
            `teacher_weights`; `get_config` holds the teacher as a nested object.
        teacher_checkpoint_key: the network of a full checkpoint that teaches
            (`"teacher"` or `"student"`).
        **kwargs: `DINOConfig` fields (replacing the config's), and `keras.Model`
            arguments (`name`, ...).

    Gradient accumulation, `gradient_accumulation_steps=k` (1: off):
    `k` micro-batches of `b` images make one optimizer step that is the official step on
    `k * b` images: the gradient is the mean over the `k` micro-batches, clipped per
    parameter and (while `freeze_last_layer` lasts) dropped for the last layer after
    that; the teacher EMA, the center (the mean of the teacher outputs over the whole
    effective batch and every replica; the loss uses the same center for the `k`
    micro-batches) and every schedule advance once per optimizer step; `lr` is scaled by the
    effective batch. `fit` counts micro-batches, so an epoch of `N` batches is `N / k`
    official iterations (`N` must be a multiple of `k`), and `optimizer.iterations`
    counts optimizer steps. The checkpoints' `args` record `gradient_accumulation_steps`
    and, as `batch_size_per_gpu`, the effective per-GPU batch (the official run this one
    reproduces). The accumulated gradients cost one more copy of the trainable weights.
    Exact for Vision Transformers and XCiT, whose images do not interact; BatchNorm
    (ResNet backbones, `use_bn_in_head=True`) normalises each micro-batch with its own
    statistics and updates its running statistics once per micro-batch, so there it
    approximates the big batch. Under float16 loss scaling a micro-batch whose gradient
    overflows is skipped, as a step is without accumulation. The official ViT-S/16
    recipe (1,024 images a step) on one GPU that holds 128: `batch_size_per_gpu=128,
    gradient_accumulation_steps=8` (`examples/train_dino.py --batch_size_per_gpu=128
    --gradient_accumulation_steps=8`).

    Example:

    ```python
    model = keras_dino.DINO(arch="vit_small", patch_size=16, epochs=100)
    model.compile()                 # the official AdamW with its schedules
    model.fit(keras_dino.data.multicrop_dataset("/data/imagenet/train", 64), epochs=100)
    ```

    The official batch of 1,024 images, as 8 micro-batches of 128 (one GPU); an epoch is
    the official 1,251 iterations of ImageNet's 1,281,167 images, 8 batches each:

    ```python
    model = keras_dino.DINO(arch="vit_small", epochs=100, gradient_accumulation_steps=8)
    images = keras_dino.data.multicrop_dataset("/data/imagenet/train", 128, repeat=True)
    model.fit(images, epochs=100, steps_per_epoch=1_281_167 // 1024 * 8)
    ```
    """

    config_class = DINOConfig
    OFFICIAL_DEFAULTS = OFFICIAL_DEFAULTS
    DATA_DEFAULTS = DATA_DEFAULTS
    RUN_DEFAULTS = RUN_DEFAULTS

    def __init__(self, config: DINOConfig | None = None, *, photometric=None, teacher=None,
                 teacher_checkpoint_key: str = "teacher", **kwargs):
        refuse_data_arguments(kwargs)
        overrides, kwargs = DINOConfig.split_arguments(kwargs)
        # Distillation: a frozen teacher of its own architecture (None: self-distillation).
        distillation = None
        if teacher is not None:
            out_dim = overrides.pop("out_dim", config.out_dim if config is not None else None)
            head_config = dict(overrides.get("head_kwargs") or (
                config.head_kwargs if config is not None else {}))
            use_bn = overrides.get("use_bn_in_head", config.use_bn_in_head if config else False)
            distillation = frozen_teacher(teacher, out_dim, dict(head_config, use_bn=use_bn),
                                          teacher_checkpoint_key)
            # The student's head matches the teacher's; the teacher does not follow the
            # student: momentum 1, recorded as such.
            overrides.update(out_dim=int(distillation.network.head.out_dim),
                             momentum_teacher=1.0, final_momentum_teacher=1.0)
        elif overrides.get("out_dim", 0) is None:
            del overrides["out_dim"]
        if config is None:
            config = DINOConfig(**overrides)
        elif isinstance(config, DINOConfig):
            config = dataclasses.replace(config, **overrides) if overrides else config
        else:
            raise TypeError(
                f"DINO's first argument is a keras_dino.training.hparams.DINOConfig; got "
                f"{config!r}: pass the hyper-parameters by name, e.g. DINO(arch='vit_small')."
            )
        _refuse_unknown_arguments(kwargs)
        super().__init__(**kwargs)
        self.distillation = distillation
        self._dino_config = config
        accumulation = config.gradient_accumulation_steps
        self.schedules = DINOSchedules.from_config(
            config,
            steps_per_epoch=config.steps_per_epoch // accumulation
            if config.steps_per_epoch else None,
        )
        if isinstance(photometric, dict):
            photometric = keras.saving.deserialize_keras_object(photometric)
        self.photometric = photometric
        # The crop settings of the data this model trains on (see `fit`).
        self.data_settings = dict(DATA_DEFAULTS)
        self.run_settings = dict(RUN_DEFAULTS)
        out_dim = config.out_dim
        head_config = dict(config.head_kwargs)
        head_config.update(out_dim=out_dim, use_bn=config.use_bn_in_head)
        backbone_args = dict(
            arch=config.arch,
            patch_size=config.patch_size,
            vit_kwargs=dict(config.vit_kwargs),
            resnet_kwargs=dict(config.resnet_kwargs),
        )
        student_backbone = build_backbone(
            **backbone_args, drop_path_rate=config.drop_path_rate, name="student_backbone"
        )
        embed_dim = student_backbone.embed_dim
        student_head = DINOHead(
            **head_config, norm_last_layer=config.norm_last_layer, in_dim=embed_dim,
            name="student_head",
        )
        self.student = MultiCropWrapper(student_backbone, student_head, name="student")
        if self.distillation is not None:
            self.teacher = self.distillation.network
        else:
            teacher_backbone = build_backbone(**backbone_args, name="teacher_backbone")
            teacher_head = DINOHead(**head_config, in_dim=embed_dim, name="teacher_head")
            self.teacher = MultiCropWrapper(teacher_backbone, teacher_head, name="teacher")
        self.student.build()
        self.teacher.build()
        self.teacher.trainable = False
        self.center = self.add_weight(
            shape=(1, out_dim), initializer="zeros", trainable=False, name="center"
        )
        if accumulation > 1:
            # The teacher outputs of the micro-batches since the last optimizer step: their
            # sum (all-reduced) and their number of rows, for the center's batch mean.
            self._center_sum = self.add_weight(
                shape=(1, out_dim), initializer="zeros", trainable=False,
                name="center_accumulator",
            )
            self._center_rows = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="center_rows_accumulator"
            )
        self.student_map = multicrop_variable_map(self.student)
        self.teacher_map = multicrop_variable_map(self.teacher)
        # The teacher starts as a copy of the student, BatchNorm statistics included
        # (official: load_state_dict). A copy, not the student's buffer: JAX donates
        # both to the compiled step.
        for name, (variable, _) in self.teacher_map.items():
            if self.distillation is not None:
                break  # a frozen teacher of its own: nothing to copy, nothing to average
            variable.assign(ops.copy(ops.convert_to_tensor(self.student_map[name][0])))
        # The EMA follows the parameters only; the teacher's BatchNorm statistics come
        # from its own forward passes in training mode, as in the official code. The
        # teacher's copies of frozen parameters (`freeze_blocks`) keep their values.
        groups = self.parameter_groups()
        frozen = set(groups.frozen)
        self._ema_pairs = [
            (self.student_map[name][0], self.teacher_map[name][0])
            for name in groups.averaged
            if name not in frozen and self.distillation is None
        ]
        # Epoch means of the two parts of the loss (`dino_loss_terms`), to watch collapse.
        self._entropy_tracker = keras.metrics.Mean(name="teacher_entropy")
        self._kl_tracker = keras.metrics.Mean(name="kl")
        self._resume_epoch = 0
        self.built = True

    # ------------------------------------------------------------------ inference
    def call(self, crops, training=None):
        """Student logits of a list of crops (crop-major), as the official student."""
        return self.student(crops, training=training)

    @property
    def metrics(self):
        return super().metrics + [self._entropy_tracker, self._kl_tracker]

    @property
    def config(self) -> DINOConfig:
        """The frozen hyper-parameters of this model (`keras_dino.training.hparams`)."""
        return self._dino_config

    @property
    def hparams(self):
        """A read-only `{name: value}` view of `config` (what `get_config` records)."""
        return types.MappingProxyType(self.config.to_dict())

    @property
    def backbone(self):
        """The model DINO evaluates and exports: the teacher backbone, or the student's
        when a frozen teacher distils into it (`teacher=`)."""
        if self.distillation is not None:
            return self.student.backbone
        return self.teacher.backbone

    @property
    def teacher_weights(self):
        """Where a distillation's frozen teacher comes from (None: self-distillation)."""
        return None if self.distillation is None else self.distillation.source

    # ------------------------------------------------------------------ compile
    def make_optimizer(self, name: str | None = None) -> DINOOptimizer:
        """The official optimizer (`adamw`, `sgd` or `lars`) driven by this run's schedules."""
        name = name or self.config.optimizer
        return OPTIMIZERS[name](
            self.schedules,
            clip_grad=self.config.clip_grad,
            gradient_accumulation_steps=self.config.gradient_accumulation_steps,
        )

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the official optimizer unless another is given.

        Takes the usual Keras options (`steps_per_execution`, `jit_compile`, ...).
        Compiling again keeps the existing optimizer and its state (e.g. restored from
        an official checkpoint) unless a new optimizer is passed.
        """
        if kwargs.get("loss") is not None:
            raise ValueError("DINO computes its own loss; do not pass loss= to compile.")
        kwargs.pop("loss", None)
        if optimizer is None:
            current = getattr(self, "optimizer", None)
            current = getattr(current, "inner_optimizer", current)
            optimizer = current if isinstance(current, DINOOptimizer) else self.make_optimizer()
        elif isinstance(optimizer, str):
            optimizer = self.make_optimizer(optimizer)
        self._check_accumulating_optimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if isinstance(inner, DINOOptimizer) and not inner.built:
            self._configure_optimizer(inner)
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        """What `compile` was given, for a `.keras` file: a DINO optimizer by its official
        name and its own settings (its schedules are this model's), so that loading the
        file compiles the model again and restores the optimizer's state (moments, step
        count: where the schedules stand)."""
        config = super().get_compile_config()
        inner = getattr(getattr(self, "optimizer", None), "inner_optimizer",
                        getattr(self, "optimizer", None))
        if config and isinstance(inner, DINOOptimizer):
            # A subclass of the user's: by its registered name (keras.saving).
            name = next((n for n, cls in OPTIMIZERS.items() if type(inner) is cls),
                        keras.saving.get_registered_name(type(inner)))
            config = {**config, "optimizer": {"dino_optimizer": name,
                                              "config": inner.get_config()}}
        return config

    def compile_from_config(self, config):
        """Compiles as `get_compile_config` recorded (`keras.saving.load_model` calls it
        before it restores the optimizer's variables)."""
        config = dict(config)
        optimizer = config.pop("optimizer", None)
        config = keras.saving.deserialize_keras_object(config)
        if isinstance(optimizer, dict) and "dino_optimizer" in optimizer:
            name = optimizer["dino_optimizer"]
            cls = OPTIMIZERS.get(name) or keras.saving.get_registered_object(name)
            if cls is None:
                raise ValueError(
                    f"this model was compiled with the optimizer {name!r}, which is not "
                    "registered here: register it (keras.saving.register_keras_serializable)"
                    " before loading, or load with compile=False and compile it yourself.")
            optimizer = cls(self.schedules, **optimizer["config"])
        elif optimizer is not None:
            optimizer = keras.saving.deserialize_keras_object(optimizer)
        self.compile(optimizer=optimizer, **{k: v for k, v in config.items() if v is not None})

    def parameter_groups(self) -> ParameterGroups:
        """The student's parameters as the official optimizer groups them.

        Which variables are weight-decayed, which form the last layer that
        `freeze_last_layer` freezes, which the teacher averages, which `freeze_blocks`
        fixes and the learning-rate multiplier of each (`layer_decay`): the optimizer
        set-up, the teacher EMA and the checkpoint's optimizer indices all read it.
        """
        return parameter_groups(
            self.student, self.trainable_variables,
            freeze_blocks=self.config.freeze_blocks, layer_decay=self.config.layer_decay,
        )
    def _check_accumulating_optimizer(self, optimizer):
        k = self.config.gradient_accumulation_steps
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        if isinstance(inner, DINOOptimizer):
            if inner.accumulation_steps != k:
                raise ValueError(
                    f"this DINO accumulates gradients over {k} micro-batches but the "
                    f"optimizer given to compile over {inner.accumulation_steps}: build it "
                    f"with model.make_optimizer() or gradient_accumulation_steps={k}."
                )
        elif k > 1:
            raise ValueError(
                f"gradient_accumulation_steps={k} needs a keras_dino optimizer (it "
                "accumulates, clips and freezes as the official step); got "
                f"{type(inner).__name__}: compile with optimizer=None or model.make_optimizer()."
            )

    def _configure_optimizer(self, optimizer):
        groups = self.parameter_groups()
        regularized, last_layer = set(groups.regularized), set(groups.last_layer)
        variables = self.trainable_variables
        frozen_names = set(groups.frozen)
        decay, ndim, freezable, frozen, lr_scale = [], [], [], [], []
        for v in variables:
            name = groups.name_of(v)
            if name is None:  # not a student parameter: the official rule on its path
                decay.append(not (v.path.endswith(".bias") or len(v.shape) == 1))
                ndim.append(len(v.shape))
                freezable.append(False)
                frozen.append(False)
                lr_scale.append(1.0)
                continue
            decay.append(name in regularized)
            ndim.append(groups.ranks[name])
            freezable.append(name in last_layer)
            frozen.append(name in frozen_names)
            lr_scale.append(groups.lr_scales[name])
        optimizer.configure(variables, decay=decay, official_ndim=ndim, freezable=freezable,
                            frozen=frozen, lr_scale=lr_scale)

    # ------------------------------------------------------------------ settings
    def set_run_settings(self, **settings):
        """Records how the run was made, for the checkpoints' `args`, as `main_dino.py`.

        The official run arguments that are not hyper-parameters of the model:
        `use_fp16`, `data_path`, `output_dir`, `saveckp_freq`, `seed`, `num_workers`,
        `world_size` (and `dist_url`, `local_rank`, `rank`, `gpu`). They are recorded,
        not acted on: seed and mixed precision are set where the run is set up.

        Example:

        >>> model = DINO(arch="vit_tiny", out_dim=64, vit_kwargs=dict(depth=1))
        >>> model.set_run_settings(seed=7, use_fp16=False, data_path="photos/")
        >>> model.run_settings["seed"], model.run_settings["data_path"]
        (7, 'photos/')
        """
        self.run_settings.update(run_settings_values(settings))

    def set_data_settings(self, data_settings):
        """Records the crop settings of the training data (checkpoint `args`).

        `data_settings` is a `keras_dino.data.DataAugmentationDINO`, the `MultiCropInfo`
        of `multicrop_dataset(..., return_info=True)`, or a dict with
        `global_crops_scale` and `local_crops_scale`. Their number of local crops must be
        this model's `local_crops_number`.
        """
        self.data_settings.update(
            data_settings_values(data_settings, self.config.local_crops_number)
        )

    # ------------------------------------------------------------------ training
    def _crops(self, data):
        return crops_of(data, self.config.local_crops_number)

    def _set_base_lr(self, crops):
        if self.config.batch_size:
            global_batch = self.config.batch_size
        else:
            per_replica = crops[0].shape[0]
            if per_replica is None:
                raise ValueError(
                    "the batch size is not static, so the learning rate cannot be scaled by "
                    "it: batch with drop_remainder=True or pass DINO(batch_size=...)."
                )
            global_batch = (
                per_replica * distribute.num_replicas() * self.config.gradient_accumulation_steps
            )
        self.schedules.base_lr = self.config.lr * global_batch / 256.0

    def _forward(self, crops, step):
        if self.photometric is not None:
            crops = list(self.photometric(tuple(crops), training=True))
        elif "int" in (dtype := keras.backend.standardize_dtype(crops[0].dtype)):
            raise ValueError(
                f"the crops are {dtype} (split mode: multicrop_dataset(split=True)) but this "
                "DINO has no photometric layer to augment and normalise them: pass DINO("
                "photometric=keras_dino.data.MultiCropPhotometric()), or build the dataset "
                "with split=False."
            )
        temp = self.schedules.teacher_temperature(step)
        # A frozen teacher runs in inference mode: its BatchNorm statistics stay fixed.
        teacher_output = ops.stop_gradient(
            self.teacher(crops[:2], training=self.distillation is None))
        student_output = self.student(crops, training=True)
        loss = dino_loss(
            student_output,
            teacher_output,
            ops.convert_to_tensor(self.center),
            temp,
            self.config.student_temp,
            len(crops),
        )
        return loss, teacher_output

    def _after_update(self, loss, teacher_output, step, ncrops, iterations_before=None):
        # Outside the differentiated function, so the loss's program stays the official
        # arithmetic; the center is still the one the loss used.
        # `iterations_before`: the optimizer's step count before this step's `apply`; with
        # gradient accumulation, the EMA and the center move only when it changed.
        entropy = teacher_entropy(
            teacher_output, self.center, self.schedules.teacher_temperature(step), ncrops
        )
        momentum = self.schedules.momentum(step)
        student_weight = self.schedules.one_minus_momentum(step)
        stepped = None
        if self.config.gradient_accumulation_steps > 1:
            inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            stepped = ops.not_equal(ops.convert_to_tensor(inner.iterations), iterations_before)

        def keep_unless_stepped(variable, new):
            if stepped is None:
                return new
            return ops.where(stepped, new, ops.convert_to_tensor(variable))

        updates = []
        for s, t in self._ema_pairs:
            m = ops.cast(momentum, t.dtype)
            w = ops.cast(student_weight, t.dtype)
            updates.append((t, keep_unless_stepped(t, t * m + w * ops.cast(s, t.dtype))))
        total, count = batch_center(teacher_output)
        total = distribute.cross_replica_sum(total)
        rows = float(count * distribute.num_replicas())
        if stepped is not None:
            # The mean over every micro-batch of the optimizer step (the effective batch).
            total = ops.convert_to_tensor(self._center_sum) + ops.cast(total, self.center.dtype)
            rows = ops.convert_to_tensor(self._center_rows) + rows
            updates.append((self._center_sum, ops.where(stepped, ops.zeros_like(total), total)))
            updates.append((self._center_rows, ops.where(stepped, ops.zeros_like(rows), rows)))
        mean = total / rows
        cm = self.config.center_momentum
        mean = ops.cast(mean, self.center.dtype)
        updates.append(
            (self.center, keep_unless_stepped(self.center, self.center * cm + mean * (1.0 - cm)))
        )
        distribute.assign_all(updates)
        self._loss_tracker.update_state(loss)
        self._entropy_tracker.update_state(entropy)
        self._kl_tracker.update_state(loss - entropy)
        return {
            "loss": self._loss_tracker.result(),
            "teacher_entropy": self._entropy_tracker.result(),
            "kl": self._kl_tracker.result(),
            "lr": self.schedules.lr(step),
            "wd": self.schedules.wd(step),
            "momentum": momentum,
            "teacher_temp": self.schedules.teacher_temperature(step),
        }

    def train_step(self, *args):
        backend = keras.backend.backend()
        if backend not in STEPS:
            raise NotImplementedError(f"DINO does not support the {backend} backend.")
        return STEPS[backend](self, *args)

    def make_train_function(self, force=False):
        if keras.backend.backend() == "jax" and (force or self.train_function is None):
            # Keras jits `self.train_step`, and JAX keeps one trace per function: a bound
            # method of the same model counts as the same function, so a new step would
            # reuse the trace holding the old schedules' constants. A new function object
            # per step function is traced anew.
            self.train_step = functools.partial(type(self).train_step, self)
        return super().make_train_function(force=force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # DINO builds its networks at construction and its optimizer at compile, so the
        # symbolic build Keras runs under tf.distribute has nothing to do; it would also
        # reduce a sample batch, which fails for per-replica crop tuples under
        # MultiWorkerMirroredStrategy.
        if getattr(self, "optimizer", None) is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, *args):
        raise NotImplementedError(
            "DINO has no supervised evaluation step; use keras_dino.evaluation (k-NN, "
            "linear probe) on model.backbone."
        )

    def fit(self, x=None, y=None, *, epochs=None, callbacks=None, data_settings=None, **kwargs):
        """`keras.Model.fit` with the DINO callbacks and the schedules set up.

        `epochs` defaults to the model's `epochs` hyper-parameter (the length of the
        schedules). A model restored from an official checkpoint resumes at its epoch.
        `data_settings` (see `set_data_settings`) records the crop settings of `x`.
        """
        check_training_input(x)
        if data_settings is not None:
            self.set_data_settings(data_settings)
        if getattr(self, "optimizer", None) is None:
            self.compile()
        callbacks = list(callbacks or [])
        # Report-only: they add the momentum, the center's momentum and norm to the logs.
        if not any(isinstance(c, dino_callbacks.TeacherEMA) for c in callbacks):
            callbacks.append(dino_callbacks.TeacherEMA())
        if not any(isinstance(c, dino_callbacks.Centering) for c in callbacks):
            callbacks.append(dino_callbacks.Centering())
        if not any(isinstance(c, dino_callbacks.StopOnNonFiniteLoss) for c in callbacks):
            callbacks.append(dino_callbacks.StopOnNonFiniteLoss())
        if not any(isinstance(c, dino_callbacks.CollapseWarning) for c in callbacks):
            callbacks.append(dino_callbacks.CollapseWarning())
        callbacks.insert(0, ScheduleSetup())
        if hasattr(x, "element_spec"):
            # A tf.data pipeline shuffles itself; Keras would warn that it ignores shuffle.
            kwargs.setdefault("shuffle", False)
        if self._resume_epoch and "initial_epoch" not in kwargs:
            kwargs["initial_epoch"] = self._resume_epoch
        epochs = self.config.epochs if epochs is None else epochs
        return super().fit(x, y, epochs=epochs, callbacks=callbacks, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_official_checkpoint(cls, path, **overrides):
        """A compiled DINO rebuilt from an official full `checkpoint.pth` (or `.npz`).

        Hyper-parameters come from the checkpoint's `args` (`overrides` replace them);
        student, teacher, center, optimizer moments and per-parameter steps are
        restored, and `fit` resumes at the checkpoint's epoch. The file is read without
        torch and without running pickled code.
        """
        return dino_checkpoint.load_official_checkpoint(path, cls, **overrides)

    @classmethod
    def from_pretrained(cls, weights, checkpoint_key=None, load_heads=True, **kwargs):
        """A new DINO run whose networks start from released or earlier weights.

        `weights` is a preset name (`"dino_vits16"`, ...), a released backbone `.pth`, an
        official full training `checkpoint.pth`, their `.npz` twins, or a `.keras` file
        (a DINO, a `MultiCropWrapper` or a backbone). A backbone starts the student's and
        the teacher's backbones, and the heads start fresh; a full checkpoint also starts
        both heads and the center (`load_heads=False` keeps its backbones only;
        `checkpoint_key="teacher"` or `"student"` starts both networks from one of them).
        The optimizer, the epoch and the schedules start anew.

        `kwargs` are the constructor's (`out_dim`, `momentum_teacher`, `epochs`, `lr`,
        `local_crops_number`, ...). The architecture (`arch`, `patch_size`, the backbone's
        and the head's shapes) is read from the file when not given; given, it must match.

        Example:

        ```python
        model = keras_dino.DINO.from_pretrained(
            "dino_vits16", out_dim=4096, epochs=20, lr=1e-4, warmup_epochs=1)
        model.fit(keras_dino.data.multicrop_dataset("my_images/", 64), epochs=20)
        ```
        """
        return warm_start.dino_from_pretrained(cls, weights, checkpoint_key, load_heads, **kwargs)

    def save_official_checkpoint(self, path) -> str:
        """Writes an official `checkpoint.pth` (or `.npz`) that `main_dino.py` resumes from."""
        return dino_checkpoint.save_official_checkpoint(self, path)

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = {**super().get_config(), **self.config.to_dict()}
        if self.photometric is not None:
            config["photometric"] = keras.saving.serialize_keras_object(self.photometric)
        config["data_settings"] = {k: list(v) for k, v in self.data_settings.items()}
        config["run_settings"] = dict(self.run_settings)
        if self.distillation is not None:
            # The frozen teacher as a nested object: a .keras file restores its weights.
            config["teacher"] = keras.saving.serialize_keras_object(self.teacher)
            config["teacher_weights"] = self.teacher_weights
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        data_settings = dict(config.pop("data_settings", None) or {})
        run_settings = dict(config.pop("run_settings", None) or {})
        teacher_weights = config.pop("teacher_weights", None)
        if isinstance(config.get("teacher"), dict):
            # Built before the model, as a given teacher is (the order of the variables
            # that a .keras file restores).
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        for key in DATA_DEFAULTS:  # in the config of keras_dino 0.1 models
            if key in config:
                data_settings[key] = config.pop(key)
        model = cls(**config)
        if data_settings:
            model.set_data_settings(data_settings)
        model.set_run_settings(**run_settings)
        if teacher_weights is not None and model.distillation is not None:
            model.distillation.source = teacher_weights
        return model
