"""Largest deviation of the Keras models from the official outputs, as JSON lines.

    KERAS_BACKEND=jax python -m keras_dino.testing.parity

Covers what tests/test_parity_official.py asserts (< 1e-5): for vit_mini16 and vit_mini8
at 224x224, 96x96 and 480x320 the CLS output, last self-attention, 4 intermediate
layers and interpolated position embeddings; and the student/teacher head outputs of
the golden checkpoint, including the multi-crop call.
"""

import json
import os
import pathlib

import keras
import numpy as np
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.models import DINOHead, MultiCropWrapper, VisionTransformer
from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD

SIZES = ("224x224", "96x96", "480x320")


def _inputs(fixtures):
    data = np.load(fixtures / "inputs.npz")
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    return {
        s: ((data[f"{s}/uint8_nhwc"].astype(np.float32) / np.float32(255) - mean) / std)
        for s in SIZES
    }


def _err(a, b):
    return float(np.max(np.abs(ops.convert_to_numpy(a) - b)))


def measure(fixtures) -> dict:
    fixtures = pathlib.Path(fixtures)
    x = _inputs(fixtures)
    worst = {}
    for name in ("vit_mini16", "vit_mini8"):
        state = dict(np.load(fixtures / f"backbone_{name}.npz"))
        model = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
        official.load_state_dict(official.backbone_variable_map(model), state)
        ref = np.load(fixtures / f"outputs_{name}.npz")
        for s in SIZES:
            idx = ref[f"{s}/token_idx"]
            attn = ops.convert_to_numpy(model.get_last_selfattention(x[s]))
            inter = np.stack([ops.convert_to_numpy(t) for t in model.get_intermediate_layers(x[s], 4)])
            grid = [int(g) for g in ref[f"{s}/grid_hw"]]
            errs = {
                "cls": _err(model(x[s]), ref[f"{s}/cls"]),
                "attn": _err(attn[:, :, idx][:, :, :, idx], ref[f"{s}/attn"]),
                "intermediate4": _err(inter[:, :, idx], ref[f"{s}/intermediate4"]),
                "pos_embed_interp": _err(
                    ops.convert_to_numpy(model.interpolate_pos_encoding(*grid))[:, idx],
                    ref[f"{s}/pos_embed_interp"],
                ),
            }
            for key, value in errs.items():
                worst[f"{name}/{key}"] = max(worst.get(f"{name}/{key}", 0.0), value)
    ckpt = np.load(fixtures / "golden" / "checkpoint.npz")
    ref = np.load(fixtures / "head_outputs_golden_checkpoint.npz")
    for who in ("student", "teacher"):
        state = {k[len(who) + 1 :]: ckpt[k] for k in ckpt.files if k.startswith(who + "/")}
        b_state, h_state = official.split_backbone_and_head(state)
        backbone = VisionTransformer(**official.infer_backbone_config(b_state, num_heads=3))
        official.load_state_dict(official.backbone_variable_map(backbone), b_state)
        head = DINOHead(**official.infer_head_config(h_state))
        official.load_state_dict(official.head_variable_map(head), h_state)
        wrapper = MultiCropWrapper(backbone, head)
        errs = [_err(wrapper([x[s]]), ref[f"{s}/{who}_out"]) for s in SIZES]
        errs.append(_err(wrapper([x[s] for s in SIZES]), ref[f"multicrop/{who}_out"]))
        worst[f"golden_head/{who}"] = max(errs)
    return worst


if __name__ == "__main__":
    repo = pathlib.Path(__file__).resolve().parents[2]
    shared = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", repo.parent / "shared"))
    result = measure(shared / "fixtures" / "official_dino")
    for key, value in result.items():
        print(json.dumps({"backend": keras.backend.backend(), "output": key, "max_abs_err": value}))
    print(json.dumps({"backend": keras.backend.backend(), "output": "ALL",
                      "max_abs_err": max(result.values())}))
