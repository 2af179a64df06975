"""One way to build any DINO backbone from the official `--arch` name."""

from keras_dino.errors import did_you_mean
from keras_dino.models.resnet import RESNETS, ResNet
from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer
from keras_dino.models.xcit import XCITS, XCiT

# `resnet_kwargs` spellings of the official zoo's custom ResNets (torchvision's names).
_RESNET_ALIASES = {"bottleneck_expansion": "expansion"}


def is_resnet(arch: str, resnet_kwargs: dict | None = None) -> bool:
    """Whether `arch` names a ResNet (torchvision's names, or a custom `resnet*` name).

    Example:

    >>> is_resnet("resnet50"), is_resnet("vit_small"), is_resnet("my_net", {"layers": [1]})
    (True, False, True)
    """
    return arch in RESNETS or bool(resnet_kwargs) or arch.startswith(("resnet", "wide_resnet"))


def is_xcit(arch: str) -> bool:
    """Whether `arch` names an XCiT (the official names, or any `xcit*` name).

    Example:

    >>> is_xcit("xcit_small_12_p16"), is_xcit("vit_small")
    (True, False)
    """
    return arch in XCITS or arch.startswith("xcit")


def _guess(name, known) -> str:
    """`"did you mean 'x'? "` for the closest known name, or `""`."""
    hint = did_you_mean(name, known)
    return f"{hint} " if hint else ""


def backbone_config(arch, patch_size=16, vit_kwargs=None, resnet_kwargs=None) -> tuple:
    """`(class, arguments)` of the backbone that `arch` and the overrides describe.

    ViTs: `vit_tiny`, `vit_small`, `vit_base`, or any name with `vit_kwargs` holding
    `embed_dim`, `depth` and `num_heads`. ResNets: torchvision's names (`resnet18`,
    `resnet50`, `wide_resnet50_2`, ...) or any `resnet*` name with `resnet_kwargs`
    (`block`, `layers`, `width_per_group`, `expansion`, `stem_width`, `stage_widths`).
    XCiTs: the official names (`xcit_small_12_p16`, ...; their patch size is in the name)
    or any `xcit*` name with `vit_kwargs` holding `embed_dim`, `depth` and `num_heads`
    (and optionally `cls_attn_layers`, `eta`, `tokens_norm`).

    Example:

    >>> cls, kwargs = backbone_config("resnet18", resnet_kwargs={"stem_width": 32})
    >>> cls.__name__, kwargs["block"], kwargs["stem_width"]
    ('ResNet', 'basic', 32)
    """
    if is_resnet(arch, resnet_kwargs):
        config = dict(RESNETS.get(arch, {}))
        for key, value in dict(resnet_kwargs or {}).items():
            config[_RESNET_ALIASES.get(key, key)] = value
        if arch not in RESNETS and "layers" not in config:
            raise ValueError(
                f"unknown ResNet '{arch}'; {_guess(arch, RESNETS)}(known: {', '.join(RESNETS)}); "
                "give resnet_kwargs with at least `layers` for a custom one."
            )
        return ResNet, config
    if is_xcit(arch):
        config = dict(XCITS.get(arch, {"patch_size": patch_size}))
        config.update(vit_kwargs or {})
        missing = {"embed_dim", "depth", "num_heads"} - set(config)
        if missing:
            raise ValueError(f"unknown XCiT '{arch}'; {_guess(arch, XCITS)}(known: "
                             f"{', '.join(XCITS)}); give vit_kwargs with "
                             f"{', '.join(sorted(missing))} for a custom one.")
        return XCiT, config
    config = dict(ARCHITECTURES.get(arch, {}))
    config.update(vit_kwargs or {})
    missing = {"embed_dim", "depth", "num_heads"} - set(config)
    if missing:
        guess = _guess(arch, [*ARCHITECTURES, *RESNETS, *XCITS])
        raise ValueError(
            f"unknown arch '{arch}'; {guess}(known: {', '.join([*ARCHITECTURES, *RESNETS])}, "
            f"the xcit_* names); give vit_kwargs with {', '.join(sorted(missing))} for a custom "
            "Vision Transformer, or resnet_kwargs for a custom ResNet."
        )
    config["patch_size"] = patch_size
    return VisionTransformer, config


def build_backbone(arch, patch_size=16, vit_kwargs=None, resnet_kwargs=None,
                   drop_path_rate=0.0, **kwargs):
    """The backbone of `arch` (see `backbone_config`); `drop_path_rate` applies to
    transformers (ViT, XCiT).

    Example:

    >>> build_backbone("vit_small", patch_size=8).embed_dim
    384
    >>> build_backbone("resnet50").embed_dim
    2048
    """
    cls, config = backbone_config(arch, patch_size, vit_kwargs, resnet_kwargs)
    if cls is not ResNet:
        config["drop_path_rate"] = drop_path_rate
    return cls(**config, **kwargs)
