"""The building blocks in `keras_dino.layers`, each on its own, against numpy.

Runs on every backend (TensorFlow, JAX and torch CI processes).
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.layers import (
    MLP,
    DropPath,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
    TruncNormal,
    WeightNormDense,
    bicubic_resize_matrix,
    interpolate_pos_encoding,
)
from keras_dino.layers.activations import gelu_exact
from keras_dino.testing.tolerance import (
    LIBRARY_FUNCTION,
    UNIT_ROUNDOFF,
    assert_within,
    matmul_tolerance,
    network_tolerance,
    sum_tolerance,
)

RNG = np.random.default_rng(0)


def _np(x):
    return ops.convert_to_numpy(x)


def _erf_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _tanh_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _randomize(layer, seed=1):
    """Gives every weight of a built layer non-trivial values (biases included)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.0, 0.2, w.shape).astype(w.dtype))


def _round_trip(layer, x, **call_kwargs):
    """from_config(get_config()) gives the same config and, with the weights copied,
    the same output."""
    y = layer(x, **call_kwargs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(x, **call_kwargs)  # builds
    clone.set_weights(layer.get_weights())
    y2 = clone(x, **call_kwargs)
    if isinstance(y, (tuple, list)):
        for a, b in zip(y, y2):
            np.testing.assert_array_equal(_np(a), _np(b))
    else:
        np.testing.assert_array_equal(_np(y), _np(y2))
    return clone


# ---------------------------------------------------------------------------- GELU


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-4.0, 4.0, 81).astype("float32")
    y = _np(gelu_exact(x))
    # One float32 program against float64: erf within 4 ulps (2u|x| after the 0.5 x
    # factor), the roundings of x / sqrt(2) moved through erf' (<= 0.6 u x^2) and of the
    # three products (3u|x|): u (5|x| + 0.6 x^2) = 1.8e-6 at |x| = 4, so 2e-6 (measured
    # 5.6e-7 on torch, 2.0e-7 on jax and TensorFlow); the tanh form is 4e-4 away.
    np.testing.assert_allclose(y, _erf_gelu(x.astype(np.float64)), atol=2e-6)
    # The tanh approximation (Keras' default) is measurably different on these points.
    assert np.abs(_tanh_gelu(x.astype(np.float64)) - _erf_gelu(x.astype(np.float64))).max() > 4e-4


# ---------------------------------------------------------------------------- DropPath


def test_drop_path_is_identity_at_inference():
    layer = DropPath(0.5, seed=3)
    x = RNG.normal(size=(8, 5, 4)).astype("float32")
    np.testing.assert_array_equal(_np(layer(x)), x)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    np.testing.assert_array_equal(_np(DropPath(0.0)(x, training=True)), x)


def test_drop_path_training_statistics():
    rate, n = 0.3, 20000
    keep = 1.0 - rate
    layer = DropPath(rate, seed=7)
    x = np.ones((n, 3, 2), "float32")
    y = _np(layer(x, training=True)).reshape(n, -1)
    # Whole samples are dropped or kept: every row is constant.
    assert np.all(y == y[:, :1])
    rows = y[:, 0]
    kept = rows != 0
    # Kept samples are scaled by exactly 1 / keep.
    # x / keep (or x * (1 / keep)) in float32: 1-2 roundings, 1.2e-7; rtol 1e-6 is 17 u.
    np.testing.assert_allclose(rows[kept], 1.0 / keep, rtol=1e-6)
    # The kept fraction is Binomial(n, keep) / n: within 5 standard errors of keep.
    se = math.sqrt(keep * (1 - keep) / n)
    assert abs(kept.mean() - keep) < 5 * se
    # Hence the expectation is preserved: E[y] = 1, Var[y] = (1 - keep) / keep.
    assert abs(rows.mean() - 1.0) < 5 * math.sqrt((1 - keep) / keep / n)
    # A second call draws a new mask.
    rows2 = _np(layer(x, training=True)).reshape(n, -1)[:, 0]
    assert np.any((rows2 != 0) != kept)


def test_drop_path_config_and_validation():
    layer = DropPath(0.25, seed=4, name="dp")
    config = layer.get_config()
    assert config["rate"] == 0.25 and config["seed"] == 4
    clone = DropPath.from_config(config)
    assert clone.get_config() == config
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="rate"):
        DropPath(-0.1)


# ---------------------------------------------------------------------------- WeightNormDense


def test_weight_norm_dense_matches_numpy():
    layer = WeightNormDense(1024, train_g=True)
    x = RNG.normal(size=(6, 32)).astype("float32")
    layer.build(x.shape)
    assert tuple(layer.kernel_v.shape) == (32, 1024) and tuple(layer.kernel_g.shape) == (1024,)
    np.testing.assert_array_equal(_np(layer.kernel_g), np.ones(1024, "float32"))
    v = RNG.normal(size=(32, 1024)).astype("float32")
    g = RNG.uniform(0.5, 2.0, size=(1024,)).astype("float32")
    layer.kernel_v.assign(v)
    layer.kernel_g.assign(g)
    w = v * g / np.linalg.norm(v, axis=0)
    expected = x @ w
    # Two float32 programs: the 32-term products (matmul_tolerance) and the error of w,
    # whose norm is a 32-term sum of squares (half its relative error after the sqrt) and
    # 5 roundings (sqrt, product, quotient, v * 7.5 below), scaled by |x| @ |w|. (It was
    # rtol 1e-5 + atol 1e-5, a third of this where y is small; 0.06 of that measured.)
    w_error = float(sum_tolerance(32, programs=1)) / 2 + 5 * UNIT_ROUNDOFF
    bound = matmul_tolerance(x, w) + 2 * w_error * (np.abs(x) @ np.abs(w))
    assert_within(_np(layer(x)), expected, bound, "weight-norm dense")
    # Weight normalisation: rescaling v changes nothing.
    layer.kernel_v.assign(v * 7.5)
    assert_within(_np(layer(x)), expected, bound, "weight-norm dense, v x 7.5")


def test_weight_norm_dense_gain_trainability_and_config():
    frozen = WeightNormDense(3)
    frozen.build((None, 4))
    assert not frozen.kernel_g.trainable
    assert [w.name for w in frozen.trainable_weights] == ["kernel_v"]
    trained = WeightNormDense(3, train_g=True)
    trained.build((None, 4))
    assert trained.kernel_g.trainable
    assert sorted(w.name for w in trained.trainable_weights) == ["kernel_g", "kernel_v"]
    x = RNG.normal(size=(2, 4)).astype("float32")
    clone = _round_trip(trained, x)
    assert clone.kernel_g.trainable and clone.get_config()["units"] == 3
    assert tuple(frozen.compute_output_shape((7, 4))) == (7, 3)


def test_weight_norm_dense_defaults_to_float32_under_mixed_precision():
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        layer = WeightNormDense(3)
        y = layer(np.ones((2, 4), "float32"))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert layer.compute_dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


# ---------------------------------------------------------------------------- attention


def _attention_reference(layer, x):
    """The official `Attention.forward` in numpy: qkv laid out (3, heads, head_dim)."""
    b, n, d = x.shape
    h = layer.num_heads
    qkv = x @ _np(layer.qkv.kernel)
    if layer.qkv_bias:
        qkv = qkv + _np(layer.qkv.bias)
    qkv = qkv.reshape(b, n, 3, h, d // h).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    attn = _softmax(q @ k.transpose(0, 1, 3, 2) * layer.scale)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return out @ _np(layer.proj.kernel) + _np(layer.proj.bias), attn


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_attention_matches_numpy(qkv_bias):
    layer = MultiHeadSelfAttention(num_heads=3, qkv_bias=qkv_bias)
    x = RNG.normal(size=(2, 7, 48)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)
    assert layer.scale == pytest.approx(16**-0.5)
    out, attn = layer(x, return_attention=True)
    ref_out, ref_attn = _attention_reference(layer, x.astype(np.float64))
    assert tuple(attn.shape) == (2, 3, 7, 7)
    # One float32 program against float64. Logits up to 6 carry network_tolerance([48, 16],
    # 6, programs=1) = 1.7e-5; a softmax moves a probability by at most half the largest
    # logit error, plus exp's 4 ulps: ~9e-6 (3e-7 measured).
    np.testing.assert_allclose(_np(attn), ref_attn, atol=1e-5)
    # 7 quotients by a 7-term float32 sum: ~14 roundings of values <= 1, 8e-7.
    np.testing.assert_allclose(_np(attn).sum(-1), 1.0, atol=1e-5)
    # network_tolerance([48, 16, LIBRARY_FUNCTION, 7, 7, 48], max|out| = 5.7,
    # programs=1) = 2.4e-5; 1e-4 is 4 times that (1.7e-6 measured).
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-4, rtol=1e-5)
    # The same explicit program on the same input: identical bits; 1e-6 is 2 ulps of 5.7.
    np.testing.assert_allclose(_np(layer(x)), _np(out), atol=1e-6)


def test_attention_fused_path_equals_explicit_path():
    x = RNG.normal(size=(2, 7, 48)).astype("float32")
    explicit = MultiHeadSelfAttention(num_heads=3, qkv_bias=True)
    fused = MultiHeadSelfAttention(num_heads=3, qkv_bias=True, use_fused_attention=True)
    explicit.build(x.shape)
    fused.build(x.shape)
    _randomize(explicit)
    fused.set_weights(explicit.get_weights())
    # Two float32 programs of the same qkv: the fused kernel reorders the attention and
    # its result goes through the projection: network_tolerance([16, LIBRARY_FUNCTION, 7, 7,
    # 48]) of max|out| (2.9e-5 at 4.2; it was atol 1e-5, 0.15 of which measured on torch).
    reference = _np(explicit(x))
    bound = network_tolerance([16, LIBRARY_FUNCTION, 7, 7, 48], np.abs(reference).max())
    assert_within(_np(fused(x)), reference, bound, "fused attention")
    # return_attention always takes the explicit path, so the weights exist.
    out, attn = fused(x, return_attention=True)
    assert tuple(attn.shape) == (2, 3, 7, 7)
    # The explicit program on both sides: identical bits; 1e-6 is 2 ulps of 4.2.
    np.testing.assert_allclose(_np(out), _np(explicit(x)), atol=1e-6)


def test_attention_qk_scale_config_and_errors():
    layer = MultiHeadSelfAttention(
        num_heads=3, qkv_bias=True, qk_scale=0.5, attn_drop=0.1, proj_drop=0.2
    )
    x = RNG.normal(size=(2, 7, 48)).astype("float32")
    clone = _round_trip(layer, x, return_attention=True)
    assert clone.scale == 0.5
    config = clone.get_config()
    assert (config["num_heads"], config["qkv_bias"], config["qk_scale"]) == (3, True, 0.5)
    assert (config["attn_drop"], config["proj_drop"], config["use_fused_attention"]) == (
        0.1,
        0.2,
        False,
    )
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(num_heads=5)(x)  # 48 is not divisible by 5


# ---------------------------------------------------------------------------- patch embedding


def test_patch_embedding_is_a_row_major_patch_projection():
    p, e = 16, 48
    layer = PatchEmbedding(p, e)
    x = RNG.normal(size=(2, 32, 48, 3)).astype("float32")
    layer.build(x.shape)
    _randomize(layer)
    y = _np(layer(x))
    assert y.shape == (2, 2 * 3, e)
    assert tuple(layer.compute_output_shape((None, 32, 48, 3))) == (None, 6, e)
    patches = x.reshape(2, 2, p, 3, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, p * p * 3)
    kernel = _np(layer.proj.kernel).reshape(p * p * 3, e)  # (p, p, C, E)
    # The reference is summed in float64; the layer sums 768 float32 products in any order
    # (BLAS kernel, CPU): one program's error, matmul_tolerance(programs=1), elementwise
    # 6 * sqrt(768) * 2**-24 * (|patches| @ |kernel|), plus the bias addition's rounding.
    expected = patches.astype("float64") @ kernel.astype("float64") + _np(layer.proj.bias)
    bound = matmul_tolerance(patches, kernel, programs=1) + UNIT_ROUNDOFF * np.abs(expected)
    assert_within(y, expected, bound, "patch embedding")
    _round_trip(layer, x)


def test_patch_embedding_default_init_is_torch_conv_default():
    layer = PatchEmbedding(16, 48)
    layer.build((None, 32, 48, 3))
    bound = (3 * 16 * 16) ** -0.5
    kernel = _np(layer.proj.kernel).ravel()
    assert np.abs(kernel).max() <= bound
    # U(-b, b) has std s = b / sqrt(3) and kurtosis 9/5, so the sample std has standard
    # error s * sqrt((9/5 - 1) / (4 n)); allow 5 of them.
    sigma = bound / math.sqrt(3)
    assert abs(kernel.std() - sigma) < 5 * sigma * math.sqrt(0.2 / kernel.size)
    assert np.abs(_np(layer.proj.bias)).max() <= bound


# ---------------------------------------------------------------------------- position embedding


def test_bicubic_matrix_identity_and_partition_of_unity():
    # float64 cubic polynomials at integer offsets are 1 and 0 up to a few float64 ulps
    # (1.1e-16); so are their row sums (the cubic kernel sums to 1 at any offset).
    np.testing.assert_allclose(bicubic_resize_matrix(7, 7, 1.0), np.eye(7), atol=1e-12)
    m = bicubic_resize_matrix(14, 30, 30.1 / 14)
    assert m.shape == (30, 14)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)


def test_interpolate_pos_encoding_shapes_and_identity():
    pe = RNG.normal(size=(1, 1 + 16, 6)).astype("float32")
    np.testing.assert_array_equal(_np(interpolate_pos_encoding(pe, 4, 4)), pe)
    out = _np(interpolate_pos_encoding(pe, 3, 5))
    assert out.shape == (1, 16, 6)
    np.testing.assert_array_equal(out[:, 0], pe[:, 0])  # the CLS embedding is kept
    with pytest.raises(ValueError, match="perfect square"):
        interpolate_pos_encoding(pe[:, :-1], 3, 3)


# ---------------------------------------------------------------------------- MLP and block


def test_mlp_uses_exact_gelu():
    layer = MLP(hidden_dim=9)
    x = np.linspace(-4.0, 4.0, 9 * 3).astype("float32").reshape(1, 3, 9)
    layer.build(x.shape)
    eye = np.eye(9, dtype="float32")
    layer.fc1.kernel.assign(eye)
    layer.fc2.kernel.assign(eye)
    np.testing.assert_array_equal(_np(layer.fc1.bias), 0.0)
    y = _np(layer(x))
    # identity layers around the GELU: its bound (test_gelu_is_the_exact_erf_form)
    np.testing.assert_allclose(y, _erf_gelu(x.astype(np.float64)), atol=2e-6)
    assert np.abs(y - _tanh_gelu(x.astype(np.float64))).max() > 4e-4
    clone = _round_trip(layer, x)
    assert clone.get_config()["hidden_dim"] == 9


def test_transformer_block_layer_norm_epsilon_is_1e_6():
    block = TransformerBlock(num_heads=3, qkv_bias=True)
    # A low-variance input, where eps 1e-6 and Keras' default 1e-3 differ a lot.
    x = (RNG.normal(size=(2, 7, 48)) * 1e-2).astype("float32")
    block.build(x.shape)
    for norm in (block.norm1, block.norm2):
        assert norm.get_config()["epsilon"] == 1e-6
    ref = _layer_norm(x.astype(np.float64), 1.0, 0.0, 1e-6)
    # network_tolerance([48, 48, LIBRARY_FUNCTION], max|y| = 3, programs=1) = 1.1e-5 against
    # float64; the wrong epsilon is 0.1 away (2.3e-7 measured).
    np.testing.assert_allclose(_np(block.norm1(x)), ref, atol=1e-4)
    assert np.abs(_layer_norm(x.astype(np.float64), 1.0, 0.0, 1e-3) - ref).max() > 0.1


def test_transformer_block_matches_numpy_and_round_trips():
    block = TransformerBlock(num_heads=3, mlp_ratio=4.0, qkv_bias=True, drop_path=0.2)
    x = RNG.normal(size=(2, 7, 48)).astype("float32")
    block.build(x.shape)
    _randomize(block)
    for w in block.weights:  # keep the LayerNorm gains near 1
        if "norm" in w.path:
            w.assign(_np(w) * 0.1 + (1.0 if w.name == "gamma" else 0.0))
    y, attn = block(x, return_attention=True)
    assert tuple(y.shape) == (2, 7, 48) and tuple(attn.shape) == (2, 3, 7, 7)
    x64 = x.astype(np.float64)

    def ln(norm, h):
        return _layer_norm(h, _np(norm.gamma), _np(norm.beta), 1e-6)

    attn_out, ref_attn = _attention_reference(block.attn, ln(block.norm1, x64))
    h = x64 + attn_out
    mlp = block.mlp
    hidden = _erf_gelu(ln(block.norm2, h) @ _np(mlp.fc1.kernel) + _np(mlp.fc1.bias))
    ref = h + hidden @ _np(mlp.fc2.kernel) + _np(mlp.fc2.bias)
    # One float32 program against float64: network_tolerance(vit_reductions(1, 48, 7, 16, 3,
    # final_norm=False, patch_embed=False), max|y| = 10.9, programs=1) = 9.8e-5 <= atol.
    np.testing.assert_allclose(_np(y), ref, atol=1e-4, rtol=1e-5)
    # As in test_attention_matches_numpy, after a LayerNorm (3.6e-7 measured).
    np.testing.assert_allclose(_np(attn), ref_attn, atol=1e-5)
    # Inference ignores the drop path; training with drop path changes the output.
    # The same program on the same input: identical bits; 1e-6 is 1 ulp of 10.9.
    np.testing.assert_allclose(_np(block(x, training=False)), _np(y), atol=1e-6)
    clone = _round_trip(block, x)
    config = clone.get_config()
    assert config["drop_path"] == 0.2 and config["mlp_ratio"] == 4.0 and config["qkv_bias"]


# ---------------------------------------------------------------------------- initializer


def test_trunc_normal_is_the_official_trunc_normal():
    init = TruncNormal(stddev=0.02, seed=3)
    w = _np(init((300, 300))).astype(np.float64).ravel()
    n = w.size
    # N(0, 0.02) cut at +-2 (100 sigma): std 0.02, mean 0. Tolerances: 5 standard errors
    # of the sample std (sigma / sqrt(2n)) and mean (sigma / sqrt(n)). Keras'
    # TruncatedNormal(stddev=0.02) (cut at 2 sigma, std 0.0176) would fail.
    assert abs(w.std() - 0.02) < 5 * 0.02 / math.sqrt(2 * n)
    assert abs(w.mean()) < 5 * 0.02 / math.sqrt(n)
    narrow = _np(TruncNormal(stddev=1.0, lower=-0.5, upper=0.5, seed=1)((1000,)))
    assert narrow.min() >= -0.5 and narrow.max() <= 0.5 and narrow.std() > 0.25
    config = init.get_config()
    assert (config["stddev"], config["lower"], config["upper"]) == (0.02, -2.0, 2.0)
    assert TruncNormal.from_config(config).get_config() == config


def test_drop_path_replays_a_given_keep_mask():
    x = np.random.default_rng(0).normal(size=(64, 3, 4)).astype("float32")
    drawn = _np(DropPath(0.5, seed=7)(x, training=True))
    layer = DropPath(0.5, seed=7)
    mask = _np(layer.keep_mask(x))
    assert mask.shape == (64, 1, 1) and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(_np(layer(x, training=True, keep_mask=mask)), x / 0.5 * mask)
    np.testing.assert_array_equal(drawn, x / 0.5 * mask)  # the mask call would have drawn


def test_transformer_block_keep_masks_replay_its_own_draws():
    x = np.random.default_rng(1).normal(size=(32, 5, 8)).astype("float32")
    block = TransformerBlock(num_heads=2, drop_path=0.5)
    block.build(x.shape)
    assert block.keep_masks(x, training=False) is None
    assert TransformerBlock(num_heads=2).keep_masks(x, training=True) is None
    generator = block.drop_path.seed_generator
    start = ops.convert_to_numpy(generator.state)
    drawn = _np(block(x, training=True))
    generator.state.assign(start)
    masks = block.keep_masks(x, training=True)
    np.testing.assert_array_equal(_np(block(x, training=True, keep_masks=masks)), drawn)
    # each branch draws its own mask; over 32 samples they differ somewhere
    assert not np.array_equal(_np(masks[0]), _np(masks[1]))
