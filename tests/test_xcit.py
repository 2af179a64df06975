"""XCiT against the official model (facebookresearch/xcit `xcit.py`), on every backend.

`../shared/fixtures/official_dino_zoo/` holds two reduced official XCiTs (width 48, 2 XCA
blocks, 4 heads, 2 class-attention blocks; patch 16 and 8) with trained-looking
BatchNorm statistics, their CLS outputs and both attention maps at four sizes (one of
them not square, one of them not a multiple of the patch), and intermediate tokens.
"""

import numpy as np
import pytest
from keras import ops

import keras_dino
from keras_dino.checkpoints import official
from keras_dino.models.official_names import xcit_map
from keras_dino.models.xcit import XCITS, XCiT, xcit
from keras_dino.testing.parity import xcit_bound
from keras_dino.testing.tolerance import assert_within

SIZES = ("224x224", "96x96", "64x64", "96x64")
# Against the official XCiT: two float32 programs, bounded by the rounding of the
# reductions an output depends on (`xcit_bound`, keras_dino/testing/parity.py: the 3x3
# convolution stages, then per XCA block sums over the tokens, the head's 12 channels,
# 9-tap depthwise convolutions and the MLP; per class-attention block sums over the
# tokens): for xcit_mini8 at 224x224 (785 tokens) sqrt(sum) = 112, so 2 * 6 * 112 *
# 2**-24 = 8e-5 of max |reference|. It was rtol 1e-4 + atol 2e-5, set by one machine.


def _check(model, actual, expected, grid, upto, what="", normalizes=False):
    """`actual` against the official `expected` for an image of `grid` patches."""
    num_tokens = 1 + int(grid[0]) * int(grid[1])
    bound = xcit_bound(model, num_tokens, expected, upto, normalizes)
    assert_within(_np(actual), expected, bound, what or upto)


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module", params=(16, 8), ids=("mini16", "mini8"))
def mini(request, zoo_dir):
    patch = request.param
    model = XCiT(patch_size=patch, embed_dim=48, depth=2, num_heads=4, cls_attn_layers=2)
    state = dict(np.load(zoo_dir / f"backbone_xcit_mini{patch}.npz"))
    official.load_state_dict(xcit_map(model), state, "XCiT")
    return model, np.load(zoo_dir / f"outputs_xcit_mini{patch}.npz"), state


@pytest.mark.parametrize("size", SIZES)
def test_cls_output_and_class_attention_match_the_official_model(mini, zoo_inputs, size):
    model, ref, _ = mini
    x = zoo_inputs[size]
    grid = ref[f"{size}/grid_hw"]
    _check(model, model(x), ref[f"{size}/cls"], grid, "final", "cls")
    attention = _np(model.get_last_selfattention(x))
    assert attention.shape == (2, 4, 1, ref[f"{size}/attn_cls_last"].shape[-1])
    _check(model, attention[:, :, 0], ref[f"{size}/attn_cls_last"], grid,
           f"ca{model.cls_attn_layers - 1}", "attn_cls_last")


@pytest.mark.parametrize("size", ("96x96", "64x64", "96x64"))
def test_every_stage_matches_the_official_debug_tensors(mini, zoo_inputs, size):
    model, ref, _ = mini
    x = zoo_inputs[size]
    grid = model.patch_embed(x)
    rows, cols = grid.shape[1], grid.shape[2]
    # every stride-2 convolution rounds up: ceil(n / 2)
    assert (rows, cols) == tuple(int(v) for v in ref[f"{size}/grid_hw"])
    tokens = ops.reshape(grid, (2, rows * cols, 48))
    hw = (rows, cols)
    _check(model, tokens, ref[f"{size}/patch_tokens"], hw, "patch")
    # the Fourier positions, NCHW in the fixture
    positions = _np(model.pos_embeder(grid))[0].reshape(rows, cols, 48).transpose(2, 0, 1)
    _check(model, positions[None], ref[f"{size}/pos_encoding"], hw, "pos")
    tokens = tokens + model.pos_embeder(grid)
    tokens, xca = model.blocks[0](tokens, grid_h=rows, grid_w=cols, return_attention=True)
    _check(model, tokens, ref[f"{size}/tokens_after_xca_block0"], hw, "xca0")
    tokens, xca = model.blocks[1](tokens, grid_h=rows, grid_w=cols, return_attention=True)
    _check(model, tokens, ref[f"{size}/tokens_after_xca_last"], hw, "xca1")
    _check(model, xca, ref[f"{size}/xca_attn_last"], hw, "xca1", "xca_attn")  # (B, h, d, d)
    cls = ops.broadcast_to(model.cls_token, (2, 1, 48))
    tokens = ops.concatenate([cls, tokens], axis=1)
    for j, block in enumerate(model.cls_attn_blocks):
        # block 1 checks the official quirks: patch tokens get norm1(x) added, then doubled
        tokens = block(tokens)
        _check(model, tokens, ref[f"{size}/tokens_after_ca_block{j}"], hw, f"ca{j}")
    _check(model, model.forward_features(x), ref[f"{size}/tokens_final_norm"], hw, "final")


def test_official_state_dict_round_trip(mini):
    model, _, state = mini
    ours = official.state_dict_of(xcit_map(model))
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert sorted(ours) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


@pytest.mark.parametrize("suffix", (".pth", ".npz"))
def test_load_pretrained_reads_the_official_files(zoo_dir, zoo_inputs, suffix):
    model = keras_dino.load_pretrained(zoo_dir / f"backbone_xcit_mini8{suffix}")
    assert isinstance(model, XCiT)
    config = official.infer_xcit_config(dict(np.load(zoo_dir / "backbone_xcit_mini8.npz")))
    assert config == dict(patch_size=8, embed_dim=48, depth=2, num_heads=4, cls_attn_layers=2,
                          mlp_ratio=4.0, qkv_bias=True)
    outputs = np.load(zoo_dir / "outputs_xcit_mini8.npz")
    _check(model, model(zoo_inputs["96x64"]), outputs["96x64/cls"], outputs["96x64/grid_hw"],
           "final", "cls")
    with pytest.raises(ValueError, match="not a xcit_small_12_p8"):
        keras_dino.load_pretrained(zoo_dir / f"backbone_xcit_mini8{suffix}",
                                   arch="xcit_small_12_p8")
    with pytest.raises(ValueError, match="patch_size=16 was asked for"):
        keras_dino.load_pretrained(zoo_dir / f"backbone_xcit_mini8{suffix}", patch_size=16)


@pytest.mark.slow  # backend-independent; runs once per CI run
def test_official_sizes_and_parameter_counts():
    # xcit.py's registry; DINO released small_12 and medium_24 at patch 16 and 8.
    assert set(XCITS) >= {"xcit_small_12_p16", "xcit_small_12_p8", "xcit_medium_24_p16",
                          "xcit_medium_24_p8"}
    small = xcit("xcit_small_12_p16")
    small.build((None, None, None, 3))
    # 26.3 M in the official model with its 1000-class head (384 * 1000 + 1000 = 0.385 M).
    assert sum(int(np.prod(v.shape)) for v in small.trainable_weights) == pytest.approx(
        26.25e6 - 0.385e6, rel=0.01)
    assert (xcit("xcit_medium_24_p8").eta, xcit("xcit_nano_12_p16").tokens_norm) == (1e-5, False)
    with pytest.raises(ValueError, match="unknown XCiT 'xcit_huge'"):
        xcit("xcit_huge")
    from keras_dino.models.backbones import backbone_config

    with pytest.raises(ValueError, match="unknown XCiT 'xcit_smal_12_p16'; did you mean "
                                         "'xcit_small_12_p16'"):
        backbone_config("xcit_smal_12_p16")
    with pytest.raises(ValueError, match="unknown ResNet 'resnet5'; did you mean 'resnet50'"):
        backbone_config("resnet5")
    with pytest.raises(ValueError, match="patch size 8 or 16"):
        XCiT(patch_size=4)


@pytest.mark.slow  # backend-independent; runs once per CI run
def test_keras_file_round_trip(tmp_path, zoo_inputs):
    import keras

    model = XCiT(patch_size=16, embed_dim=32, depth=1, num_heads=4, cls_attn_layers=1)
    x = zoo_inputs["64x64"]
    expected = _np(model(x))
    path = tmp_path / "xcit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(_np(loaded(x)), expected, rtol=1e-6, atol=1e-6)


def test_attention_maps_tool_reads_xcit(zoo_dir, zoo_inputs):
    from keras_dino.evaluation import cls_attention_maps

    model = keras_dino.load_pretrained(zoo_dir / "backbone_xcit_mini16.pth")
    maps = cls_attention_maps(model, zoo_inputs["96x64"][0])
    outputs = np.load(zoo_dir / "outputs_xcit_mini16.npz")
    ref = outputs["96x64/attn_cls_last"][0, :, 1:]
    _check(model, maps, ref.reshape(4, 6, 4), outputs["96x64/grid_hw"], "ca1", "attention map")


@pytest.mark.slow  # backend-independent; runs once per CI run
def test_dino_trains_an_xcit_and_its_checkpoint_loads_back(tmp_path):
    import keras

    from keras_dino.models.official_names import xcit_map as names

    keras.utils.set_random_seed(0)
    model = keras_dino.DINO(arch="xcit_test", patch_size=8, out_dim=32, epochs=1,
                            warmup_epochs=0, local_crops_number=2, momentum_teacher=0.9,
                            vit_kwargs=dict(embed_dim=32, depth=1, num_heads=4,
                                            cls_attn_layers=1),
                            head_kwargs=dict(hidden_dim=32, bottleneck_dim=16), lr=0.01)
    assert isinstance(model.backbone, XCiT)
    rng = np.random.default_rng(0)
    crops = tuple(rng.normal(size=(4, s, s, 3)).astype("float32") for s in (32, 32, 16, 16))
    model.compile()
    before = official.state_dict_of(names(model.student.backbone))
    history = model.fit(crops, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = official.state_dict_of(names(model.student.backbone))
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    # every parameter kind learns, the depthwise LPI convolutions and temperatures too
    for name in ("blocks.0.attn.temperature", "blocks.0.local_mp.conv1.weight",
                 "patch_embed.proj.0.0.weight", "cls_attn_blocks.0.gamma2", "cls_token"):
        assert name in moved, name
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    teacher = keras_dino.load_pretrained(path)
    x = crops[0]
    np.testing.assert_allclose(_np(teacher(x)), _np(model.backbone(x)), rtol=1e-5, atol=1e-5)
    again = keras_dino.DINO.from_pretrained(path, epochs=1)
    assert isinstance(again.backbone, XCiT) and again.backbone.embed_dim == 32
    np.testing.assert_allclose(_np(again.teacher(x)), _np(model.teacher(x)), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.tf_only
def test_saved_model_export_serves_features_and_class_attention(zoo_dir, tmp_path):
    import tensorflow as tf

    model = keras_dino.load_pretrained(zoo_dir / "backbone_xcit_mini16.pth")
    path = keras_dino.export_saved_model(model, tmp_path, image_size=64,
                                         include_patch_tokens=True)
    served = tf.saved_model.load(str(path))
    pixels = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3)).astype("uint8")
    x = keras_dino.normalize_images(pixels.astype("float32"))
    out = served.signatures["serving_default"](images=tf.constant(pixels))
    # the export against the model: two float32 programs, plus the export's own uint8
    # normalisation (within 3 ulps of normalize_images: `normalizes=True`)
    grid = (4, 4)
    _check(model, out["cls_embedding"].numpy(), _np(model(x)), grid, "final", "cls", True)
    tokens = _np(model.forward_features(x))[:, 1:]
    _check(model, out["patch_tokens"].numpy(), tokens, grid, "final", "patch_tokens", True)
    attention = served.signatures["attention"](images=tf.constant(pixels))["cls_attention"]
    expected = _np(model.get_last_selfattention(x))[:, :, 0, 1:].reshape(2, 4, 4, 4)
    _check(model, attention.numpy(), expected, grid, "ca1", "cls_attention", True)
    model_info = keras_dino.export.load_metadata(path)["model"]
    assert (model_info["class"], model_info["patch_size"], model_info["cls_attn_layers"]) == (
        "XCiT", 16, 2)


@pytest.mark.parametrize("file, arch, message", [
    ("official_dino_zoo/backbone_xcit_mini16.pth", "resnet50",
     "holds an XCiT backbone, but arch='resnet50' is a ResNet"),
    ("official_dino_zoo/backbone_resnet_mini.pth", "xcit_small_12_p16",
     "holds a ResNet backbone, but arch='xcit_small_12_p16' is an XCiT"),
    ("official_dino/backbone_vit_mini16.pth", "resnet50",
     "holds a Vision Transformer backbone, but arch='resnet50' is a ResNet"),
    ("official_dino_zoo/backbone_xcit_mini8.pth", "vit_small",
     "holds an XCiT backbone, but arch='vit_small' is a Vision Transformer"),
])
def test_a_checkpoint_of_one_architecture_loaded_as_another_names_both(fixtures_dir, file,
                                                                        arch, message):
    with pytest.raises(ValueError, match=message):
        keras_dino.load_pretrained(fixtures_dir.parent / file, arch=arch)


def test_dino_from_pretrained_refuses_another_family(fixtures_dir):
    with pytest.raises(ValueError, match="holds a Vision Transformer backbone, but "
                                         "arch='xcit_small_12_p16' is an XCiT"):
        keras_dino.DINO.from_pretrained(fixtures_dir / "backbone_vit_mini16.pth",
                                        arch="xcit_small_12_p16", epochs=1)
    with pytest.raises(ValueError, match="holds an XCiT backbone, but arch='vit_small'"):
        keras_dino.DINO.from_pretrained(fixtures_dir.parent / "official_dino_zoo" /
                                        "backbone_xcit_mini16.pth", arch="vit_small", epochs=1)
