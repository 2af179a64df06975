"""`VisionTransformer`, `DINOHead` and `MultiCropWrapper` as Keras models.

Numeric parity with the official code is in test_parity_official.py; this file covers
the model API: factories and configs, shapes, input errors, serialisation, mixed
precision, trainability and initialisation. Runs on every backend.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.models import (
    ARCHITECTURES,
    DINOHead,
    MultiCropWrapper,
    VisionTransformer,
    vit_base,
    vit_small,
    vit_tiny,
)
from keras_dino.preprocessing import normalize_images
from keras_dino.testing.tolerance import (
    UNIT_ROUNDOFF,
    assert_within,
    head_reductions,
    network_tolerance,
    sum_tolerance,
)

RNG = np.random.default_rng(0)
# bfloat16 keeps 8 significant bits: unit roundoff 2^-8.
BF16_UNIT_ROUNDOFF = 2.0**-8
# The golden checkpoint's head (official DINOHead at reduced size).
HEAD = dict(out_dim=1024, hidden_dim=64, bottleneck_dim=32, in_dim=48)


def _np(x):
    return ops.convert_to_numpy(x)


def _small_vit(**kwargs):
    # vit_mini16's shapes (the official fixtures' model), at depth 2.
    config = dict(img_size=224, patch_size=16, embed_dim=48, depth=2, num_heads=3)
    config.update(kwargs)
    return VisionTransformer(**config)


def _images(h, w, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, h, w, 3)).astype("float32")


class _policy:
    """Sets the global dtype policy for a block and restores the previous one."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.mixed_precision.dtype_policy()
        keras.mixed_precision.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.mixed_precision.set_dtype_policy(self.previous)


# ---------------------------------------------------------------------------- factories


@pytest.mark.parametrize(
    "factory, arch, width, heads",
    [
        (vit_tiny, "vit_tiny", 192, 3),
        (vit_small, "vit_small", 384, 6),
        (vit_base, "vit_base", 768, 12),
    ],
)
@pytest.mark.parametrize("patch_size", [16, 8])
def test_factories_follow_the_official_recipes(factory, arch, width, heads, patch_size):
    model = factory(patch_size=patch_size, drop_path_rate=0.1)
    config = model.get_config()
    assert ARCHITECTURES[arch] == dict(embed_dim=width, depth=12, num_heads=heads)
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (width, 12, heads)
    assert config["patch_size"] == patch_size and config["img_size"] == 224
    assert config["mlp_ratio"] == 4 and config["qkv_bias"] is True
    assert model.num_patches == (224 // patch_size) ** 2
    assert model.name == f"{arch}_{patch_size}"
    # Stochastic depth grows linearly from 0 to drop_path_rate over the blocks.
    rates = [block.drop_path_rate for block in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 12), atol=1e-12)
    clone = VisionTransformer.from_config(config)
    assert clone.get_config() == config


def test_factory_kwargs_override_the_recipe():
    model = vit_small(8, depth=2, img_size=96, qkv_bias=False)
    assert (model.embed_dim, model.depth, model.num_heads) == (384, 2, 6)
    assert len(model.blocks) == 2 and model.num_patches == 144
    assert model.blocks[0].attn.qkv_bias is False


def test_a_patch_size_that_does_not_divide_img_size_floors_like_the_official_one():
    """The official PatchEmbed counts (img_size // patch_size) ** 2 patches, its strided
    convolution dropping the remainder; so does this one (`--patch_size=15` trains)."""
    assert VisionTransformer(img_size=100, patch_size=16).num_patches == 36
    assert VisionTransformer(img_size=224, patch_size=15).num_patches == 196
    with pytest.raises(ValueError, match=r"patch_size must be in \[1, img_size=32\]; got 48"):
        VisionTransformer(img_size=32, patch_size=48)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "patch_size, img_size, h, w",
    [(16, 224, 32, 48), (14, 56, 42, 28), (15, 224, 50, 37)],
)
def test_any_patch_size_and_non_square_inputs(patch_size, img_size, h, w):
    model = _small_vit(patch_size=patch_size, img_size=img_size)
    x = _images(h, w)
    n = 1 + (h // patch_size) * (w // patch_size)
    cls = _np(model(x))
    assert cls.shape == (2, 48)
    attn = _np(model.get_last_selfattention(x))
    assert attn.shape == (2, 3, n, n) and attn.dtype == np.float32
    # Rows of a float32 softmax sum to 1 within the rounding of two n-term sums (its
    # denominator, numpy's row sum) and of the division: sum_tolerance(n, 1, 2) + 2u.
    rows = sum_tolerance(n, 1.0, programs=2) + 2 * UNIT_ROUNDOFF
    assert_within(attn.sum(-1), np.ones(attn.shape[:-1]), rows, "softmax rows")
    layers = model.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and all(tuple(t.shape) == (2, n, 48) for t in layers)
    features = _np(model.forward_features(x))
    assert features.shape == (2, n, 48)
    # The last intermediate layer is the normalised output; its token 0 is forward().
    np.testing.assert_allclose(_np(layers[-1]), features, atol=1e-6)
    np.testing.assert_allclose(features[:, 0], cls, atol=1e-6)
    assert tuple(model.prepare_tokens(x).shape) == (2, n, 48)
    assert tuple(model.interpolate_pos_encoding(h // patch_size, w // patch_size).shape) == (
        1,
        n,
        48,
    )


def test_intermediate_layers_n_is_checked():
    model = _small_vit()
    x = _images(32, 48)
    # Called before any forward pass: builds the model.
    assert len(model.get_intermediate_layers(x, n=model.depth)) == model.depth
    with pytest.raises(ValueError, match="n must be in"):
        model.get_intermediate_layers(x, n=3)
    with pytest.raises(ValueError, match="n must be in"):
        model.get_intermediate_layers(x, n=0)


def test_wrong_channel_count_is_rejected_and_leaves_the_model_usable():
    model = _small_vit()
    with pytest.raises(ValueError, match=r"RGB images \(\.\.\., H, W, 3\)"):
        model(np.zeros((1, 32, 32, 1), "float32"))
    assert not model.built
    assert tuple(model(_images(32, 48)).shape) == (2, 48)
    with pytest.raises(ValueError, match="RGB"):
        model(np.zeros((1, 32, 32, 4), "float32"))


def test_non_static_spatial_shape_is_rejected():
    model = _small_vit()
    model.build((None, None, None, 3))
    symbolic = keras.KerasTensor((None, None, None, 3))
    with pytest.raises(ValueError, match="height and width to be known"):
        model.prepare_tokens(symbolic)
    with pytest.raises(ValueError, match="height and width to be known"):
        model.get_last_selfattention(keras.KerasTensor((2, 32, None, 3)))


@pytest.mark.tf_only
@pytest.mark.parametrize("registers", [0, 3])
def test_tf_function_with_dynamic_height_and_width_matches_the_eager_model(registers):
    """Traced once with `None` height and width (as the ONNX export is), the model
    interpolates its position embeddings in the graph and computes what it computes
    eagerly, at the training grid (embeddings kept as they are) and at other grids."""
    import tensorflow as tf

    model = _small_vit(num_register_tokens=registers)
    model.build((None, None, None, 3))
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32)]
    tokens = tf.function(lambda x: model.forward_features(x), input_signature=spec)
    attention = tf.function(model.get_last_selfattention, input_signature=spec)
    side = model.img_size
    for h, w in ((side, side), (32, 48), (side, 16), (80, 32)):
        x = _images(h, w)
        np.testing.assert_allclose(tokens(x).numpy(), _np(model.forward_features(x)),
                                   atol=2e-5)
        np.testing.assert_allclose(attention(x).numpy(),
                                   _np(model.get_last_selfattention(x)), atol=1e-6)


# ---------------------------------------------------------------------------- DINOHead


def test_head_matches_numpy_and_its_bottleneck_is_l2_normalised():
    head = DINOHead(**HEAD)
    rng = np.random.default_rng(2)
    for w in head.weights:
        w.assign(rng.normal(0.0, 0.3, w.shape).astype("float32"))
    head.last_layer.kernel_g.assign(np.ones(1024, "float32"))
    x = rng.normal(size=(6, 48))
    dense = [layer for layer in head.mlp if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 3 and len(head.mlp) == 5  # Linear, GELU, Linear, GELU, Linear

    def gelu(v):
        return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))

    h = x
    for i, layer in enumerate(dense):
        h = h @ _np(layer.kernel) + _np(layer.bias)
        if i < 2:
            h = gelu(h)
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    v = _np(head.last_layer.kernel_v)
    expected = h @ (v / np.linalg.norm(v, axis=0))
    y = _np(head(x.astype("float32")))
    # one float32 program against float64: the head's reductions (48, 64, 64 wide layers,
    # GELUs, the 32-wide L2 norm and last layer) relative to max |logit|; atol 1e-5 before
    reductions = head_reductions(48, 64, 32, nlayers=3)
    assert_within(y, expected, network_tolerance(reductions, np.abs(expected).max(), programs=1),
                  "head")
    # g = 1: every logit is a cosine similarity.
    assert np.abs(y).max() <= 1.0 + 1e-6
    # The bottleneck is normalised: scaling the bottleneck layer changes nothing.
    dense[-1].kernel.assign(_np(dense[-1].kernel) * 9.0)
    dense[-1].bias.assign(_np(dense[-1].bias) * 9.0)
    # the same reductions, in two float32 programs (other bottleneck values)
    assert_within(_np(head(x.astype("float32"))), y, network_tolerance(reductions, np.abs(y).max()),
                  "scaled bottleneck")


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_gain_is_fixed_at_one_only_when_norm_last_layer(norm_last_layer):
    head = DINOHead(**HEAD, norm_last_layer=norm_last_layer)
    g = head.last_layer.kernel_g
    np.testing.assert_array_equal(_np(g), np.ones(1024, "float32"))
    assert g.trainable is (not norm_last_layer)
    trainable = {id(w) for w in head.trainable_weights}
    assert (id(g) in trainable) is (not norm_last_layer)
    assert id(head.last_layer.kernel_v) in trainable
    assert head.get_config()["norm_last_layer"] is norm_last_layer


def test_head_variants_nlayers_and_batch_norm():
    one = DINOHead(out_dim=1024, nlayers=1, bottleneck_dim=32, in_dim=48)
    assert len(one.mlp) == 1 and tuple(one.mlp[0].kernel.shape) == (48, 32)
    assert sorted(official.head_variable_map(one)) == [
        "last_layer.weight_g",
        "last_layer.weight_v",
        "mlp.bias",
        "mlp.weight",
    ]
    bn = DINOHead(**HEAD, use_bn=True)
    kinds = [type(layer).__name__ for layer in bn.mlp]
    assert kinds == ["Dense", "BatchNorm", "Activation"] * 2 + ["Dense"]
    x = np.random.default_rng(4).normal(size=(6, 48)).astype("float32")
    assert tuple(bn(x, training=True).shape) == (6, 1024)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(out_dim=10, nlayers=0)


# ---------------------------------------------------------------------------- init


def _check_trunc_normal_002(values, what):
    values = np.asarray(values, np.float64).ravel()
    n = values.size
    # trunc_normal_(std=.02) with bounds +-2 is N(0, 0.02): the sample std has standard
    # error 0.02 / sqrt(2n) and the mean 0.02 / sqrt(n); allow 5 standard errors.
    assert abs(values.std() - 0.02) < 5 * 0.02 / math.sqrt(2 * n), what
    assert abs(values.mean()) < 5 * 0.02 / math.sqrt(n), what


def test_backbone_init_statistics():
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=1, num_heads=3)
    model.build((None, None, None, 3))
    block = model.blocks[0]
    dense = [block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2]
    _check_trunc_normal_002(np.concatenate([_np(d.kernel).ravel() for d in dense]), "kernels")
    for layer in dense:
        np.testing.assert_array_equal(_np(layer.bias), 0.0, err_msg=layer.name)
    _check_trunc_normal_002(_np(model.pos_embed), "pos_embed")
    assert abs(float(np.std(_np(model.cls_token)))) < 0.05  # only 48 values
    for norm in (block.norm1, block.norm2, model.norm):
        np.testing.assert_array_equal(_np(norm.gamma), 1.0)
        np.testing.assert_array_equal(_np(norm.beta), 0.0)
        assert norm.get_config()["epsilon"] == 1e-6


def test_trunc_normal_never_draws_the_clip_bounds(monkeypatch):
    """A uniform draw of exactly -1 (erfinv = -inf) must not become a weight of -2."""
    from keras_dino.layers.initializers import TruncNormal

    def edges(shape, minval, maxval, dtype=None, seed=None):
        return ops.convert_to_tensor(np.resize(np.float32([minval, maxval]), shape), dtype)

    monkeypatch.setattr(keras.random, "uniform", edges)
    values = _np(TruncNormal(stddev=0.02)((2, 3)))
    assert np.all(np.isfinite(values)) and np.abs(values).max() < 6 * 0.02, values


def test_head_init_statistics():
    head = DINOHead(out_dim=512, hidden_dim=512, bottleneck_dim=256, in_dim=384)
    for layer in head.mlp:
        if isinstance(layer, keras.layers.Dense):
            _check_trunc_normal_002(_np(layer.kernel), layer.name)
            np.testing.assert_array_equal(_np(layer.bias), 0.0, err_msg=layer.name)
    # The last layer keeps nn.Linear's default init (the official head applies its
    # trunc-normal init before creating it): U(-1/sqrt(in), 1/sqrt(in)).
    v = _np(head.last_layer.kernel_v)
    bound = 256**-0.5
    assert np.abs(v).max() <= bound
    assert abs(v.std() - bound / math.sqrt(3)) < 5 * bound / math.sqrt(3) * math.sqrt(0.2 / v.size)


# ---------------------------------------------------------------------------- serialisation


def _wrapper():
    backbone = _small_vit(drop_path_rate=0.1)
    head = DINOHead(**HEAD, norm_last_layer=False)
    model = MultiCropWrapper(backbone, head)
    model.build()
    return model


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = _wrapper()
    crops = [_images(32, 48), _images(32, 48, seed=1), _images(16, 16, seed=2)]
    logits, features = model(crops, return_features=True)
    attn = model.backbone.get_last_selfattention(crops[0])

    model.save(tmp_path / "wrapper.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapper.keras")
    assert isinstance(loaded, MultiCropWrapper)
    logits2, features2 = loaded(crops, return_features=True)
    np.testing.assert_array_equal(_np(logits2), _np(logits))
    np.testing.assert_array_equal(_np(features2), _np(features))
    np.testing.assert_array_equal(_np(loaded.backbone.get_last_selfattention(crops[0])), _np(attn))
    assert loaded.backbone.get_config() == model.backbone.get_config()
    assert loaded.head.last_layer.kernel_g.trainable

    model.backbone.save(tmp_path / "vit.keras")
    vit = keras.saving.load_model(tmp_path / "vit.keras")
    assert isinstance(vit, VisionTransformer)
    np.testing.assert_array_equal(_np(vit(crops[2])), _np(model.backbone(crops[2])))

    model.head.save(tmp_path / "head.keras")
    head = keras.saving.load_model(tmp_path / "head.keras")
    assert isinstance(head, DINOHead) and head.get_config() == model.head.get_config()
    np.testing.assert_array_equal(_np(head(features)), _np(model.head(features)))


def test_from_config_round_trip_of_models():
    model = _wrapper()
    config = model.get_config()
    clone = MultiCropWrapper.from_config(config)
    clone.build()
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = _images(32, 48)
    np.testing.assert_array_equal(_np(clone(x)), _np(model(x)))
    head_config = model.head.get_config()
    assert DINOHead.from_config(head_config).get_config() == head_config


# ---------------------------------------------------------------------------- mixed precision


def _mini16(fixtures_dir):
    state = dict(np.load(fixtures_dir / "backbone_vit_mini16.npz"))
    model = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
    official.load_state_dict(official.backbone_variable_map(model), state)
    return model, state


def test_mixed_bfloat16_backbone(fixtures_dir):
    model, state = _mini16(fixtures_dir)
    with _policy("mixed_bfloat16"):
        mixed = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
        official.load_state_dict(official.backbone_variable_map(mixed), state)
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    u8 = np.load(fixtures_dir / "inputs.npz")["96x96/uint8_nhwc"][:, :32, :48]
    x = _np(normalize_images(u8))
    ref = _np(model(x)).astype(np.float64)
    y = mixed(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    y = _np(ops.cast(y, "float32")).astype(np.float64)
    # Each of the ~12 roundings per block (plus input and patch embedding) adds a
    # relative error of at most u = 2^-8; accumulated as a random walk, the relative RMS
    # error of the output is below sqrt(rounds) * u (observed: ~1.6 u).
    rounds = 2 + 12 * model.depth
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < math.sqrt(rounds) * BF16_UNIT_ROUNDOFF, rel
    assert rel > 0.05 * BF16_UNIT_ROUNDOFF  # it really ran in bfloat16
    # The attention softmax runs and returns float32: rows sum to 1 to float32 precision.
    attn = mixed.get_last_selfattention(x)
    assert keras.backend.standardize_dtype(attn.dtype) == "float32"
    n = attn.shape[-1]  # float32 softmax rows: as in test_any_patch_size_and_non_square_inputs
    rows = sum_tolerance(n, 1.0, programs=2) + 2 * UNIT_ROUNDOFF
    assert_within(_np(attn).sum(-1), np.ones(attn.shape[:-1]), rows, "softmax rows")
    ref_attn = _np(model.get_last_selfattention(x))
    assert np.abs(_np(attn) - ref_attn).max() < math.sqrt(rounds) * BF16_UNIT_ROUNDOFF


def test_mixed_bfloat16_head_last_layer_runs_in_float32():
    head32 = DINOHead(**HEAD)
    with _policy("mixed_bfloat16"):
        head = DINOHead(**HEAD)
    head.set_weights(head32.get_weights())
    assert head.mlp[0].compute_dtype == "bfloat16"
    assert head.last_layer.compute_dtype == "float32"
    x = np.random.default_rng(3).normal(size=(6, 48)).astype("float32")
    y = head(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    # Logits are cosine similarities (|y| <= 1); the bfloat16 MLP (3 dense layers,
    # 2 GELUs, input cast: ~6 roundings) perturbs the unit bottleneck by ~sqrt(6) u.
    err = np.abs(_np(y) - _np(head32(x))).max()
    assert err < math.sqrt(6) * BF16_UNIT_ROUNDOFF, err


def test_mixed_bfloat16_wrapper_output_is_float32():
    with _policy("mixed_bfloat16"):
        model = _wrapper()
    logits, features = model([_images(32, 48)], return_features=True)
    assert keras.backend.standardize_dtype(features.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert tuple(logits.shape) == (2, 1024)


def test_remat_is_configured_and_refuses_dropout_it_cannot_replay():
    model = vit_tiny(patch_size=16, depth=1, remat=True, drop_path_rate=0.1)
    assert VisionTransformer.from_config(model.get_config()).remat is True
    with pytest.raises(ValueError, match="remat=True cannot replay dropout"):
        vit_tiny(patch_size=16, depth=1, remat=True, drop_rate=0.1)


# ---------------------------------------------------------------------------- register tokens


def _with_registers(n=4):
    model = _small_vit(num_register_tokens=n)
    model.build((None, None, None, 3))
    if n:  # registers far from their ~1e-6 initialisation, so that misplacing them shows
        model.register_tokens.assign(
            np.random.default_rng(5).normal(size=(1, n, 48)).astype("float32"))
    return model


def test_register_tokens_follow_the_class_token_without_position_embedding():
    model, plain = _with_registers(4), _small_vit()
    assert plain.num_register_tokens == 0 and plain.num_prefix_tokens == 1
    plain.build((None, None, None, 3))
    assert not [w for w in plain.weights if "register" in w.path]
    assert model.num_prefix_tokens == 5 and tuple(model.register_tokens.shape) == (1, 4, 48)
    x = _images(32, 48)
    tokens = _np(model.prepare_tokens(x))
    assert tokens.shape == (2, 5 + 6, 48)
    pos = _np(model.interpolate_pos_encoding(2, 3))[0]
    patches = _np(model.patch_embed(x))
    cls = np.broadcast_to(_np(model.cls_token)[0, 0] + pos[0], (2, 48))
    np.testing.assert_allclose(tokens[:, 0], cls, atol=1e-6)
    np.testing.assert_array_equal(tokens[:, 1:5], np.broadcast_to(_np(model.register_tokens),
                                                                  (2, 4, 48)))
    np.testing.assert_allclose(tokens[:, 5:], patches + pos[1:], atol=1e-6)
    assert tuple(model.get_last_selfattention(x).shape) == (2, 3, 11, 11)
    blocks = model.get_intermediate_layers(x, 2)
    np.testing.assert_array_equal(_np(blocks[-1]), _np(model.forward_features(x)))
    np.testing.assert_array_equal(_np(model(x)), _np(blocks[-1])[:, 0])
    with pytest.raises(ValueError, match="num_register_tokens"):
        _small_vit(num_register_tokens=-1)


def test_register_tokens_round_trip_through_keras_files_and_official_names(tmp_path):
    from keras_dino.models.official_names import vision_transformer_map

    model, x = _with_registers(2), _images(32, 32)
    assert model.get_config()["num_register_tokens"] == 2
    model.save(tmp_path / "registers.keras")
    loaded = keras.saving.load_model(tmp_path / "registers.keras")
    assert loaded.num_register_tokens == 2
    np.testing.assert_array_equal(_np(loaded.forward_features(x)), _np(model.forward_features(x)))
    # The official names (DINOv2's `register_tokens`); the config is read off the tensors.
    state = {k: np.asarray(v) for k, v in official.state_dict_of(vision_transformer_map(model)).items()}
    assert state["register_tokens"].shape == (1, 2, 48)
    config = official.infer_backbone_config(state, num_heads=3)
    assert config["num_register_tokens"] == 2
    clone = VisionTransformer(**config)
    official.load_state_dict(vision_transformer_map(clone), state)
    np.testing.assert_array_equal(_np(clone.forward_features(x)), _np(model.forward_features(x)))
    assert "num_register_tokens" not in official.infer_backbone_config(
        {k: v for k, v in state.items() if k != "register_tokens"}, num_heads=3)


def test_every_feature_leaves_the_register_tokens_out_of_the_patches():
    """Patch grids, attention maps, the linear probe's average and copy detection read
    the patches from `num_prefix_tokens`: the same numbers as slicing by hand."""
    from keras_dino.evaluation import dense_features
    from keras_dino.evaluation.attention_maps import cls_attention_maps
    from keras_dino.evaluation.copy_detection import copy_detection_features, gem
    from keras_dino.evaluation.linear import linear_features
    from keras_dino.evaluation.video_segmentation import frame_features

    model, x = _with_registers(4), _images(32, 48)
    tokens, attn = _np(model.forward_features(x)), _np(model.get_last_selfattention(x))
    patches = tokens[:, 5:]
    grid = _np(dense_features.patch_features(model, x))
    np.testing.assert_array_equal(grid, patches.reshape(2, 2, 3, 48))
    np.testing.assert_array_equal(_np(dense_features.block_output(model, x, -1)), grid)
    maps = cls_attention_maps(model, x[:1])
    np.testing.assert_allclose(maps, attn[0, :, 0, 5:].reshape(3, 2, 3), atol=1e-7)
    features = _np(linear_features(model, x, 1, avgpool_patchtokens=True))
    expected = np.stack([tokens[:, 0], patches.mean(axis=1)], axis=-1).reshape(2, -1)
    np.testing.assert_allclose(features, expected, atol=1e-6)
    descriptor = _np(copy_detection_features(model, x))
    np.testing.assert_allclose(descriptor[:, 48:], _np(gem(patches)), atol=1e-5)
    frame, frame_grid = frame_features(model, x[0])
    assert frame_grid == (2, 3)
    np.testing.assert_allclose(_np(frame), patches[0], atol=1e-5)


def test_register_tokens_round_trip_through_the_official_checkpoint(tmp_path):
    """`checkpoint.pth` keeps them: the tensor (DINOv2's name) and `args.vit_kwargs`."""
    import keras_dino
    from keras_dino.checkpoints.torch_format import read_checkpoint
    from keras_dino.training.dino import DINO

    dino = DINO(arch="vit_tiny", patch_size=16, out_dim=64,
                vit_kwargs=dict(embed_dim=48, depth=2, num_heads=3, num_register_tokens=2),
                head_kwargs=dict(hidden_dim=32, bottleneck_dim=16), epochs=1, warmup_epochs=0)
    dino.teacher.backbone.register_tokens.assign(
        np.random.default_rng(0).normal(size=(1, 2, 48)).astype("float32"))
    path = dino.save_official_checkpoint(tmp_path / "checkpoint.pth")
    saved = read_checkpoint(path)
    assert tuple(np.shape(saved["teacher"]["backbone.register_tokens"])) == (1, 2, 48)
    assert saved["args"]["vit_kwargs"]["num_register_tokens"] == 2
    x = _images(32, 48)
    expected = _np(dino.teacher.backbone(x))
    resumed = DINO.from_official_checkpoint(path)
    np.testing.assert_array_equal(_np(resumed.teacher.backbone(x)), expected)
    backbone = keras_dino.load_pretrained(path, num_heads=3)
    assert backbone.num_register_tokens == 2
    np.testing.assert_array_equal(_np(backbone(x)), expected)
