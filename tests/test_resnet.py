"""The ResNet backbone and its BatchNorm against the official (torchvision) numbers.

`../shared/fixtures/official_dino_zoo/` holds a reduced torchvision ResNet with trained
BatchNorm statistics and its outputs at four sizes; every backend runs this file.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.layers.batch_norm import BatchNorm
from keras_dino.models.backbones import backbone_config, build_backbone
from keras_dino.models.official_names import resnet_map
from keras_dino.models.resnet import RESNETS, ResNet, resnet
from keras_dino.testing.parity import resnet_bound
from keras_dino.testing.tolerance import LIBRARY_FUNCTION, assert_within

SIZES = ("224x224", "96x96", "64x64", "96x64")


@pytest.fixture(scope="module")
def resnet_mini(zoo_dir):
    # torchvision ResNet(Bottleneck with expansion 1, [1, 1, 1, 1], width_per_group=8).
    model = ResNet("bottleneck", (1, 1, 1, 1), width_per_group=8, expansion=1)
    state = dict(np.load(zoo_dir / "backbone_resnet_mini.npz"))
    official.load_state_dict(resnet_map(model), state, "ResNet")
    return model


def _np(x):
    return ops.convert_to_numpy(x)


def _pool(size):
    """Positions of the last stage's map (stride 32, padded convolutions round up)."""
    h, w = (int(v) for v in size.split("x"))
    return -(-h // 32) * -(-w // 32)


# Against torchvision's float32 numbers: two float32 programs, bounded by the rounding of
# the reductions an output depends on (`resnet_bound`, keras_dino/testing/parity.py): the
# 147-term stem, then 1x1, 3x3 and 1x1 convolutions over 64..512 channels, the eval
# BatchNorms' rsqrt and the average pool; for resnet_mini at 224x224, sqrt(sum) = 51, so
# 2 * 6 * 51 * 2**-24 = 3.6e-5 of max |reference| (it was 1e-4, from the fixture README).


@pytest.mark.parametrize("size", SIZES)
def test_pooled_features_match_torchvision(resnet_mini, zoo_inputs, zoo_dir, size):
    expected = np.load(zoo_dir / "outputs_resnet_mini.npz")[f"{size}/pooled"]
    actual = _np(resnet_mini(zoo_inputs[size]))
    assert_within(actual, expected, resnet_bound(resnet_mini, expected, pool=_pool(size)), size)


@pytest.mark.parametrize("size", ["64x64", "96x64"])
def test_every_stage_matches_torchvision_on_odd_grids(resnet_mini, zoo_inputs, zoo_dir, size):
    ref = np.load(zoo_dir / "outputs_resnet_mini.npz")
    stages = resnet_mini.forward_features(zoo_inputs[size][:1])
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        expected = ref[f"{size}/first_image/{name}"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        actual = _np(stages[name])
        assert actual.shape == expected.shape, name
        assert_within(actual, expected, resnet_bound(resnet_mini, expected, upto=name), name)


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_load_pretrained_reads_a_resnet_file(zoo_inputs, zoo_dir, suffix):
    """load_pretrained builds a ResNet of the file's shape (evaluation tools, export)."""
    from keras_dino.checkpoints.pretrained import load_pretrained

    model = load_pretrained(zoo_dir / f"backbone_resnet_mini{suffix}", arch="resnet_mini")
    assert isinstance(model, ResNet) and model.name == "resnet_mini"
    assert (model.block, model.layers_per_stage, model.embed_dim) == ("bottleneck", (1, 1, 1, 1), 512)
    expected = np.load(zoo_dir / "outputs_resnet_mini.npz")["96x96/pooled"]
    assert_within(_np(model(zoo_inputs["96x96"])), expected,
                  resnet_bound(model, expected, pool=_pool("96x96")), "96x96")
    with pytest.raises(ValueError, match="not a resnet50"):
        load_pretrained(zoo_dir / f"backbone_resnet_mini{suffix}", arch="resnet50")


def test_official_state_dict_round_trip(resnet_mini, zoo_dir):
    state = dict(np.load(zoo_dir / "backbone_resnet_mini.npz"))
    written = official.state_dict_of(resnet_map(resnet_mini))
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_torchvision_architectures_have_their_parameter_counts():
    # torchvision's counts without `fc` (e.g. resnet50: 25,557,032 - 2,049,000).
    counts = {"resnet18": 11_176_512, "resnet50": 23_508_032}
    for arch, expected in counts.items():
        model = resnet(arch)
        model.build((None, None, None, 3))
        assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected, arch
    assert set(RESNETS) >= {"resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"}


def test_any_input_size_and_strides_as_torch():
    model = ResNet("basic", (1, 1, 1, 1), stem_width=8, stage_widths=(8, 8, 16, 16))
    stages = model.forward_features(np.zeros((1, 33, 47, 3), "float32"))
    # torch: floor((n + 2p - k) / s) + 1 per stride-2 layer.
    assert tuple(stages["stem"].shape) == (1, 9, 12, 8)
    assert tuple(stages["layer4"].shape) == (1, 2, 2, 16)


def test_custom_resnet_config_round_trip():
    cls, config = backbone_config(
        "resnet_small", resnet_kwargs=dict(block="basic", layers=[1, 1], stage_widths=[8, 16],
                                           stem_width=8)
    )
    model = cls(**config)
    clone = ResNet.from_config(model.get_config())
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    model(x)
    clone(x)
    for a, b in zip(model.weights, clone.weights):
        b.assign(a)
    np.testing.assert_allclose(_np(clone(x)), _np(model(x)), atol=1e-6)
    assert clone.embed_dim == 16


def test_unknown_architectures_are_named():
    with pytest.raises(ValueError, match="resnet_tiny"):
        build_backbone("resnet_tiny")
    with pytest.raises(ValueError, match="vit_huge"):
        build_backbone("vit_huge")


def test_batch_norm_trains_like_torch_batch_norm():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 3, 5, 2)) * 2 + 1).astype("float32")
    bn = BatchNorm()
    y = _np(bn(x, training=True))
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    n = x.size // x.shape[-1]
    np.testing.assert_allclose(_np(bn.moving_mean), 0.1 * mean, atol=1e-6)
    # PyTorch updates the running variance with the unbiased batch variance.
    np.testing.assert_allclose(_np(bn.moving_variance), 0.9 + 0.1 * var * n / (n - 1), atol=1e-6)
    # Inference: the running statistics.
    y = _np(bn(x, training=False))
    expected = (x - _np(bn.moving_mean)) / np.sqrt(_np(bn.moving_variance) + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_batch_norm_follows_training_even_when_not_trainable():
    # The DINO teacher is not trainable (EMA only) but runs its BatchNorms on batch
    # statistics; Keras' BatchNormalization would switch to inference mode.
    bn = BatchNorm()
    bn.trainable = False
    x = np.arange(12, dtype="float32").reshape(6, 2)
    y = _np(bn(x, training=True))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    assert float(_np(bn.moving_mean)[0]) != 0.0


@pytest.mark.tf_only
@pytest.mark.parametrize("synchronized", [True, False])
def test_batch_norm_across_tf_replicas_uses_the_global_batch(synchronized):
    # Two replicas, half the batch each: synchronised, the statistics (normalised outputs,
    # running mean and unbiased variance) are those of the whole batch, as SyncBatchNorm;
    # not synchronised, each replica's own.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 3, 2)) * [1.0, 3.0] + [0.0, 5.0]).astype("float32")
    x[4:] += 2.0  # the halves differ, so per-replica statistics would not match
    # The all-reduce through one device, not collective ops: collective instance keys of
    # the strategies that earlier tests of this process made can collide with this
    # strategy's ("Shape mismatch in the collective instance"); the sum is the same.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        bn = BatchNorm(momentum=0.5, synchronized=synchronized)
        bn.build(x.shape)
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: x[4 * context.replica_id_in_sync_group:][:4])
    outputs = strategy.run(tf.function(lambda h: bn(h, training=True)), args=(halves,))
    y = np.concatenate([_np(t) for t in strategy.experimental_local_results(outputs)])
    if not synchronized:  # each replica normalises its half with its own statistics
        local = [(h - h.mean((0, 1))) / np.sqrt(h.var((0, 1)) + 1e-5) for h in (x[:4], x[4:])]
        np.testing.assert_allclose(y, np.concatenate(local), atol=1e-4)
        return
    mean, var, n = x.mean((0, 1)), x.var((0, 1)), x.size // x.shape[-1]
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    np.testing.assert_allclose(_np(bn.moving_mean), 0.5 * mean, atol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), 0.5 + 0.5 * var * n / (n - 1),
                               atol=1e-4)


def test_batch_norm_config_round_trip():
    bn = BatchNorm(momentum=0.2, epsilon=1e-3, synchronized=False)
    clone = BatchNorm.from_config(bn.get_config())
    assert (clone.momentum, clone.epsilon, clone.synchronized) == (0.2, 1e-3, False)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(momentum=0.9 + 1)


def test_resnet_keras_file_round_trip(tmp_path):
    model = ResNet("bottleneck", (1, 1), width_per_group=16, stem_width=8, stage_widths=(8, 16))
    x = np.random.default_rng(1).normal(size=(2, 40, 40, 3)).astype("float32")
    expected = _np(model(x, training=True))  # moves the BatchNorm statistics too
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), atol=1e-5)
    assert expected.shape == (2, 64)  # bottleneck: 16 planes x expansion 4


# --------------------------------------------------------------- DINO with a ResNet


@pytest.fixture(scope="module")
def rn_dino(zoo_dir):
    import keras_dino

    return keras_dino.DINO.from_pretrained(zoo_dir / "rn_dino" / "checkpoint.pth")


def _head_bound(network, reference, size):
    """`resnet_bound` of the backbone, then the BatchNorm head: Linear 512 -> 64, BatchNorm,
    GELU, Linear 64 -> 32, L2 normalisation, weight-normalised last layer (32)."""
    lf = LIBRARY_FUNCTION
    head = [512, lf, lf, 64, 32, lf, 32, 32]
    return resnet_bound(network.backbone, reference, pool=_pool(size), then=head)


@pytest.mark.parametrize("size", ("96x96", "96x64"))
def test_official_resnet_training_checkpoint_restores_both_networks(rn_dino, zoo_inputs,
                                                                    zoo_dir, size):
    # module.-prefixed student and teacher, a BatchNorm head in two layers, SGD state.
    ref = np.load(zoo_dir / "head_outputs_rn_dino.npz")
    x = zoo_inputs[size]
    for who in ("student", "teacher"):
        network = getattr(rn_dino, who)
        features, expected = _np(network.backbone(x, training=False)), ref[f"{size}/{who}_feat"]
        assert_within(features, expected,
                      resnet_bound(network.backbone, expected, pool=_pool(size)), f"{who} feat")
        out, expected = _np(network(x, training=False)), ref[f"{size}/{who}_out"]
        assert_within(out, expected, _head_bound(network, expected, size), f"{who} out")
    center = np.load(zoo_dir / "rn_dino" / "checkpoint.npz")["dino_loss/center"]
    np.testing.assert_array_equal(_np(rn_dino.center), center)


def test_resnet_multicrop_groups_consecutive_crops_of_equal_size(rn_dino, zoo_inputs, zoo_dir):
    ref = np.load(zoo_dir / "head_outputs_rn_dino.npz")
    assert str(ref["multicrop/crops"]) == '["224x224", "96x96", "96x96[::-1]", "64x64"]'
    crops = [zoo_inputs["224x224"], zoo_inputs["96x96"], zoo_inputs["96x96"][::-1],
             zoo_inputs["64x64"]]
    for who in ("student", "teacher"):
        out = _np(getattr(rn_dino, who)(crops, training=False))
        expected = ref[f"multicrop/{who}_out"]
        # rows: 2 images per crop; the 224x224 crops have the longest average pool
        bound = _head_bound(getattr(rn_dino, who), expected, "224x224")
        assert_within(out, expected, bound, f"multicrop {who}")


def test_released_resnet50_checkpoint_layout_loads(zoo_dir, zoo_inputs, tmp_path):
    # The released RN50 full checkpoint reportedly has teacher keys without `module.`
    # and a plain `last_layer.weight` (no weight norm): the same function must load.
    import keras_dino
    from keras_dino.checkpoints.torch_format import read_checkpoint, write_torch_checkpoint

    checkpoint = read_checkpoint(zoo_dir / "rn_dino" / "checkpoint.pth")
    teacher = {k[len("module."):]: v for k, v in checkpoint["teacher"].items()}
    g = teacher.pop("head.last_layer.weight_g")
    v = teacher.pop("head.last_layer.weight_v")
    teacher["head.last_layer.weight"] = g * v / np.linalg.norm(v, axis=1, keepdims=True)
    path = tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth"
    write_torch_checkpoint({"teacher": teacher, "student": checkpoint["student"],
                            "dino_loss": checkpoint["dino_loss"]}, path)
    ref = np.load(zoo_dir / "head_outputs_rn_dino.npz")
    x = zoo_inputs["96x96"]
    model = keras_dino.DINO.from_pretrained(path, checkpoint_key="teacher")
    expected = ref["96x96/teacher_out"]
    for network in (model.student, model.teacher):
        # plus the folded last layer: g * v / |v| computed once in float64 here
        assert_within(_np(network(x, training=False)), expected,
                      _head_bound(network, expected, "96x96"), "teacher out")
    backbone = keras_dino.load_pretrained(path, checkpoint_key="teacher", arch="resnet_mini")
    expected = ref["96x96/teacher_feat"]
    assert_within(_np(backbone(x)), expected, resnet_bound(backbone, expected, pool=_pool("96x96")),
                  "teacher feat")


@pytest.mark.backends("tensorflow")
def test_one_lars_step_on_a_resnet_matches_the_update_derived_by_hand():
    """The official LARS (utils.LARS, eta 0.001, momentum 0.9) with DINO's parameter groups,
    on a tiny ResNet with a BatchNorm head: weights (rank > 1) get the scheduled weight
    decay and the trust ratio eta |p| / |g + wd p|; biases and BatchNorm parameters get
    neither; the first step's momentum buffer is the update itself."""
    import tensorflow as tf

    import keras_dino

    keras.utils.set_random_seed(3)
    model = keras_dino.DINO(
        arch="resnet_golden", use_bn_in_head=True, out_dim=8, optimizer="lars",
        resnet_kwargs=dict(block="basic", layers=[1], stem_width=4, stage_widths=[4]),
        head_kwargs=dict(hidden_dim=8, bottleneck_dim=4), lr=0.5, min_lr=0.5,
        warmup_epochs=0, weight_decay=0.04, weight_decay_end=0.04, clip_grad=0.0,
        freeze_last_layer=0, epochs=1, local_crops_number=0, momentum_teacher=0.9,
        steps_per_epoch=1)
    model.compile()
    rng = np.random.default_rng(0)
    crops = tuple(rng.normal(size=(4, 16, 16, 3)).astype("float32") for _ in range(2))
    names = {id(v): n for n, (v, _) in model.student_map.items()}
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    model._set_base_lr(crops)
    lr, wd = float(model.schedules.lr(0)), float(model.schedules.wd(0))
    assert lr == pytest.approx(0.5 * 4 / 256)  # lr * batch / 256
    with tf.GradientTape() as tape:
        loss, _ = model._forward(list(crops), tf.constant(0.0))
    grads = [g.numpy() for g in tape.gradient(loss, variables)]

    expected = []
    for name_id, p, g in zip(map(id, variables), before, grads):
        name = names[name_id]
        rank = 2 if name.endswith("weight_g") else p.ndim  # official (out, 1) gain
        if rank != 1:
            decay = 0.0 if name.endswith(".bias") else wd
            update = g + decay * p
            p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
            update = update * (0.001 * p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0)
        else:
            update = g  # biases, BatchNorm weights: no decay, no trust ratio
        expected.append(p - lr * update)  # momentum buffer of the first step: the update

    model.fit(crops, epochs=1, batch_size=4, verbose=0)
    checked = 0
    for name_id, variable, want, p in zip(map(id, variables), variables, expected, before):
        # Each tensor's update to 1e-4 of its size: the compiled step's float32 sums
        # differ from the eager tape's by ~1e-5 of the gradient's largest component
        # (here up to 92), so small components move by that much; a wrong decay, trust
        # ratio or group would be off by the whole update. (1e-6: a bias followed by
        # BatchNorm has a gradient that is zero up to float32 noise.)
        size = np.max(np.abs(want - p))
        np.testing.assert_allclose(variable.numpy(), want, rtol=0,
                                   atol=1e-4 * size + 1e-6, err_msg=names[name_id])
        checked += not np.allclose(want, p)
    assert checked > 10  # the step moved the convolutions, BatchNorms and head
