"""The released DINO weights as data: one `Preset` per file the official repository published.

Each preset carries what a user needs to pick one and to use it: the architecture and its
constructor arguments, the download URLs, the parameter count and file size, the
evaluation view its reported numbers were measured with, and the ImageNet top-1 of the
official k-NN and linear evaluations, as facebookresearch/dino reports them.

`keras_dino.load_pretrained(name)` downloads and loads a preset; this module only
describes them (it imports nothing above `keras_dino.models`).

Example:

>>> from keras_dino.models.presets import get_preset, list_presets
>>> [p.name for p in list_presets()][:3]
['dino_vits16', 'dino_vits8', 'dino_vitb16']
>>> preset = get_preset("dino_vitb8")
>>> preset.arch, preset.patch_size, preset.params, preset.knn_top1, preset.linear_top1
('vit_base', 8, 85807872, 77.4, 80.1)
>>> preset.url("linear")
'https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_linearweights.pth'
"""

from __future__ import annotations

import dataclasses

from keras_dino.errors import UnknownPresetError, did_you_mean
from keras_dino.models.backbones import backbone_config
from keras_dino.preprocessing import EvalConfig

BASE_URL = "https://dl.fbaipublicfiles.com/dino"
SOURCE = "https://github.com/facebookresearch/dino"
# The official repository (code and the weights it links) is released under Apache 2.0
# ("This repository is released under the Apache 2.0 license", its README and LICENSE).
LICENSE = "Apache-2.0"
# The files a preset can have: `<stem>.pth` (the backbone), `<stem>_full_checkpoint.pth`
# (student and teacher with their DINO heads), `<stem without _pretrain>_linearweights.pth`
# (the ImageNet linear classifier of `eval_linear.py`).
FILES = {
    "backbone": "{stem}.pth",
    "full_checkpoint": "{stem}_full_checkpoint.pth",
    "linear": "{short}_linearweights.pth",
}
_ALL_FILES = tuple(FILES)


@dataclasses.dataclass(frozen=True)
class Preset:
    """One released set of DINO weights.

    Attributes:
        name: the preset name `load_pretrained` takes (`dino_vits16`).
        title: the official table's name of the model (`ViT-S/16`).
        family: `vit`, `resnet` or `xcit`.
        arch: the official `--arch` (`vit_small`, `resnet50`, `xcit_small_12_p16`).
        patch_size: the patch size (None for the ResNet).
        stem: the official file stem; the files are under `<BASE_URL>/<stem>/`.
        params: trainable parameters of the backbone (no head).
        file_size_mb: the backbone file's tensors in MB (10^6 bytes, float32; the `.pth`
            adds under 0.5 MB of pickle and zip headers).
        knn_top1, linear_top1: ImageNet top-1 (%) of the official 20-NN and linear
            evaluations as the official repository reports them (None: not evaluated).
        description: one line on when to pick it.
        files: the released files (`backbone`, `full_checkpoint`, `linear`).
        eval_size, eval_resize_size: the evaluation view (`EvalConfig`): the shorter
            side resized to `eval_resize_size` (bicubic), centre crop `eval_size`.
        license: the weights' licence (SPDX).

    Example:

    >>> preset = get_preset("dino_resnet50")
    >>> preset.title, preset.patch_size, preset.files
    ('ResNet-50', None, ('backbone', 'full_checkpoint', 'linear'))
    """

    name: str
    title: str
    family: str
    arch: str
    patch_size: int | None
    stem: str
    params: int
    file_size_mb: float
    knn_top1: float | None
    linear_top1: float | None
    description: str
    files: tuple[str, ...] = _ALL_FILES
    eval_size: int = 224
    eval_resize_size: int = 256
    license: str = LICENSE

    @property
    def config(self) -> dict:
        """The backbone's constructor arguments (a fresh dict).

        Example:

        >>> get_preset("dino_xcit_small_12_p8").config["embed_dim"]
        384
        """
        return backbone_config(self.arch, self.patch_size or 16)[1]

    @property
    def file_name(self) -> str:
        """The backbone file's name (`dino_deitsmall16_pretrain.pth`)."""
        return self.url("backbone").rsplit("/", 1)[1]

    def url(self, file: str = "backbone") -> str:
        """The official URL of `file` (`backbone`, `full_checkpoint` or `linear`).

        Example:

        >>> get_preset("dino_resnet50").url("full_checkpoint").rsplit("/", 1)[1]
        'dino_resnet50_pretrain_full_checkpoint.pth'
        """
        if file not in FILES:
            raise ValueError(f"unknown preset file '{file}'; known: {', '.join(FILES)}.")
        if file not in self.files:
            raise ValueError(f"'{self.name}' has no released {file} file; it has "
                             f"{', '.join(self.files)}.")
        short = self.stem[: -len("_pretrain")]
        return f"{BASE_URL}/{self.stem}/{FILES[file].format(stem=self.stem, short=short)}"

    def eval_config(self) -> EvalConfig:
        """The evaluation view of the reported numbers (`keras_dino.preprocessing.EvalConfig`).

        Example:

        >>> get_preset("dino_vits16").eval_config().to_dict()["resize_size"]
        256
        """
        return EvalConfig(self.eval_size, self.eval_resize_size)

    def build(self, **overrides):
        """The backbone with random weights (`load_pretrained` loads the released ones).

        Example:

        >>> type(get_preset("dino_vits16").build(depth=1)).__name__
        'VisionTransformer'
        """
        cls, config = backbone_config(self.arch, self.patch_size or 16)
        config.update(overrides)
        return cls(**config)

    def to_dict(self) -> dict:
        """The preset as JSON-ready values, with its URLs, config and evaluation view.

        Example:

        >>> sorted(get_preset("dino_vits8").to_dict()["urls"])
        ['backbone', 'full_checkpoint', 'linear']
        """
        out = dataclasses.asdict(self)
        out["files"] = list(self.files)
        out["config"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in self.config.items()}
        out["urls"] = {file: self.url(file) for file in self.files}
        out["eval_config"] = self.eval_config().to_dict()
        return out


_VIT = "vit"
_XCIT = "xcit"
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("dino_vits16", "ViT-S/16", _VIT, "vit_small", 16, "dino_deitsmall16_pretrain",
       21_665_664, 86.7, 74.5, 77.0,
       "384-d features, 196 patches at 224: the usual starting point."),
    Preset("dino_vits8", "ViT-S/8", _VIT, "vit_small", 8, "dino_deitsmall8_pretrain",
       21_670_272, 86.7, 78.3, 79.7,
       "ViT-S on 8-pixel patches (4x the tokens): the best k-NN accuracy, fine attention maps."),
    Preset("dino_vitb16", "ViT-B/16", _VIT, "vit_base", 16, "dino_vitbase16_pretrain",
       85_798_656, 343.2, 76.1, 78.2,
       "ViT-B on 16-pixel patches, 768-d features."),
    Preset("dino_vitb8", "ViT-B/8", _VIT, "vit_base", 8, "dino_vitbase8_pretrain",
       85_807_872, 343.2, 77.4, 80.1,
       "The best ViT linear accuracy; the most compute per image."),
    Preset("dino_resnet50", "ResNet-50", "resnet", "resnet50", None, "dino_resnet50_pretrain",
       23_508_032, 94.2, 67.5, 75.3,
       "torchvision's ResNet-50, 2048-d pooled features; a convolutional baseline."),
    Preset("dino_vits16_googlelandmark", "ViT-S/16 (GLDv2)", _VIT, "vit_small", 16,
       "dino_vitsmall16_googlelandmark_pretrain", 21_665_664, 86.7, None, None,
       "ViT-S/16 trained on Google Landmarks v2: the official image-retrieval weights.",
       files=("backbone",)),
    Preset("dino_xcit_small_12_p16", "XCiT-S12/16", _XCIT, "xcit_small_12_p16", 16,
       "dino_xcit_small_12_p16_pretrain", 25_868_304, 103.5, 76.0, 77.8,
       "Cross-covariance attention, cost linear in the number of patches."),
    Preset("dino_xcit_small_12_p8", "XCiT-S12/8", _XCIT, "xcit_small_12_p8", 8,
       "dino_xcit_small_12_p8_pretrain", 25_828_032, 103.4, 77.1, 79.2,
       "XCiT-S12 at patch 8: dense features at high resolution."),
    Preset("dino_xcit_medium_24_p16", "XCiT-M24/16", _XCIT, "xcit_medium_24_p16", 16,
       "dino_xcit_medium_24_p16_pretrain", 83_882_752, 335.6, 76.4, 78.8,
       "The ViT-B-sized XCiT at patch 16."),
    Preset("dino_xcit_medium_24_p8", "XCiT-M24/8", _XCIT, "xcit_medium_24_p8", 8,
       "dino_xcit_medium_24_p8_pretrain", 83_810_624, 335.3, 77.9, 80.3,
       "The best linear accuracy of the released DINO models."),
)}


def list_presets() -> list[Preset]:
    """The released DINO weights, in the order of the official tables.

    Example:

    >>> import keras_dino
    >>> {p.name: p.linear_top1 for p in keras_dino.list_presets()}["dino_vits16"]
    77.0
    """
    return list(PRESETS.values())


def unknown_preset_message(name: str, what: str = "not a preset") -> str:
    """`'<name>' is <what>`, with the closest preset names: a short message for an unknown name.

    Example:

    >>> print(unknown_preset_message("dino_resnet"))
    'dino_resnet' is not a preset; did you mean 'dino_resnet50'? keras_dino.list_presets() lists them.
    """
    hint = did_you_mean(name, PRESETS, n=3)
    hint = f"; {hint}" if hint else "."
    return f"'{name}' is {what}{hint} keras_dino.list_presets() lists them."


def get_preset(name: str) -> Preset:
    """The preset called `name`; an `UnknownPresetError` naming the closest ones otherwise.

    Example:

    >>> get_preset("dino_vits16").file_name
    'dino_deitsmall16_pretrain.pth'
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise UnknownPresetError(unknown_preset_message(name)) from None


def _cell(value, fmt="{}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table() -> str:
    """The presets as a markdown table (the README's table is generated by this).

    Example:

    >>> print(markdown_table().splitlines()[2])
    | `dino_vits16` | ViT-S/16 (`vit_small`) | 16 | 21.7M | 74.5 | 77.0 | `dino_deitsmall16_pretrain.pth` (86.7 MB) | 384-d features, 196 patches at 224: the usual starting point. |
    """
    lines = [
        "| name | model | patch | parameters | k-NN top-1 | linear top-1 | backbone file |"
        " description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in PRESETS.values():
        lines.append(
            f"| `{p.name}` | {p.title} (`{p.arch}`) | {_cell(p.patch_size)} | "
            f"{p.params / 1e6:.1f}M | {_cell(p.knn_top1, '{:.1f}')} | "
            f"{_cell(p.linear_top1, '{:.1f}')} | `{p.file_name}` ({p.file_size_mb:.1f} MB) | "
            f"{p.description} |")
    lines += [
        "",
        "k-NN (20 neighbours) and linear: ImageNet top-1 (%) as reported by "
        f"[facebookresearch/dino]({SOURCE}), measured on the view `EvalConfig(224)` "
        "(shorter side to 256, bicubic, centre crop 224). The weights are those of the official "
        f"repository, released under the {LICENSE} licence like its code.",
    ]
    return "\n".join(lines) + "\n"
