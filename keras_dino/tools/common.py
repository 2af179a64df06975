"""Helpers shared by the command-line tools: backend selection, flags, logging, loading.

Nothing here imports Keras at module level: a tool chooses its backend from `--backend`
(`select_backend`) before Keras is imported.
"""

import os
import sys


def select_backend(argv):
    """Sets KERAS_BACKEND from `--backend=...` before Keras is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
        elif arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Python loggers of the frameworks: their start-up and export chatter goes to the log file.
_FRAMEWORK_LOGGERS = ("tensorflow", "absl", "jax", "jax._src.xla_bridge", "h5py", "matplotlib")


def framework_noise_to(path):
    """Sends the frameworks' start-up and progress noise to `path`, not the terminal.

    Call it before Keras, TensorFlow or JAX are imported. From then on:

    * what C++ code writes to the standard error (TensorFlow's and XLA's logs: CUDA and
      TPU probing, oneDNN notices, absl's "log messages before InitializeLog") goes to
      `path`;
    * so do the frameworks' Python loggers and the warnings they raise;
    * Python's own `sys.stderr` (tracebacks, keras_dino's warnings, usage errors) still
      reaches the terminal, and so does the standard output (progress bars, results).

    Returns the path, so that a failure message can point at it.
    """
    import logging
    import warnings

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    log = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole run)
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in _FRAMEWORK_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    try:
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().python_handler.stream = log
    except ImportError:  # pragma: no cover - absl is a dependency
        pass
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        ours = "keras_dino" in filename or category.__module__.startswith("keras_dino")
        show(message, category, filename, lineno, None if ours else log, line)

    warnings.showwarning = showwarning
    return path


def append_log(output_dir, record):
    """Appends one JSON line to `<output_dir>/log.txt`, like the official tools
    (`keras_dino.reporting.append_log`, imported once the backend is chosen)."""
    from keras_dino.reporting import append_log as write

    write(output_dir, record)


def show_as_main(doc):
    """Makes `--help` describe the running tool, whichever way it was started.

    absl's `--help` prints the docstring of `__main__` and the key flags of the module
    named by `sys.argv[0]`. A tool's flags are defined in its `keras_dino.tools` module
    and in this one (`define_backbone_flags`): they become key flags of the command, so
    `--help` lists all of them, the model flags included, and the docstring is the tool's.
    """
    from absl import flags

    main_module = sys.modules.get("__main__")
    if doc and main_module is not None:
        main_module.__doc__ = doc
    flag_values = flags.FLAGS
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module.startswith("keras_dino.tools"):
            for flag in module_flags:
                flag_values.register_key_flag_for_module(sys.argv[0], flag)


def run_absl(main, doc, argv=None):
    """`absl.app.run(main, argv)` with the tool's `doc` and flags shown by `--help`."""
    from absl import app

    show_as_main(doc)
    app.run(main, argv=argv)


def run_tool(define_flags, run, doc=None):
    """The absl entry point of a tool: defines its flags, parses them and calls `run`.

    The tools take flags only; a stray positional argument (a typo such as a missing
    `--`) is a usage error rather than something silently ignored. `doc` (the tool's
    docstring) heads `--help`.
    """
    from absl import app, flags

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        run(flags.FLAGS)

    define_flags()
    run_absl(main, doc)


def define_backbone_flags(flag_values, patch_size=16, presets="dino_vits16", arch="vit_small"):
    """The flags that choose a backbone, shared by the evaluation and export tools.

    The official evaluation tools' `--pretrained_weights`, `--arch`, `--patch_size`
    (16 by default; 8 in `visualize_attention.py`), `--arch` (vit_small; vit_base in
    `eval_copy_detection.py`) and `--checkpoint_key`, and
    keras_dino's `--num_heads` and `--backend`. `load_backbone(F)` reads them.
    """
    from absl import flags

    fv = dict(flag_values=flag_values)
    flags.DEFINE_string("pretrained_weights", "", f"Checkpoint file or preset name ({presets}, "
                        "...); empty: the official weights of --arch/--patch_size.", **fv)
    flags.DEFINE_string("arch", arch, "Architecture (vit_tiny, vit_small, vit_base, a "
                        "torchvision ResNet name, an XCiT name, or a custom name whose shape "
                        "the checkpoint gives).", **fv)
    flags.DEFINE_integer("patch_size", patch_size, "Patch size of the model.", **fv)
    flags.DEFINE_string("checkpoint_key", "teacher", "Model of a full training checkpoint "
                        "(teacher or student).", **fv)
    flags.DEFINE_integer("num_heads", None, "Attention heads, for checkpoints of custom "
                         "widths that do not record them.", **fv)
    flags.DEFINE_string("backend", None, "Keras backend (tensorflow, jax, torch); default from "
                        "KERAS_BACKEND.", **fv)


def backbone_load_kwargs(F):
    """`load_pretrained` arguments of the backbone flags that were given."""
    return {"num_heads": F.num_heads} if F.num_heads else {}


def translate_deprecated(argv, renamed, warn=None):
    """`argv` with deprecated flag names replaced by `renamed[old]`, each use told to `warn`.

    For tools whose flags changed names (keras_dino 0.1's hyphenated argparse flags):
    the old names keep working for one release, with a message naming the new flag.
    """
    warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in renamed:
            warn(f"{name} is deprecated and will be removed in the next release; "
                 f"use {renamed[name]}.")
            arg = renamed[name] + sep + value
        out.append(arg)
    return out


def say(message):
    print(message, flush=True)


def has_gpu() -> bool:
    """Whether the Keras backend sees a GPU (mixed float16 speeds up nothing else)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def mixed_precision_policy(use_fp16: bool, bf16: bool, gpu: bool):
    """`(dtype policy or None, note or None)` of `--use_fp16` / `--bf16` on this machine.

    `--use_fp16` keeps the official default (true), but float16 mixed precision only pays
    on a GPU: without one, training runs in float32 and the note says why.
    """
    if bf16:
        return "mixed_bfloat16", None
    if use_fp16 and not gpu:
        return None, ("--use_fp16: no GPU here, so training runs in float32 (float16 mixed "
                      "precision only speeds up GPUs; --bf16 for CPUs and TPUs).")
    return ("mixed_float16" if use_fp16 else None), None


def resolve_data_path(path):
    """`embedded:train` / `embedded:test`: the embedded CIFAR-10 subset; other paths as is."""
    if path.startswith("embedded:"):
        from keras_dino.datasets import cifar10_mini

        return str(cifar10_mini(path.split(":", 1)[1]))
    return path


def eval_split_paths(data_path):
    """The labelled `(train, val)` folders of the official evaluation layout.

    `<data_path>/train` and `<data_path>/val`, as the official `eval_*.py` read them;
    `embedded` is the embedded CIFAR-10 subset (its `train` and `test` splits).
    """
    if data_path == "embedded":
        return resolve_data_path("embedded:train"), resolve_data_path("embedded:test")
    return os.path.join(data_path, "train"), os.path.join(data_path, "val")


def official_preset(arch, patch_size):
    """The preset holding the official weights of `arch`/`patch_size`, or None."""
    from keras_dino.checkpoints.pretrained import PRESETS
    from keras_dino.models.xcit import XCITS

    for name, preset in PRESETS.items():
        # ResNets have no patches; an XCiT's name holds its patch size.
        if preset.arch == arch and (preset.patch_size in (None, patch_size) or arch in XCITS):
            return name
    return None


def load_backbone(pretrained_weights, arch, patch_size, checkpoint_key="teacher", **kwargs):
    """The backbone to evaluate, as the official evaluation tools choose it.

    `pretrained_weights` is a preset name or a checkpoint file (read by
    `keras_dino.checkpoints.pretrained.resolve_backbone`, as export does). Empty, the
    official weights of `arch` and `patch_size` are used when they exist (as the
    official tools do), and otherwise a randomly initialised `arch`. `kwargs` go to the
    `VisionTransformer` (e.g. `num_heads` for custom widths).
    """
    from keras_dino.checkpoints.pretrained import resolve_backbone
    from keras_dino.models.resnet import RESNETS
    from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer
    from keras_dino.models.xcit import XCITS

    known_arch = arch if arch in ARCHITECTURES or arch in RESNETS or arch in XCITS else None
    if arch in XCITS or arch in RESNETS:
        patch_size = None  # in the name (XCiT) or none at all (ResNet), as the official tools
    if not pretrained_weights:
        pretrained_weights = official_preset(arch, patch_size)
        if pretrained_weights:
            say(f"no --pretrained_weights: using the official weights of {pretrained_weights}.")
        elif arch not in ARCHITECTURES:
            raise ValueError(f"no --pretrained_weights, and '{arch}' is not one of "
                             f"{', '.join(ARCHITECTURES)} to initialise randomly.")
        else:
            say(f"no --pretrained_weights and no official {arch}/{patch_size} weights: "
                "using random weights.")
            config = {**ARCHITECTURES[arch], "patch_size": patch_size, **kwargs}
            return VisionTransformer(**config)
    backbone, source = resolve_backbone(pretrained_weights, arch=known_arch,
                                        patch_size=patch_size, checkpoint_key=checkpoint_key,
                                        **kwargs)
    say(f"weights: {source}; {_describe(backbone)}.")
    return backbone


def _describe(backbone):
    if hasattr(backbone, "num_heads"):
        return (f"{backbone.depth} blocks of width {backbone.embed_dim}, {backbone.num_heads} "
                f"heads, patch {backbone.patch_size}")
    return f"{type(backbone).__name__} with {backbone.embed_dim}-dimensional features"
