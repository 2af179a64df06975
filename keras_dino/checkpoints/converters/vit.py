"""Vision Transformers (`vit_tiny`, `vit_small`, `vit_base` and custom widths)."""

from keras_dino.checkpoints import official
from keras_dino.checkpoints.converters.base import SOURCE, Converter, patch_size_mismatch
from keras_dino.errors import ArchitectureMismatchError
from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer

# The constructor arguments a file fixes, as `DINO`'s `vit_kwargs`.
_VIT_KWARGS = ("embed_dim", "depth", "num_heads", "img_size", "mlp_ratio", "qkv_bias")


class ViTConverter(Converter):
    """Official DINO `VisionTransformer` state dicts (`cls_token`, `pos_embed`,
    `patch_embed.proj`, `blocks.<i>.*`).

    Example:

    >>> import numpy as np
    >>> state = {"cls_token": np.zeros((1, 1, 384)), "pos_embed": np.zeros((1, 197, 384)),
    ...          "patch_embed.proj.weight": np.zeros((384, 3, 16, 16))}
    >>> converter = ViTConverter()
    >>> converter.matches(state), converter.read_config(state)["num_heads"]
    (True, 6)
    """

    family = "vit"
    label = "Vision Transformer"
    architectures = ARCHITECTURES
    model_class = VisionTransformer

    def matches(self, state_dict):
        # An XCiT has a `cls_token` too, but no learned `pos_embed`. The registry reads a
        # state dict of no family as a ViT, whose `read_config` names the keys it lacks.
        return "pos_embed" in state_dict and "patch_embed.proj.weight" in state_dict

    def claims(self, arch, resnet_kwargs=None):
        return True  # `build_backbone` builds a ViT of any name no other family claims

    def read_config(self, state_dict, num_heads=None):
        # The number of heads is not in the tensors: given, or the official one of the width.
        return official.infer_backbone_config(state_dict, num_heads=num_heads)

    def check(self, config, arch=None, patch_size=None, source=SOURCE):
        if arch in ARCHITECTURES:
            expected = ARCHITECTURES[arch]
            if (config["embed_dim"], config["depth"]) != (expected["embed_dim"], expected["depth"]):
                raise ArchitectureMismatchError(
                    f"{source} holds a Vision Transformer of width {config['embed_dim']} and "
                    f"depth {config['depth']}, not a {arch} (width {expected['embed_dim']}, "
                    f"depth {expected['depth']}).")
        if patch_size is not None and patch_size != config["patch_size"]:
            raise patch_size_mismatch(patch_size, config["patch_size"], source)

    @staticmethod
    def _num_heads(explicit, names, args):
        # Heads asked for, else those of an official `arch` name, else the file's `args`.
        if explicit is not None:
            return explicit
        for name in names:
            if name in ARCHITECTURES:
                return ARCHITECTURES[name]["num_heads"]
        return (args.get("vit_kwargs") or {}).get("num_heads")

    def build_config(self, state_dict, arch, patch_size, args, overrides, source=SOURCE):
        heads = self._num_heads(overrides.pop("num_heads", None), (arch, args.get("arch")), args)
        config = self.read_config(state_dict, num_heads=heads)
        self.check(config, arch, patch_size, source)
        config.update(overrides)
        return config

    def build(self, config, arch=None):
        return VisionTransformer(**config)

    def architecture_name(self, backbone):
        shape = (backbone.embed_dim, backbone.depth, backbone.num_heads)
        name = next((arch for arch, c in ARCHITECTURES.items()
                     if (c["embed_dim"], c["depth"], c["num_heads"]) == shape),
                    f"vit (width {shape[0]}, depth {shape[1]}, {shape[2]} heads)")
        registers = backbone.num_register_tokens
        return f"{name}/{backbone.patch_size}" + (f" +{registers} registers" if registers else "")

    def dino_arguments(self, state_dict, kwargs, args, source=SOURCE):
        arch = kwargs.get("arch") or args.get("arch")
        heads = self._num_heads((kwargs.get("vit_kwargs") or {}).get("num_heads"), (arch,), args)
        config = self.read_config(state_dict, num_heads=heads)
        patch_size = kwargs.get("patch_size", config["patch_size"])
        self.check(config, arch, patch_size, source)
        if arch is None:
            shape = (config["embed_dim"], config["depth"], config["num_heads"])
            arch = next((name for name, c in ARCHITECTURES.items()
                         if (c["embed_dim"], c["depth"], c["num_heads"]) == shape), "vit_custom")
        vit_kwargs = {k: config[k] for k in _VIT_KWARGS if k in config}
        vit_kwargs.update(kwargs.get("vit_kwargs") or {})
        return {"arch": arch, "patch_size": patch_size, "vit_kwargs": vit_kwargs}
