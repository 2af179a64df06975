"""What every model family's converter does, and the errors they share.

A converter knows one family of official backbones (`ViT`, `ResNet`, `XCiT`): whether a
state dict holds one (by its keys), the constructor arguments its tensors imply, whether
a requested architecture fits the file, how to build the Keras backbone and how its
variables are named (the name maps of `keras_dino.models.official_names`).
"""

from keras_dino.checkpoints import official
from keras_dino.errors import ArchitectureMismatchError
from keras_dino.models.official_names import backbone_variable_map

SOURCE = "the checkpoint"  # how an error names a file when the caller names none


class Converter:
    """One family of official backbones. Subclasses set the attributes and override
    `matches`, `claims`, `read_config`, `check`, `build_config`, `build`,
    `dino_arguments` and `architecture_name`; the registry
    (`keras_dino.checkpoints.converters`) holds one instance per family.

    Attributes:
        family: the registry key (`"vit"`, `"resnet"`, `"xcit"`).
        label: how messages name the family (`"Vision Transformer"`).
        article: `"a"` or `"an"`, before `label`.
        architectures: the family's official `arch` names and their arguments.
        model_class: the Keras backbone class (`VisionTransformer`, `ResNet`, `XCiT`).

    Example:

    >>> from keras_dino.checkpoints import converters
    >>> xcit = converters.get("xcit")
    >>> xcit.label, xcit.model_class.__name__, xcit.described
    ('XCiT', 'XCiT', 'an XCiT')
    """

    family = ""
    label = ""
    article = "a"
    architectures: dict = {}
    model_class: type = type(None)

    @property
    def described(self) -> str:
        """The family with its article, as messages name it (`"a Vision Transformer"`)."""
        return f"{self.article} {self.label}"

    def matches(self, state_dict: dict) -> bool:
        """Whether a backbone state dict (official names) holds this family's tensors.

        Example:

        >>> import numpy as np
        >>> from keras_dino.checkpoints import converters
        >>> state = {"conv1.weight": np.zeros((8, 3, 7, 7))}
        >>> converters.get("resnet").matches(state), converters.get("xcit").matches(state)
        (True, False)
        """
        raise NotImplementedError

    def claims(self, arch: str, resnet_kwargs: dict | None = None) -> bool:
        """Whether an `arch` name (and `resnet_kwargs`) builds a network of this family,
        by the rules of `keras_dino.models.build_backbone`.

        Example:

        >>> from keras_dino.checkpoints import converters
        >>> converters.get("xcit").claims("xcit_tiny"), converters.get("resnet").claims("vit_small")
        (True, False)
        """
        raise NotImplementedError

    def read_config(self, state_dict: dict, **hints) -> dict:
        """The backbone's constructor arguments, read off the tensors. `hints` are what
        the tensors do not hold (a ViT's `num_heads`).

        Example:

        >>> import numpy as np
        >>> from keras_dino.checkpoints import converters
        >>> state = {"cls_token": np.zeros((1, 1, 384)), "pos_embed": np.zeros((1, 197, 384)),
        ...          "patch_embed.proj.weight": np.zeros((384, 3, 16, 16))}
        >>> config = converters.get("vit").read_config(state, num_heads=12)
        >>> config["embed_dim"], config["patch_size"], config["num_heads"]
        (384, 16, 12)
        """
        raise NotImplementedError

    def check(self, config: dict, arch=None, patch_size=None, source: str = SOURCE) -> None:
        """Raises `ArchitectureMismatchError` naming both when the file's `config` is not
        the `arch` or `patch_size` asked for.

        Example:

        >>> from keras_dino.checkpoints import converters
        >>> converters.get("vit").check({"embed_dim": 48, "depth": 5, "patch_size": 16}, "vit_small")
        Traceback (most recent call last):
        ...
        keras_dino.errors.ArchitectureMismatchError: the checkpoint holds a Vision Transformer of width 48 and depth 5, not a vit_small (width 384, depth 12).
        """
        raise NotImplementedError

    def build_config(self, state_dict, arch, patch_size, args, overrides, source=SOURCE):
        """The checked constructor arguments of `convert`: read off the tensors, with what
        the file's training `args` and an official `arch` add, checked, then `overrides`.

        Example:

        >>> import numpy as np
        >>> from keras_dino.checkpoints import converters
        >>> state = {"cls_token": np.zeros((1, 1, 384)), "pos_embed": np.zeros((1, 197, 384)),
        ...          "patch_embed.proj.weight": np.zeros((384, 3, 16, 16))}
        >>> config = converters.get("vit").build_config(state, None, 16, {"arch": "vit_small"},
        ...                                             {"drop_path_rate": 0.1})
        >>> config["num_heads"], config["drop_path_rate"]
        (6, 0.1)
        """
        raise NotImplementedError

    def build(self, config: dict, arch=None):
        """The Keras backbone of `config` (named after `arch` where that names it).

        Example:

        >>> from keras_dino.checkpoints import converters
        >>> config = dict(patch_size=8, embed_dim=32, depth=1, num_heads=4, cls_attn_layers=1)
        >>> converters.get("xcit").build(config, "xcit_mini").name
        'xcit_mini'
        """
        raise NotImplementedError

    def load(self, backbone, state_dict: dict, what: str = "backbone") -> None:
        """Assigns the file's tensors to the backbone's variables (names and shapes checked
        first), through the family's name map in `keras_dino.models.official_names`.

        Example:

        ```python
        converter = converters.for_state_dict(state)
        converter.load(backbone, state)   # CheckpointKeyError / CheckpointShapeError if not
        ```
        """
        official.load_state_dict(backbone_variable_map(backbone), state_dict, what)

    def convert(self, state_dict: dict, arch=None, patch_size=None, args=None,
                overrides=None, source: str = SOURCE):
        """The backbone of a state dict: config read off it, checked, built and loaded.

        `args` are the training arguments saved with the file (`arch`, `vit_kwargs`);
        `overrides` extra constructor arguments.

        Example:

        ```python
        state = keras_dino.checkpoints.read_checkpoint("dino_resnet50_pretrain.pth")
        backbone = converters.get("resnet").convert(state, arch="resnet50")
        ```
        """
        overrides = dict(overrides or {})
        config = self.build_config(state_dict, arch, patch_size, dict(args or {}), overrides,
                                   source)
        backbone = self.build(config, arch)
        self.load(backbone, state_dict)
        return backbone

    def dino_arguments(self, state_dict: dict, kwargs: dict, args: dict,
                       source: str = SOURCE) -> dict:
        """`keras_dino.DINO` backbone arguments (`arch`, `patch_size`, `vit_kwargs` or
        `resnet_kwargs`) for a new run starting from this state dict: the file's, unless
        the caller's `kwargs` name them (then they must fit). `args` are the file's own.

        Example:

        >>> import numpy as np
        >>> from keras_dino.checkpoints import converters
        >>> state = {"cls_token": np.zeros((1, 1, 384)), "pos_embed": np.zeros((1, 197, 384)),
        ...          "patch_embed.proj.weight": np.zeros((384, 3, 16, 16))}
        >>> arguments = converters.get("vit").dino_arguments(state, {}, {})
        >>> arguments["arch"], arguments["patch_size"], arguments["vit_kwargs"]["embed_dim"]
        ('vit_custom', 16, 384)
        """
        raise NotImplementedError

    def architecture_name(self, backbone) -> str:
        """How the tools name `backbone`'s architecture (`vit_small/16`, `resnet50`): the
        official `arch` name when its shape is one, else the shape in words.

        Example:

        >>> from keras_dino.checkpoints import converters
        >>> from keras_dino.models.resnet import ResNet
        >>> backbone = ResNet("basic", (1, 1, 1, 1), stage_widths=(32, 64, 128, 256),
        ...                   stem_width=32)
        >>> converters.for_model(backbone).architecture_name(backbone)
        'resnet (basic blocks 1,1,1,1, widths 32,64,128,256, stem 32)'
        """
        return backbone.name

    def __repr__(self):
        return f"<{type(self).__name__} '{self.family}'>"


def patch_size_mismatch(asked, found, source=SOURCE) -> ArchitectureMismatchError:
    """The short error of a patch size that is not the file's.

    Example:

    >>> print(patch_size_mismatch(8, 16))
    patch_size=8 was asked for, but the checkpoint has patch size 16.
    """
    return ArchitectureMismatchError(
        f"patch_size={asked} was asked for, but {source} has patch size {found}.")
