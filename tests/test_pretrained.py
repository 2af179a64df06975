"""`keras_dino.load_pretrained`: presets (offline behaviour, cache), local official files,
keras_dino files, and the errors for every kind of bad input. Runs on every backend.

No test reaches the network: `socket.getaddrinfo` is replaced so that any download
attempt fails exactly like it does on an offline machine.
"""

import pathlib
import pickle
import re
import socket
import zipfile

import numpy as np
import pytest
from keras import ops

import keras_dino
from keras_dino.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    write_torch_checkpoint,
)
from keras_dino.checkpoints.official import CheckpointKeyError, CheckpointShapeError
from keras_dino.checkpoints.pretrained import PRESETS, PretrainedDownloadError, preset_url
from keras_dino.models import MultiCropWrapper, VisionTransformer
from keras_dino.testing.parity import head_bound, vit_bound
from keras_dino.testing.tolerance import assert_within

# Outputs against the official fixtures: two float32 programs, bounded by the rounding of
# the reductions each output depends on (`vit_bound`, `head_bound`; the derivation is in
# tests/test_parity_official.py and keras_dino/testing/tolerance.py). The same model run
# twice in one process, or a twin loaded from the same numbers, executes the same kernels
# on the same bits: those comparisons are exact (assert_array_equal).
GRID_96 = (6, 6)  # 96x96 images, patch 16


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache in KERAS_HOME and no network (DNS fails, as offline)."""
    attempts = []

    def no_network(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home, attempts


def _released_state_dict(embed_dim, depth, patch_size, img_size=224, seed=0):
    """A backbone state dict in the released format (`dino_deitsmall16_pretrain.pth`),
    written key by key from the official module names, not from keras_dino's map."""
    rng = np.random.default_rng(seed)
    e, hidden, n = embed_dim, 4 * embed_dim, (img_size // patch_size) ** 2

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    state = {
        "cls_token": w(1, 1, e),
        "pos_embed": w(1, 1 + n, e),
        "patch_embed.proj.weight": w(e, 3, patch_size, patch_size),
        "patch_embed.proj.bias": w(e),
    }
    for i in range(depth):
        for name, shape in [
            ("norm1", (e,)),
            ("attn.qkv", (3 * e, e)),
            ("attn.proj", (e, e)),
            ("norm2", (e,)),
            ("mlp.fc1", (hidden, e)),
            ("mlp.fc2", (e, hidden)),
        ]:
            state[f"blocks.{i}.{name}.weight"] = w(*shape)
            state[f"blocks.{i}.{name}.bias"] = w(shape[0])
    state["norm.weight"] = w(e)
    state["norm.bias"] = w(e)
    return state


@pytest.fixture(scope="module")
def mini16_state(fixtures_dir):
    return dict(np.load(fixtures_dir / "backbone_vit_mini16.npz"))


@pytest.fixture(scope="module")
def mini16(fixtures_dir):
    return keras_dino.load_pretrained(fixtures_dir / "backbone_vit_mini16.pth", num_heads=3)


# ---------------------------------------------------------------------------- presets


def test_preset_urls_are_the_official_ones():
    base = "https://dl.fbaipublicfiles.com/dino"
    stems = {
        "dino_vits16": "dino_deitsmall16_pretrain",
        "dino_vits8": "dino_deitsmall8_pretrain",
        "dino_vitb16": "dino_vitbase16_pretrain",
        "dino_vitb8": "dino_vitbase8_pretrain",
        "dino_resnet50": "dino_resnet50_pretrain",
        "dino_vits16_googlelandmark": "dino_vitsmall16_googlelandmark_pretrain",
        "dino_xcit_small_12_p16": "dino_xcit_small_12_p16_pretrain",
        "dino_xcit_small_12_p8": "dino_xcit_small_12_p8_pretrain",
        "dino_xcit_medium_24_p16": "dino_xcit_medium_24_p16_pretrain",
        "dino_xcit_medium_24_p8": "dino_xcit_medium_24_p8_pretrain",
    }
    assert set(PRESETS) == set(stems)
    for name, stem in stems.items():
        assert preset_url(name) == f"{base}/{stem}/{stem}.pth"
        if name == "dino_vits16_googlelandmark":  # the official release is the backbone only
            for file in ("full_checkpoint", "linear"):
                with pytest.raises(ValueError, match=f"no released {file} file"):
                    preset_url(name, file=file)
            continue
        assert preset_url(name, with_head=True) == f"{base}/{stem}/{stem}_full_checkpoint.pth"
        linear = stem.replace("_pretrain", "_linearweights")
        assert preset_url(name, file="linear") == f"{base}/{stem}/{linear}.pth"
    with pytest.raises(ValueError, match="unknown preset file 'head'"):
        preset_url("dino_vits16", file="head")
    with pytest.raises(ValueError, match="did you mean 'dino_vits16'"):
        preset_url("dino_vitl16")


@pytest.mark.parametrize("with_head", [False, True])
def test_offline_error_names_the_url_and_the_cache_path(offline, with_head):
    home, attempts = offline
    with pytest.raises(PretrainedDownloadError) as info:
        keras_dino.load_pretrained("dino_vits8", with_head=with_head)
    message = str(info.value)
    url = preset_url("dino_vits8", with_head=with_head)
    assert url in message
    target = home / "models" / "keras_dino" / url.rsplit("/", 1)[1]
    assert str(target) in message
    assert "offline" in message and "download that file" in message
    assert attempts  # it did try to download
    assert isinstance(info.value, OSError)


@pytest.mark.slow
def test_file_at_the_announced_cache_path_is_used_without_download(offline, tmp_path):
    home, attempts = offline
    with pytest.raises(PretrainedDownloadError) as info:
        keras_dino.load_pretrained("dino_vits16")
    announced = re.search(r"put it at (.+?), or pass", str(info.value)).group(1)
    attempts.clear()

    # A real-size vit_small/16 in the released format, placed where the error said.
    state = _released_state_dict(embed_dim=384, depth=12, patch_size=16)
    target = pathlib.Path(announced)
    assert target == home / "models" / "keras_dino" / "dino_deitsmall16_pretrain.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_torch_checkpoint(state, target)

    model = keras_dino.load_pretrained("dino_vits16")
    assert attempts == []  # no download was even attempted
    assert isinstance(model, VisionTransformer)
    config = model.get_config()
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (384, 12, 6)
    assert (config["patch_size"], config["img_size"]) == (16, 224)
    np.testing.assert_array_equal(_np(model.pos_embed), state["pos_embed"])
    np.testing.assert_array_equal(
        _np(model.blocks[11].mlp.fc2.kernel), state["blocks.11.mlp.fc2.weight"].T
    )
    np.testing.assert_array_equal(_np(model.norm.beta), state["norm.bias"])


def test_unknown_name_or_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset .*dino_vits16"):
        keras_dino.load_pretrained("dino_vitl16")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        keras_dino.load_pretrained(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------- official files


def test_backbone_pth_and_npz_twin(fixtures_dir, mini16, mini16_state, official_inputs):
    twin = keras_dino.load_pretrained(fixtures_dir / "backbone_vit_mini16.npz", num_heads=3)
    # The architecture is read off the tensors.
    config = mini16.get_config()
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (48, 5, 3)
    assert (config["patch_size"], config["img_size"], config["mlp_ratio"]) == (16, 224, 4.0)
    assert config["qkv_bias"] is True
    for a, b in zip(mini16.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_np(mini16.cls_token), mini16_state["cls_token"])
    np.testing.assert_array_equal(
        _np(mini16.blocks[2].attn.qkv.kernel), mini16_state["blocks.2.attn.qkv.weight"].T
    )
    ref = np.load(fixtures_dir / "outputs_vit_mini16.npz")
    x = official_inputs["96x96"]
    out = _np(mini16(x))
    tokens = np.abs(ref["96x96/tokens"]).max()
    expected = ref["96x96/cls"]
    assert_within(out, expected, vit_bound(mini16, GRID_96, "cls", expected, tokens), "cls")
    np.testing.assert_array_equal(_np(twin(x)), out)
    attn = _np(mini16.get_last_selfattention(x))[:, :, 0]
    expected = ref["96x96/attn_cls"]
    assert_within(attn, expected, vit_bound(mini16, GRID_96, "attn", expected, tokens), "attn_cls")


def test_model_kwargs_and_architecture_checks(fixtures_dir):
    path = fixtures_dir / "backbone_vit_mini16.pth"
    with pytest.raises(ValueError, match="48-wide model .*pass num_heads=N, one of 1, 2, 3, 4, 6, 8, 12, 16, 24, 48"):
        keras_dino.load_pretrained(path)
    with pytest.raises(ValueError, match="not a vit_small"):
        keras_dino.load_pretrained(path, arch="vit_small", num_heads=3)
    with pytest.raises(ValueError, match="patch size 16"):
        keras_dino.load_pretrained(path, patch_size=8, num_heads=3)
    model = keras_dino.load_pretrained(
        path, patch_size=16, num_heads=3, drop_path_rate=0.1, use_fused_attention=True
    )
    assert model.drop_path_rate == 0.1 and model.blocks[-1].drop_path_rate == pytest.approx(0.1)
    assert model.use_fused_attention


@pytest.mark.parametrize("who", ["teacher", "student"])
def test_full_checkpoint_with_head(fixtures_dir, official_inputs, who):
    ref = np.load(fixtures_dir / "head_outputs_golden_checkpoint.npz")
    path = fixtures_dir / "golden" / "checkpoint.pth"
    model = keras_dino.load_pretrained(path, checkpoint_key=who, with_head=True)
    assert isinstance(model, MultiCropWrapper)
    # Depth, width and heads come from the tensors and the checkpoint's args.
    assert (model.backbone.depth, model.backbone.embed_dim, model.backbone.num_heads) == (2, 48, 3)
    head = model.head.get_config()
    assert (head["out_dim"], head["hidden_dim"], head["bottleneck_dim"]) == (1024, 64, 32)
    assert head["norm_last_layer"] and not model.head.last_layer.kernel_g.trainable
    x = official_inputs["96x96"]
    logits, cls = model([x], return_features=True)
    expected = ref[f"96x96/{who}_out"]
    assert_within(_np(logits), expected, head_bound(model, GRID_96, expected), "logits")
    expected = ref[f"96x96/{who}_cls"]
    assert_within(_np(cls), expected, vit_bound(model.backbone, GRID_96, "cls", expected), "cls")
    expected = ref[f"head_only/{who}_head_out"]
    assert_within(_np(model.head(ref["head_only/features"])), expected,
                  head_bound(model, None, expected, features_only=True), "head_only")

    # The backbone alone (prefixes `module.` / `backbone.` stripped), and the .npz twin.
    backbone = keras_dino.load_pretrained(path, checkpoint_key=who)
    assert isinstance(backbone, VisionTransformer)
    np.testing.assert_array_equal(_np(backbone(x)), _np(cls))
    twin = keras_dino.load_pretrained(
        fixtures_dir / "golden" / "checkpoint.npz", checkpoint_key=who, with_head=True
    )
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_key_and_with_head_errors(fixtures_dir):
    with pytest.raises(KeyError, match="checkpoint_key 'ema' .*student.*teacher"):
        keras_dino.load_pretrained(fixtures_dir / "golden" / "checkpoint.npz", checkpoint_key="ema")
    with pytest.raises(CheckpointKeyError, match="full training checkpoint"):
        keras_dino.load_pretrained(
            fixtures_dir / "backbone_vit_mini16.npz", num_heads=3, with_head=True
        )


# ---------------------------------------------------------------------------- keras_dino files


def test_keras_dino_files(tmp_path, mini16, official_inputs):
    x = official_inputs["96x96"]
    expected = _np(mini16(x))

    mini16.save(tmp_path / "mini.keras")
    loaded = keras_dino.load_pretrained(tmp_path / "mini.keras")
    assert isinstance(loaded, VisionTransformer)
    np.testing.assert_array_equal(_np(loaded(x)), expected)

    mini16.save_weights(tmp_path / "mini.weights.h5")
    arch = dict(embed_dim=48, depth=5, num_heads=3)
    loaded = keras_dino.load_pretrained(tmp_path / "mini.weights.h5", patch_size=16, **arch)
    np.testing.assert_array_equal(_np(loaded(x)), expected)
    with pytest.raises(ValueError, match="weights only; pass arch="):
        keras_dino.load_pretrained(tmp_path / "mini.weights.h5")
    # A shallower model would silently drop the file's last block: refused.
    with pytest.raises(ValueError, match="holds 5 transformer blocks, the model has 4"):
        keras_dino.load_pretrained(
            tmp_path / "mini.weights.h5", patch_size=16, embed_dim=48, depth=4, num_heads=3
        )
    with pytest.raises(ValueError, match="holds 5 transformer blocks, the model has 6"):
        keras_dino.load_pretrained(
            tmp_path / "mini.weights.h5", patch_size=16, embed_dim=48, depth=6, num_heads=3
        )
    with pytest.raises(ValueError, match="could not load"):  # no qkv bias in the model
        keras_dino.load_pretrained(tmp_path / "mini.weights.h5", qkv_bias=False, **arch)
    with pytest.raises(ValueError, match="with_head"):
        keras_dino.load_pretrained(tmp_path / "mini.weights.h5", with_head=True, **arch)


# ---------------------------------------------------------------------------- bad files


def test_missing_and_unexpected_keys_are_listed(tmp_path, mini16_state):
    state = dict(mini16_state)
    del state["blocks.4.norm2.bias"]
    del state["norm.weight"]
    state["blocks.0.attn.relative_bias"] = np.zeros(3, np.float32)
    path = tmp_path / "keys.pth"
    write_torch_checkpoint(state, path)
    with pytest.raises(CheckpointKeyError) as info:
        keras_dino.load_pretrained(path, num_heads=3)
    message = str(info.value)
    assert "missing keys (2): blocks.4.norm2.bias, norm.weight" in message
    assert "unexpected keys (1): blocks.0.attn.relative_bias" in message


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, mini16_state):
    state = dict(mini16_state)
    state["blocks.1.mlp.fc2.weight"] = np.zeros((48, 100), np.float32)
    path = tmp_path / "shape.npz"
    np.savez(path, **state)
    with pytest.raises(CheckpointShapeError) as info:
        keras_dino.load_pretrained(path, num_heads=3)
    message = str(info.value)
    assert "'blocks.1.mlp.fc2.weight'" in message
    assert "(48, 100)" in message and "(48, 192)" in message


def test_files_that_are_not_dino_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        keras_dino.load_pretrained(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="empty"):
        keras_dino.load_pretrained(empty)
    other = tmp_path / "other.pth"
    write_torch_checkpoint({"fc.weight": np.zeros((2, 2), np.float32)}, other)
    with pytest.raises(CheckpointKeyError, match="not a DINO Vision Transformer state dict"):
        keras_dino.load_pretrained(other)


def test_truncated_file(tmp_path, fixtures_dir):
    data = (fixtures_dir / "backbone_vit_mini16.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        keras_dino.load_pretrained(path, num_heads=3)


class _Payload:
    """Unpickling this would run `os.system` (it only creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["torch_zip", "bare_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"cls_token": _Payload(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "torch_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
            archive.writestr("evil/byteorder", "little")
            archive.writestr("evil/version", "3\n")
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        keras_dino.load_pretrained(path)
    assert not marker.exists()
