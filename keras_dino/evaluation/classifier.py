"""The released ImageNet linear classifiers: a DINO backbone and its linear layer, ready.

The official repository releases, beside each backbone, the linear classifier that
`eval_linear.py` trained on its frozen features (`*_linearweights.pth`: ViT-S/16 77.0%,
ViT-S/8 79.7%, ViT-B/16 78.2%, ViT-B/8 80.1%, ResNet-50 75.3% top-1 on ImageNet).
`load_pretrained_classifier` puts the two together as a `LinearProbe`: images in,
1000 logits out. The classifier is a task that wraps a backbone: it calls the backbone
loader (`keras_dino.load_pretrained`), which knows nothing of it.
"""

import os

import keras  # noqa: F401  (type hints)
import numpy as np

from keras_dino.checkpoints.pretrained import PRESETS, load_pretrained, preset_file
from keras_dino.checkpoints.torch_format import read_checkpoint
from keras_dino.evaluation.linear import LinearProbe, has_blocks, load_linear_checkpoint


def imagenet_class_names() -> list:
    """The 1,000 ImageNet-1k class names, in the order of the released classifiers' logits.

    (WordNet-derived names as torchvision lists them, `imagenet_classes.json`.)

    Example:

    >>> names = imagenet_class_names()
    >>> len(names), names[0], names[207]
    (1000, 'tench', 'golden retriever')
    """
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.json")
    with open(path) as f:
        return json.load(f)


def linear_recipe(backbone, in_features: int) -> dict:
    """The `eval_linear.py` feature recipe a linear layer of `in_features` inputs implies.

    For a ViT of width E: 4E inputs are the last 4 CLS tokens (ViT-S), 2E the last CLS
    token and the mean patch token (ViT-B, `avgpool_patchtokens`), nE the last n CLS
    tokens. Any other backbone feeds its output (`{}`).

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> linear_recipe(vit_tiny(16, depth=4), 2 * 192)
    {'n_last_blocks': 1, 'avgpool_patchtokens': True}
    """
    width = int(backbone.embed_dim)
    if not has_blocks(backbone):
        if in_features != width:
            raise ValueError(f"the linear layer takes {in_features} features; this "
                             f"{type(backbone).__name__} gives {width}.")
        return {}
    if in_features == 2 * width:
        return dict(n_last_blocks=1, avgpool_patchtokens=True)
    if in_features % width or not 1 <= in_features // width <= len(backbone.blocks):
        raise ValueError(f"a linear layer of {in_features} inputs does not fit a ViT of "
                         f"width {width} and {len(backbone.blocks)} blocks.")
    return dict(n_last_blocks=in_features // width, avgpool_patchtokens=False)


def _linear_shape(path):
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    for key, value in state.items():
        if key.endswith("linear.weight"):
            return np.shape(value)
    raise KeyError(f"{path} holds no linear classifier ('linear.weight'); it has "
                   f"{', '.join(sorted(state)[:6])}.")


def load_pretrained_classifier(backbone: "str | os.PathLike | keras.Model" = "dino_vits16",
                               linear_weights: "str | os.PathLike | None" = None,
                               n_last_blocks: int | None = None,
                               avgpool_patchtokens: bool | None = None,
                               **load_kwargs) -> LinearProbe:
    """A released DINO backbone with its released ImageNet linear classifier.

    Args:
        backbone: a preset (`dino_vits16`, `dino_vits8`, `dino_vitb16`, `dino_vitb8`,
            `dino_resnet50`), a backbone or checkpoint file (`load_pretrained`), or a
            Keras backbone.
        linear_weights: the classifier file (`*_linearweights.pth` or an
            `eval_linear.py` `checkpoint.pth.tar`); by default the preset's released
            one, downloaded once into the Keras cache.
        n_last_blocks: ViT feature recipe, read off the layer's width when not given
            (ViT-S: 4 blocks, no average; ViT-B: 1 block with the mean patch token);
            given, the layer must fit it.
        avgpool_patchtokens: the other half of the ViT feature recipe (the mean patch
            token appended), read off or checked in the same way.
        **load_kwargs: passed to `keras_dino.load_pretrained` (`arch`, `patch_size`,
            `checkpoint_key`, ...).

    Returns:
        A `LinearProbe` (a `keras.Model`: normalised NHWC images in, logits out) with
        the feature recipe the linear layer was trained on, read off its shape,
        compiled as `eval_linear.py` trains (`evaluate` gives `loss`, `acc1`, `acc5`).

    Example:

    ```python
    classifier = keras_dino.load_pretrained_classifier("dino_vits16")
    logits = classifier(keras_dino.preprocess_images(images))     # (B, 1000)
    ```
    """
    if linear_weights is None:
        if not (isinstance(backbone, str) and backbone in PRESETS):
            raise ValueError("linear_weights is needed unless backbone is a preset "
                             f"({', '.join(PRESETS)}).")
        linear_weights = preset_file(backbone, "linear")
    if not hasattr(backbone, "embed_dim"):
        backbone = load_pretrained(backbone, **load_kwargs)
    num_labels, in_features = _linear_shape(linear_weights)
    recipe = linear_recipe(backbone, int(in_features))
    if n_last_blocks is not None or avgpool_patchtokens is not None:
        asked = dict(n_last_blocks=n_last_blocks or 1,
                     avgpool_patchtokens=bool(avgpool_patchtokens))
        width = backbone.embed_dim * (2 if asked["avgpool_patchtokens"] else asked["n_last_blocks"])
        if recipe and width != in_features:
            raise ValueError(
                f"{linear_weights} takes {in_features} features; n_last_blocks="
                f"{asked['n_last_blocks']}, avgpool_patchtokens="
                f"{asked['avgpool_patchtokens']} give {width}. Its width fits "
                f"n_last_blocks={recipe['n_last_blocks']}, avgpool_patchtokens="
                f"{recipe['avgpool_patchtokens']}.")
        recipe = asked if recipe else recipe
    probe = LinearProbe(backbone, int(num_labels), **recipe)
    probe.compile_official()  # ready for `evaluate` (loss, acc1, acc5) or more training
    load_linear_checkpoint(probe, linear_weights)
    return probe
