"""The released weights as data (`keras_dino.models.presets`): numbers, sizes, README table."""

import dataclasses
import os
import pathlib

import numpy as np
import pytest

import keras_dino
from keras_dino.checkpoints.pretrained import read_state
from keras_dino.errors import KerasDinoError, UnknownPresetError
from keras_dino.models import presets
from keras_dino.preprocessing import EvalConfig

REPO = pathlib.Path(__file__).resolve().parents[1]

# The official tables (facebookresearch/dino README): params (millions, as printed),
# k-NN and linear ImageNet top-1 (%). The Google Landmarks weights have no ImageNet numbers.
OFFICIAL = {
    "dino_vits16": (21, 74.5, 77.0),
    "dino_vits8": (21, 78.3, 79.7),
    "dino_vitb16": (85, 76.1, 78.2),
    "dino_vitb8": (85, 77.4, 80.1),
    "dino_resnet50": (23, 67.5, 75.3),
    "dino_vits16_googlelandmark": (21, None, None),
    "dino_xcit_small_12_p16": (26, 76.0, 77.8),
    "dino_xcit_small_12_p8": (26, 77.1, 79.2),
    "dino_xcit_medium_24_p16": (84, 76.4, 78.8),
    "dino_xcit_medium_24_p8": (84, 77.9, 80.3),
}


def test_list_presets_is_the_data_of_every_released_file():
    listed = keras_dino.list_presets()
    assert [p.name for p in listed] == list(OFFICIAL) == list(keras_dino.PRESETS)
    for preset in listed:
        assert isinstance(preset, keras_dino.Preset)
        millions, knn, linear = OFFICIAL[preset.name]
        assert (preset.knn_top1, preset.linear_top1) == (knn, linear), preset.name
        # The official table prints 21M for 21.67M and 26M for 25.87M: within a million.
        assert abs(preset.params / 1e6 - millions) < 1.0, preset.name
        assert preset.license == "Apache-2.0"
        assert preset.description and len(preset.description) < 100
        assert preset.url().endswith(f"/{preset.stem}/{preset.file_name}")
        assert preset.eval_config().to_dict() == EvalConfig(224).to_dict()
        as_dict = preset.to_dict()
        assert as_dict["params"] == preset.params and as_dict["urls"]["backbone"] == preset.url()
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed[0].params = 1


def test_unknown_preset_suggests_the_closest_names():
    with pytest.raises(UnknownPresetError) as info:
        presets.get_preset("dino_vit_b16")
    message = str(info.value)
    assert isinstance(info.value, (KeyError, ValueError, KerasDinoError))
    assert len(message) < 400
    assert "did you mean 'dino_vitb16'" in message and "keras_dino.list_presets()" in message
    assert "dino_xcit_medium_24_p8" not in message  # not the whole list
    # Not a file either: a FileNotFoundError that also suggests the names.
    with pytest.raises(FileNotFoundError) as info:
        keras_dino.load_pretrained("dino_resnet")
    assert isinstance(info.value, UnknownPresetError)
    assert "neither a preset nor an existing file; did you mean 'dino_resnet50'" in str(
        info.value)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("document", ["README.md", "docs/pretrained.md"])
def test_preset_tables_are_generated_from_the_presets(document):
    text = (REPO / document).read_text()
    start, end = "<!-- presets:start -->\n", "<!-- presets:end -->"
    assert text.count(start) == 1 and text.count(end) == 1
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == presets.markdown_table(), (
        f"{document}'s preset table is stale: paste keras_dino.models.presets.markdown_table() "
        "between its presets markers.")


def test_load_pretrained_docstring_refers_to_list_presets():
    assert "keras_dino.list_presets()" in keras_dino.load_pretrained.__doc__


@pytest.mark.parametrize("fixture", [
    "official_dino/backbone_vit_mini16.pth",
    "official_dino_zoo/backbone_resnet_mini.pth",
    "official_dino_zoo/backbone_xcit_mini16.pth",
])
def test_file_size_is_the_tensor_bytes_plus_small_headers(fixtures_dir, fixture):
    # `file_size_mb` counts the backbone's float32 tensors; an official `.pth` adds a few
    # hundred bytes of zip header and pickle per tensor (checked on official files).
    path = fixtures_dir.parent / fixture
    state = read_state(path)
    tensor_bytes = sum(np.asarray(v).nbytes for v in state.values())
    overhead = os.path.getsize(path) - tensor_bytes
    assert 0 < overhead < 1024 * len(state)


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


# One build per architecture (the Google Landmarks preset is a ViT-S/16 too); building
# the 86M-parameter models takes seconds: once, in the torch process.
_ARCHS = {}
for _preset in presets.list_presets():
    _ARCHS.setdefault((_preset.arch, _preset.patch_size), _preset.name)


@pytest.mark.slow
@pytest.mark.backends("torch")
@pytest.mark.parametrize("name", sorted(_ARCHS.values()))
def test_parameter_count_and_file_size_are_those_of_the_built_backbone(name):
    preset = presets.get_preset(name)
    backbone = preset.build()
    backbone.build((None, preset.eval_size, preset.eval_size, 3))
    assert _count(backbone.trainable_weights) == preset.params
    # Running BatchNorm statistics are in the file too (ResNet, XCiT).
    assert round(4 * _count(backbone.weights) / 1e6, 1) == preset.file_size_mb
    same = [p for p in presets.list_presets() if (p.arch, p.patch_size) == (preset.arch,
                                                                           preset.patch_size)]
    assert {(p.params, p.file_size_mb) for p in same} == {(preset.params, preset.file_size_mb)}
