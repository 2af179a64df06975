"""Train DINO with `model.fit`: the official main_dino.py, in Keras.

Every flag of the official `main_dino.py` that applies keeps its name and default, so
official command lines carry over; data-source, backend and distribution flags are added.
Checkpoints (Keras backups for resuming, and official `checkpoint.pth` files) and
`log.txt` go to `--output_dir`; rerunning the same command resumes.

The quickstart (embedded CIFAR-10 subset, a few minutes on 2 CPU cores, then
k-NN against random initialisation, attention maps, training curves, SavedModel):

    python examples/train_dino.py --flagfile=examples/flags/quickstart.flags

ImageNet on one machine, as in the paper (ViT-S/16, 100 epochs):

    python examples/train_dino.py --data_path=/data/imagenet/train --output_dir=out \\
        --strategy=mirrored
"""

import json
import os
import sys
import tempfile

from keras_dino.tools.common import (
    append_log,
    architecture_name,
    cpu_has_bf16,
    has_gpu,
    mixed_precision_policy,
    resolve_data_path,
    run_absl,
    say,
    select_backend,
    short_load_errors,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402

from keras_dino.training.hparams import DINOConfig, kind_of  # noqa: E402

F = flags.FLAGS
# --- DINO's hyper-parameters: one flag per field of DINOConfig, with its name, default
# and help (the official main_dino.py names and defaults) ---
# What a flag adds for this tool to the field's own help.
_FLAG_NOTES = {
    "arch": "On the command line, a custom architecture takes --embed_dim/--depth/"
            "--num_heads (ViT, or XCiT for an xcit* name) or --resnet_layers (ResNet).",
    "steps_per_epoch": "The same on every worker (default for multi-replica runs: "
                       "images // global batch; needed for sources whose size is unknown).",
}
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_boolean}


def config_flags():
    """The `DINOConfig` fields that are flags of this tool (all but the nested ones)."""
    return [field for field in DINOConfig.settings() if field.metadata["flag"]]


def flag_default(field):
    """The default of a hyper-parameter's flag: the field's (the official one)."""
    return field.metadata.get("flag_default", field.default)


def _define_config_flags():
    for field in config_flags():
        meta = field.metadata
        helptext = " ".join(filter(None, (meta["help"], _FLAG_NOTES.get(field.name))))
        if meta["choices"]:
            flags.DEFINE_enum(field.name, flag_default(field), list(meta["choices"]), helptext)
            continue
        kind, _ = kind_of(field)
        low, high = meta["bounds"] or (None, None)
        bounds = dict(lower_bound=low, upper_bound=high) if kind in (int, float) else {}
        _DEFINE[kind](field.name, flag_default(field), helptext, **bounds)


_define_config_flags()
# --- the other official main_dino.py arguments (names and defaults): run and data ---
flags.DEFINE_boolean("use_fp16", True, "Mixed precision float16 with dynamic loss scaling, "
                     "on a GPU (without one, training runs in float32 and says so).")
flags.DEFINE_list("global_crops_scale", ["0.4", "1.0"], "Area range of the global crops.")
flags.DEFINE_list("local_crops_scale", ["0.05", "0.4"], "Area range of the local crops.")
flags.DEFINE_string("data_path", "/path/to/imagenet/train/", "Training images: an "
                    "ImageFolder directory, a TFRecord glob (tfrecord:...), tfds:<name>, or "
                    "embedded (the embedded CIFAR-10 subset's train split; embedded:test).")
flags.DEFINE_string("output_dir", ".", "Where checkpoints and logs are written.")
flags.DEFINE_integer("saveckp_freq", 20, "Write an official checkpointXXXX.pth every N epochs.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("num_workers", 10, "Parallel decode calls (0: AUTOTUNE).")
# --- additions ---
flags.DEFINE_string("backend", None, "Keras backend (tensorflow, jax, torch); default from "
                    "KERAS_BACKEND.")
flags.DEFINE_integer("global_size", 224, "Side of the global crops.")
flags.DEFINE_integer("local_size", 96, "Side of the local crops.")
flags.DEFINE_list("blur_radius", ["0.1", "2.0"], "Range of the Gaussian-blur radius in pixels "
                  "(the official 0.1,2 suits 224-pixel crops; scale it for small images).")
flags.DEFINE_boolean("photometric_on_device", False, "Split mode: the input pipeline only "
                     "decodes, crops and flips (uint8 crops); colour jitter, grayscale, blur, "
                     "solarisation and normalisation run inside the compiled training step "
                     "(keras_dino.data.MultiCropPhotometric). For accelerators whose host CPUs "
                     "cannot keep up; on a CPU the full host pipeline is faster.")
flags.DEFINE_boolean("batched_crops", False, "Crop and resize each batch of images at once "
                     "(keras_dino.data.multicrop_dataset(batched_crops=True)): the same crops "
                     "at a fraction of the host time for small images such as CIFAR's; each "
                     "batch is padded to its largest image, so keep it off for large photos.")
flags.DEFINE_string("pretrained_weights", "", "Start from these weights instead of random ones "
                    "(the evaluation tools' flag): a preset (dino_vits16, ...), a released "
                    "backbone .pth, a full training checkpoint.pth (heads and center too), an "
                    ".npz twin or a .keras file. Schedules and optimizer start anew.")
flags.DEFINE_string("checkpoint_key", None, "With --pretrained_weights: 'teacher' or 'student' "
                    "to start both networks from one of a full checkpoint's networks.")
flags.DEFINE_boolean("load_heads", True, "With --pretrained_weights holding DINO heads: start "
                     "them and the center from it too (false: the backbone only).")
flags.DEFINE_string("teacher_weights", "", "Distillation: a frozen teacher of any architecture "
                    "trains the student of --arch (which the run evaluates and exports): a "
                    "full training checkpoint.pth (its teacher network and head; --out_dim "
                    "defaults to the head's), a released backbone .pth, a preset or a "
                    ".keras file (a backbone gets a frozen random DINO head). No EMA.")
flags.DEFINE_string("teacher_checkpoint_key", "teacher", "With --teacher_weights holding a full "
                    "checkpoint: the network that teaches ('teacher' or 'student').")
flags.DEFINE_integer("embed_dim", None, "Custom architecture: token width.")
flags.DEFINE_integer("depth", None, "Custom architecture: number of blocks.")
flags.DEFINE_integer("num_heads", None, "Custom architecture: attention heads.")
flags.DEFINE_integer("num_register_tokens", 0, "ViT: register tokens (Darcet et al., "
                     "\"Vision Transformers Need Registers\"); 0 is the official DINO model.")
flags.DEFINE_enum("resnet_block", None, ["basic", "bottleneck"], "Custom ResNet: block type.")
flags.DEFINE_list("resnet_layers", None, "Custom ResNet: blocks per stage, e.g. 1,1,1,1.")
flags.DEFINE_integer("resnet_stem_width", None, "Custom ResNet: channels of the stem (64).")
flags.DEFINE_list("resnet_widths", None, "Custom ResNet: widths of the stages "
                  "(64,128,256,512).")
flags.DEFINE_integer("head_hidden_dim", 2048, "Hidden width of the DINO head.")
flags.DEFINE_integer("head_bottleneck_dim", 256, "Bottleneck width of the DINO head.")
flags.DEFINE_boolean("bf16", False, "Mixed precision bfloat16 (TPU/recent GPU/CPU).")
flags.DEFINE_boolean("fused_attention", False, "Attention through keras.ops."
                     "dot_product_attention (flash/cuDNN kernels on GPUs).")
flags.DEFINE_boolean("remat", False, "Recompute the student's blocks in the backward pass: "
                     "less memory (larger batches for ViT-S/8, ViT-B/16), ~1/3 more compute.")
flags.DEFINE_integer("steps_per_execution", 1, "Steps per compiled call (TF and JAX).")
flags.DEFINE_boolean("jit_compile", None, "XLA-compile the step (default: Keras' choice).")
# --- distribution (docs/distributed.md) ---
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy (TensorFlow backend): default (one device), "
                  "mirrored (every local GPU), multi_worker (MultiWorkerMirroredStrategy, "
                  "cluster from TF_CONFIG), tpu (TPUStrategy on --tpu).")
flags.DEFINE_string("tpu", None, "TPU for --strategy=tpu: a name, a grpc://host:8470 address, "
                    "or 'local' on a TPU VM.")
flags.DEFINE_enum("distribution", None, ["data_parallel"], "keras.distribution (JAX backend): "
                  "data_parallel replicates the model on every device of every process.")
flags.DEFINE_boolean("jax_multiprocess", False, "Call jax.distributed.initialize() first (one "
                     "process per host; auto-detected on TPU pods, SLURM, Open MPI, or given "
                     "by --coordinator_address/--num_processes/--process_id).")
flags.DEFINE_string("coordinator_address", None, "--jax_multiprocess: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "--jax_multiprocess: number of processes.")
flags.DEFINE_integer("process_id", None, "--jax_multiprocess: index of this process.")
flags.DEFINE_string("coordinator_bind_address", None, "--jax_multiprocess: where process 0 "
                    "listens (default: every interface, at the coordinator's port).")
flags.DEFINE_integer("collective_timeout", 0, "--strategy=multi_worker: seconds after which a "
                     "cross-worker collective fails instead of waiting for a lost worker (0: "
                     "no limit; make it longer than the first step's compilation).")
flags.DEFINE_string("knn_train_path", None, "Labelled ImageFolder for the k-NN reference set "
                    "(embedded: the embedded subset's train split).")
flags.DEFINE_string("knn_test_path", None, "Labelled ImageFolder to classify with k-NN "
                    "(embedded: the embedded subset's test split).")
flags.DEFINE_integer("knn_k", 20, "Neighbours of the k-NN evaluation.")
flags.DEFINE_integer("knn_every", 0, "k-NN accuracy of the teacher on --knn_train_path / "
                     "--knn_test_path every N epochs during training (0: only at the end), "
                     "logged and plotted with the loss.", lower_bound=0)
flags.DEFINE_integer("eval_size", 224, "Side of the center crop for evaluation.")
flags.DEFINE_integer("eval_resize", None, "Shorter side before the center crop (default size*8/7).")
flags.DEFINE_boolean("export", True, "Export the teacher backbone as a SavedModel at the end.")
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")


def _num_source_images(path):
    """Images of a folder or file-list source before sharding (None when unknown)."""
    from keras_dino.data import detect_source_type, list_image_files

    try:
        if detect_source_type(path) == "folder":
            return len(list_image_files(path).files)
    except (OSError, ValueError):
        return None
    return None


def _data_path(path, natural="train"):
    return resolve_data_path(path, natural)


def _is_chief_task(cluster, task_type, task_id):
    """TensorFlow's multi-worker rule (the `chief` task, or worker 0 when the cluster has
    none), read from TF_CONFIG before TensorFlow is imported; `Launch.chief` afterwards."""
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and int(task_id or 0) == 0


def augmentation_recipe():
    """The official multi-crop recipe with this run's sizes, scales and blur radius."""
    from keras_dino.data import DataAugmentationDINO, PhotometricConfig

    return DataAugmentationDINO(
        global_crops_scale=[float(v) for v in F.global_crops_scale],
        local_crops_scale=[float(v) for v in F.local_crops_scale],
        local_crops_number=F.local_crops_number,
        global_size=F.global_size,
        local_size=F.local_size,
        photometric_config=PhotometricConfig(blur_radius=tuple(float(v) for v in F.blur_radius)),
    )


def _resnet_kwargs():
    """The custom ResNet of the --resnet_* flags ({} when none is given)."""
    kwargs = {}
    if F.resnet_block:
        kwargs["block"] = F.resnet_block
    if F.resnet_layers:
        kwargs["layers"] = [int(v) for v in F.resnet_layers]
    if F.resnet_stem_width:
        kwargs["stem_width"] = F.resnet_stem_width
    if F.resnet_widths:
        kwargs["stage_widths"] = [int(v) for v in F.resnet_widths]
    return kwargs


def _nested_settings():
    """The backbone and head settings of the architecture flags."""
    from keras_dino.models.backbones import is_resnet, is_xcit

    vit_kwargs, resnet_kwargs = {}, _resnet_kwargs()
    if not is_resnet(F.arch, resnet_kwargs):
        vit_kwargs = {k: getattr(F, k) for k in ("embed_dim", "depth", "num_heads")
                      if getattr(F, k) is not None}
        if not is_xcit(F.arch):  # ViT-only speed options
            vit_kwargs.update(use_fused_attention=F.fused_attention, remat=F.remat)
            if F.num_register_tokens:
                vit_kwargs["num_register_tokens"] = F.num_register_tokens
    return dict(
        vit_kwargs=vit_kwargs,
        resnet_kwargs=resnet_kwargs,
        head_kwargs=dict(hidden_dim=F.head_hidden_dim, bottleneck_dim=F.head_bottleneck_dim),
    )


def config_from_flags() -> DINOConfig:
    """The `DINOConfig` of the flags, or a usage error naming the wrong value."""
    from keras_dino.models.backbones import backbone_config

    values = {field.name: F[field.name].value for field in config_flags()}
    try:
        config = DINOConfig(**values, **_nested_settings())
        if not (F.pretrained_weights and not F["arch"].present):  # else the file's arch
            backbone_config(config.arch, config.patch_size, config.vit_kwargs,
                            config.resnet_kwargs)
    except (TypeError, ValueError) as error:
        raise app.UsageError(str(error)) from None
    return config


def _teacher_arguments() -> dict:
    """`DINO` arguments of --teacher_weights (distillation), or none."""
    if not F.teacher_weights:
        return {}
    arguments = dict(teacher=F.teacher_weights, teacher_checkpoint_key=F.teacher_checkpoint_key)
    if not F["out_dim"].present:
        arguments["out_dim"] = None  # the teacher head's
    return arguments


def recipe(flagfile, *overrides):
    """`(DINOConfig, DataAugmentationDINO)` of a flags file: what `keras-dino train
    --flagfile=<flagfile> <overrides>` trains, for scripts that share a recipe with the
    tool (bench/knn_cifar10.py builds the quickstart's network from
    examples/flags/quickstart.flags this way). `overrides` are `--name=value` strings;
    this process's flags are set to them.

    Example:

    >>> import pathlib, keras_dino
    >>> flags_file = pathlib.Path(keras_dino.__file__).parents[1] / "examples/flags/quickstart.flags"
    >>> config, crops = recipe(flags_file, "--epochs=2")
    >>> config.arch, config.epochs, crops.local_crops_number
    ('resnet_quickstart', 2, 0)
    """
    F.unparse_flags()
    F(["keras-dino train", f"--flagfile={flagfile}", *overrides])
    return config_from_flags(), augmentation_recipe()


def build_model():
    from keras_dino.training.dino import DINO

    config = config_from_flags()
    photometric = (augmentation_recipe().device_layer(seed=F.seed)
                   if F.photometric_on_device else None)
    if not F.pretrained_weights:
        return DINO(config=config, photometric=photometric, **_teacher_arguments())
    # The file decides the architecture and the heads' shape, unless the command line
    # (or the flags file) names them.
    arguments = config.to_dict()
    for key in ("arch", "patch_size", "out_dim", "norm_last_layer", "use_bn_in_head"):
        if not F[key].present:
            del arguments[key]
    if not (F["head_hidden_dim"].present or F["head_bottleneck_dim"].present):
        del arguments["head_kwargs"]
    return DINO.from_pretrained(
        F.pretrained_weights, checkpoint_key=F.checkpoint_key, load_heads=F.load_heads,
        photometric=photometric, **{**arguments, **_teacher_arguments()},
    )


def _noise_log_path():
    """Where this process's framework messages go: `<output_dir>/framework.log` on the
    process that writes the run's files, a temporary file on the others (decided from
    TF_CONFIG or --process_id, before any framework is imported)."""
    worker = None
    if F.strategy == "multi_worker" and os.environ.get("TF_CONFIG"):
        config = json.loads(os.environ["TF_CONFIG"])
        task, cluster = config.get("task", {}), config.get("cluster", {})
        if not _is_chief_task(cluster, task.get("type"), task.get("index")):
            worker = f"{task.get('type')}{task.get('index', 0)}"
    elif F.jax_multiprocess and F.process_id:
        worker = f"process{F.process_id}"
    if worker is None:
        return os.path.join(F.output_dir, "framework.log")
    return os.path.join(tempfile.gettempdir(), f"keras_dino_framework_{worker}_{os.getpid()}.log")


def _main(argv):
    del argv
    run()


def _launch():
    """The distribution of the flags (`keras_dino.training.launch.Launch`)."""
    from keras_dino.training.launch import Launch

    jax_kwargs = {key: getattr(F, key) for key in ("coordinator_address", "num_processes",
                                                   "process_id", "coordinator_bind_address")
                  if getattr(F, key) is not None}
    try:
        return Launch.start(F.strategy, F.distribution, tpu=F.tpu,
                            collective_timeout=F.collective_timeout,
                            jax_multiprocess=F.jax_multiprocess, **jax_kwargs)
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def run():
    import keras

    from keras_dino.callbacks import KNNEvaluation, OfficialLog
    from keras_dino.data import multicrop_dataset
    from keras_dino.version import __version__

    # Distribution first: JAX must not run anything before jax.distributed.initialize.
    launch = _launch()
    config_from_flags()  # a wrong hyper-parameter is named before the data is read
    keras.utils.set_random_seed(F.seed)
    chief = launch.chief
    tell = say if chief else (lambda message: None)
    policy, note = mixed_precision_policy(F.use_fp16, F.bf16, has_gpu(), keras.backend.backend(),
                                          cpu_has_bf16())
    if policy:
        keras.config.set_dtype_policy(policy)
    if note:
        tell(note)
    if chief:
        os.makedirs(F.output_dir, exist_ok=True)
    # The official rule: the global batch is batch_size_per_gpu on every replica, and
    # DINO scales the learning rate by it (lr * global_batch / 256) inside the step;
    # with accumulation, by the effective batch of an optimizer step.
    global_batch = F.batch_size_per_gpu * launch.replicas
    accumulation = F.gradient_accumulation_steps
    # An epoch must be whole optimizer steps: the data repeats, the epoch is counted.
    counted_epochs = launch.distributed or accumulation > 1
    augmentation = augmentation_recipe()
    data_path = _data_path(F.data_path)
    tell(f"keras_dino {__version__} on {keras.backend.backend()}; data: {data_path}")
    note = replaced_run_note(F.output_dir)
    if note:
        tell(note)
    # Several replicas: each input pipeline (worker, process) reads its own shard of the
    # files and repeats it, and every worker runs the same number of steps per epoch.
    pipelines = []

    def make_dataset(input_context=None):
        dataset, info = multicrop_dataset(
            data_path,
            global_batch,
            augmentation=augmentation,
            split=F.photometric_on_device,
            batched_crops=F.batched_crops,
            seed=F.seed,
            input_context=input_context,
            repeat=counted_epochs,
            num_parallel_calls=F.num_workers if F.num_workers > 0 else -1,  # -1: AUTOTUNE
            return_info=True,
        )
        pipelines.append((input_context.num_input_pipelines if input_context else 1, info))
        return dataset

    dataset = launch.dataset(make_dataset)
    num_pipelines, info = pipelines[0]
    steps_per_epoch = F.steps_per_epoch
    if accumulation > 1 and not launch.distributed and not steps_per_epoch:
        # The official epoch: the full effective batches of the images, k batches each.
        if info.num_images < global_batch * accumulation:
            raise app.UsageError(
                f"{info.num_images} images make no full effective batch of "
                f"{global_batch * accumulation}: lower --batch_size_per_gpu or "
                "--gradient_accumulation_steps."
            )
        steps_per_epoch = info.num_images // (global_batch * accumulation) * accumulation
    if launch.distributed and not steps_per_epoch:
        total = _num_source_images(data_path)
        if not total:
            raise app.UsageError(
                "the size of this source is unknown: pass --steps_per_epoch for multi-replica "
                "training."
            )
        try:
            steps_per_epoch = accumulation * launch.steps_per_epoch(
                total, global_batch * accumulation, num_pipelines
            )
        except ValueError as error:
            raise app.UsageError(f"{error} (--batch_size_per_gpu)") from None
    effective = global_batch * accumulation
    batches = (f"global batch {global_batch}" if accumulation == 1 else
               f"effective batch {effective} ({accumulation} micro-batches of {global_batch})")
    tell(f"{info.num_images} images, {info.num_skipped} skipped (this worker's shard of "
         f"{num_pipelines}); {batches} on {launch.replicas} replica(s): lr "
         f"{F.lr} * {effective}/256; {info.num_crops} crops per image")
    if F.photometric_on_device:
        tell("split mode: the input pipeline sends uint8 crops; the photometric half runs "
             "inside the compiled training step")

    named = {key: F[key].value for key in ("arch", "patch_size") if F[key].present}
    with launch.scope():
        with short_load_errors(F.pretrained_weights, named):
            try:
                model = build_model()
            except ValueError as error:
                known = ("freeze_blocks", "layer_decay", "teacher")  # flags' values, not bugs
                if not any(word in str(error) for word in known):
                    raise
                raise app.UsageError(str(error)) from None
        model.compile(steps_per_execution=F.steps_per_execution, jit_compile=F.jit_compile
                      if F.jit_compile is not None else "auto")
    if F.pretrained_weights and len(named) < 2:
        tell(f"architecture from {os.path.basename(F.pretrained_weights)}: "
             f"{architecture_name(model.backbone)}")
    # What ran, for the checkpoints' args (float16 only where it was really used).
    model.set_run_settings(
        use_fp16=policy == "mixed_float16", data_path=F.data_path, output_dir=F.output_dir,
        saveckp_freq=F.saveckp_freq, seed=F.seed, num_workers=F.num_workers,
        world_size=launch.replicas,
    )
    knn_data = knn_splits() if F.knn_train_path and F.knn_test_path else None
    backup_dir = os.path.join(F.output_dir, "backup")
    callbacks = [launch.backup_callback(backup_dir)]
    knn = None
    if F.knn_every and knn_data and not launch.multi_process:
        # The teacher of the best k-NN top-1 so far, in the format of checkpoint.pth.
        best_path = os.path.join(F.output_dir, BEST_CHECKPOINT)
        knn = KNNEvaluation(*knn_data, every_n_epochs=F.knn_every, k=F.knn_k,
                            save_best=best_path,
                            initial_best=best_of_interrupted_run(F.output_dir))
        callbacks.append(knn)
        if chief:
            callbacks.append(_start_log_callback()(knn, F.output_dir))
    callbacks.append(OfficialLog(F.output_dir, F.saveckp_freq, chief=chief))
    with launch.fail_fast():
        history = model.fit(
            dataset,
            epochs=F.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=F.verbose if chief else 0,
            data_settings=augmentation,
        )
    if not chief:
        return
    say(f"training done: {len(history.epoch)} epoch(s) run; logs in {F.output_dir}/log.txt")
    from keras_dino.reporting import plot_training_curves

    plot = plot_training_curves(os.path.join(F.output_dir, "log.txt"),
                                os.path.join(F.output_dir, "training_curves.png"),
                                out_dim=int(model.center.shape[-1]))
    say(f"training curves: {plot}")
    # After a multi-process run the weights span every process's devices, and the other
    # processes are done: the reports run on a copy on this process's devices.
    reported = launch.local_copy(model, build_model)
    summary = {"epochs": F.epochs}
    if knn_data:
        summary.update(knn_report(reported.backbone, knn_data))
    if knn is not None and knn.history and knn.history[0][0] < 0:
        summary["knn_top1_start"] = round(knn.history[0][1], 2)  # the weights it started from
    if knn is not None and knn.best is not None:
        epoch, top1 = knn.best
        when = f"epoch {epoch + 1}" if epoch >= 0 else "epoch 0, the starting weights"
        summary["best_knn_top1"] = f"{top1:.1f} at {when} ({BEST_CHECKPOINT})"
    attention_report(reported.backbone)
    if F.export:
        summary["saved_model"] = export_report(reported)
    append_log(F.output_dir, {"summary": summary})
    say("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


BEST_CHECKPOINT = "checkpoint_best.pth"


def replaced_run_note(output_dir):
    """The line that says a run replaces a finished one: `<output_dir>` holds a
    `checkpoint.pth` but no `backup/` to resume from (a finished run leaves none, and
    another program's run never had one). None otherwise.

    Example:

    >>> import tempfile
    >>> replaced_run_note(tempfile.mkdtemp()) is None
    True
    """
    if (os.path.isfile(os.path.join(output_dir, "checkpoint.pth"))
            and not os.path.isdir(os.path.join(output_dir, "backup"))):
        return (f"{output_dir} holds an earlier run's checkpoint.pth and no backup/ to resume "
                "from: this run starts anew and replaces it (DINO.from_official_checkpoint "
                "resumes such a file; --pretrained_weights starts from its weights)")
    return None


def _start_log_callback():
    import keras

    class StartLog(keras.callbacks.Callback):
        """Appends the k-NN of the starting weights to log.txt (`{"knn_start": ...}`, no
        top-level `epoch`: not an epoch record) once `KNNEvaluation` has measured it."""

        def __init__(self, knn, output_dir):
            super().__init__()
            self.knn, self.output_dir, self.done = knn, output_dir, False

        def on_epoch_begin(self, epoch, logs=None):
            # The first epoch only: KNNEvaluation (before this callback) has just
            # evaluated the start, unless it resumes a run that had.
            if self.done:
                return
            self.done = True
            if self.knn.history and self.knn.history[0][0] == epoch - 1:
                start, top1, top5 = self.knn.history[0]
                append_log(self.output_dir, {"knn_start": {"epoch": start, "knn_top1": top1,
                                                           "knn_top5": top5}})

    return StartLog


def best_of_interrupted_run(output_dir):
    """`(epoch, knn_top1)` that `<output_dir>/checkpoint_best.pth` holds when this run
    resumes an interrupted one (its `backup/` is there): the best k-NN line of log.txt
    since its last summary; None for a new run."""
    if not (os.path.isdir(os.path.join(output_dir, "backup"))
            and os.path.exists(os.path.join(output_dir, BEST_CHECKPOINT))):
        return None
    best = None
    try:
        with open(os.path.join(output_dir, "log.txt")) as log:
            for line in log:
                record = json.loads(line)
                if "summary" in record:
                    best = None
                    continue
                if "knn_start" in record:  # the weights the run started from
                    record = {"epoch": record["knn_start"]["epoch"],
                              "train_knn_top1": record["knn_start"]["knn_top1"]}
                if "train_knn_top1" in record and (
                        best is None or record["train_knn_top1"] > best[1]):
                    best = (int(record["epoch"]), float(record["train_knn_top1"]))
    except (OSError, ValueError):
        return None
    return best


def knn_splits():
    """The labelled k-NN reference and test images, decoded once: `(train, test)` arrays."""
    from keras_dino.evaluation import image_folder_arrays

    return tuple(image_folder_arrays(_data_path(path, natural), F.eval_size, F.eval_resize)
                 for path, natural in ((F.knn_train_path, "train"), (F.knn_test_path, "test")))


def knn_report(trained, splits):
    """k-NN accuracy of the trained teacher and of the same network at random init."""
    from keras_dino.evaluation import knn_accuracy

    # Same architecture, random initialisation: the baseline of the report.
    random_init = type(trained).from_config({**trained.get_config(), "name": "random_init"})
    results = {}
    train, test = splits
    for key, name, backbone in (("trained", "trained teacher", trained),
                                ("random", "random init", random_init)):
        say(f"k-NN ({F.knn_k}-NN, T=0.07) with the {name}: {len(train[0])} reference, "
            f"{len(test[0])} test images")
        top1, top5 = knn_accuracy(backbone, train, test, k=F.knn_k, T=0.07)
        results[f"knn_top1_{key}"] = round(top1, 2)
        results[f"knn_top5_{key}"] = round(top5, 2)
        say(f"  {name}: top-1 {top1:.2f}%, top-5 {top5:.2f}%")
    return results


def attention_report(backbone):
    """Attention maps of 4 test images, for a backbone that has self-attention."""
    from keras_dino.data.sources import list_image_files
    from keras_dino.evaluation import save_attention_examples
    from keras_dino.preprocessing import EvalConfig

    if not F.knn_test_path:
        return
    if not hasattr(backbone, "get_last_selfattention"):
        say(f"attention maps: none for a {type(backbone).__name__} (no self-attention).")
        return
    files = list_image_files(_data_path(F.knn_test_path, "test")).files
    output_dir = os.path.join(F.output_dir, "attention")
    save_attention_examples(backbone, files[:: max(1, len(files) // 4)][:4], output_dir,
                            EvalConfig(F.eval_size, F.eval_resize))
    say(f"attention maps: {output_dir}")


def export_report(model):
    try:
        from keras_dino.export import export_saved_model
    except ImportError:
        return "not available"
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax"):
        say("SavedModel export needs the TensorFlow or JAX backend; skipped on "
            f"{keras.backend.backend()}.")
        return "needs the tensorflow or jax backend"
    path = export_saved_model(
        model.backbone, os.path.join(F.output_dir, "saved_model"), image_size=F.eval_size,
        overwrite=True,
    )
    say(f"SavedModel: {path}")
    return str(path)


def main():
    """The command: parses the flags of `sys.argv` and trains."""
    # Its frameworks' messages go to <output_dir>/framework.log (kept with the run).
    run_absl(_main, __doc__, noise_log=_noise_log_path)
