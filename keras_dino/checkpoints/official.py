"""Official DINO (PyTorch) state dicts <-> Keras variables, through the models' name maps.

The maps themselves (`{official name: (variable, layout kind)}`) belong to the models
(`keras_dino.models.official_names`); this module converts layouts and checks names and
shapes. Every function works on plain `{name: numpy array}` state dicts, so it serves
`.pth` files (read without torch), their `.npz` twins and checkpoints we write back.
"""

import re

import keras
import numpy as np

from keras_dino.errors import (  # noqa: F401
    CheckpointKeyError,
    CheckpointShapeError,
    MissingArchitectureError,
)
from keras_dino.models.official_names import (  # noqa: F401 (the maps, re-exported)
    backbone_variable_map,
    head_variable_map,
    multicrop_variable_map,
)

# How an official tensor becomes the Keras variable's value, and back.
_TO_KERAS = {
    "same": lambda a: a,
    "linear": lambda a: a.T,  # nn.Linear (out, in) -> Dense kernel (in, out)
    "conv": lambda a: a.transpose(2, 3, 1, 0),  # Conv2d (E, C, p, p) -> (p, p, C, E)
    "depthwise": lambda a: a.transpose(2, 3, 0, 1),  # (C, 1, k, k) -> (k, k, C, 1)
    "gain": lambda a: a.reshape(-1),  # weight_g (out, 1) -> (out,)
    "buffer": lambda a: a,  # BatchNorm running statistics
}
_TO_OFFICIAL = {
    "same": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "depthwise": lambda a: a.transpose(2, 3, 0, 1),
    "gain": lambda a: a.reshape(-1, 1),
    "buffer": lambda a: a,
}
# Official buffers that have no Keras counterpart and are safe to ignore.
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def load_state_dict(variable_map: dict, state_dict: dict, what: str = "model") -> None:
    """Assigns official tensors to Keras variables, checking names and shapes first.

    Nothing is assigned unless every key matches: missing and unexpected keys are listed
    in a `CheckpointKeyError`, and a shape mismatch raises `CheckpointShapeError` with
    the tensor's name and both shapes.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import DINOHead
    >>> head = DINOHead(out_dim=64, nlayers=1, bottleneck_dim=16, in_dim=192)
    >>> state = {"mlp.weight": np.ones((16, 192)), "mlp.bias": np.zeros(16),
    ...          "last_layer.weight_g": np.ones((64, 1)), "last_layer.weight_v": np.ones((64, 16))}
    >>> load_state_dict(head_variable_map(head), state, "DINO head")
    >>> del state["mlp.bias"]
    >>> load_state_dict(head_variable_map(head), state, "DINO head")
    Traceback (most recent call last):
    ...
    keras_dino.errors.CheckpointKeyError: the checkpoint does not match the DINO head:
      missing keys (1): mlp.bias
    """
    keys = {k for k in state_dict if not _IGNORED.search(k)}
    missing = sorted(set(variable_map) - keys)
    unexpected = sorted(keys - set(variable_map))
    if missing or unexpected:
        lines = [f"the checkpoint does not match the {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        raise CheckpointKeyError("\n".join(lines))
    values = {}
    for name, (variable, kind) in variable_map.items():
        array = np.asarray(state_dict[name])
        converted = _TO_KERAS[kind](array)
        if tuple(converted.shape) != tuple(variable.shape):
            expected = _TO_OFFICIAL[kind](np.zeros(variable.shape, np.int8)).shape
            raise CheckpointShapeError(
                f"shape mismatch for '{name}' in the {what}: the checkpoint has "
                f"{tuple(array.shape)}, the model expects {tuple(expected)}."
            )
        values[name] = converted
    for name, (variable, _) in variable_map.items():
        variable.assign(values[name].astype(variable.dtype))


def state_dict_of(variable_map: dict) -> dict:
    """The official-layout `{name: numpy array}` of the mapped Keras variables.

    Example:

    >>> from keras_dino.models import DINOHead
    >>> head = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=16, in_dim=192)
    >>> state_dict_of(head_variable_map(head))["last_layer.weight_v"].shape  # (out, in)
    (64, 16)
    """
    return {
        name: np.ascontiguousarray(_TO_OFFICIAL[kind](keras.ops.convert_to_numpy(variable)))
        for name, (variable, kind) in variable_map.items()
    }


def strip_prefixes(state_dict: dict, prefixes=("module.", "backbone.")) -> dict:
    """Removes leading `module.` then `backbone.` as the official loader does.

    Example:

    >>> list(strip_prefixes({"module.backbone.cls_token": 0, "norm.bias": 1}))
    ['cls_token', 'norm.bias']
    """
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def weight_normed(state_dict: dict) -> dict:
    """A state dict whose DINO-head last layer is in weight-norm form.

    The official head keeps `last_layer` as `weight_norm(nn.Linear)`: `weight_g (out, 1)`
    and `weight_v (out, in)`. Some released files reportedly hold a plain
    `last_layer.weight` instead (the ResNet-50 full checkpoint); it becomes
    `weight_v = W`, `weight_g = |W| per row`, the same function (`g * v / |v| = W`).
    Any `module.`/`head.` prefix is kept; other keys are untouched.

    Example:

    >>> import numpy as np
    >>> state = weight_normed({"head.last_layer.weight": np.array([[3.0, 4.0], [0.0, 0.0]])})
    >>> sorted(state), state["head.last_layer.weight_g"].ravel().tolist()
    (['head.last_layer.weight_g', 'head.last_layer.weight_v'], [5.0, 0.0])
    """
    out = {}
    for key, value in state_dict.items():
        prefix = key[: -len("last_layer.weight")]
        if not key.endswith("last_layer.weight") or f"{prefix}last_layer.weight_v" in state_dict:
            out[key] = value
            continue
        weight = np.asarray(value)
        norm = np.linalg.norm(weight.astype(np.float64), axis=1, keepdims=True)
        # A zero row stays zero (g = 0) with a finite direction.
        out[f"{prefix}last_layer.weight_v"] = np.where(norm > 0, weight, 1).astype(weight.dtype)
        out[f"{prefix}last_layer.weight_g"] = norm.astype(weight.dtype)
    return out


def split_backbone_and_head(state_dict: dict) -> tuple[dict, dict]:
    """Splits a MultiCropWrapper state dict (`module.`-prefixed or not) in two parts.

    Example:

    >>> backbone, head = split_backbone_and_head(
    ...     {"module.backbone.cls_token": 0, "module.head.last_layer.weight_v": 1})
    >>> list(backbone), list(head)
    (['cls_token'], ['last_layer.weight_v'])
    """
    backbone, head = {}, {}
    for key, value in weight_normed(state_dict).items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("head."):
            head[key[len("head.") :]] = value
        elif key.startswith("backbone."):
            backbone[key[len("backbone.") :]] = value
        else:
            backbone[key] = value
    return backbone, head


def infer_backbone_config(state_dict: dict, num_heads: int | None = None) -> dict:
    """`VisionTransformer` arguments read off the tensors of a backbone state dict.

    Embedding width, depth, patch size, MLP ratio, qkv bias, training resolution and the
    number of register tokens (`register_tokens`, as DINOv2 names them) are determined by
    the tensors. The number of heads is not: pass it, or it is taken from
    the official architecture of that width (3, 6, 12 heads for 192, 384, 768; 64-wide
    heads otherwise).

    Example:

    >>> import numpy as np
    >>> state = {"cls_token": np.zeros((1, 1, 384)), "pos_embed": np.zeros((1, 197, 384)),
    ...          "patch_embed.proj.weight": np.zeros((384, 3, 16, 16))}
    >>> config = infer_backbone_config(state)
    >>> config["embed_dim"], config["patch_size"], config["img_size"], config["num_heads"]
    (384, 16, 224, 6)
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state_dict:
            raise CheckpointKeyError(
                f"not a DINO Vision Transformer state dict: no '{key}' among its "
                f"{len(state_dict)} keys (first: {', '.join(list(state_dict)[:5])})."
            )
    embed_dim = int(state_dict["cls_token"].shape[-1])
    patch_size = int(state_dict["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(
        (int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))),
        default=-1,
    )
    num_patches = int(state_dict["pos_embed"].shape[1]) - 1
    side = int(round(num_patches**0.5))
    if num_heads is None:
        official = {192: 3, 384: 6, 768: 12, 1024: 16}
        if embed_dim in official:
            num_heads = official[embed_dim]
        elif embed_dim % 64 == 0:
            num_heads = embed_dim // 64
        else:
            divisors = ", ".join(str(d) for d in range(1, embed_dim + 1) if embed_dim % d == 0)
            raise MissingArchitectureError(
                f"cannot infer the number of attention heads of a {embed_dim}-wide model "
                f"(the checkpoint does not record it); pass num_heads=N, one of {divisors}."
            )
    config = dict(
        img_size=side * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
    )
    if "register_tokens" in state_dict:  # "Vision Transformers Need Registers" (DINOv2's name)
        config["num_register_tokens"] = int(state_dict["register_tokens"].shape[1])
    if depth:
        config["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    return config


def infer_head_config(state_dict: dict) -> dict:
    """`DINOHead` arguments read off the tensors of a head state dict.

    Example:

    >>> import numpy as np
    >>> state = {"mlp.0.weight": np.zeros((64, 48)), "mlp.2.weight": np.zeros((64, 64)),
    ...          "mlp.4.weight": np.zeros((32, 64)), "last_layer.weight_v": np.zeros((1024, 32))}
    >>> config = infer_head_config(state)
    >>> config["in_dim"], config["hidden_dim"], config["bottleneck_dim"], config["out_dim"]
    (48, 64, 32, 1024)
    """
    state_dict = weight_normed(state_dict)
    if "last_layer.weight_v" not in state_dict:
        raise CheckpointKeyError(
            "not a DINO head state dict: no 'last_layer.weight_v' (or 'last_layer.weight') "
            "among its keys "
            f"({', '.join(sorted(state_dict)[:8])})."
        )
    dense = sorted(
        int(m.group(1))
        for k, v in state_dict.items()
        if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)) and np.ndim(v) == 2
    )
    if dense:
        first = state_dict[f"mlp.{dense[0]}.weight"]
    elif "mlp.weight" in state_dict:
        first = state_dict["mlp.weight"]
    else:
        raise CheckpointKeyError("the head state dict has no MLP weights ('mlp.<i>.weight').")
    weight_v = state_dict["last_layer.weight_v"]
    return dict(
        in_dim=int(first.shape[1]),
        out_dim=int(weight_v.shape[0]),
        bottleneck_dim=int(weight_v.shape[1]),
        hidden_dim=int(first.shape[0]) if len(dense) > 1 else 2048,
        nlayers=max(len(dense), 1),
        use_bn=any(k.endswith("running_mean") for k in state_dict),
    )


def is_xcit_state(state_dict: dict) -> bool:
    """Whether a backbone state dict holds XCiT tensors (Fourier positions, class attention).

    Example:

    >>> import numpy as np
    >>> is_xcit_state({"pos_embeder.token_projection.weight": 0}), is_xcit_state({})
    (True, False)
    """
    return "pos_embeder.token_projection.weight" in state_dict or any(
        k.startswith("cls_attn_blocks.") for k in state_dict)


def infer_xcit_config(state_dict: dict) -> dict:
    """`XCiT` arguments read off the tensors of an official XCiT state dict.

    Width, depth, heads (the XCA temperatures), class-attention layers, patch size (the
    number of embedding convolutions), MLP ratio and qkv bias are all in the tensors;
    `eta` only initialises the layer scales, which the file holds.

    Example:

    >>> from keras_dino.models.official_names import xcit_map
    >>> from keras_dino.models.xcit import XCiT
    >>> model = XCiT(patch_size=8, embed_dim=32, depth=2, num_heads=4, cls_attn_layers=1)
    >>> config = infer_xcit_config(state_dict_of(xcit_map(model)))
    >>> [config[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "cls_attn_layers")]
    [8, 32, 2, 4, 1]
    """
    if not is_xcit_state(state_dict):
        raise CheckpointKeyError("not an XCiT state dict: no 'pos_embeder.*' or "
                                 f"'cls_attn_blocks.*' keys ({', '.join(sorted(state_dict)[:6])}).")

    def count(pattern):
        return len({m.group(1) for k in state_dict if (m := re.match(pattern, k))})

    embed_dim = int(np.shape(state_dict["cls_token"])[-1])
    convs = count(r"patch_embed\.proj\.(\d+)\.0\.weight")
    if convs not in (3, 4):
        raise CheckpointKeyError(f"an XCiT patch embedding has 3 (patch 8) or 4 (patch 16) "
                                 f"convolutions; this one has {convs}.")
    depth = count(r"blocks\.(\d+)\.")
    return dict(
        patch_size=16 if convs == 4 else 8,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(np.shape(state_dict["blocks.0.attn.temperature"])[0]) if depth else 1,
        cls_attn_layers=count(r"cls_attn_blocks\.(\d+)\."),
        mlp_ratio=np.shape(state_dict["cls_attn_blocks.0.mlp.fc1.weight"])[0] / embed_dim,
        qkv_bias="cls_attn_blocks.0.attn.qkv.bias" in state_dict,
    )


def is_resnet_state(state_dict: dict) -> bool:
    """Whether a backbone state dict holds torchvision ResNet tensors.

    Example:

    >>> import numpy as np
    >>> is_resnet_state({"conv1.weight": np.zeros((64, 3, 7, 7))}), is_resnet_state({})
    (True, False)
    """
    return "conv1.weight" in state_dict and "cls_token" not in state_dict


def infer_resnet_config(state_dict: dict) -> dict:
    """`ResNet` arguments read off the tensors of a torchvision ResNet state dict.

    The block type, the blocks per stage and every width come from the tensors. A
    bottleneck's inner width and expansion are expressed as `stage_widths` (the inner
    widths, `width_per_group=64`) and `expansion` (output over inner width), which
    builds the same network as torchvision's parametrisation.

    Example:

    >>> from keras_dino.models.official_names import resnet_map
    >>> from keras_dino.models.resnet import resnet
    >>> state = state_dict_of(resnet_map(resnet("resnet50")))
    >>> config = infer_resnet_config(state)
    >>> config["block"], config["layers"], config["stage_widths"], config["expansion"]
    ('bottleneck', (3, 4, 6, 3), (64, 128, 256, 512), 4)
    """
    if not is_resnet_state(state_dict):
        raise CheckpointKeyError(
            "not a ResNet state dict: no 'conv1.weight' among its keys "
            f"({', '.join(sorted(state_dict)[:6])})."
        )
    layers = []
    for i in range(1, 9):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        if not blocks:
            break
        layers.append(max(blocks) + 1)
    if not layers:
        raise CheckpointKeyError("the ResNet state dict has no residual stages ('layer1.*').")
    bottleneck = "layer1.0.conv3.weight" in state_dict
    widths, expansions = [], set()
    for i in range(1, len(layers) + 1):
        inner = int(state_dict[f"layer{i}.0.conv1.weight"].shape[0])
        last = f"layer{i}.0.conv3.weight" if bottleneck else f"layer{i}.0.conv2.weight"
        out = int(state_dict[last].shape[0])
        if out % inner:
            raise ValueError(f"stage {i} of the ResNet maps {inner} to {out} channels: "
                             "not a torchvision block layout.")
        widths.append(inner)
        expansions.add(out // inner)
    if len(expansions) != 1:
        raise ValueError(f"the ResNet's stages expand by different factors {sorted(expansions)}.")
    return dict(
        block="bottleneck" if bottleneck else "basic",
        layers=tuple(layers),
        width_per_group=64,
        expansion=expansions.pop(),
        stem_width=int(state_dict["conv1.weight"].shape[0]),
        stage_widths=tuple(widths),
    )
