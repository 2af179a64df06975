"""Small data sets shipped with keras_dino, so the quickstart and the tests run offline."""

import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def cifar10_mini(split: str = "train") -> pathlib.Path:
    """Path of the embedded CIFAR-10 subset in ImageFolder layout (`<split>/<class>/*.jpg`).

    4,000 real 32x32 CIFAR-10 images as JPEG: `train` holds the first 300 images of each
    of the 10 classes of CIFAR-10's training set, `test` the first 100 of each class of
    its test set (a held-out labelled split for k-NN evaluation).

    Example:

    >>> sorted(p.name for p in cifar10_mini("test").iterdir())[:3]
    ['airplane', 'automobile', 'bird']
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got '{split}'.")
    path = _HERE / "cifar10_mini" / split
    if not path.is_dir():
        raise FileNotFoundError(f"the embedded data set is missing at {path}; reinstall keras_dino.")
    return path
