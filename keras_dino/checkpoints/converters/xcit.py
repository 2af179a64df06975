"""XCiT (`xcit_small_12_p16`, ..., and custom shapes)."""

from keras_dino.checkpoints import official
from keras_dino.checkpoints.converters.base import SOURCE, Converter, patch_size_mismatch
from keras_dino.errors import ArchitectureMismatchError
from keras_dino.models.backbones import is_xcit
from keras_dino.models.xcit import XCITS, XCiT

# The constructor arguments a file fixes besides the patch size, as `DINO`'s `vit_kwargs`.
_XCIT_KWARGS = ("embed_dim", "depth", "num_heads", "cls_attn_layers", "mlp_ratio", "qkv_bias")


class XCiTConverter(Converter):
    """Official XCiT state dicts (`pos_embeder.*`, `cls_attn_blocks.<j>.*`, the
    convolutional `patch_embed.proj.<i>.*`, no `pos_embed`).

    Example:

    >>> from keras_dino.models.official_names import xcit_map
    >>> model = XCiT(patch_size=8, embed_dim=32, depth=2, num_heads=4, cls_attn_layers=1)
    >>> state = official.state_dict_of(xcit_map(model))
    >>> converter = XCiTConverter()
    >>> converter.matches(state), converter.read_config(state)["patch_size"]
    (True, 8)
    """

    family = "xcit"
    label = "XCiT"
    article = "an"
    architectures = XCITS
    model_class = XCiT

    def matches(self, state_dict):
        return official.is_xcit_state(state_dict)

    def claims(self, arch, resnet_kwargs=None):
        return is_xcit(arch)

    def read_config(self, state_dict, **hints):
        return official.infer_xcit_config(state_dict)

    def check(self, config, arch=None, patch_size=None, source=SOURCE):
        if arch in XCITS:
            keys = ("patch_size", "embed_dim", "depth", "num_heads")
            if any(config[k] != XCITS[arch][k] for k in keys):
                raise ArchitectureMismatchError(
                    f"{source} holds an XCiT of patch {config['patch_size']}, width "
                    f"{config['embed_dim']}, depth {config['depth']}, {config['num_heads']} "
                    f"heads, not a {arch}.")
        if patch_size is not None and patch_size != config["patch_size"]:
            raise patch_size_mismatch(patch_size, config["patch_size"], source)

    def build_config(self, state_dict, arch, patch_size, args, overrides, source=SOURCE):
        config = self.read_config(state_dict)
        # `eta` and `tokens_norm` are not in the tensors: an official name says them.
        expected = XCITS.get(arch) or XCITS.get(args.get("arch"))
        if expected:
            config["eta"], config["tokens_norm"] = expected["eta"], expected["tokens_norm"]
        self.check(config, arch, patch_size, source)
        config.update({k: v for k, v in overrides.items() if k != "num_heads"})
        return config

    def build(self, config, arch=None):
        return XCiT(**config, name=arch if arch else "xcit")

    def architecture_name(self, backbone):
        shape = (backbone.patch_size, backbone.embed_dim, backbone.depth, backbone.num_heads)
        return next((arch for arch, c in XCITS.items()
                     if (c["patch_size"], c["embed_dim"], c["depth"], c["num_heads"]) == shape),
                    f"xcit (width {shape[1]}, depth {shape[2]}, {shape[3]} heads)/{shape[0]}")

    def dino_arguments(self, state_dict, kwargs, args, source=SOURCE):
        config = self.read_config(state_dict)
        arch = kwargs.get("arch") or args.get("arch") or "xcit_custom"
        self.check(config, arch, kwargs.get("patch_size"), source)
        vit_kwargs = {k: config[k] for k in _XCIT_KWARGS}
        vit_kwargs.update(kwargs.get("vit_kwargs") or {})
        return {"arch": arch, "patch_size": config["patch_size"], "vit_kwargs": vit_kwargs}
