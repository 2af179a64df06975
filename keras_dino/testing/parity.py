"""Largest deviation of the Keras models from the official outputs, as JSON lines.

    KERAS_BACKEND=jax python -m keras_dino.testing.parity

Covers what tests/test_parity_official.py asserts: for vit_mini16 and vit_mini8 at
224x224, 96x96 and 480x320 the CLS output, last self-attention, 4 intermediate layers and
interpolated position embeddings; and the student/teacher head outputs of the golden
checkpoint, including the multi-crop call. Each line has the largest deviation, its
float32 bound (`vit_bound`, `head_bound`: derived from the reductions the output depends
on, keras_dino/testing/tolerance.py) and their ratio (below 1 passes).
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
from keras_dino.testing import tolerance

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


def _resize_error(model, grid):
    """`(absolute bound, position embedding scale)` of the position embedding's bicubic
    resize to `grid`; 0 when the grid is the square source grid (both codes then return
    the stored parameter)."""
    side = int(round(np.sqrt(model.pos_embed.shape[1] - 1)))
    pos_scale = float(np.max(np.abs(ops.convert_to_numpy(model.pos_embed))))
    if tuple(int(g) for g in grid) == (side, side):
        return 0.0, pos_scale
    return tolerance.bicubic_tolerance(side, pos_scale), pos_scale


def _scale(reference):
    return float(np.max(np.abs(np.asarray(reference, np.float64))))


def vit_bound(model, grid, quantity, reference, token_scale=None, then=(), normalizes=False,
              official=True):
    """Float32 bound of `|ours - official|` for a ViT output on a `grid = (rows, cols)`
    patch grid, two float32 programs, relative to the reference's largest magnitude.

    `quantity` is the official method's output: `"cls"` (forward: every block and the final
    norm), `"intermediate"` (`get_intermediate_layers`: at most every block and the norm),
    `"attn"` (`get_last_selfattention`: the blocks but the last, then the last block's
    norm, qkv, logits and softmax), `"tokens"` (`prepare_tokens`: the patch embedding plus
    the resized position embedding) or `"pos_embed"` (the bicubic resize alone). The
    resize error enters the tokens, of largest magnitude `token_scale`, and reaches the
    output relative to that (default: the position embedding's scale, never larger).
    `then` lists the reductions applied after `quantity` (e.g. a linear classifier's
    input width); `normalizes` adds the rounding of a model that normalises uint8 pixels
    itself (an export: `x * a + b` instead of `(x / 255 - mean) / std`, within 3 ulps).
    `official=False` compares two keras_dino programs (e.g. a model and its export), which
    share the float64 resize coefficients: no resize term.
    """
    scale = _scale(reference)
    resize, pos_scale = _resize_error(model, grid)
    if not official:
        resize = 0.0
    if quantity == "pos_embed":
        return resize
    num_tokens = 1 + int(grid[0]) * int(grid[1])
    kw = dict(embed_dim=model.embed_dim, num_tokens=num_tokens, patch_size=model.patch_size,
              num_heads=model.num_heads, mlp_ratio=model.mlp_ratio)
    first = [tolerance.LIBRARY_FUNCTION] if normalizes else []
    if quantity == "tokens":
        patch = first + tolerance.vit_reductions(0, final_norm=False, **kw)
        return tolerance.network_tolerance(patch, scale) + resize
    if quantity == "attn":
        e, h = model.embed_dim, model.num_heads
        lf = tolerance.LIBRARY_FUNCTION
        reductions = tolerance.vit_reductions(model.depth - 1, final_norm=False, **kw)
        reductions += [e, e, lf, e, e // h, lf, num_tokens]
    elif quantity in ("cls", "intermediate"):
        reductions = tolerance.vit_reductions(model.depth, **kw)
    else:
        raise ValueError(f"unknown quantity {quantity!r}")
    token_scale = pos_scale if token_scale is None else float(token_scale)
    reductions = first + reductions + list(then)
    return tolerance.network_tolerance(reductions, scale) + resize / token_scale * scale


def head_bound(wrapper, grid, reference, token_scale=None, features_only=False):
    """Float32 bound of `|ours - official|` for `MultiCropWrapper` logits of images on a
    `grid = (rows, cols)` patch grid (or, with `features_only`, of the `DINOHead` applied
    to given features), two float32 programs, relative to the reference's largest
    magnitude: the backbone's reductions as in `vit_bound(..., "cls")`, then the head's
    (its Linear layers, GELUs, L2 normalisation and weight-normalised last layer)."""
    scale = _scale(reference)
    head, backbone = wrapper.head, wrapper.backbone
    reductions = tolerance.head_reductions(
        backbone.embed_dim, head.hidden_dim, head.bottleneck_dim, head.nlayers)
    if features_only:
        return tolerance.network_tolerance(reductions, scale)
    num_tokens = 1 + int(grid[0]) * int(grid[1])
    reductions = tolerance.vit_reductions(
        backbone.depth, backbone.embed_dim, num_tokens, backbone.patch_size,
        backbone.num_heads, backbone.mlp_ratio) + reductions
    resize, pos_scale = _resize_error(backbone, grid)
    token_scale = pos_scale if token_scale is None else float(token_scale)
    return tolerance.network_tolerance(reductions, scale) + resize / token_scale * scale


def resnet_reductions(model, upto="layer4", pool=0):
    """The reductions a torchvision-layout `ResNet`'s output depends on, in order, up to
    the stage `upto` ("stem", "layer1", ...): the 7x7x3 stem convolution, then per block
    its convolutions (1x1 over the input channels, 3x3 over the width, 1x1 over the
    width; a basic block: two 3x3) each with its eval BatchNorm's rsqrt, the longest path
    through the block; `pool` adds the global average pool over that many positions."""
    lf = tolerance.LIBRARY_FUNCTION
    out = [3 * 7 * 7, lf]
    channels = model.stem_width
    for stage, (blocks, planes) in enumerate(zip(model.layers_per_stage, model.stage_widths)):
        if upto == "stem":
            break
        for _ in range(blocks):
            if model.block == "bottleneck":
                width = int(planes * (model.width_per_group / 64.0))
                out += [channels, lf, 9 * width, lf, width, lf]
            else:
                out += [9 * channels, lf, 9 * planes, lf]
            channels = planes * model.expansion
        if upto == f"layer{stage + 1}":
            break
    return out + ([pool] if pool else [])


def resnet_bound(model, reference, upto="layer4", pool=0, then=()):
    """Float32 bound of `|ours - torchvision|` for a ResNet output, two float32 programs,
    relative to the reference's largest magnitude (`resnet_reductions`, then `then`)."""
    reductions = resnet_reductions(model, upto, pool) + list(then)
    return tolerance.network_tolerance(reductions, _scale(reference))


def xcit_reductions(model, num_tokens, upto="final"):
    """The reductions an XCiT output depends on, in order, up to `upto`: `"patch"` (the
    3x3 convolution stages, each with its eval BatchNorm and GELU), `"pos"` (the Fourier
    features: sin/cos and a 1x1 convolution over 64 channels), `"xca{i}"` (XCA block i:
    LayerNorm, qkv, L2 normalisation and cross-covariance over the `num_tokens` tokens,
    softmax and product over the head's channels, projection, the LPI's two depthwise
    3x3 convolutions, the MLP), `"ca{j}"` (class-attention block j: softmax over the
    tokens) or `"final"` (the last norm)."""
    lf = tolerance.LIBRARY_FUNCTION
    e, n, d = model.embed_dim, int(num_tokens), model.embed_dim // model.num_heads
    stages = 4 if model.patch_size == 16 else 3
    channels = [3] + [e // 2 ** (stages - 1 - i) for i in range(stages)]
    out = []
    for c in channels[:-1]:
        out += [9 * c, lf, lf]
    if upto == "patch":
        return out
    out += [lf, lf, 64]
    if upto == "pos":
        return out
    norm, mlp = [e, e, lf], [e, lf, int(model.mlp_ratio * e)]
    for i in range(model.depth):
        out += norm + [e, n, lf, n, lf, d, d, e, 9, lf, lf, 9] + norm + mlp
        if upto == f"xca{i}":
            return out
    for j in range(model.cls_attn_layers):
        out += norm + [e, d, lf, n, n, e] + norm + mlp
        if upto == f"ca{j}":
            return out
    return out + norm


def xcit_bound(model, num_tokens, reference, upto="final", normalizes=False):
    """Float32 bound of `|ours - official|` for an XCiT output, two float32 programs,
    relative to the reference's largest magnitude (`xcit_reductions`; `normalizes`: as
    in `vit_bound`, a model normalising uint8 pixels itself)."""
    first = [tolerance.LIBRARY_FUNCTION] if normalizes else []
    return tolerance.network_tolerance(first + xcit_reductions(model, num_tokens, upto),
                                       _scale(reference))


def measure(fixtures) -> dict:
    """`{output: (max |ours - official|, bound)}`, the worst ratio over sizes kept."""
    fixtures = pathlib.Path(fixtures)
    x = _inputs(fixtures)
    worst = {}

    def record(key, actual, expected, bound):
        err = _err(actual, expected)
        if key not in worst or err / bound > worst[key][0] / worst[key][1]:
            worst[key] = (err, bound)

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
            tokens = np.abs(ref[f"{s}/tokens"]).max()
            outputs = {
                "cls": (model(x[s]), "cls"),
                "attn": (attn[:, :, idx][:, :, :, idx], "attn"),
                "intermediate4": (inter[:, :, idx], "intermediate"),
                "pos_embed_interp": (
                    ops.convert_to_numpy(model.interpolate_pos_encoding(*grid))[:, idx],
                    "pos_embed"),
            }
            for key, (actual, quantity) in outputs.items():
                expected = ref[f"{s}/{key}"]
                bound = vit_bound(model, grid, quantity, expected, tokens)
                if bound > 0:  # 0: the source grid, compared exactly by the tests
                    record(f"{name}/{key}", actual, expected, bound)
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
        grids = {s: (x[s].shape[1] // backbone.patch_size, x[s].shape[2] // backbone.patch_size)
                 for s in SIZES}
        for s in SIZES:
            expected = ref[f"{s}/{who}_out"]
            record(f"golden_head/{who}", wrapper([x[s]]), expected,
                   head_bound(wrapper, grids[s], expected))
        expected = ref[f"multicrop/{who}_out"]
        bound = min(head_bound(wrapper, g, expected) for g in grids.values())
        record(f"golden_head/{who}", wrapper([x[s] for s in SIZES]), expected, bound)
    return worst


if __name__ == "__main__":
    repo = pathlib.Path(__file__).resolve().parents[2]
    shared = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", repo.parent / "shared"))
    result = measure(shared / "fixtures" / "official_dino")
    backend = keras.backend.backend()
    for key, (err, bound) in result.items():
        print(json.dumps({"backend": backend, "output": key, "max_abs_err": err,
                          "bound": bound, "ratio": err / bound}))
    print(json.dumps({"backend": backend, "output": "ALL",
                      "ratio": max(err / bound for err, bound in result.values())}))
