"""Linear classification on a frozen DINO backbone: the official eval_linear.py, in Keras.

The official flags keep their names and defaults (absl syntax for booleans:
`--avgpool_patchtokens=true`); `--eval_size`/`--eval_resize` (for small images), `--seed`
and `--backend` are added. The backbone stays frozen; a linear layer (weights N(0, 0.01),
zero bias) on the CLS tokens of the last `--n_last_blocks` blocks trains with SGD
(momentum 0.9, no weight decay) at `lr * batch_size_per_gpu / 256`, cosine-annealed per
epoch, on random resized crops and flips of `<data_path>/train`, and is validated on
center crops of `<data_path>/val` (`--data_path=embedded`: the embedded CIFAR-10 subset).
Every epoch appends the official JSON line to `<output_dir>/log.txt` and writes the
official `<output_dir>/checkpoint.pth.tar`; rerunning the command resumes from it, and
`--evaluate` only validates it.

ViT-S/16 on ImageNet, as in the paper:

    python examples/eval_linear.py --pretrained_weights=dino_vits16 \\
        --data_path=/data/imagenet --output_dir=out/linear

The released ViT-S/16 classifier, validated on ImageNet (`--pretrained_linear` for a
local copy; a ResNet's features are its pooled output, as in the official tool):

    python examples/eval_linear.py --evaluate --arch=vit_small --patch_size=16 \
        --data_path=/data/imagenet

A small ViT trained with `train_dino.py --arch=vit_quickstart --embed_dim=96 --depth=3
--num_heads=3 --patch_size=4` on the embedded CIFAR-10 subset:

    python examples/eval_linear.py --pretrained_weights=out/quickstart/checkpoint.pth \\
        --arch=vit_quickstart --patch_size=4 --n_last_blocks=3 --num_labels=10 \\
        --data_path=embedded --eval_size=32 --eval_resize=32 --epochs=20 --lr=0.01 \\
        --output_dir=out/quickstart/linear
"""

import os
import sys

from keras_dino.tools.common import (
    append_log,
    backbone_from_flags,
    define_backbone_flags,
    define_eval_view_flags,
    eval_split_paths,
    require_folder,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402

CHECKPOINT = "checkpoint.pth.tar"


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official eval_linear.py arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    # --- the official eval_linear.py arguments (names and defaults) ---
    flags.DEFINE_integer("n_last_blocks", 4, "Concatenate the CLS tokens of the n last blocks "
                         "(4 for ViT-S, 1 for ViT-B).", **fv)
    flags.DEFINE_boolean("avgpool_patchtokens", False, "Also the average of the patch tokens "
                         "(True for ViT-B, with --n_last_blocks=1).", **fv)
    flags.DEFINE_integer("epochs", 100, "Number of epochs of training.", **fv)
    flags.DEFINE_float("lr", 0.001, "Learning rate at batch size 256 (scaled linearly with "
                       "the batch size), cosine-annealed to 0.", **fv)
    flags.DEFINE_integer("batch_size_per_gpu", 128, "Batch size.", **fv)
    flags.DEFINE_string("data_path", "/path/to/imagenet/", "ImageFolder root with train/ and "
                        "val/ subfolders, or `embedded` (the embedded CIFAR-10 subset's train and test "
                        "splits; embedded:train evaluates on its train split).", **fv)
    flags.DEFINE_integer("num_workers", 10, "Parallel image decodes (0: AUTOTUNE).", **fv)
    flags.DEFINE_integer("val_freq", 1, "Validate every this many epochs.", **fv)
    flags.DEFINE_string("output_dir", ".", "Where log.txt and checkpoint.pth.tar go.", **fv)
    flags.DEFINE_integer("num_labels", 1000, "Number of labels of the linear classifier.", **fv)
    flags.DEFINE_boolean("evaluate", False, "Only validate a linear classifier: "
                         "--pretrained_linear, else <output_dir>/checkpoint.pth.tar, else the "
                         "released one of --arch/--patch_size (as the official tool).", **fv)
    # --- additions ---
    flags.DEFINE_string("pretrained_linear", None, "--evaluate: a linear classifier file "
                        "(*_linearweights.pth or an eval_linear.py checkpoint.pth.tar).", **fv)
    define_eval_view_flags(flag_values, "Side of the training crops and of the validation "
                           "center crops.")
    flags.DEFINE_integer("seed", 0, "Random seed (classifier init, data order and crops).", **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bars (0: none).", **fv)


def _dataset(F, path, training):
    from keras_dino.evaluation import image_folder_dataset

    dataset, classes, count = image_folder_dataset(
        path, F.batch_size_per_gpu, F.eval_size, F.eval_resize, training=training,
        seed=F.seed, num_parallel_calls=F.num_workers or None,
    )
    if len(classes) > F.num_labels:
        raise app.UsageError(f"{path} has {len(classes)} classes, more than --num_labels="
                             f"{F.num_labels}.")
    return dataset, count


def build_probe(F):
    """The frozen backbone of the flags with a fresh linear classifier, compiled."""
    from keras_dino.evaluation import LinearProbe

    backbone = backbone_from_flags(F)
    probe = LinearProbe(backbone, F.num_labels, n_last_blocks=F.n_last_blocks,
                        avgpool_patchtokens=F.avgpool_patchtokens)
    probe.compile_official(lr=F.lr, batch_size=F.batch_size_per_gpu, epochs=F.epochs)
    return probe


def _classifier_to_evaluate(F):
    """--evaluate's classifier file: the flag's, this tool's own, or the released one."""
    from keras_dino.checkpoints.pretrained import preset_file
    from keras_dino.tools.common import official_preset

    if F.pretrained_linear:
        if not os.path.isfile(F.pretrained_linear):
            raise app.UsageError(f"--pretrained_linear={F.pretrained_linear} is not a file.")
        return F.pretrained_linear
    path = os.path.join(F.output_dir, CHECKPOINT)
    if os.path.isfile(path):
        return path
    released = official_preset(F.arch, F.patch_size)
    if released:
        say(f"--evaluate: the released linear classifier of {released}")
        return preset_file(released, "linear")
    raise app.UsageError(f"--evaluate needs a classifier: --pretrained_linear, a trained one "
                         f"at {path}, or an --arch/--patch_size with released weights.")


def evaluate_only(F, probe, val_data, num_val):
    """--evaluate: the accuracy of a trained or released linear classifier."""
    from keras_dino.evaluation import evaluate_linear_probe, load_linear_checkpoint

    path = _classifier_to_evaluate(F)
    load_linear_checkpoint(probe, path)
    stats = evaluate_linear_probe(probe, val_data, verbose=F.verbose)
    say(f"Accuracy of the network on the {num_val} test images: {stats['acc1']:.1f}%")
    return stats


def run(F):
    """Trains (or, with --evaluate, validates) the linear classifier of the flags.

    Returns:
        `train_linear_probe`'s result, or the test statistics with --evaluate.
    """
    import keras

    from keras_dino.evaluation import train_linear_probe
    from keras_dino.version import __version__

    keras.utils.set_random_seed(F.seed)
    say(f"keras_dino {__version__} on {keras.backend.backend()}")
    train_path, val_path = (
        require_folder(path, layout="(the official layout: <data_path>/train and "
                       "<data_path>/val, or embedded)") for path in eval_split_paths(F.data_path))
    probe = build_probe(F)
    val_data, num_val = _dataset(F, val_path, training=False)
    if F.evaluate:
        return evaluate_only(F, probe, val_data, num_val)
    train_data, num_train = _dataset(F, train_path, training=True)
    say(f"Data loaded with {num_train} train and {num_val} val imgs; linear classifier on "
        f"{probe.classifier.linear.kernel.shape[0]} features, lr {F.lr} * "
        f"{F.batch_size_per_gpu}/256.")
    os.makedirs(F.output_dir, exist_ok=True)

    def log(record, best_acc):
        if "test_acc1" in record:
            say(f"Accuracy at epoch {record['epoch']} of the network on the {num_val} test "
                f"images: {record['test_acc1']:.1f}%")
            say(f"Max accuracy so far: {best_acc:.2f}%")
        append_log(F.output_dir, record)

    checkpoint = os.path.join(F.output_dir, CHECKPOINT)
    result = train_linear_probe(probe, train_data, val_data, F.epochs, val_freq=F.val_freq,
                                checkpoint_path=checkpoint, on_epoch_end=log,
                                verbose=F.verbose)
    if result["start_epoch"]:
        say(f"(resumed from {checkpoint} at epoch {result['start_epoch']})")
    say("Training of the linear classifier on frozen features completed.\n"
        f"Top-1 test accuracy: {result['best_acc']:.1f}")
    return result


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
