"""Gradient accumulation: k micro-batches of b images make the official step on k*b images.

The official golden run (batches of 4, 2 epochs of 3 iterations) is replayed from the same
crops fed as micro-batches of 2 with `gradient_accumulation_steps=2`: 6 micro-batches an
epoch, 3 optimizer steps. Every parameter, the center and the AdamW moments must end where
the official run ended, within the bounds of `tests/test_golden_training.py` (derived from
float32 arithmetic in `keras_dino.testing.golden`), and the schedules, the loss and the center must follow the official trace at every
optimizer step while the center and the teacher stay put between them.
"""

import json

import keras
import numpy as np
import pytest
from keras import ops
from test_dino_training import tiny_crops
from test_dino_training import tiny_dino as shared_tiny_dino

from keras_dino.checkpoints import official, read_checkpoint
from keras_dino.testing import golden
from keras_dino.testing.golden import (
    SCHEDULE_TOLERANCE,
    STATE_TOLERANCE,
    compare,
    failures,
    final_deviations,
    golden_batches,
    run_golden,
)
from keras_dino.training.dino import DINO

K = 2


@pytest.fixture(scope="module")
def golden_dir(fixtures_dir):
    return fixtures_dir / "golden"


@pytest.fixture(scope="module")
def trace(golden_dir):
    return np.load(golden_dir / "trace.npz")


@pytest.fixture(scope="module")
def accumulated_run(golden_dir):
    return run_golden(golden_dir, gradient_accumulation_steps=K)


def _check_final(model, golden_dir):
    """`test_golden_training.test_final_checkpoint`'s checks; returns the worst excess."""
    deviations = final_deviations(model, golden_dir)
    over = failures(deviations)
    assert not over, over
    ref = np.load(golden_dir / "checkpoint.npz")
    ours = golden.flat_checkpoint(model)
    assert int(ours["epoch"]) == int(ref["epoch"])
    # Per-parameter AdamW steps count optimizer steps: 6, and 3 for the last layer
    # frozen in epoch 0 (its accumulated gradient is dropped, as the official None grad).
    steps = [key for key in ref.files if key.endswith("/step")]
    assert steps
    for key in steps:
        assert float(ours[key]) == float(ref[key]), key
    worst = max(deviations, key=lambda name: deviations[name].excess)
    return worst, deviations[worst].excess


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_accumulated_golden_run_ends_at_the_official_checkpoint(accumulated_run, golden_dir):
    model, _ = accumulated_run
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 6
    worst = _check_final(model, golden_dir)
    print("worst deviation / bound:", worst)


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_accumulated_golden_run_follows_the_trace(accumulated_run, trace, golden_dir):
    _, steps = accumulated_run
    assert len(steps) == 6 * K  # fit counts micro-batches
    init = read_checkpoint(golden_dir / "init_checkpoint.pth")
    names = [k.split("/", 1)[1] for k in trace.files if k.startswith("teacher_param/")]
    initial = golden.initial_parameters(golden_dir)
    previous_center = np.asarray(init["dino_loss"]["center"])
    previous_teacher = {n: np.asarray(init["teacher"][n]) for n in names}
    for i, step in enumerate(steps):
        t, last = i // K, i % K == K - 1  # optimizer step; its last micro-batch?
        logs = step["logs"]
        for key in ("lr", "wd", "momentum", "teacher_temp"):
            expected = trace[key][t]
            assert abs(logs[key] - expected) <= SCHEDULE_TOLERANCE * abs(expected), (i, key)
        if not last:
            # Within an optimizer step the center and the teacher do not move.
            np.testing.assert_array_equal(step["center"], previous_center, err_msg=str(i))
            for name in names:
                np.testing.assert_array_equal(step["teacher"][name], previous_teacher[name])
            continue
        # Keras' running mean of the epoch's micro-batch losses is the official running
        # mean of the epoch's losses at each optimizer step.
        start = 3 * (t // 3)
        expected_mean = float(np.mean(trace["loss"][start : t + 1].astype(np.float64)))
        assert abs(logs["loss"] - expected_mean) <= STATE_TOLERANCE * abs(expected_mean), t
        center = compare(step["center"], trace["center_after"][t], is_parameter=False)
        assert center.excess < 1, (t, center)
        for who in ("student", "teacher"):
            for key in trace.files:
                if not key.startswith(f"{who}_param/"):
                    continue
                name = key.split("/", 1)[1]
                dev = compare(step[who][name], trace[key][t], initial[who, name], name)
                assert dev.excess < 1, (t, who, name, dev)
        previous_center = step["center"]
        previous_teacher = {n: step["teacher"][n] for n in names}


@pytest.mark.tf_only
def test_accumulation_under_mirrored_strategy(golden_dir):
    """2 replicas of 1 image, 2 micro-batches a step: the center's mean spans the
    replicas and the micro-batches, the gradient is all-reduced then accumulated."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    model, _ = run_golden(
        golden_dir, gradient_accumulation_steps=K, record=False, scope=strategy.scope()
    )
    _check_final(model, golden_dir)


@pytest.mark.tf_only
def test_accumulation_compiled_with_xla(golden_dir):
    """jit_compile=True and 2 micro-batches per compiled call (JAX always compiles)."""
    model, _ = run_golden(
        golden_dir, gradient_accumulation_steps=K, steps_per_execution=2, record=False,
        jit_compile=True,
    )
    _check_final(model, golden_dir)


@pytest.mark.backends("jax")
def test_accumulation_under_jax_data_parallel_with_steps_per_execution(golden_dir):
    import jax

    devices = jax.devices()
    assert len(devices) == 2, "conftest sets --xla_force_host_platform_device_count=2"
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        model, _ = run_golden(
            golden_dir, gradient_accumulation_steps=K, steps_per_execution=2, record=False
        )
    finally:
        keras.distribution.set_distribution(None)
    assert model.student.backbone.cls_token.value.sharding.mesh.size == 2
    _check_final(model, golden_dir)


@pytest.mark.backends("torch")
def test_accumulated_float64_replay_matches_reference(golden_dir):
    """In double precision only the official float32 run rounds: the accumulated run lands
    within half of each two-program bound of it (the key bias aside, as everywhere)."""
    model, _ = run_golden(
        golden_dir, gradient_accumulation_steps=K, record=False, dtype_policy="float64"
    )
    worst = {name: d.excess for name, d in final_deviations(model, golden_dir).items()
             if d.excess >= 0.5}
    assert not worst, worst


@pytest.mark.backends("tensorflow")
def test_resume_from_an_accumulating_checkpoint(golden_dir, tmp_path):
    """Epoch 1, an official checkpoint, a new model from it, epoch 2: the official end.
    With 4 micro-batches per compiled call, across the optimizer steps' boundaries."""
    model = DINO.from_official_checkpoint(
        golden_dir / "init_checkpoint.pth", gradient_accumulation_steps=K
    )
    model.compile(steps_per_execution=4)
    data = golden_batches(golden_dir)
    model.fit(data, batch_size=4 // K, epochs=1, shuffle=False, verbose=0)
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    args = dict(read_checkpoint(path)["args"])
    assert args["gradient_accumulation_steps"] == K
    assert args["batch_size_per_gpu"] == 4  # the official (effective) batch
    resumed = DINO.from_official_checkpoint(path)
    assert resumed.config.gradient_accumulation_steps == K
    assert resumed.config.batch_size_per_gpu == 4 // K
    assert resumed._resume_epoch == 1
    resumed.compile(steps_per_execution=4)
    resumed.fit(data, batch_size=4 // K, shuffle=False, verbose=0)
    _check_final(resumed, golden_dir)


# ---------------------------------------------------------------- small, every backend
def tiny_dino(**overrides):
    """The shared tiny DINO on this file's schedule: 2 epochs, no frozen last layer, a
    constant teacher temperature."""
    schedule = dict(epochs=2, freeze_last_layer=0, warmup_teacher_temp_epochs=0,
                    teacher_temp=0.04)
    return shared_tiny_dino(**{**schedule, **overrides})


def test_one_step_accumulation_is_the_plain_model():
    """k=1 (the default) adds no variable: the model and the optimizer are today's."""
    model = tiny_dino()
    model.compile()
    assert model.config.gradient_accumulation_steps == 1
    assert model.get_config()["gradient_accumulation_steps"] == 1
    assert not [v.path for v in model.weights if "accumulator" in v.path]
    assert not [v.path for v in model.optimizer.variables
                if "accumulated" in v.path or "micro_step" in v.path]
    accumulating = tiny_dino(gradient_accumulation_steps=3)
    accumulating.compile()
    extra = len(accumulating.optimizer.variables) - len(model.optimizer.variables)
    assert extra == len(model.trainable_variables) + 1  # a gradient each, the counter
    assert len(accumulating.weights) == len(model.weights) + 2  # center sum and rows


def test_micro_batches_move_nothing_until_the_optimizer_steps():
    model = tiny_dino(gradient_accumulation_steps=2, warmup_epochs=0)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            m = self.model
            seen.append(dict(
                iterations=int(ops.convert_to_numpy(m.optimizer.iterations)),
                center=np.array(ops.convert_to_numpy(m.center)),
                teacher=official.state_dict_of(m.teacher_map),
                student=official.state_dict_of(m.student_map),
                lr=float(logs["lr"]),
            ))

    start = official.state_dict_of(model.student_map)
    model.fit(tiny_crops(8), batch_size=2, epochs=1, verbose=0, callbacks=[Watch()])
    assert [s["iterations"] for s in seen] == [0, 1, 1, 2]
    # The first micro-batch moves no parameter, the center nor the teacher ...
    for name, value in start.items():
        np.testing.assert_array_equal(seen[0]["student"][name], value)
    assert not np.any(seen[0]["center"])
    # ... the second one steps all of them.
    assert np.any(seen[1]["center"])
    fixed = ["head.last_layer.weight_g"]  # norm_last_layer: not trained
    still = [n for n in start if np.array_equal(seen[1]["student"][n], start[n])]
    assert still == fixed, still
    still = [n for n in start if np.array_equal(seen[1]["teacher"][n], start[n])]
    assert still == fixed, still
    # The learning rate: scaled by the effective batch of 4 images, on a schedule of
    # 2 optimizer steps an epoch, the same for both micro-batches of a step.
    assert model.schedules.steps_per_epoch == 2
    base = 0.05 * 4 / 256
    np.testing.assert_allclose(model.schedules.base_lr, base, rtol=1e-7)
    np.testing.assert_allclose([s["lr"] for s in seen], [base, base] + [
        float(model.schedules.lr(1))] * 2, rtol=1e-6)
    assert float(model.schedules.lr(1)) < base


def test_effective_batch_in_checkpoint_args_and_back(tmp_path):
    model = tiny_dino(gradient_accumulation_steps=4, batch_size_per_gpu=2, epochs=1)
    model.fit(tiny_crops(8), batch_size=2, verbose=0)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 1
    np.testing.assert_allclose(model.schedules.base_lr, 0.05 * 8 / 256, rtol=1e-7)
    path = model.save_official_checkpoint(tmp_path / "checkpoint.npz")
    args = dict(read_checkpoint(path)["args"])
    assert (args["batch_size_per_gpu"], args["gradient_accumulation_steps"]) == (8, 4)
    again = DINO.from_official_checkpoint(path)
    assert again.config.gradient_accumulation_steps == 4
    assert again.optimizer.accumulation_steps == 4
    assert (again.config.batch_size, again.config.batch_size_per_gpu) == (8, 2)
    # The same run without accumulation (batches of 8): the same effective batch.
    plain = DINO.from_official_checkpoint(path, gradient_accumulation_steps=1)
    assert (plain.config.batch_size, plain.config.batch_size_per_gpu) == (8, 8)
    config = json.loads(json.dumps(again.get_config()))
    assert DINO.from_config(config).config.gradient_accumulation_steps == 4


def test_from_pretrained_takes_the_accumulation(golden_dir):
    model = DINO.from_pretrained(
        golden_dir / "init_checkpoint.pth", gradient_accumulation_steps=2, epochs=1
    )
    model.compile()
    assert model.optimizer.accumulation_steps == 2


def test_wrong_settings_are_named():
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be"):
        tiny_dino(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_dino(gradient_accumulation_steps=4, steps_per_epoch=6)
    model = tiny_dino(gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="not a whole number of optimizer steps"):
        model.fit(tiny_crops(6), batch_size=2, verbose=0)  # 3 batches an epoch
    with pytest.raises(ValueError, match="needs a keras_dino optimizer"):
        tiny_dino(gradient_accumulation_steps=2).compile(optimizer=keras.optimizers.SGD())


def test_mixed_float16_accumulates_with_loss_scaling():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_dino(gradient_accumulation_steps=2)
        model.compile()
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        # 16 micro-batches; the first ones overflow at the initial loss scale and are
        # skipped (not accumulated), as the optimizer steps are without accumulation.
        history = model.fit(tiny_crops(32), batch_size=2, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        steps = int(ops.convert_to_numpy(model.optimizer.iterations))
        micro = int(ops.convert_to_numpy(model.optimizer.inner_optimizer.micro_step))
        assert steps >= 1 and 2 * steps + micro <= 16
        assert np.any(ops.convert_to_numpy(model.center))  # moved with the steps
    finally:
        keras.config.set_dtype_policy(previous)
