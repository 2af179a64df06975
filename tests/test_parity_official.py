"""The Keras models against the numbers computed by the official DINO code.

Runs on every backend: the TensorFlow, JAX and torch CI processes each run this file.
"""

import numpy as np
import pytest
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.models import DINOHead, MultiCropWrapper, VisionTransformer
from keras_dino.testing.parity import head_bound, vit_bound
from keras_dino.testing.tolerance import assert_within

SIZES = ("224x224", "96x96", "480x320")
# Bounds: the official fixtures and ours are two float32 programs, so each comparison is
# bounded by the rounding of the reductions the output depends on (lambda * u *
# sqrt(sum of their lengths) * largest |reference|, twice; keras_dino/testing/tolerance.py),
# which `vit_bound` and `head_bound` (keras_dino/testing/parity.py) count from the model
# and the token count: e.g. vit_mini8's CLS at 480x320 depends on the 8x8x3 patch
# embedding and 5 blocks of 2,401-token softmax/attention sums, 48-wide LayerNorms and
# products and a 192-wide fc2, sqrt(sum) = 164, so 2 * 6 * 164 * 2**-24 = 1.2e-4 of
# max |cls|; plus the official float32 bicubic coefficients (`bicubic_tolerance`).
# Measured spread over backends, oneDNN on/off and 1 thread: docs/tolerances.md.


def _backbone(fixtures_dir, name):
    state = dict(np.load(fixtures_dir / f"backbone_{name}.npz"))
    model = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
    official.load_state_dict(official.backbone_variable_map(model), state)
    return model


@pytest.fixture(scope="module", params=["vit_mini16", "vit_mini8"])
def backbone_and_outputs(request, fixtures_dir):
    name = request.param
    return _backbone(fixtures_dir, name), np.load(fixtures_dir / f"outputs_{name}.npz")


@pytest.mark.parametrize("size", SIZES)
def test_backbone_matches_official(backbone_and_outputs, official_inputs, size):
    model, ref = backbone_and_outputs
    x = official_inputs[size]
    idx = ref[f"{size}/token_idx"]
    grid = tuple(int(g) for g in ref[f"{size}/grid_hw"])
    tokens_scale = np.abs(ref[f"{size}/tokens"]).max()

    def check(actual, key, quantity):
        expected = ref[f"{size}/{key}"]
        bound = vit_bound(model, grid, quantity, expected, token_scale=tokens_scale)
        assert_within(ops.convert_to_numpy(actual), expected, bound, f"{size}/{key}")

    check(model(x), "cls", "cls")

    attn = ops.convert_to_numpy(model.get_last_selfattention(x))
    assert attn.shape == (2, 3, int(ref[f"{size}/num_tokens"]), int(ref[f"{size}/num_tokens"]))
    check(attn[:, :, 0], "attn_cls", "attn")
    check(attn[:, :, idx][:, :, :, idx], "attn", "attn")

    inter = np.stack([ops.convert_to_numpy(t) for t in model.get_intermediate_layers(x, n=4)])
    check(inter[:, :, idx], "intermediate4", "intermediate")

    tokens = ops.convert_to_numpy(model.prepare_tokens(x))
    check(tokens[:, idx], "tokens", "tokens")

    # On the square source grid (224x224) both codes return the stored parameter: the
    # bound is 0, the comparison exact.
    pos = ops.convert_to_numpy(model.interpolate_pos_encoding(*grid))
    check(pos[:, idx], "pos_embed_interp", "pos_embed")


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
    patch = model.backbone.patch_size
    grids = {s: tuple(official_inputs[s].shape[1 + i] // patch for i in range(2)) for s in SIZES}
    for size in SIZES:
        logits, cls = model([official_inputs[size]], return_features=True)
        out, feat = ref[f"{size}/{who}_out"], ref[f"{size}/{who}_cls"]
        assert_within(ops.convert_to_numpy(logits), out, head_bound(model, grids[size], out),
                      f"{size}/{who}_out")
        assert_within(ops.convert_to_numpy(cls), feat,
                      vit_bound(model.backbone, grids[size], "cls", feat), f"{size}/{who}_cls")
    multicrop = ops.convert_to_numpy(model([official_inputs[s] for s in SIZES]))
    expected = ref[f"multicrop/{who}_out"]
    # rows: the 2 images of each size in order, each with its own grid's bound
    bound = np.concatenate([np.full((2, 1), head_bound(model, grids[s], expected)) for s in SIZES])
    assert_within(multicrop, expected, bound, f"multicrop/{who}_out")
    head_only = ops.convert_to_numpy(model.head(ref["head_only/features"]))
    expected = ref[f"head_only/{who}_head_out"]
    assert_within(head_only, expected, head_bound(model, None, expected, features_only=True),
                  f"head_only/{who}_head_out")
