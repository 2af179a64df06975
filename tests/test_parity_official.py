"""The Keras models against the numbers computed by the official DINO code.

Runs on every backend: the TensorFlow, JAX and torch CI processes each run this file.
"""

import numpy as np
import pytest
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.models import DINOHead, MultiCropWrapper, VisionTransformer

SIZES = ("224x224", "96x96", "480x320")
TOL = 1e-5


def _backbone(fixtures_dir, name):
    state = dict(np.load(fixtures_dir / f"backbone_{name}.npz"))
    model = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
    official.load_state_dict(official.backbone_variable_map(model), state)
    return model


@pytest.fixture(scope="module", params=["vit_mini16", "vit_mini8"])
def backbone_and_outputs(request, fixtures_dir):
    name = request.param
    return _backbone(fixtures_dir, name), np.load(fixtures_dir / f"outputs_{name}.npz")


def _max_err(actual, expected):
    return float(np.max(np.abs(ops.convert_to_numpy(actual) - expected)))


@pytest.mark.parametrize("size", SIZES)
def test_backbone_matches_official(backbone_and_outputs, official_inputs, size):
    model, ref = backbone_and_outputs
    x = official_inputs[size]
    idx = ref[f"{size}/token_idx"]
    grid = tuple(int(g) for g in ref[f"{size}/grid_hw"])

    assert _max_err(model(x), ref[f"{size}/cls"]) < TOL

    attn = ops.convert_to_numpy(model.get_last_selfattention(x))
    assert attn.shape == (2, 3, int(ref[f"{size}/num_tokens"]), int(ref[f"{size}/num_tokens"]))
    assert _max_err(attn[:, :, 0], ref[f"{size}/attn_cls"]) < TOL
    assert _max_err(attn[:, :, idx][:, :, :, idx], ref[f"{size}/attn"]) < TOL

    inter = np.stack([ops.convert_to_numpy(t) for t in model.get_intermediate_layers(x, n=4)])
    assert _max_err(inter[:, :, idx], ref[f"{size}/intermediate4"]) < TOL

    tokens = ops.convert_to_numpy(model.prepare_tokens(x))
    assert _max_err(tokens[:, idx], ref[f"{size}/tokens"]) < TOL

    pos = ops.convert_to_numpy(model.interpolate_pos_encoding(*grid))
    assert _max_err(pos[:, idx], ref[f"{size}/pos_embed_interp"]) < TOL


def _wrapper_from_golden(fixtures_dir, who):
    ckpt = np.load(fixtures_dir / "golden" / "checkpoint.npz")
    state = {k[len(who) + 1 :]: ckpt[k] for k in ckpt.files if k.startswith(who + "/")}
    backbone_state, head_state = official.split_backbone_and_head(state)
    backbone = VisionTransformer(**official.infer_backbone_config(backbone_state, num_heads=3))
    official.load_state_dict(official.backbone_variable_map(backbone), backbone_state)
    head = DINOHead(**official.infer_head_config(head_state))
    official.load_state_dict(official.head_variable_map(head), head_state)
    return MultiCropWrapper(backbone, head)


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_head_outputs_of_golden_checkpoint(fixtures_dir, official_inputs, who):
    ref = np.load(fixtures_dir / "head_outputs_golden_checkpoint.npz")
    model = _wrapper_from_golden(fixtures_dir, who)
    for size in SIZES:
        logits, cls = model([official_inputs[size]], return_features=True)
        assert _max_err(logits, ref[f"{size}/{who}_out"]) < TOL
        assert _max_err(cls, ref[f"{size}/{who}_cls"]) < TOL
    multicrop = model([official_inputs[s] for s in SIZES])
    assert _max_err(multicrop, ref[f"multicrop/{who}_out"]) < TOL
    head_only = model.head(ref["head_only/features"])
    assert _max_err(head_only, ref[f"head_only/{who}_head_out"]) < TOL
