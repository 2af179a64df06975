"""Official (PyTorch) tensor names of every keras_dino network's variables.

Each network maps the names its official twin uses in a `state_dict` to its own Keras
variables, with the layout change between them (`kind`):

* `"same"`: identical layout;
* `"linear"`: `nn.Linear` weight `(out, in)`, a Dense kernel `(in, out)`;
* `"conv"`: `nn.Conv2d` weight `(out, in, kh, kw)`, a Conv2D kernel `(kh, kw, in, out)`;
* `"depthwise"`: depthwise `nn.Conv2d` weight `(C, 1, kh, kw)`, a DepthwiseConv2D
  kernel `(kh, kw, C, 1)`;
* `"gain"`: weight-norm gain `(out, 1)`, here `(out,)`;
* `"buffer"`: a BatchNorm running statistic (identical layout; not a parameter, so the
  optimizer and the teacher EMA leave it alone).

The maps belong to the models; `keras_dino.checkpoints` converts tensors with them.
"""

import dataclasses

import keras

from keras_dino.layers.batch_norm import BatchNorm

# Kinds that are parameters of the official model (everything but buffers).
PARAMETER_KINDS = ("same", "linear", "conv", "depthwise", "gain")


def _dense(prefix, layer, kind="linear"):
    entries = {f"{prefix}.weight": (layer.kernel, kind)}
    if layer.use_bias:
        entries[f"{prefix}.bias"] = (layer.bias, "same")
    return entries


def _layer_norm(prefix, layer):
    return {f"{prefix}.weight": (layer.gamma, "same"), f"{prefix}.bias": (layer.beta, "same")}


def _batch_norm(prefix, layer):
    return {
        f"{prefix}.weight": (layer.gamma, "same"),
        f"{prefix}.bias": (layer.beta, "same"),
        f"{prefix}.running_mean": (layer.moving_mean, "buffer"),
        f"{prefix}.running_var": (layer.moving_variance, "buffer"),
    }


def vision_transformer_map(backbone) -> dict:
    """`{official name: (variable, kind)}` of a `VisionTransformer`.

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> sorted(vision_transformer_map(vit_tiny(16, depth=1)))[:3]
    ['blocks.0.attn.proj.bias', 'blocks.0.attn.proj.weight', 'blocks.0.attn.qkv.bias']
    """
    backbone.build((None, None, None, 3))
    entries = {
        "cls_token": (backbone.cls_token, "same"),
        "pos_embed": (backbone.pos_embed, "same"),
    }
    if backbone.num_register_tokens:  # DINOv2's name
        entries["register_tokens"] = (backbone.register_tokens, "same")
    proj = backbone.patch_embed.proj
    entries["patch_embed.proj.weight"] = (proj.kernel, "conv")
    entries["patch_embed.proj.bias"] = (proj.bias, "same")
    for i, block in enumerate(backbone.blocks):
        p = f"blocks.{i}"
        entries.update(_layer_norm(f"{p}.norm1", block.norm1))
        entries.update(_dense(f"{p}.attn.qkv", block.attn.qkv))
        entries.update(_dense(f"{p}.attn.proj", block.attn.proj))
        entries.update(_layer_norm(f"{p}.norm2", block.norm2))
        entries.update(_dense(f"{p}.mlp.fc1", block.mlp.fc1))
        entries.update(_dense(f"{p}.mlp.fc2", block.mlp.fc2))
    entries.update(_layer_norm("norm", backbone.norm))
    return entries


def resnet_map(backbone) -> dict:
    """`{official name: (variable, kind)}` of a `ResNet` (torchvision's names, no `fc`).

    Example:

    >>> from keras_dino.models.resnet import resnet
    >>> names = resnet_map(resnet("resnet50"))
    >>> names["layer1.0.downsample.0.weight"][1], len(names)  # no fc, no num_batches_tracked
    ('conv', 265)
    """
    backbone.build((None, None, None, 3))
    entries = {"conv1.weight": (backbone.conv1.kernel, "conv")}
    entries.update(_batch_norm("bn1", backbone.bn1))
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage):
            p = f"layer{i + 1}.{j}"
            for k, conv_bn in enumerate(block.convs):
                entries[f"{p}.conv{k + 1}.weight"] = (conv_bn.conv.kernel, "conv")
                entries.update(_batch_norm(f"{p}.bn{k + 1}", conv_bn.bn))
            if block.downsample is not None:
                entries[f"{p}.downsample.0.weight"] = (block.downsample.conv.kernel, "conv")
                entries.update(_batch_norm(f"{p}.downsample.1", block.downsample.bn))
    return entries


def xcit_map(backbone) -> dict:
    """`{official name: (variable, kind)}` of an `XCiT` (xcit.py's names, no `head`).

    Example:

    >>> from keras_dino.models.xcit import XCiT
    >>> names = xcit_map(XCiT(patch_size=8, embed_dim=32, depth=1, num_heads=4))
    >>> names["blocks.0.local_mp.conv1.weight"][1], names["patch_embed.proj.4.0.weight"][1]
    ('depthwise', 'conv')
    """
    backbone.build((None, None, None, 3))
    entries = {"cls_token": (backbone.cls_token, "same")}
    embed = backbone.patch_embed
    for i, (conv, norm) in enumerate(zip(embed.convs, embed.norms)):
        entries[f"patch_embed.proj.{2 * i}.0.weight"] = (conv.kernel, "conv")
        entries.update(_batch_norm(f"patch_embed.proj.{2 * i}.1", norm))
    projection = backbone.pos_embeder.token_projection
    entries["pos_embeder.token_projection.weight"] = (projection.kernel, "conv")
    entries["pos_embeder.token_projection.bias"] = (projection.bias, "same")

    def common(p, block):
        for name in block.GAMMAS:
            entries[f"{p}.{name}"] = (getattr(block, name), "same")
        entries.update(_layer_norm(f"{p}.norm1", block.norm1))
        entries.update(_layer_norm(f"{p}.norm2", block.norm2))
        entries.update(_dense(f"{p}.attn.qkv", block.attn.qkv))
        entries.update(_dense(f"{p}.attn.proj", block.attn.proj))
        entries.update(_dense(f"{p}.mlp.fc1", block.mlp.fc1))
        entries.update(_dense(f"{p}.mlp.fc2", block.mlp.fc2))

    for i, block in enumerate(backbone.blocks):
        p = f"blocks.{i}"
        common(p, block)
        entries[f"{p}.attn.temperature"] = (block.attn.temperature, "same")
        entries.update(_layer_norm(f"{p}.norm3", block.norm3))
        lpi = block.local_mp
        for conv in ("conv1", "conv2"):
            layer = getattr(lpi, conv)
            entries[f"{p}.local_mp.{conv}.weight"] = (layer.kernel, "depthwise")
            entries[f"{p}.local_mp.{conv}.bias"] = (layer.bias, "same")
        entries.update(_batch_norm(f"{p}.local_mp.bn", lpi.bn))
    for j, block in enumerate(backbone.cls_attn_blocks):
        common(f"cls_attn_blocks.{j}", block)
    entries.update(_layer_norm("norm", backbone.norm))
    return entries


def backbone_variable_map(backbone) -> dict:
    """The official-name map of any keras_dino backbone (ViT or ResNet).

    Example:

    >>> from keras_dino.models import vit_tiny
    >>> names = backbone_variable_map(vit_tiny(16, depth=1))
    >>> names["cls_token"][1], names["blocks.0.attn.qkv.weight"][1]
    ('same', 'linear')
    """
    from keras_dino.models.resnet import ResNet
    from keras_dino.models.vision_transformer import VisionTransformer
    from keras_dino.models.xcit import XCiT

    if isinstance(backbone, VisionTransformer):
        return vision_transformer_map(backbone)
    if isinstance(backbone, ResNet):
        return resnet_map(backbone)
    if isinstance(backbone, XCiT):
        return xcit_map(backbone)
    raise TypeError(f"no official names for a {type(backbone).__name__} backbone.")


def head_variable_map(head) -> dict:
    """`{official name: (variable, kind)}` of a `DINOHead`.

    Example:

    >>> from keras_dino.models import DINOHead
    >>> head = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=16, in_dim=192)
    >>> sorted(head_variable_map(head))[:3]
    ['last_layer.weight_g', 'last_layer.weight_v', 'mlp.0.bias']
    """
    if not head.built:
        raise ValueError("build the DINOHead (or give it in_dim) before mapping its weights.")
    entries = {}
    if head.nlayers == 1:  # the official head then holds a bare nn.Linear as `mlp`.
        entries.update(_dense("mlp", head.mlp[0]))
    for i, layer in enumerate(head.mlp if head.nlayers > 1 else []):
        if isinstance(layer, keras.layers.Dense):
            entries.update(_dense(f"mlp.{i}", layer))
        elif isinstance(layer, BatchNorm):
            entries.update(_batch_norm(f"mlp.{i}", layer))
    entries["last_layer.weight_g"] = (head.last_layer.kernel_g, "gain")
    entries["last_layer.weight_v"] = (head.last_layer.kernel_v, "linear")
    return entries


def multicrop_variable_map(wrapper) -> dict:
    """`backbone.*` and `head.*` names of a `MultiCropWrapper`, as the official state dict.

    Example:

    >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
    >>> wrapper = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(out_dim=64, in_dim=192))
    >>> names = multicrop_variable_map(wrapper)
    >>> "backbone.pos_embed" in names, "head.last_layer.weight_g" in names
    (True, True)
    """
    entries = {f"backbone.{k}": v for k, v in backbone_variable_map(wrapper.backbone).items()}
    entries.update({f"head.{k}": v for k, v in head_variable_map(wrapper.head).items()})
    return entries


def backbone_depth(backbone) -> int:
    """`L`, the number of layers that `freeze_blocks` and `layer_decay` count.

    A Vision Transformer's blocks; an XCiT's blocks and class-attention blocks; a
    ResNet's stages (each a group of residual blocks). Layer 0, below them, is the
    embedding: the patch embedding, the class token, the position embedding and the
    register tokens of a transformer, the stem (first convolution and its BatchNorm)
    of a ResNet.

    >>> from keras_dino.models import vit_tiny
    >>> backbone_depth(vit_tiny(16, depth=3))
    3
    """
    from keras_dino.models.resnet import ResNet
    from keras_dino.models.xcit import XCiT

    if isinstance(backbone, ResNet):
        return len(backbone.stages)
    if isinstance(backbone, XCiT):
        return len(backbone.blocks) + len(backbone.cls_attn_blocks)
    return len(backbone.blocks)


_EMBEDDING_NAMES = ("cls_token", "pos_embed", "register_tokens", "patch_embed.",
                    "pos_embeder.", "conv1.", "bn1.")


def layer_of(name: str, depth: int, num_blocks: int | None = None) -> int:
    """The layer (0 .. `depth + 1`) of the official parameter `name` of a `MultiCropWrapper`.

    0: the embedding (see `backbone_depth`); `i` (1-based): the `i`-th block of a
    transformer (`blocks.{i-1}`; an XCiT's `num_blocks` blocks, then its
    `cls_attn_blocks`) or the `i`-th stage of a ResNet (`layer{i}`); `depth + 1`:
    everything above the blocks (the last norm, the head).

    >>> layer_of("backbone.pos_embed", 12), layer_of("backbone.blocks.0.attn.qkv.weight", 12)
    (0, 1)
    >>> layer_of("backbone.layer2.0.conv1.weight", 4), layer_of("head.mlp.0.weight", 12)
    (2, 13)
    >>> layer_of("backbone.cls_attn_blocks.1.norm1.weight", 14, num_blocks=12)
    14
    """
    if not name.startswith("backbone."):
        return depth + 1
    name = name[len("backbone."):]
    if name.startswith(_EMBEDDING_NAMES):
        return 0
    part = name.split(".")
    if part[0] == "blocks":
        return int(part[1]) + 1
    if part[0] == "cls_attn_blocks":
        return (depth if num_blocks is None else num_blocks) + int(part[1]) + 1
    if part[0].startswith("layer") and part[0][5:].isdigit():
        return int(part[0][5:])
    return depth + 1


def check_guards(freeze_blocks, layer_decay, depth=None, backbone_kind="network"):
    """`(freeze_blocks, layer_decay)` checked (against `depth`, when known), or a `ValueError`.

    >>> check_guards(2, 0.75, depth=12)
    (2, 0.75)
    """
    if isinstance(freeze_blocks, bool) or int(freeze_blocks) != freeze_blocks or freeze_blocks < 0:
        raise ValueError(f"freeze_blocks must be a whole number >= 0; got {freeze_blocks!r}.")
    if not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(
            f"layer_decay must be in (0, 1] (1: every layer at the base learning rate); "
            f"got {layer_decay!r}."
        )
    if depth is not None and freeze_blocks > depth:
        unit = "stages" if backbone_kind == "ResNet" else "blocks"
        raise ValueError(
            f"freeze_blocks={freeze_blocks}, but this {backbone_kind} has {depth} {unit}: "
            f"freeze_blocks counts the embedding (the stem of a ResNet) plus its first N "
            f"{unit}, so it can be at most {depth}."
        )
    return int(freeze_blocks), float(layer_decay)


@dataclasses.dataclass(frozen=True)
class ParameterGroups:
    """The official optimizer's view of a network's parameters, by official name.

    As the official `utils.get_params_groups`: parameters whose name ends in `.bias` or
    that are 1-D (in the official layout) are not regularized, every other one is (so
    `cls_token` and `pos_embed` are decayed); the optimizer's parameter indices run over
    `regularized` then `not_regularized`, each in `named_parameters` order. `last_layer`
    is what `freeze_last_layer` freezes; `averaged` is what the teacher follows by EMA
    (every parameter, no BatchNorm statistics). `variables` maps each name to its
    Keras variable.

    Beyond the official groups, the guards for continuing from trained weights
    (`parameter_groups(..., freeze_blocks=N, layer_decay=r)`), by layer (`layer_of`: 0
    the embedding, 1 .. `depth` the blocks or ResNet stages, `depth + 1` the last norm
    and the head): `frozen` holds the parameters of layers 0 .. N (none for N = 0), which
    the optimizer neither updates nor decays and the teacher does not average; a
    parameter of layer `i` learns at `lr_scales[name] = r ** (depth + 1 - i)` times the
    learning rate (`r ** (depth + 1)` for the embedding, `r` for the last block, 1 for the
    last norm and the head: BEiT's and DINOv2's rule).

    Example:

    >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
    >>> wrapper = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(out_dim=64, in_dim=192))
    >>> groups = parameter_groups(wrapper)
    >>> "backbone.pos_embed" in groups.regularized, "backbone.norm.weight" in groups.regularized
    (True, False)
    >>> groups.last_layer
    ('head.last_layer.weight_g', 'head.last_layer.weight_v')
    """

    regularized: tuple
    not_regularized: tuple
    last_layer: tuple
    averaged: tuple
    variables: dict
    ranks: dict  # official rank of each parameter (weight_g is (out, 1) there)
    depth: int = 0  # `L` of `backbone_depth`
    layers: dict = dataclasses.field(default_factory=dict)  # parameter -> layer (`layer_of`)
    frozen: tuple = ()  # parameters that `freeze_blocks` keeps fixed
    lr_scales: dict = dataclasses.field(default_factory=dict)  # parameter -> lr multiplier
    _names: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._names.update({id(v): n for n, v in self.variables.items()})

    def official_order(self) -> list:
        """Names in the official optimizer's index order (`optimizer.state` keys).

        >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
        >>> net = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(out_dim=64, in_dim=192))
        >>> order = parameter_groups(net).official_order()
        >>> order[0], order.index("backbone.patch_embed.proj.bias") > order.index("head.last_layer.weight_v")
        ('backbone.cls_token', True)
        """
        return list(self.regularized + self.not_regularized)

    def name_of(self, variable):
        """The official name of a Keras variable of this network, or None.

        >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
        >>> net = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(out_dim=64, in_dim=192))
        >>> parameter_groups(net).name_of(net.backbone.cls_token)
        'backbone.cls_token'
        """
        return self._names.get(id(variable))


def parameter_groups(
    wrapper, trainable_variables=None, freeze_blocks: int = 0, layer_decay: float = 1.0
) -> ParameterGroups:
    """`ParameterGroups` of a `MultiCropWrapper` (see there).

    `trainable_variables` (default: the wrapper's) limits the optimizer groups to what
    the optimizer trains, as the official `requires_grad` does (a normalised last
    layer's `weight_g` is not trained). `freeze_blocks` and `layer_decay` set `frozen`
    and `lr_scales` (checked by `check_guards`).

    >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
    >>> net = MultiCropWrapper(vit_tiny(16, depth=2), DINOHead(out_dim=64, in_dim=192))
    >>> groups = parameter_groups(net, freeze_blocks=1, layer_decay=0.5)
    >>> "backbone.pos_embed" in groups.frozen, "backbone.blocks.1.norm1.weight" in groups.frozen
    (True, False)
    >>> groups.lr_scales["backbone.patch_embed.proj.weight"], groups.lr_scales["head.mlp.0.weight"]
    (0.125, 1.0)
    >>> groups.lr_scales["backbone.blocks.1.norm1.weight"]  # the last block: r
    0.5

    >>> from keras_dino.models import DINOHead, MultiCropWrapper, vit_tiny
    >>> net = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(out_dim=64, in_dim=192))
    >>> groups = parameter_groups(net)
    >>> "head.last_layer.weight_g" in groups.averaged  # the teacher follows it
    True
    >>> "head.last_layer.weight_g" in groups.official_order()  # normalised: not trained
    False
    """
    entries = multicrop_variable_map(wrapper)
    if trainable_variables is None:
        trainable_variables = wrapper.trainable_variables
    trainable = {id(v) for v in trainable_variables}
    regularized, not_regularized = [], []
    ranks = {
        name: 2 if kind == "gain" else len(variable.shape)  # weight_g is (out, 1) there
        for name, (variable, kind) in entries.items()
        if kind in PARAMETER_KINDS
    }
    for name, (variable, kind) in entries.items():
        if kind not in PARAMETER_KINDS or id(variable) not in trainable:
            continue
        if name.endswith(".bias") or ranks[name] == 1:
            not_regularized.append(name)
        else:
            regularized.append(name)
    backbone = wrapper.backbone
    depth = backbone_depth(backbone)
    freeze_blocks, layer_decay = check_guards(
        freeze_blocks, layer_decay, depth, type(backbone).__name__
    )
    num_blocks = len(backbone.blocks) if hasattr(backbone, "blocks") else None
    layers = {name: layer_of(name, depth, num_blocks) for name in ranks}
    return ParameterGroups(
        depth=depth,
        layers=layers,
        frozen=tuple(n for n, i in layers.items() if freeze_blocks and i <= freeze_blocks),
        lr_scales={n: layer_decay ** max(depth + 1 - i, 0) for n, i in layers.items()},
        regularized=tuple(regularized),
        not_regularized=tuple(not_regularized),
        last_layer=tuple(n for n in entries if n.startswith("head.last_layer.")),
        averaged=tuple(n for n, (_, kind) in entries.items() if kind in PARAMETER_KINDS),
        variables={n: v for n, (v, _) in entries.items()},
        ranks=ranks,
    )
