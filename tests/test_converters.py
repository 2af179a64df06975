"""One converter per model family, behind one registry (`keras_dino.checkpoints.converters`).

Per family, on the official fixtures: the state dict is detected by its keys, its
configuration read off the tensors, the backbone built and loaded (its outputs are the
official ones) and written back to the same tensors. A file of one family asked for as
another names both. The family switch lives in the converters only.
"""

import ast
import pathlib

import numpy as np
import pytest

from keras_dino.checkpoints import converters, official
from keras_dino.checkpoints.weights import resolve_weights
from keras_dino.errors import ArchitectureMismatchError, UnknownPresetOrFileError
from keras_dino.models import build_backbone
from keras_dino.models.official_names import backbone_variable_map

REPO = pathlib.Path(__file__).resolve().parents[1]

# file (under shared/fixtures), family, config read off it, hints, official outputs, key.
CASES = {
    "vit_mini16": ("official_dino/backbone_vit_mini16.npz", "vit",
                   dict(embed_dim=48, depth=5, num_heads=3, patch_size=16, img_size=224,
                        mlp_ratio=4.0, qkv_bias=True),
                   {"num_heads": 3}, "official_dino/outputs_vit_mini16.npz", "96x96/cls"),
    "vit_mini8": ("official_dino/backbone_vit_mini8.pth", "vit",
                  dict(embed_dim=48, depth=5, num_heads=3, patch_size=8, img_size=224,
                       mlp_ratio=4.0, qkv_bias=True),
                  {"num_heads": 3}, "official_dino/outputs_vit_mini8.npz", "96x96/cls"),
    "resnet_mini": ("official_dino_zoo/backbone_resnet_mini.pth", "resnet",
                    dict(block="bottleneck", layers=(1, 1, 1, 1), width_per_group=64,
                         expansion=8, stem_width=64, stage_widths=(8, 16, 32, 64)),
                    {}, "official_dino_zoo/outputs_resnet_mini.npz", "96x96/pooled"),
    "xcit_mini16": ("official_dino_zoo/backbone_xcit_mini16.pth", "xcit",
                    dict(patch_size=16, embed_dim=48, depth=2, num_heads=4, cls_attn_layers=2,
                         mlp_ratio=4.0, qkv_bias=True),
                    {}, "official_dino_zoo/outputs_xcit_mini16.npz", "96x96/cls"),
    "xcit_mini8": ("official_dino_zoo/backbone_xcit_mini8.npz", "xcit",
                   dict(patch_size=8, embed_dim=48, depth=2, num_heads=4, cls_attn_layers=2,
                        mlp_ratio=4.0, qkv_bias=True),
                   {}, "official_dino_zoo/outputs_xcit_mini8.npz", "96x96/cls"),
}
# An official architecture name of each family.
OFFICIAL_ARCH = {"vit": "vit_small", "resnet": "resnet50", "xcit": "xcit_small_12_p16"}
LABEL = {"vit": "a Vision Transformer", "resnet": "a ResNet", "xcit": "an XCiT"}


def _state(fixtures_dir, file):
    from keras_dino.checkpoints import read_checkpoint

    state = read_checkpoint(fixtures_dir.parent / file)
    return {k: np.asarray(v) for k, v in state.items()}


def _inputs(fixtures_dir, file):
    data = np.load(fixtures_dir.parent / file.split("/")[0] / "inputs.npz")
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((data["96x96/uint8_nhwc"].astype(np.float32) / 255 - mean) / std).astype(np.float32)


def _np(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("name", CASES)
def test_each_family_detects_reads_builds_and_round_trips_its_official_file(fixtures_dir, name):
    file, family, expected, hints, outputs, key = CASES[name]
    state = _state(fixtures_dir, file)
    # Detected by its keys: exactly one family claims the file.
    assert [c.family for c in converters.CONVERTERS.values() if c.matches(state)] == [family]
    converter = converters.for_state_dict(state)
    assert converter is converters.get(family)
    # The configuration is in the tensors (a ViT's heads are not: given as a hint).
    assert converter.read_config(state, **hints) == expected
    # Built to that shape and loaded, it computes what the official model computed.
    backbone = converter.convert(state, overrides=hints)
    assert isinstance(backbone, converter.model_class)
    assert converters.for_model(backbone) is converter
    reference = np.load(fixtures_dir.parent / outputs)[key]
    np.testing.assert_allclose(_np(backbone(_inputs(fixtures_dir, file))), reference,
                               atol=1e-4 * np.abs(reference).max(), rtol=0)
    # Written back with the family's name map: the file's tensors, bit for bit.
    written = official.state_dict_of(backbone_variable_map(backbone))
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert sorted(written) == sorted(kept)
    for k, value in kept.items():
        np.testing.assert_array_equal(written[k], value, err_msg=k)


@pytest.mark.parametrize("name", CASES)
def test_dino_arguments_build_a_backbone_the_file_loads_into(fixtures_dir, name):
    """The warm start's arguments (`DINO.from_pretrained`) rebuild the file's network."""
    file, family, _, hints, _, _ = CASES[name]
    state = _state(fixtures_dir, file)
    kwargs = {"vit_kwargs": hints} if hints else {}
    arguments = converters.dino_arguments(state, kwargs, {}, "the file")
    backbone = build_backbone(**arguments)
    assert converters.for_model(backbone).family == family
    converters.get(family).load(backbone, state)  # every name and shape fits
    if family != "resnet":
        assert arguments["patch_size"] == CASES[name][2]["patch_size"]


@pytest.mark.parametrize("name, asked", [
    (name, asked) for name in ("vit_mini16", "resnet_mini", "xcit_mini8")
    for asked in OFFICIAL_ARCH if asked != CASES[name][1]])
def test_a_file_of_one_family_asked_for_as_another_names_both(fixtures_dir, name, asked):
    file, family, _, hints, _, _ = CASES[name]
    state = _state(fixtures_dir, file)
    arch = OFFICIAL_ARCH[asked]
    message = f"holds {LABEL[family]} backbone, but arch='{arch}' is {LABEL[asked]}"
    with pytest.raises(ArchitectureMismatchError, match=message):
        converters.convert(state, arch=arch, overrides=hints)
    with pytest.raises(ArchitectureMismatchError, match=f"the file {message}"):
        converters.dino_arguments(state, {"arch": arch}, {}, "the file")


def test_an_official_name_of_the_family_is_checked_against_the_tensors(fixtures_dir):
    vit = _state(fixtures_dir, CASES["vit_mini16"][0])
    with pytest.raises(ArchitectureMismatchError, match="width 48 and depth 5, not a vit_small"):
        converters.convert(vit, arch="vit_small", overrides={"num_heads": 3})
    with pytest.raises(ArchitectureMismatchError, match="patch_size=8 was asked for, but the "
                                                       "checkpoint has patch size 16"):
        converters.convert(vit, patch_size=8, overrides={"num_heads": 3})
    resnet = _state(fixtures_dir, CASES["resnet_mini"][0])
    with pytest.raises(ArchitectureMismatchError, match="holds a custom ResNet, not a resnet50"):
        converters.convert(resnet, arch="resnet50")
    assert converters.convert(resnet, arch="resnet_mini").name == "resnet_mini"  # names it
    xcit = _state(fixtures_dir, CASES["xcit_mini8"][0])
    with pytest.raises(ArchitectureMismatchError, match="patch 8, width 48, depth 2, 4 heads, "
                                                       "not a xcit_small_12_p8"):
        converters.convert(xcit, arch="xcit_small_12_p8")


def test_registry_lookups():
    assert converters.families() == ("resnet", "xcit", "vit")
    assert [converters.for_arch(a).family for a in ("resnet50", "xcit_tiny", "vit_small",
                                                     "my_vit")] == ["resnet", "xcit", "vit", "vit"]
    assert converters.for_arch("my_net", resnet_kwargs={"layers": [1]}).family == "resnet"
    assert converters.for_arch("my_net", official_only=True) is None
    assert converters.for_arch("resnet50", official_only=True).family == "resnet"
    with pytest.raises(ValueError, match="unknown model family 'convnext'.*resnet, xcit, vit"):
        converters.get("convnext")
    with pytest.raises(TypeError, match="not a keras_dino backbone"):
        converters.for_model(object())
    # A state dict of no family goes to the ViT's converter, which names what it lacks.
    with pytest.raises(official.CheckpointKeyError, match="not a DINO Vision Transformer"):
        converters.convert({"fc.weight": np.zeros((2, 2))})


def test_resolve_weights_is_the_one_preset_or_file_resolver(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    weights = resolve_weights("dino_resnet50", "linear", download=False)
    assert weights.preset.name == "dino_resnet50" and weights.name == "dino_resnet50"
    assert weights.path == str(tmp_path / "models" / "keras_dino" /
                               "dino_resnet50_linearweights.pth")
    assert weights.describe() == f"preset 'dino_resnet50' ({weights.preset.url('linear')})"
    file = tmp_path / "w.pth"
    file.write_bytes(b"abc")
    local = resolve_weights(file)
    assert (local.path, local.preset) == (str(file), None)
    assert local.describe().endswith("(sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad)")
    with pytest.raises(UnknownPresetOrFileError, match="'dino_vitl16' is neither a preset nor "
                                                       "an existing file; did you mean"):
        resolve_weights("dino_vitl16")
    with pytest.raises(UnknownPresetOrFileError, match="neither a preset nor an existing file"):
        resolve_weights(tmp_path)  # a folder is no checkpoint


# --------------------------------------------------------------- where the switch lives

# What a family switch is made of: the families' detectors, config readers, name tables
# and classes. Outside `converters/` (and the tensor readers of `official.py`), the
# checkpoint modules ask the registry instead.
FAMILY_NAMES = {
    "is_resnet", "is_xcit", "is_resnet_state", "is_xcit_state", "infer_resnet_config",
    "infer_xcit_config", "infer_backbone_config", "RESNETS", "XCITS", "ResNet", "XCiT",
    "resnet_name",
}
# (`models.backbones.backbone_config`, which builds a network from its `arch` name, is no
# switch of a checkpoint module; its `is_resnet`/`is_xcit` are.)
FAMILY_MODULES = {"keras_dino.models.resnet", "keras_dino.models.xcit"}


def _family_references(path):
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FAMILY_NAMES:
            found.append(f"{node.id} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr in FAMILY_NAMES:
            found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom):
            if node.module in FAMILY_MODULES:
                found.append(f"import from {node.module} (line {node.lineno})")
            found += [f"import {a.name} (line {node.lineno})" for a in node.names
                      if a.name in FAMILY_NAMES]
        elif isinstance(node, ast.Import):
            found += [f"import {a.name} (line {node.lineno})" for a in node.names
                      if a.name in FAMILY_MODULES]
    return found


def test_the_family_switch_lives_in_the_converters_only():
    folder = REPO / "keras_dino" / "checkpoints"
    modules = sorted(p for p in folder.glob("*.py") if p.name != "official.py")
    assert {"pretrained.py", "warm_start.py"} <= {p.name for p in modules}
    offenders = {p.name: refs for p in modules if (refs := _family_references(p))}
    assert offenders == {}, offenders
    # ... and each converter holds its own family's pieces (the test above is not vacuous).
    assert _family_references(folder / "converters" / "resnet.py")
    assert _family_references(folder / "converters" / "xcit.py")
