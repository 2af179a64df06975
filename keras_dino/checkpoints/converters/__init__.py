"""One converter per model family, behind one registry.

Each family of official backbones has one converter (`vit.py`, `resnet.py`, `xcit.py`)
that detects its state dicts by their keys, reads the constructor arguments off the
tensors, checks a requested architecture against them, builds the Keras backbone and
loads it through the family's name map (`keras_dino.models.official_names`). Everything
that turns a state dict into a backbone goes through this registry:

* `for_state_dict(state_dict)`: the converter of the family a state dict holds;
* `get(family)`: the converter of `"vit"`, `"resnet"` or `"xcit"`;
* `for_arch(arch)`: the converter of the family an `arch` name builds;
* `for_model(backbone)`, `backbone_classes()`: the family of a Keras backbone, and the
  backbone classes;
* `check_family(state_dict, arch)`: the file's converter, or an error naming both families;
* `convert(state_dict, arch, patch_size, ...)`: the loaded backbone (`load_pretrained`);
* `dino_arguments(state_dict, kwargs, args)`: a `DINO`'s backbone arguments for a run
  that starts from the file (`DINO.from_pretrained`).

Example:

>>> import numpy as np
>>> from keras_dino.checkpoints import official
>>> from keras_dino.models.official_names import resnet_map
>>> from keras_dino.models.resnet import resnet
>>> state = official.state_dict_of(resnet_map(resnet("resnet18")))
>>> for_state_dict(state).family, for_arch("xcit_small_12_p16").family
('resnet', 'xcit')
>>> check_family(state, "vit_small")
Traceback (most recent call last):
...
keras_dino.errors.ArchitectureMismatchError: the checkpoint holds a ResNet backbone, but arch='vit_small' is a Vision Transformer.
"""

from keras_dino.checkpoints.converters.base import SOURCE, Converter
from keras_dino.checkpoints.converters.resnet import ResNetConverter
from keras_dino.checkpoints.converters.vit import ViTConverter
from keras_dino.checkpoints.converters.xcit import XCiTConverter
from keras_dino.errors import ArchitectureMismatchError

# In the order they are asked: the ViT, which claims whatever the others do not, last.
CONVERTERS: dict[str, Converter] = {
    c.family: c for c in (ResNetConverter(), XCiTConverter(), ViTConverter())}


def families() -> tuple:
    """The registered families, in the order they are asked.

    Example:

    >>> families()
    ('resnet', 'xcit', 'vit')
    """
    return tuple(CONVERTERS)


def backbone_classes() -> tuple:
    """The Keras backbone classes of the registered families.

    Example:

    >>> [c.__name__ for c in backbone_classes()]
    ['ResNet', 'XCiT', 'VisionTransformer']
    """
    return tuple(c.model_class for c in CONVERTERS.values())


def for_model(backbone) -> Converter:
    """The converter of a Keras backbone's family (`TypeError` for another model).

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> for_model(resnet("resnet18")).family
    'resnet'
    """
    for converter in CONVERTERS.values():
        if isinstance(backbone, converter.model_class):
            return converter
    raise TypeError(f"{type(backbone).__name__} is not a keras_dino backbone "
                    f"({', '.join(c.__name__ for c in backbone_classes())}).")


def get(family: str) -> Converter:
    """The converter of a family (`"vit"`, `"resnet"`, `"xcit"`).

    Example:

    >>> get("xcit").label
    'XCiT'
    """
    try:
        return CONVERTERS[family]
    except KeyError:
        raise ValueError(f"unknown model family '{family}'; the families are "
                         f"{', '.join(CONVERTERS)}.") from None


def for_state_dict(state_dict: dict) -> Converter:
    """The converter of the family a backbone state dict (official names) holds.

    A state dict that no family recognises goes to the Vision Transformer's, whose
    `read_config` names the keys it lacks.

    Example:

    >>> import numpy as np
    >>> for_state_dict({"pos_embeder.token_projection.weight": np.zeros((48, 64, 1, 1))}).family
    'xcit'
    """
    for converter in CONVERTERS.values():
        if converter.matches(state_dict):
            return converter
    return CONVERTERS["vit"]


def for_arch(arch, resnet_kwargs=None, official_only: bool = False) -> Converter | None:
    """The converter of the family `arch` builds (see `keras_dino.models.build_backbone`).

    With `official_only`, only the families' official names count (`vit_small`,
    `resnet50`, `xcit_small_12_p16`, ...); another name gives None.

    Example:

    >>> for_arch("resnet_mini").family, for_arch("resnet_mini", official_only=True)
    ('resnet', None)
    """
    if not arch:
        return None
    for converter in CONVERTERS.values():
        if official_only:
            if arch in converter.architectures:
                return converter
        elif converter.claims(arch, resnet_kwargs):
            return converter
    return None


def check_family(state_dict: dict, arch=None, resnet_kwargs=None, official_only: bool = True,
                 source: str = SOURCE) -> Converter:
    """The converter of `state_dict`; an `ArchitectureMismatchError` naming both families
    when `arch` names another one (with `official_only`, only an official name counts).

    Example:

    >>> import numpy as np
    >>> check_family({"conv1.weight": np.zeros((8, 3, 7, 7))}, "resnet50").family
    'resnet'
    """
    held = for_state_dict(state_dict)
    asked = for_arch(arch, resnet_kwargs, official_only)
    if asked is not None and asked is not held:
        raise ArchitectureMismatchError(
            f"{source} holds {held.described} backbone, but arch='{arch}' is {asked.described}.")
    return held


def convert(state_dict: dict, arch=None, patch_size=None, args=None, overrides=None,
            source: str = SOURCE):
    """The backbone a state dict holds, built to its shape and loaded.

    `arch` (an official name is checked against the tensors; another name names the
    model), `patch_size` (checked), `args` (the file's training arguments) and
    `overrides` (extra constructor arguments) are optional.

    Example:

    ```python
    state = keras_dino.checkpoints.read_checkpoint("dino_xcit_small_12_p16_pretrain.pth")
    backbone = converters.convert(state, arch="xcit_small_12_p16")
    ```
    """
    converter = check_family(state_dict, arch, source=source)
    return converter.convert(state_dict, arch, patch_size, args, overrides, source)


def dino_arguments(state_dict: dict, kwargs: dict, args: dict | None = None,
                   source: str = SOURCE) -> dict:
    """`keras_dino.DINO` backbone arguments for a run whose backbones start from
    `state_dict`: the file's architecture, unless `kwargs` name one (then it must fit).

    Example:

    >>> from keras_dino.checkpoints import official
    >>> from keras_dino.models.official_names import resnet_map
    >>> from keras_dino.models.resnet import resnet
    >>> state = official.state_dict_of(resnet_map(resnet("resnet18")))
    >>> arguments = dino_arguments(state, {}, {"arch": "resnet18"})
    >>> arguments["arch"], arguments["resnet_kwargs"]["layers"]
    ('resnet18', (2, 2, 2, 2))
    """
    args = dict(args or {})
    arch = kwargs.get("arch") or args.get("arch")
    converter = check_family(state_dict, arch, kwargs.get("resnet_kwargs"),
                             official_only=False, source=source)
    return converter.dino_arguments(state_dict, kwargs, args, source)


__all__ = ["CONVERTERS", "Converter", "backbone_classes", "check_family", "convert",
           "dino_arguments", "families", "for_arch", "for_model", "for_state_dict", "get"]
