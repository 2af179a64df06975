"""Helpers shared by the command-line tools: backend selection, flags, logging, loading.

Nothing here imports Keras at module level: a tool chooses its backend from `--backend`
(`select_backend`) before Keras is imported.
"""

import contextlib
import os
import sys
import tempfile


def select_backend(argv):
    """Sets KERAS_BACKEND from `--backend=...` before Keras is imported, and TensorFlow's
    environment (quiet start-up, oneDNN CPU kernels) where the user has not set it."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
        elif arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI,
    # AVX-VNNI, bfloat16 or AMX instructions; on others (AVX2 only) it runs Eigen's, and
    # a training step of the quickstart's ResNet at widths 32-256 took 290 ms instead of
    # 126 on 2 AVX2 cores. A value the user set is kept.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


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


def run_absl(main, doc, argv=None, define_flags=None, noise_log=None):
    """`absl.app.run(main, argv)` with the tool's `doc` and flags shown by `--help`.

    A mistake found once the flags are parsed (an `absl.app.UsageError` of the tool, a
    missing file or folder, any `keras_dino.errors` exception) ends the command with its
    one-line message on the standard error and exit status 1, not a traceback.

    The frameworks' start-up noise stays out of the terminal (`framework_noise_to`). By
    default it goes to a temporary file from before `define_flags` (some flags'
    definitions import Keras), deleted at the end unless the tool failed on something
    other than a user error: then its path is printed. `noise_log`, a function called
    once the flags are parsed, names a file to keep instead (`train`:
    `<output_dir>/framework.log`). Output into a closed pipe (`... | head`) ends the
    command quietly with status 1.
    """
    from absl import app

    from keras_dino.errors import KerasDinoError

    user_errors = (app.UsageError, KerasDinoError, FileNotFoundError, NotADirectoryError)
    noise, temporary, failed = None, noise_log is None, False
    if temporary:
        name = os.path.basename(sys.argv[0]).replace(" ", "_") or "tool"
        noise = framework_noise_to(
            os.path.join(tempfile.gettempdir(), f"keras_dino_{name}_{os.getpid()}.log"))

    def guarded(argv):
        nonlocal noise, failed
        try:
            if not temporary:
                noise = framework_noise_to(noise_log())
            return main(argv)
        except user_errors as error:
            # KeyError's str() quotes its message; an OSError's str() adds errno and path.
            message = str(error.args[0]) if isinstance(error, KeyError) else str(error)
            print(f"{sys.argv[0]}: error: {message}", file=sys.stderr, flush=True)
            sys.exit(getattr(error, "exitcode", 1))
        except BrokenPipeError:
            # The reader of the output went away (`keras-dino train ... | head`): stop
            # quietly, as a command-line tool does, without a traceback; the rest of the
            # output goes nowhere, including Python's own flush at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception:
            failed = True
            if noise:
                print(f"(TensorFlow/XLA messages of this run: {noise})", file=sys.stderr,
                      flush=True)
            raise

    try:
        if define_flags is not None:
            define_flags()
        show_as_main(doc)
        app.run(guarded, argv=argv)
    finally:
        if temporary and not failed:
            _remove(noise)


def _remove(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def run_tool(define_flags, run, doc=None):
    """The absl entry point of a tool: defines its flags, parses them and calls `run`.

    The tools take flags only; a stray positional argument (a typo such as a missing
    `--`) is a usage error rather than something silently ignored. `doc` (the tool's
    docstring) heads `--help`; the frameworks' noise stays out of the terminal
    (`run_absl`).
    """
    from absl import app, flags

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        run(flags.FLAGS)

    run_absl(main, doc, define_flags=define_flags)


def define_backbone_flags(flag_values, patch_size=16, presets="dino_vits16", arch="vit_small"):
    """The flags that choose a backbone, shared by the evaluation and export tools.

    The official evaluation tools' `--pretrained_weights`, `--arch`, `--patch_size`
    (16 by default; 8 in `visualize_attention.py`), `--arch` (vit_small; vit_base in
    `eval_copy_detection.py`) and `--checkpoint_key`, and
    keras_dino's `--num_heads` and `--backend`. `backbone_from_flags(F)` reads them.
    """
    from absl import flags

    fv = dict(flag_values=flag_values)
    flags.DEFINE_string("pretrained_weights", "", f"Checkpoint file or preset name ({presets}, "
                        "...); empty: the official weights of --arch/--patch_size.", **fv)
    flags.DEFINE_string("arch", arch, "Architecture (vit_tiny, vit_small, vit_base, a "
                        "torchvision ResNet name, an XCiT name, or a custom name whose shape "
                        "the checkpoint gives). With --pretrained_weights, the file's unless "
                        "given (then checked against it).", **fv)
    flags.DEFINE_integer("patch_size", patch_size, "Patch size of the model. With "
                         "--pretrained_weights, the file's unless given (then checked).", **fv)
    flags.DEFINE_string("checkpoint_key", "teacher", "Model of a full training checkpoint "
                        "(teacher or student).", **fv)
    flags.DEFINE_integer("num_heads", None, "Attention heads, for checkpoints of custom "
                         "widths that do not record them.", **fv)
    flags.DEFINE_string("backend", None, "Keras backend (tensorflow, jax, torch); default from "
                        "KERAS_BACKEND.", **fv)


def define_image_flags(flag_values, image_size="480,480"):
    """`--image_path`, `--image_size` and `--output_dir`, as the official
    `visualize_attention.py` defines them, for the tools that look at one image.

    `--image_size` is the official one: one value resizes the shorter side (aspect
    kept), two resize to height,width. `read_image(F.image_path)` reads the image.
    """
    from absl import flags

    fv = dict(flag_values=flag_values)
    flags.DEFINE_string("image_path", None, "The image to look at (default: the first image of "
                        "the embedded CIFAR-10 test split).", **fv)
    flags.DEFINE_list("image_size", image_size, "Resize to height,width (or one value: the "
                      "shorter side).", **fv)
    flags.DEFINE_string("output_dir", ".", "Where the images are written.", **fv)


def define_eval_view_flags(flag_values, size_help="Side of the center crop."):
    """`--eval_size` and `--eval_resize`: the official evaluation view (shorter side to
    `--eval_resize`, default `--eval_size * 256 / 224`, then a `--eval_size` center crop),
    for the tools that feed the backbone center crops."""
    from absl import flags

    fv = dict(flag_values=flag_values)
    flags.DEFINE_integer("eval_size", 224, size_help, **fv)
    flags.DEFINE_integer("eval_resize", None, "Shorter side before the center crop (default "
                         "eval_size * 256 / 224: 256 for 224).", **fv)


def define_deprecated_alias(flag_values, old, new):
    """Defines `--old` as a deprecated name of the flag `--new` (defined before).

    Given, `--old=value` sets `--new` (which then counts as given) and prints one line,
    `--old is deprecated, use --new`; on the command line and in flag files alike.
    """
    from absl import flags

    target = flag_values[new]

    class DeprecatedAlias(flags.Flag):
        def parse(self, argument):
            print(f"--{old} is deprecated, use --{new}", file=sys.stderr, flush=True)
            flag_values[new].parse(argument)
            flag_values[new].using_default_value = False
            self.present += 1

    alias = DeprecatedAlias(target.parser, target.serializer, old, None,
                            f"Deprecated name of --{new} (removed in the next release).",
                            boolean=target.boolean)
    flags.DEFINE_flag(alias, flag_values)


def read_image(path, flag="--image_path"):
    """uint8 RGB `(H, W, 3)` of an image file, and its path: the one image reader of the
    tools, PIL's `convert("RGB")` as the official tools read images. Without a path, the
    first image of the embedded CIFAR-10 test split (and a line saying so)."""
    import numpy as np
    from absl import app
    from PIL import Image, UnidentifiedImageError

    if path is None:
        from keras_dino.data.sources import list_image_files
        from keras_dino.datasets import cifar10_mini

        path = list_image_files(cifar10_mini("test")).files[0]
        say(f"no {flag}: using {path}")
    elif not os.path.isfile(path):
        raise app.UsageError(f"{flag}={path} is not a file.")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")), path
    except (UnidentifiedImageError, OSError) as error:
        raise app.UsageError(f"{flag}={path} is not an image PIL can read ({error}).") from None


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
            warn(f"{name} is deprecated, use {renamed[name]}")
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


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bfloat16 instructions (avx512_bf16 or AMX), from /proc/cpuinfo;
    None where that cannot be read (not Linux, not x86)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return None
    return None


def mixed_precision_policy(use_fp16: bool, bf16: bool, gpu: bool, backend: str | None = None,
                           native_bf16: bool | None = None):
    """`(dtype policy or None, note or None)` of `--use_fp16` / `--bf16` on this machine.

    `--use_fp16` keeps the official default (true), but float16 mixed precision only pays
    on a GPU: without one, training runs in float32 and the note says why. `--bf16` runs
    as asked; on a CPU without bfloat16 instructions (`native_bf16` False) torch emulates
    them, several times slower than float32 (measured: 6x a step on an AVX2-only CPU, where
    TensorFlow's bfloat16 steps were not slower than its float32 ones), and the note says so.
    """
    if bf16:
        if backend == "torch" and not gpu and native_bf16 is False:
            return "mixed_bfloat16", (
                "--bf16: this CPU has no bfloat16 instructions (avx512_bf16, AMX) and torch "
                "emulates them, several times slower than float32; drop --bf16, or use "
                "--backend=tensorflow.")
        return "mixed_bfloat16", None
    if use_fp16 and not gpu:
        return None, ("--use_fp16: no GPU here, so training runs in float32 (float16 mixed "
                      "precision only speeds up GPUs; --bf16 for CPUs and TPUs).")
    return ("mixed_float16" if use_fp16 else None), None


EMBEDDED_SPLITS = ("train", "test")


def _embedded_split(path, natural):
    """The split that `embedded` / `embedded:<split>` names (None for other paths)."""
    path = str(path)
    if path != "embedded" and not path.startswith("embedded:"):
        return None
    split = path.partition(":")[2] or natural
    if split not in EMBEDDED_SPLITS:
        from absl import app

        raise app.UsageError(f"{path}: the embedded CIFAR-10 subset has the splits "
                             f"{' and '.join(EMBEDDED_SPLITS)} (embedded:train, embedded:test).")
    return split


def resolve_data_path(path, natural="train"):
    """A folder of images: `embedded:train` / `embedded:test` are the splits of the
    embedded CIFAR-10 subset, plain `embedded` the tool's `natural` split; other paths
    as they are."""
    split = _embedded_split(path, natural)
    if split is None:
        return path
    from keras_dino.datasets import cifar10_mini

    return str(cifar10_mini(split))


def eval_split_paths(data_path):
    """The labelled `(train, val)` folders of the official evaluation layout.

    `<data_path>/train` and `<data_path>/val`, as the official `eval_*.py` read them. The
    embedded CIFAR-10 subset: `embedded` (or `embedded:test`) is its train split as the
    train set and its test split as the val set; `embedded:train` evaluates on the train
    split itself.
    """
    split = _embedded_split(data_path, "test")
    if split is not None:
        return resolve_data_path("embedded:train"), resolve_data_path(f"embedded:{split}")
    return os.path.join(data_path, "train"), os.path.join(data_path, "val")


def require_folder(path, flag="--data_path", layout=""):
    """`path` if it is a folder, else a one-line usage error naming `flag` (and what the
    folder should hold, `layout`)."""
    if not os.path.isdir(path):
        from absl import app

        raise app.UsageError(f"{flag}: {path} is not a folder{' ' if layout else ''}{layout}.")
    return path


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
    from keras_dino.errors import did_you_mean
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
            from absl import app

            names = [*ARCHITECTURES, *RESNETS, *XCITS]
            hint = did_you_mean(arch, names, spell=lambda name: f"--arch={name}")
            hint = f"{hint} " if hint else ""
            raise app.UsageError(
                f"--arch={arch}: no --pretrained_weights, and no official weights or random "
                f"initialisation of that name; {hint}Known: {', '.join(ARCHITECTURES)}, "
                "the torchvision ResNets and the XCiTs, or give --pretrained_weights.")
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


def architecture_name(backbone):
    """How the tools name a backbone's architecture: `vit_small/16`, `vit (width 48,
    depth 2, 4 heads)/16`, `+4 registers`, `resnet50`, `resnet (basic blocks 1,1,1,1,
    widths 32,64,128,256, stem 32)`, `xcit_small_12_p16`: its family's converter says
    (another model: its name)."""
    from keras_dino.checkpoints import converters

    if not isinstance(backbone, converters.backbone_classes()):
        return backbone.name
    return converters.for_model(backbone).architecture_name(backbone)


def backbone_from_flags(F, weights=None):
    """The backbone of the backbone flags (`define_backbone_flags`) of `F`.

    With `--pretrained_weights` (or `weights`), the architecture is the file's: `--arch`
    and `--patch_size` are checked against it only when given, and a line says what the
    file holds (`architecture from weights.pth: vit_small/16`). Without weights, the
    flags (defaults included) choose the official weights or a random model, as the
    official tools do. Mistakes (a missing file, an unknown preset, another architecture
    than the one named, a wrong `--checkpoint_key`, a custom width without `--num_heads`)
    are `absl.app.UsageError`s of one line naming the flag to fix.
    """
    weights = F.pretrained_weights if weights is None else weights
    kwargs = {"num_heads": F.num_heads} if F.num_heads else {}
    named = {key: F[key].value for key in ("arch", "patch_size") if F[key].present}
    if not weights or str(weights).endswith(".weights.h5"):  # weights only: the flags build it
        named = {"arch": F.arch, "patch_size": F.patch_size}
    with short_load_errors(weights, named):
        backbone = load_backbone(weights, named.get("arch"), named.get("patch_size"),
                                 F.checkpoint_key, **kwargs)
    from keras_dino.checkpoints import converters

    # Said when the file chose: a flag left out, or an --arch that is no official name.
    if weights and (len(named) < 2 or not converters.for_arch(named["arch"], official_only=True)):
        say(f"architecture from {os.path.basename(str(weights))}: "
            f"{architecture_name(backbone)}")
    return backbone


@contextlib.contextmanager
def short_load_errors(weights, named=None):
    """Turns the mistakes of loading `--pretrained_weights` into one-line usage errors
    that name the flag to fix; `named` are the architecture flags that were given."""
    from absl import app

    from keras_dino import errors

    named = named or {}
    try:
        yield
    except errors.UnknownPresetOrFileError as error:
        raise app.UsageError(f"--pretrained_weights: {error}") from None
    except errors.ArchitectureMismatchError as error:
        given = " ".join(f"--{key}={value}" for key, value in named.items())
        raise app.UsageError(f"{error} Leave out {given} to use the file's architecture."
                             ) from None
    except errors.MissingArchitectureError as error:
        raise app.UsageError(f"{weights}: {error} On the command line: --num_heads=N."
                             ) from None
    except errors.CheckpointKeyError as error:
        raise app.UsageError(f"--checkpoint_key: {error}") from None
    except errors.CheckpointError as error:
        raise app.UsageError(f"--pretrained_weights={weights}: {error}") from None


def _describe(backbone):
    if hasattr(backbone, "num_heads"):
        return (f"{backbone.depth} blocks of width {backbone.embed_dim}, {backbone.num_heads} "
                f"heads, patch {backbone.patch_size}")
    return f"{type(backbone).__name__} with {backbone.embed_dim}-dimensional features"
