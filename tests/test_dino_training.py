"""DINO training beyond the golden run: distribution, checkpoints, resume, failure modes."""

import json
import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino import callbacks as dino_callbacks
from keras_dino.checkpoints import official, read_checkpoint
from keras_dino.testing import golden
from keras_dino.testing.golden import run_golden
from keras_dino.training.dino import DINO


@pytest.fixture(scope="module")
def golden_dir(fixtures_dir):
    return fixtures_dir / "golden"


# The tiny network and run length of the training tests (test_dino_config's configs too).
TINY_NETWORK = dict(
    arch="tiny_test",
    vit_kwargs=dict(embed_dim=16, depth=1, num_heads=2),
    head_kwargs=dict(hidden_dim=16, bottleneck_dim=8),
    patch_size=8,
    out_dim=32,
    epochs=3,
    warmup_epochs=1,
    drop_path_rate=0.0,
    local_crops_number=2,
)


def tiny_dino(**overrides):
    config = dict(TINY_NETWORK, warmup_teacher_temp_epochs=1, teacher_temp=0.07, lr=0.05,
                  momentum_teacher=0.9)
    config.update(overrides)
    return DINO(**config)


def tiny_crops(n=8, seed=0, nan_from=None):
    rng = np.random.default_rng(seed)
    crops = [rng.normal(size=(n, 16, 16, 3)).astype("float32") for _ in range(2)]
    crops += [rng.normal(size=(n, 8, 8, 3)).astype("float32") for _ in range(2)]
    if nan_from is not None:
        crops[0][nan_from:] = np.nan
    return tuple(crops)


def all_weights(model):
    return {
        "student": official.state_dict_of(model.student_map),
        "teacher": official.state_dict_of(model.teacher_map),
        "center": ops.convert_to_numpy(model.center),
    }


def _excess(a, b, initial):
    """Per tensor: deviation of run `a` from run `b` over its golden bound (< 1 passes).

    Two float32 runs of the same algorithm in different summation orders: the bounds of
    `keras_dino.testing.golden` (0.46% of the movement from `initial` plus rounding for a
    parameter, STATE_TOLERANCE for the center), the key third of qkv biases left out.
    """
    out = {}
    for part in ("student", "teacher"):
        for name in a[part]:
            dev = golden.compare(a[part][name], b[part][name], initial[part][name], name)
            out[f"{part}/{name}"] = dev.excess
    out["center"] = golden.compare(a["center"], b["center"], is_parameter=False).excess
    return out


@pytest.fixture(scope="module")
def initial_golden(golden_dir):
    return all_weights(DINO.from_official_checkpoint(golden_dir / "init_checkpoint.pth"))


@pytest.fixture(scope="module")
def single_device_golden(golden_dir):
    model, _ = run_golden(golden_dir, record=False)
    return all_weights(model)


@pytest.mark.tf_only
def test_mirrored_strategy_two_replicas_equals_one_device(
    golden_dir, single_device_golden, initial_golden
):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    model, _ = run_golden(golden_dir, record=False, scope=strategy.scope())
    deviations = _excess(all_weights(model), single_device_golden, initial_golden)
    assert max(deviations.values()) < 1, max(deviations.items(), key=lambda kv: kv[1])


@pytest.mark.tf_only
def test_tf_step_compiles_with_xla(golden_dir, single_device_golden, initial_golden):
    model, _ = run_golden(golden_dir, record=False, jit_compile=True)
    deviations = _excess(all_weights(model), single_device_golden, initial_golden)
    assert max(deviations.values()) < 1, max(deviations.items(), key=lambda kv: kv[1])


@pytest.mark.backends("jax")
def test_jax_data_parallel_two_devices_equals_one_device(
    golden_dir, single_device_golden, initial_golden
):
    import jax

    devices = jax.devices()
    assert len(devices) == 2, "conftest sets --xla_force_host_platform_device_count=2"
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        model, _ = run_golden(golden_dir, record=False)
    finally:
        keras.distribution.set_distribution(None)
    assert model.student.backbone.cls_token.value.sharding.mesh.size == 2
    deviations = _excess(all_weights(model), single_device_golden, initial_golden)
    assert max(deviations.values()) < 1, max(deviations.items(), key=lambda kv: kv[1])


def test_official_checkpoint_round_trip_is_exact(golden_dir, tmp_path):
    model = DINO.from_official_checkpoint(golden_dir / "checkpoint.pth")
    assert model._resume_epoch == 2
    for suffix in (".pth", ".npz"):
        path = tmp_path / f"checkpoint{suffix}"
        model.save_official_checkpoint(path)
        written, original = read_checkpoint(path), read_checkpoint(golden_dir / "checkpoint.pth")
        assert list(written["student"]) == list(original["student"])
        assert list(written["teacher"]) == list(original["teacher"])
        for part in ("student", "teacher"):
            for key, value in original[part].items():
                np.testing.assert_array_equal(written[part][key], value)
        np.testing.assert_array_equal(written["dino_loss"]["center"], original["dino_loss"]["center"])
        assert sorted(written["optimizer"]["state"]) == sorted(original["optimizer"]["state"])
        for idx, slots in original["optimizer"]["state"].items():
            for slot, value in slots.items():
                np.testing.assert_array_equal(written["optimizer"]["state"][idx][slot], value)
        groups_w, groups_o = written["optimizer"]["param_groups"], original["optimizer"]["param_groups"]
        assert [g["params"] for g in groups_w] == [g["params"] for g in groups_o]
        assert int(written["epoch"]) == 2
        args = dict(written["args"])
        assert args["arch"] == "vit_mini" and args["vit_kwargs"]["depth"] == 2
        again = DINO.from_official_checkpoint(path)
        a, b = all_weights(again), all_weights(model)
        for part in ("student", "teacher"):
            for key in a[part]:
                np.testing.assert_array_equal(a[part][key], b[part][key])


def test_official_checkpoint_loads_in_torch(golden_dir, tmp_path):
    import torch
    model = DINO.from_official_checkpoint(golden_dir / "checkpoint.pth")
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    ours = torch.load(path, weights_only=False)
    theirs = torch.load(golden_dir / "checkpoint.pth", weights_only=False)
    assert set(ours) == set(theirs)
    assert vars(ours["args"])["arch"] == "vit_mini"
    for key, value in theirs["student"].items():
        assert torch.equal(ours["student"][key], value), key
    for idx, slots in theirs["optimizer"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(ours["optimizer"]["state"][idx][slot], value), (idx, slot)


def test_compile_again_keeps_restored_state(golden_dir):
    model = DINO.from_official_checkpoint(golden_dir / "checkpoint.pth")
    optimizer = model.optimizer
    before = [ops.convert_to_numpy(v) for v in optimizer.variables]
    kwargs = {} if keras.backend.backend() == "torch" else {"steps_per_execution": 3}
    model.compile(**kwargs)
    assert model.optimizer is optimizer
    for a, v in zip(before, model.optimizer.variables):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(v))


def test_fit_logs_schedule_values_and_callbacks_report():
    model = tiny_dino()
    history = model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
    for key in ("loss", "lr", "wd", "momentum", "teacher_temp", "center_norm"):
        assert key in history.history, key
        assert all(math.isfinite(v) for v in history.history[key])


# The tiny network collapses in a few epochs; what is tested is elsewhere.
@pytest.mark.filterwarnings("ignore::keras_dino.callbacks.CollapseDetected")
def test_a_keras_file_restores_the_optimizer_and_training_continues_exactly(tmp_path):
    """model.save / keras.saving.load_model mid-run: the loaded DINO is compiled with the
    same optimizer (its own settings kept), its moments and step count restored, and the
    next epoch gives the same weights as the original's next epoch."""
    import warnings

    from keras_dino.optim import AdamW

    model = tiny_dino()
    model.compile(optimizer=AdamW(model.schedules, beta_2=0.95))
    model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0, shuffle=False)
    model.save(tmp_path / "dino.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Keras' "compile() was not called"
        restored = keras.saving.load_model(tmp_path / "dino.keras")
    assert type(restored.optimizer) is AdamW and restored.optimizer.beta_2 == 0.95
    assert int(ops.convert_to_numpy(restored.optimizer.iterations)) == 4
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b),
                                      err_msg=a.path)
    logs = [
        m.fit(tiny_crops(seed=1), batch_size=4, epochs=3, initial_epoch=2, verbose=0,
              shuffle=False).history
        for m in (model, restored)
    ]
    assert logs[0] == logs[1]
    for a, b in zip(model.weights, restored.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b),
                                      err_msg=a.path)
    # An optimizer class of one's own is found by its registered name, or named.

    @keras.saving.register_keras_serializable(package="keras_dino_tests")
    class RegisteredAdamW(AdamW):
        pass

    class Unregistered(AdamW):
        pass

    model = tiny_dino()
    model.compile(optimizer=RegisteredAdamW(model.schedules))
    model.save(tmp_path / "registered.keras")
    restored = keras.saving.load_model(tmp_path / "registered.keras")
    assert type(restored.optimizer) is RegisteredAdamW

    model = tiny_dino()
    model.compile(optimizer=Unregistered(model.schedules))
    model.save(tmp_path / "own.keras")
    with pytest.raises(ValueError, match="optimizer 'Unregistered', which is not registered"):
        keras.saving.load_model(tmp_path / "own.keras")
    assert keras.saving.load_model(tmp_path / "own.keras", compile=False).get_config() == (
        model.get_config())


# The tiny network collapses in a few epochs; what is tested is elsewhere.
@pytest.mark.filterwarnings("ignore::keras_dino.callbacks.CollapseDetected")
def test_a_second_fit_reuses_the_traced_step_until_the_schedules_change():
    """The step holds the schedules' settings as constants: `fit` reuses it while they are
    unchanged, and traces a new one when an epoch has another number of steps."""
    model = tiny_dino()
    model.fit(tiny_crops(n=8), batch_size=4, epochs=1, verbose=0)  # 2 steps an epoch
    first = model.train_function
    model.fit(tiny_crops(n=8, seed=1), batch_size=4, epochs=2, initial_epoch=1, verbose=0)
    assert model.train_function is first
    stale = float(model.schedules.lr(6))  # step 6 at 2 steps an epoch: past the end
    history = model.fit(tiny_crops(n=12, seed=2), batch_size=4, epochs=3, initial_epoch=2,
                        verbose=0)  # 3 steps an epoch
    assert model.train_function is not first
    assert model.schedules.steps_per_epoch == 3
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 7
    # The last step (step 6) ran with the schedules of 3 steps an epoch: the cosine's
    # middle, not the end value that 2 steps an epoch would give.
    fresh = float(model.schedules.lr(6))
    assert abs(fresh - stale) > 0.1 * fresh
    assert history.history["lr"][-1] == pytest.approx(fresh, rel=1e-6)


@pytest.mark.filterwarnings("ignore::keras_dino.callbacks.CollapseDetected")
def test_fit_that_outruns_the_schedules_says_so():
    """DINO(epochs=E, steps_per_epoch=S) fixes the schedules; a fit with more epochs, or
    other steps an epoch, would silently hold or rush them: a warning names both values."""
    model = tiny_dino(epochs=1, steps_per_epoch=2)
    with pytest.warns(UserWarning, match=r"fit\(epochs=2\) runs past the schedules of the "
                      r"model \(epochs=1\): after epoch 1"):
        model.fit(tiny_crops(n=8), batch_size=4, epochs=2, verbose=0)
    with pytest.warns(UserWarning, match=r"fit runs 3 steps per epoch, but the schedules "
                      r"count 2 \(steps_per_epoch=2 of the model\)"):
        model.fit(tiny_crops(n=12), batch_size=4, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tiny_dino(epochs=1).fit(tiny_crops(n=12), batch_size=4, verbose=0)  # fit's steps


def test_teacher_and_center_momenta_of_the_model_run_in_the_step():
    model = tiny_dino(epochs=1, warmup_epochs=0, momentum_teacher=0.25,
                      final_momentum_teacher=0.25, center_momentum=0.5)
    before = all_weights(model)
    model.fit(tiny_crops(n=4), batch_size=4, epochs=1, verbose=0)
    after = all_weights(model)
    for name in before["teacher"]:
        expected = 0.25 * before["teacher"][name] + 0.75 * after["student"][name]
        # m t + (1 - m) s in float32, here and in the step: 2-3 roundings, <= 3 u (0.25 |t| +
        # 0.75 |s|): rtol 1e-5 is 168 u; atol 1e-6 (3 u at |w| = 5.6) where the blend
        # cancels. 0 measured on torch.
        np.testing.assert_allclose(after["teacher"][name], expected, rtol=1e-5, atol=1e-6)
    # one step: center = 0.5 * 0 + 0.5 * batch mean, so it is non-zero and finite
    assert np.all(np.isfinite(after["center"])) and np.abs(after["center"]).max() > 0


def test_settings_of_the_model_are_what_config_and_checkpoint_record(tmp_path):
    """One owner per setting: the model's config runs and is recorded."""
    model = tiny_dino(epochs=1, warmup_epochs=0, momentum_teacher=0.99,
                      final_momentum_teacher=0.995, center_momentum=0.8)
    crops = tiny_crops(n=4)
    history = model.fit(
        crops, batch_size=4, epochs=1, verbose=0,
        data_settings=dict(global_crops_scale=(0.3, 1.0), local_crops_scale=(0.1, 0.3),
                           local_crops_number=2),
    )
    assert history.history["center_momentum"] == [0.8]  # Centering reports the model's
    config = model.get_config()
    assert (config["momentum_teacher"], config["final_momentum_teacher"]) == (0.99, 0.995)
    assert config["center_momentum"] == 0.8
    assert config["data_settings"]["global_crops_scale"] == [0.3, 1.0]
    # The momentum that ran: one step of the cosine from 0.99 to 0.995, at step 0.
    assert float(model.schedules.momentum(0)) == pytest.approx(0.99)
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    args = dict(read_checkpoint(path)["args"])
    assert (args["momentum_teacher"], args["final_momentum_teacher"]) == (0.99, 0.995)
    assert args["center_momentum"] == 0.8 and args["local_crops_scale"] == (0.1, 0.3)
    # ... and a model rebuilt from that checkpoint or config runs with the same values.
    again = DINO.from_official_checkpoint(path)
    assert again.config.final_momentum_teacher == 0.995
    assert again.config.center_momentum == 0.8
    assert again.data_settings["local_crops_scale"] == (0.1, 0.3)
    clone = DINO.from_config(config)
    assert clone.data_settings == model.data_settings and clone.config == model.config


def test_crop_settings_belong_to_the_data():
    with pytest.raises(TypeError, match="DataAugmentationDINO"):
        tiny_dino(global_crops_scale=(0.4, 1.0))
    model = tiny_dino(local_crops_number=3)
    with pytest.raises(ValueError, match="2 global \\+ 3 local crops"):
        model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="local_crops_number=2"):
        tiny_dino().set_data_settings(dict(global_crops_scale=(0.4, 1), local_crops_number=6))


@pytest.mark.parametrize("kwargs", [dict(final_momentum_teacher=1.5),
                                    dict(momentum_teacher=-0.1), dict(center_momentum=2.0)])
def test_a_momentum_outside_0_1_is_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be in \\[0, 1\\]"):
        tiny_dino(**kwargs)


@pytest.mark.parametrize("callback", [dino_callbacks.TeacherEMA, dino_callbacks.Centering])
@pytest.mark.parametrize("args, kwargs", [((0.99,), {}), ((), dict(momentum_teacher=0.99)),
                                          ((), dict(final_momentum=1.0)),
                                          ((), dict(center_momentum=0.9))])
def test_report_callbacks_take_no_values(callback, args, kwargs):
    """The model owns the momenta: the callbacks are no second way to set them."""
    with pytest.raises(TypeError, match=r"DINO\(momentum_teacher=\.\.\., final_momentum_teacher="
                       r"\.\.\., center_momentum=\.\.\.\)"):
        callback(*args, **kwargs)
    assert not hasattr(DINO, "set_teacher_momentum") and not hasattr(DINO, "set_center_momentum")


def test_freeze_last_layer_untouched_in_first_epoch():
    model = tiny_dino(epochs=2, freeze_last_layer=1, norm_last_layer=True)
    v_before = ops.convert_to_numpy(model.student.head.last_layer.kernel_v)
    model.fit(tiny_crops(n=8), batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(model.student.head.last_layer.kernel_v), v_before)
    model.fit(tiny_crops(n=8), batch_size=4, epochs=2, initial_epoch=1, verbose=0)
    assert not np.array_equal(ops.convert_to_numpy(model.student.head.last_layer.kernel_v), v_before)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_other_official_optimizers_train(name):
    model = tiny_dino(optimizer=name, lr=0.5)
    before = all_weights(model)["student"]
    history = model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
    after = all_weights(model)["student"]
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_non_finite_loss_stops_cleanly_keeping_last_checkpoint(tmp_path):
    model = tiny_dino()
    ckpt = tmp_path / "last.weights.h5"
    saver = keras.callbacks.ModelCheckpoint(str(ckpt), save_weights_only=True)
    # 2 batches per epoch; the NaN crops come in the second epoch's second batch.
    crops = tiny_crops(n=8, nan_from=None)
    bad = tuple(np.concatenate([c, c]) for c in crops)
    bad[0][12:] = np.nan
    with pytest.raises(dino_callbacks.NonFiniteLossError, match=r"training step 4 \(epoch 2, batch 2\)"):
        model.fit(bad, batch_size=4, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0, callbacks=[saver])
    assert ckpt.exists()
    restored = tiny_dino()
    restored.load_weights(str(ckpt))
    for value in all_weights(restored)["student"].values():
        assert np.all(np.isfinite(value))


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    data = tiny_crops(n=8)
    keras.utils.set_random_seed(3)
    reference = tiny_dino()
    reference.fit(data, batch_size=4, epochs=3, shuffle=False, verbose=0)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("killed after epoch 2")

    backup = str(tmp_path / "backup")
    keras.utils.set_random_seed(3)
    first = tiny_dino()
    with pytest.raises(KeyboardInterrupt):
        first.fit(
            data, batch_size=4, epochs=3, shuffle=False, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Kill()],
        )
    keras.utils.set_random_seed(99)  # a new process: different initial weights
    resumed = tiny_dino()
    resumed.fit(
        data, batch_size=4, epochs=3, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
    )
    a, b = all_weights(resumed), all_weights(reference)
    # The same compiled program on the same machine and data, from float32 weights,
    # optimizer slots, center and seed state restored bit for bit: the same bits are expected
    # (0 measured). rtol 1e-6 (17 u) and atol 1e-7 (for weights near 0) leave room only for
    # a backend's threads reducing in another order, whose few-ulp gradient differences
    # times the learning rate stay far below a weight's ulp.
    for part in ("student", "teacher"):
        for key in a[part]:
            np.testing.assert_allclose(a[part][key], b[part][key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(a["center"], b["center"], rtol=1e-6, atol=1e-7)
    assert int(ops.convert_to_numpy(resumed.optimizer.iterations)) == 6


def test_mixed_bfloat16_training_is_finite():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_dino()
        history = model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
        assert model.student.head.last_layer.compute_dtype == "float32"
        assert model.student.backbone.blocks[0].attn.qkv.compute_dtype == "bfloat16"
        assert all(math.isfinite(v) for v in history.history["loss"])
    finally:
        keras.config.set_dtype_policy(previous)


def test_mixed_float16_uses_dynamic_loss_scaling():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_dino()
        model.compile()
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        history = model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
        assert all(math.isfinite(v) for v in history.history["loss"])
    finally:
        keras.config.set_dtype_policy(previous)


def test_bad_training_input_is_named():
    model = tiny_dino()
    with pytest.raises(ValueError, match=r"tuple of crops.*; got a single tensor of shape "
                       r"\(4, 16, 16, 3\)\. keras_dino.data.multicrop_dataset\(images, "
                       r"batch_size\) makes them"):
        model.fit(np.zeros((4, 16, 16, 3), "float32"), batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="NHWC"):
        model.fit((np.zeros((4, 16, 16), "float32"),) * 2, batch_size=4, epochs=1, verbose=0)


def test_config_round_trip():
    model = tiny_dino()
    config = json.loads(json.dumps(model.get_config()))
    clone = DINO.from_config(config)
    assert clone.hparams == model.hparams and clone.config == model.config


def test_split_mode_photometric_inside_the_step():
    from keras_dino.data import MultiCropPhotometric

    layer = MultiCropPhotometric(seed=5)
    model = tiny_dino(photometric=layer)
    rng = np.random.default_rng(0)
    crops = tuple(
        rng.integers(0, 256, (8, s, s, 3), dtype="uint8") for s in (16, 16, 8, 8)
    )
    state_before = ops.convert_to_numpy(layer.seed_generator.state)
    history = model.fit(crops, batch_size=4, epochs=1, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    # the layer drew new random parameters in every step (its state is part of the step)
    assert not np.array_equal(ops.convert_to_numpy(layer.seed_generator.state), state_before)
    clone = DINO.from_config(json.loads(json.dumps(model.get_config())))
    assert isinstance(clone.photometric, MultiCropPhotometric)


def test_uint8_crops_without_a_photometric_layer_are_refused():
    # Raw 0..255 crops would train without error and learn nothing useful.
    rng = np.random.default_rng(0)
    crops = tuple(
        rng.integers(0, 256, (8, s, s, 3), dtype="uint8") for s in (16, 16, 8, 8)
    )
    with pytest.raises(ValueError, match=r"crops are uint8 .* no photometric layer"):
        tiny_dino().fit(crops, batch_size=4, epochs=1, verbose=0)


def test_rematerialised_blocks_train_exactly_like_plain_blocks():
    """remat recomputes the student's blocks in the backward pass, drop-path masks replayed."""
    results = []
    for remat in (False, True):
        keras.utils.set_random_seed(3)
        model = tiny_dino(
            vit_kwargs=dict(embed_dim=16, depth=2, num_heads=2, remat=remat),
            drop_path_rate=0.5,
        )
        assert model.student.backbone.remat is remat
        history = model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
        results.append((all_weights(model), history.history["loss"]))
    (plain, plain_loss), (remat, remat_loss) = results
    # remat recomputes the same forward ops (the same masks) in the backward pass: the same
    # sums, at most fused in another order by a compiler, so a few ulps of a gradient, times
    # lr 0.05, stay below the weights' ulps and the losses agree to ulps; rtol 1e-6 is
    # 17 u. 0 measured on torch.
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for part in ("student", "teacher"):
        for key in plain[part]:
            a, b = remat[part][key], plain[part][key]
            if key.endswith("attn.qkv.bias"):
                # key third: analytically zero gradient, float32 noise only (golden test)
                a, b = np.delete(a, np.s_[16:32]), np.delete(b, np.s_[16:32])
            # As the loss: rtol 1e-5 (168 u), atol 1e-6 for weights near 0 (0 measured).
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)
    # drop path did act: the same run without it ends elsewhere
    keras.utils.set_random_seed(3)
    undropped = tiny_dino(vit_kwargs=dict(embed_dim=16, depth=2, num_heads=2, remat=True))
    undropped.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
    name = "backbone.blocks.0.mlp.fc1.weight"
    assert not np.allclose(all_weights(undropped)["student"][name], plain["student"][name])


def test_parameter_groups_drive_the_optimizer_the_ema_and_the_checkpoint():
    from keras_dino.checkpoints.dino_checkpoint import official_param_order

    model = tiny_dino()
    model.compile()
    groups = model.parameter_groups()
    assert "backbone.cls_token" in groups.regularized  # the official rule: not 1-D
    assert "backbone.norm.weight" in groups.not_regularized
    assert groups.last_layer == ("head.last_layer.weight_g", "head.last_layer.weight_v")
    order, n_decayed = official_param_order(model)
    assert order == groups.official_order() and n_decayed == len(groups.regularized)
    optimizer = model.optimizer
    for variable in model.trainable_variables:
        name = groups.name_of(variable)
        decay, rank, freezable = optimizer._flags_of(variable)
        assert decay == (name in groups.regularized), name
        assert freezable == (name in groups.last_layer), name
    assert [id(s) for s, _ in model._ema_pairs] == [
        id(groups.variables[name]) for name in groups.averaged
    ]
