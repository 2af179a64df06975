"""torchvision ResNets (`resnet50`, the DINO ResNet-50 and custom shapes)."""

from keras_dino.checkpoints import official
from keras_dino.checkpoints.converters.base import SOURCE, Converter
from keras_dino.errors import ArchitectureMismatchError
from keras_dino.models.backbones import is_resnet
from keras_dino.models.resnet import RESNETS, ResNet, resnet_name


class ResNetConverter(Converter):
    """torchvision `ResNet` state dicts without `fc` (`conv1`, `bn1`, `layer<L>.<b>.*`).

    The block type, blocks per stage and widths are in the tensors. A torchvision `arch`
    (`resnet50`) is checked against them; any other name only names the model.

    Example:

    >>> from keras_dino.models.official_names import resnet_map
    >>> from keras_dino.models.resnet import resnet
    >>> state = official.state_dict_of(resnet_map(resnet("resnet18")))
    >>> converter = ResNetConverter()
    >>> converter.matches(state), converter.read_config(state)["layers"]
    (True, (2, 2, 2, 2))
    """

    family = "resnet"
    label = "ResNet"
    architectures = RESNETS
    model_class = ResNet

    def matches(self, state_dict):
        return official.is_resnet_state(state_dict)

    def claims(self, arch, resnet_kwargs=None):
        return is_resnet(arch, resnet_kwargs)

    def read_config(self, state_dict, **hints):
        return official.infer_resnet_config(state_dict)

    def check(self, config, arch=None, patch_size=None, source=SOURCE):
        # A ResNet has no patches: `patch_size` does not apply.
        if arch in RESNETS:
            held = resnet_name(ResNet(**config))
            if held != arch:
                raise ArchitectureMismatchError(f"{source} holds a {held} ResNet, not a {arch}.")

    def build_config(self, state_dict, arch, patch_size, args, overrides, source=SOURCE):
        config = self.read_config(state_dict)
        config.update({k: v for k, v in overrides.items() if k != "num_heads"})
        self.check(config, arch, patch_size, source)
        return config

    def build(self, config, arch=None):
        return ResNet(**config, name=arch if arch and arch not in RESNETS else "resnet")

    def architecture_name(self, backbone):
        name = resnet_name(backbone)
        if name != "custom":
            return name
        widths = ",".join(str(w) for w in backbone.stage_widths)
        return (f"resnet ({backbone.block} blocks "
                f"{','.join(str(n) for n in backbone.layers_per_stage)}, widths {widths}, "
                f"stem {backbone.stem_width})")

    def dino_arguments(self, state_dict, kwargs, args, source=SOURCE):
        config = self.read_config(state_dict)
        arch = kwargs.get("arch") or args.get("arch") or "resnet"
        out = {"arch": arch, "resnet_kwargs": {**config, **(kwargs.get("resnet_kwargs") or {})}}
        if "patch_size" in kwargs:
            out["patch_size"] = kwargs["patch_size"]
        return out
