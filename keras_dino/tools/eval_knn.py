"""Weighted k-NN classification on frozen DINO features: the official eval_knn.py, in Keras.

The official flags keep their names and defaults (lists are comma-separated, absl style:
`--nb_knn=10,20`); `--output_dir`, `--eval_size`/`--eval_resize` (for small images) and
`--backend` are added. The data is an ImageFolder root with `train/` and `val/`
subfolders, or `embedded` for the embedded CIFAR-10 subset (its train and test splits).
Each k prints a line as the official tool does and appends a JSON line to
`<output_dir>/log.txt`.

The official ViT-S/16 on ImageNet (the paper's 74.5% 20-NN top-1):

    python examples/eval_knn.py --pretrained_weights=dino_vits16 --data_path=/data/imagenet

A checkpoint of the quickstart (a small ResNet, docs/training.md), on the embedded
CIFAR-10 subset (it prints the 20-NN top-1 of the run's summary line, 38.4 in the
measured run):

    python examples/eval_knn.py --pretrained_weights=out/quickstart/checkpoint.pth \\
        --arch=resnet_quickstart --data_path=embedded --eval_size=32 --eval_resize=32 \\
        --nb_knn=20 --output_dir=out/quickstart/knn
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

from absl import flags  # noqa: E402

# Files of --dump_features / --load_features, as the official tool names them.
FEATURE_FILES = ("trainfeat.pth", "trainlabels.pth", "testfeat.pth", "testlabels.pth")


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official eval_knn.py arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    # --- the official eval_knn.py arguments (names and defaults) ---
    flags.DEFINE_integer("batch_size_per_gpu", 128, "Batch size of the feature extraction.", **fv)
    flags.DEFINE_list("nb_knn", [10, 20, 100, 200], "Numbers of nearest neighbours, "
                      "comma-separated (20 usually works best).", **fv)
    flags.register_validator(
        "nb_knn", lambda ks: all(str(k).isdigit() and int(k) >= 1 for k in ks),
        message="--nb_knn takes whole numbers of at least 1, comma-separated (10,20,100,200)",
        flag_values=flag_values)
    flags.DEFINE_float("temperature", 0.07, "Temperature of the vote weights.", **fv)
    flags.DEFINE_string("dump_features", None, "Folder where to save the extracted features.",
                        **fv)
    flags.DEFINE_string("load_features", None, "Folder of features saved by --dump_features: "
                        "skip the extraction.", **fv)
    flags.DEFINE_integer("num_workers", 10, "Parallel image decodes (0: AUTOTUNE).", **fv)
    flags.DEFINE_string("data_path", "/path/to/imagenet/", "ImageFolder root with train/ and "
                        "val/ subfolders, or `embedded` (the embedded CIFAR-10 subset's train and test "
                        "splits; embedded:train evaluates on its train split).", **fv)
    # --- additions ---
    flags.DEFINE_string("output_dir", ".", "Where log.txt is written.", **fv)
    define_eval_view_flags(flag_values)
    flags.DEFINE_integer("verbose", 1, "Progress bars (0: none).", **fv)


def extract(F):
    """Normalised train and test features and labels of the backbone of the flags."""
    from keras import ops

    from keras_dino.evaluation import extract_features, image_folder_dataset, l2_normalize

    paths = [require_folder(path, layout="(the official layout: <data_path>/train and "
                            "<data_path>/val, or embedded)")
             for path in eval_split_paths(F.data_path)]
    backbone = backbone_from_flags(F)
    arrays = []
    for split, path in zip(("train", "val"), paths):
        dataset, classes, count = image_folder_dataset(
            path, F.batch_size_per_gpu, F.eval_size, F.eval_resize,
            num_parallel_calls=F.num_workers or None,
        )
        say(f"Extracting features for the {split} set: {count} images of {len(classes)} "
            f"classes in {path}")
        features, labels = extract_features(backbone, dataset, verbose=F.verbose)
        arrays += [ops.convert_to_numpy(l2_normalize(features)), labels.astype("int64")]
    return tuple(arrays)


def dump_features(folder, arrays):
    """Writes the features and labels as the official tool does (torch `.pth` files)."""
    from keras_dino.checkpoints import write_torch_checkpoint

    os.makedirs(folder, exist_ok=True)
    for name, array in zip(FEATURE_FILES, arrays):
        write_torch_checkpoint(array, os.path.join(folder, name))
    say(f"Features saved in {folder}")


def load_features(folder):
    """Reads the four files of `dump_features` (or of the official tool)."""
    import numpy as np

    from keras_dino.checkpoints import read_checkpoint

    return tuple(np.asarray(read_checkpoint(os.path.join(folder, n))) for n in FEATURE_FILES)


def run(F):
    """Extracts (or loads) the features and runs the k-NN classifier for every k.

    Returns:
        `{k: (top1, top5)}`.
    """
    import keras

    from keras_dino.evaluation import knn_classifier
    from keras_dino.version import __version__

    say(f"keras_dino {__version__} on {keras.backend.backend()}")
    if F.load_features:
        arrays = load_features(F.load_features)
        say(f"Features loaded from {F.load_features}")
    else:
        arrays = extract(F)
        if F.dump_features:
            dump_features(F.dump_features, arrays)
    train_features, train_labels, test_features, test_labels = arrays
    say(f"Features are ready: {len(train_labels)} train, {len(test_labels)} test. "
        "Start the k-NN classification.")
    results = {}
    for k in (int(k) for k in F.nb_knn):
        top1, top5 = knn_classifier(train_features, train_labels, test_features, test_labels,
                                    k=k, T=F.temperature)
        say(f"{k}-NN classifier result: Top1: {top1}, Top5: {top5}")
        append_log(F.output_dir, {"nb_knn": k, "temperature": F.temperature, "top1": top1,
                                  "top5": top5, "train_images": len(train_labels),
                                  "test_images": len(test_labels)})
        results[k] = (top1, top5)
    say(f"k-NN results appended to {os.path.join(F.output_dir, 'log.txt')}")
    return results


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
