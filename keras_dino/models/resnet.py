"""torchvision's ResNet as DINO uses it (`fc` removed), channels-last, any input size."""

import keras
from keras import ops

from keras_dino.layers.batch_norm import BatchNorm
from keras_dino.models.image_inputs import check_images, check_rgb_images

# torchvision's architectures (`main_dino.py --arch` takes any of them): block, layers,
# width_per_group.
RESNETS = {
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
    "wide_resnet50_2": dict(block="bottleneck", layers=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block="bottleneck", layers=(3, 4, 23, 3), width_per_group=128),
}


def _conv(filters, kernel, stride, name):
    # torchvision: bias-free, kaiming_normal_(mode="fan_out", nonlinearity="relu").
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="valid", use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        name=name,
    )


def _pad(x, amount):
    """Zero padding on both sides of H and W, as torch's `padding=amount`."""
    if not amount:
        return x
    return ops.pad(x, [(0, 0), (amount, amount), (amount, amount), (0, 0)])


class _ConvBN(keras.layers.Layer):
    """conv (torch padding `kernel // 2`) then BatchNorm: torchvision's conv/bn pairs."""

    def __init__(self, filters, kernel, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel, self.stride = filters, kernel, stride
        self.conv = _conv(filters, kernel, stride, name="conv")
        self.bn = BatchNorm(name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, x, training=None):
        return self.bn(self.conv(_pad(x, self.kernel // 2)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)


@keras.saving.register_keras_serializable(package="keras_dino")
class ResidualBlock(keras.layers.Layer):
    """torchvision's `BasicBlock` (two 3x3 convs) or `Bottleneck` (1x1, 3x3, 1x1).

    The bottleneck is torchvision's "v1.5": the stride sits on the 3x3 convolution. A
    1x1 convolution with BatchNorm projects the shortcut when the stride or the width
    changes (`downsample`).

    Args:
        planes: the stage's width (64, 128, 256, 512 in torchvision).
        stride: 2 in the first block of stages 2-4.
        bottleneck: `Bottleneck` instead of `BasicBlock`.
        width_per_group: bottleneck inner width per 64 planes (64; 128 for wide ResNets).
        expansion: output width over `planes` (4 for bottlenecks, 1 for basic blocks).

    Example:

    >>> import numpy as np
    >>> block = ResidualBlock(planes=8, stride=2, bottleneck=True, expansion=4)
    >>> tuple(block(np.zeros((1, 9, 9, 16), "float32")).shape)
    (1, 5, 5, 32)
    """

    def __init__(self, planes, stride=1, bottleneck=False, width_per_group=64, expansion=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.planes, self.stride, self.bottleneck = planes, stride, bottleneck
        self.width_per_group = width_per_group
        self.expansion = expansion if expansion is not None else (4 if bottleneck else 1)
        self.out_channels = planes * self.expansion
        if bottleneck:
            width = int(planes * (width_per_group / 64.0))
            self.convs = [
                _ConvBN(width, 1, name="cb1"),
                _ConvBN(width, 3, stride, name="cb2"),
                _ConvBN(self.out_channels, 1, name="cb3"),
            ]
        else:
            self.convs = [
                _ConvBN(planes, 3, stride, name="cb1"),
                _ConvBN(self.out_channels, 3, name="cb2"),
            ]
        self.downsample = None

    def build(self, input_shape):
        shape = input_shape
        for layer in self.convs:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.stride != 1 or input_shape[-1] != self.out_channels:
            self.downsample = _ConvBN(self.out_channels, 1, self.stride, name="downsample")
            self.downsample.build(input_shape)

    def call(self, x, training=None):
        y = x
        for i, layer in enumerate(self.convs):
            y = layer(y, training=training)
            if i < len(self.convs) - 1:
                y = ops.relu(y)
        shortcut = x if self.downsample is None else self.downsample(x, training=training)
        return ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if h is not None:
            h, w = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        return (n, h, w, self.out_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "planes": self.planes,
            "stride": self.stride,
            "bottleneck": self.bottleneck,
            "width_per_group": self.width_per_group,
            "expansion": self.expansion,
        }


@keras.saving.register_keras_serializable(package="keras_dino")
class ResNet(keras.Model):
    """torchvision's ResNet without its classifier: NHWC images to pooled features.

    The layout of `torchvision.models.ResNet` (which `main_dino.py --arch resnet50`
    builds, with `fc` replaced by an identity): a 7x7 stride-2 convolution, BatchNorm,
    ReLU and a 3x3 stride-2 max pool, four stages of residual blocks, and a global
    average pool. Every BatchNorm is `keras_dino.layers.BatchNorm` (PyTorch semantics,
    eps 1e-5, synchronised across replicas as the official `SyncBatchNorm`). Any input
    size works (each stride-2 layer gives `floor((n - 1) / 2) + 1`, as torch).

    Args:
        block: `"basic"` (ResNet-18/34) or `"bottleneck"` (ResNet-50 and deeper).
        layers: blocks per stage.
        width_per_group: bottleneck inner width per 64 planes (128: wide ResNets).
        expansion: output width of a block over its planes; default 4 for bottlenecks,
            1 for basic blocks.
        stem_width: channels of the stem (64 in torchvision).
        stage_widths: the planes of the four stages (64, 128, 256, 512 in torchvision);
            narrower values make small ResNets for small images.

    The feature width is `stage_widths[-1] * expansion` (2048 for ResNet-50), available
    as `embed_dim` (the name DINO's head uses for every backbone).

    Example:

    >>> import numpy as np
    >>> model = ResNet("basic", layers=(1, 1, 1, 1), stem_width=8, stage_widths=(8, 8, 16, 16))
    >>> tuple(model(np.zeros((2, 33, 47, 3), "float32")).shape)
    (2, 16)
    >>> tuple(model.forward_features(np.zeros((1, 64, 64, 3), "float32"))["layer4"].shape)
    (1, 2, 2, 16)
    """

    def __init__(self, block="bottleneck", layers=(3, 4, 6, 3), width_per_group=64,
                 expansion=None, stem_width=64, stage_widths=(64, 128, 256, 512), **kwargs):
        super().__init__(**kwargs)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck'; got {block!r}")
        if len(layers) != len(stage_widths):
            raise ValueError(
                f"layers {tuple(layers)} and stage_widths {tuple(stage_widths)} must have the "
                "same length (one entry per stage)."
            )
        self.block = block
        self.layers_per_stage = tuple(int(n) for n in layers)
        self.width_per_group = width_per_group
        self.expansion = expansion if expansion is not None else (4 if block == "bottleneck" else 1)
        self.stem_width = stem_width
        self.stage_widths = tuple(int(w) for w in stage_widths)
        self.embed_dim = self.stage_widths[-1] * self.expansion
        self.conv1 = _conv(stem_width, 7, 2, name="conv1")
        self.bn1 = BatchNorm(name="bn1")
        self.stages = []
        for i, (count, planes) in enumerate(zip(self.layers_per_stage, self.stage_widths)):
            self.stages.append([
                ResidualBlock(
                    planes, stride=2 if (j == 0 and i > 0) else 1,
                    bottleneck=block == "bottleneck", width_per_group=width_per_group,
                    expansion=self.expansion, name=f"layer{i + 1}_{j}",
                )
                for j in range(count)
            ])

    def build(self, input_shape=None):
        if self.built:
            return
        check_rgb_images(input_shape)
        shape = (None, None, None, 3)
        self.conv1.build(shape)
        shape = (None, None, None, self.stem_width)
        self.bn1.build(shape)
        for stage in self.stages:
            for block in stage:
                block.build(shape)
                shape = block.compute_output_shape(shape)
        self.built = True

    def forward_features(self, images, training=None) -> dict:
        """The feature maps of the stem (after the max pool) and of each stage, NHWC.

        Keys: `stem`, `layer1` ... `layer4` (torchvision's module names).

        Example:

        >>> import numpy as np
        >>> model = resnet("resnet18")
        >>> maps = model.forward_features(np.zeros((1, 64, 64, 3), "float32"))
        >>> {name: tuple(maps[name].shape) for name in ("stem", "layer4")}
        {'stem': (1, 16, 16, 64), 'layer4': (1, 2, 2, 512)}
        """
        check_images(images)
        if not self.built:
            self.build(tuple(images.shape))
        x = self.conv1(_pad(images, 3))
        x = ops.relu(self.bn1(x, training=training))
        # Max pool 3x3/2, padding 1: the input is >= 0 after the ReLU, so zero padding
        # gives the same maxima as torch's -inf padding.
        x = ops.max_pool(_pad(x, 1), pool_size=3, strides=2, padding="valid")
        outputs = {"stem": x}
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, training=training)
            outputs[f"layer{i + 1}"] = x
        return outputs

    def __call__(self, *args, **kwargs):
        # Checked before Keras wraps errors of `call` in its own report; the values of
        # NumPy pixels only (before Keras turns them into tensors: no device sync).
        if args:
            check_images(args[0])
        return super().__call__(*args, **kwargs)

    def call(self, images, training=None):
        x = self.forward_features(images, training=training)[f"layer{len(self.stages)}"]
        return ops.mean(x, axis=(1, 2))

    def compute_output_spec(self, images, training=None):
        return keras.KerasTensor((images.shape[0], self.embed_dim), dtype=self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "block": self.block,
            "layers": list(self.layers_per_stage),
            "width_per_group": self.width_per_group,
            "expansion": self.expansion,
            "stem_width": self.stem_width,
            "stage_widths": list(self.stage_widths),
        }


def resnet(arch: str = "resnet50", **kwargs) -> ResNet:
    """A torchvision ResNet by its name (`resnet18`, `resnet50`, `wide_resnet50_2`, ...).

    Example:

    >>> resnet("resnet50").embed_dim
    2048
    """
    if arch not in RESNETS:
        raise ValueError(f"unknown ResNet '{arch}'; known: {', '.join(RESNETS)}.")
    return ResNet(**{**RESNETS[arch], **kwargs})


def resnet_name(model: ResNet) -> str:
    """The torchvision name of a ResNet's architecture, or `"custom"`.

    Example:

    >>> resnet_name(resnet("wide_resnet50_2")), resnet_name(ResNet("basic", (1, 1, 1, 1)))
    ('wide_resnet50_2', 'custom')
    """
    ours = model.get_config()
    keys = ("block", "layers", "width_per_group", "expansion", "stem_width", "stage_widths")
    for name, recipe in RESNETS.items():
        expected = {
            "width_per_group": 64, "expansion": 4 if recipe["block"] == "bottleneck" else 1,
            "stem_width": 64, "stage_widths": [64, 128, 256, 512], **recipe,
        }
        expected["layers"] = list(expected["layers"])
        if all(ours[k] == expected[k] for k in keys):
            return name
    return "custom"
