"""DINO training against the official golden run: every step, every backend.

From `golden/init_checkpoint`, 2 epochs of 3 steps on `golden/crops.npz` must reproduce
`golden/trace.npz` at every step and end at `golden/checkpoint`, within 1e-5 relative to
each tensor's largest magnitude.

Two groups of tensors are measured against their own, stated bounds instead, and the
reasons are tested here rather than assumed:

* The key third of each `attn.qkv.bias`: softmax is invariant to adding the same value to
  every key, so the exact gradient of the key bias is zero. Both implementations feed
  AdamW pure float32 rounding noise there (the official gradient is ~4e-10), which Adam
  normalises into full-size steps; no two float32 programs agree on it. We check that
  the official gradient there is noise, and that those entries move no more than
  AdamW's largest possible steps allow.
* A few float32 tensors land between 1e-5 and 2e-5 from the reference on some backends
  (measured: TF 1.4e-5 on the patch-embedding kernel, torch 1.7e-5 on the AdamW moments
  of the weight-normalised last layer, JAX 1.04e-5 on the query/value thirds of the
  final teacher's attention bias). Their gradients are long sums or sums of nearly
  cancelling terms: the golden second view is the mirror image of the first, so the
  antisymmetric part of the patch kernel's gradient cancels; the weight-norm backward
  is a projection; a bias gradient sums every token of every crop. torch's CPU kernels
  accumulate some of these in float64, Keras' backends in float32, and AdamW's early
  steps amplify the differences. The same code run in float64 reproduces the reference within 1e-5 on
  every tensor (`test_float64_replay_matches_reference` on TF and torch; JAX measured
  with JAX_ENABLE_X64=1: 5.9e-6): the algorithm is the same, the gap is float32
  arithmetic.
"""

import json

import numpy as np
import pytest

from keras_dino.testing.golden import (
    FLOAT32_CANCELLATION_BOUND,
    TOLERANCE,
    bound_for,
    digest,
    final_deviations,
    run_golden,
)

TOL = TOLERANCE
# Measured with keras 3.15 on CPU (TF 1.4e-5, torch 1.7e-5, JAX 1.04e-5): see the module
# docstring for why these float32 tensors may pass 1e-5. The query and value thirds of
# the attention biases are held to the same bound in `test_final_checkpoint`.
EMBED = 48  # golden run: embed_dim 48, so the key bias is qkv.bias[48:96]


@pytest.fixture(scope="module")
def golden_dir(fixtures_dir):
    return fixtures_dir / "golden"


@pytest.fixture(scope="module")
def trace(golden_dir):
    return np.load(golden_dir / "trace.npz")


@pytest.fixture(scope="module")
def golden_run(golden_dir):
    return run_golden(golden_dir)


def _rel(actual, expected):
    expected = np.asarray(expected, np.float64)
    diff = np.max(np.abs(np.asarray(actual, np.float64) - expected))
    return float(diff / max(np.max(np.abs(expected)), 1e-30))


def _without_key_bias(name, array):
    if name.endswith("attn.qkv.bias"):
        array = np.asarray(array)
        return np.concatenate([array[..., :EMBED], array[..., 2 * EMBED :]], axis=-1)
    return array


def test_schedules_and_loss_every_step(golden_run, trace):
    _, steps = golden_run
    assert len(steps) == 6
    for t, step in enumerate(steps):
        logs = step["logs"]
        for key in ("lr", "wd", "momentum", "teacher_temp"):
            expected = trace[key][t]
            assert abs(logs[key] - expected) <= TOL * max(abs(expected), 1e-12), (t, key)
        # Keras reports the running mean of the epoch's losses.
        start = 3 * (t // 3)
        expected_mean = float(np.mean(trace["loss"][start : t + 1].astype(np.float64)))
        assert abs(logs["loss"] - expected_mean) <= TOL * abs(expected_mean), t


def test_center_every_step(golden_run, trace):
    _, steps = golden_run
    for t, step in enumerate(steps):
        assert _rel(step["center"], trace["center_after"][t]) < TOL, t


def test_parameters_every_step(golden_run, trace):
    _, steps = golden_run
    names = json.loads(str(trace["param_names"]))
    for t, step in enumerate(steps):
        for who in ("student", "teacher"):
            params = step[who]
            # Full arrays of the recorded parameters, relative to each tensor's largest
            # magnitude over the run (biases start at 0: at step 1 their largest entry
            # is one AdamW step, which would make "relative" mean "per element").
            for key in trace.files:
                if not key.startswith(f"{who}_param/"):
                    continue
                name = key.split("/", 1)[1]
                ours = _without_key_bias(name, params[name])
                ref = _without_key_bias(name, trace[key][t])
                scale = np.max(np.abs(_without_key_bias(name, trace[key])))
                assert np.max(np.abs(ours - ref)) < TOL * scale, (t, who, name)
            # Digests of every parameter: the bounds implied by 1e-5 per element.
            for i, name in enumerate(names):
                if name.endswith("attn.qkv.bias"):
                    continue  # its key third is checked in test_key_bias_is_null_space
                ours = np.asarray(params[name], np.float64)
                ref = trace[f"{who}_param_digest"][t, i]
                n, peak = ours.size, np.max(np.abs(ours))
                got = digest(ours)
                assert abs(got[0] - ref[0]) <= TOL * n * peak, (t, who, name, "sum")
                assert abs(got[1] - ref[1]) <= TOL * np.sqrt(n) * peak, (t, who, name, "l2")
                assert abs(got[2] - ref[2]) <= 6 * TOL * n * peak, (t, who, name, "weighted")


def test_final_checkpoint(golden_run, golden_dir):
    model, _ = golden_run
    deviations = final_deviations(model, golden_dir)
    assert deviations.pop("epoch") == 0.0
    failures = {}
    for name, dev in deviations.items():
        if name.endswith("attn.qkv.bias"):
            continue  # key third: test_key_bias_is_null_space; q and v thirds below
        if not dev < bound_for(name):
            failures[name] = dev
    assert not failures, failures
    ref = np.load(golden_dir / "checkpoint.npz")
    from keras_dino.checkpoints.dino_checkpoint import official_checkpoint_dict

    ours = official_checkpoint_dict(model)
    for who, prefix in (("student", "module."), ("teacher", "")):
        for block in (0, 1):
            name = f"{prefix}backbone.blocks.{block}.attn.qkv.bias"
            got = _without_key_bias(name, ours[who][name])
            want = _without_key_bias(name, ref[f"{who}/{name}"])
            assert _rel(got, want) < FLOAT32_CANCELLATION_BOUND, (who, name)
    # Per-parameter AdamW steps: 6 everywhere, 3 for the last layer frozen in epoch 0.
    for idx, slots in ours["optimizer"]["state"].items():
        assert float(slots["step"]) == float(ref[f"optimizer/state/{idx}/step"]), idx


def test_key_bias_is_null_space(golden_run, golden_dir, trace):
    """The key bias gets only rounding noise, here and officially, and moves accordingly."""
    model, _ = golden_run
    official_grad = trace["grad_raw/backbone.blocks.0.attn.qkv.bias"]
    assert np.max(np.abs(official_grad[:, EMBED : 2 * EMBED])) < 1e-6 * np.max(np.abs(official_grad))
    # AdamW moves a parameter by at most lr * (1 - b1) / sqrt(1 - b2) / (1 - b1^k) per
    # step plus decay; bound the whole run by the sum of that over the schedule.
    lr = trace["lr"]
    k = np.arange(1, len(lr) + 1)
    max_move = float(np.sum(lr * (1 - 0.9) / np.sqrt(1 - 0.999) / (1 - 0.9**k)))
    ref = np.load(golden_dir / "checkpoint.npz")
    from keras_dino.checkpoints.dino_checkpoint import official_checkpoint_dict

    ours = official_checkpoint_dict(model)
    for block in (0, 1):
        name = f"backbone.blocks.{block}.attn.qkv.bias"
        got = ours["student"][f"module.{name}"][EMBED : 2 * EMBED]
        want = ref[f"student/module.{name}"][EMBED : 2 * EMBED]
        assert np.max(np.abs(got - want)) <= 2 * max_move
        assert np.max(np.abs(got)) <= max_move  # starts at 0


@pytest.mark.backends("torch", "tensorflow")
def test_float64_replay_matches_reference(golden_dir):
    """In double precision this code lands within 1e-5 of the reference everywhere (but
    the key bias): the float32 gaps above are arithmetic, not algorithm."""
    model, _ = run_golden(golden_dir, record=False, dtype_policy="float64")
    deviations = final_deviations(model, golden_dir)
    worst = {
        name: dev
        for name, dev in deviations.items()
        if not name.endswith("attn.qkv.bias") and dev >= TOL
    }
    assert not worst, worst


@pytest.mark.backends("tensorflow", "jax")
def test_steps_per_execution_3(golden_dir):
    """Three steps per compiled call: the EMA, center and schedules stay per step."""
    model, _ = run_golden(golden_dir, steps_per_execution=3, record=False)
    deviations = final_deviations(model, golden_dir)
    assert deviations.pop("epoch") == 0.0
    failures = {
        name: dev
        for name, dev in deviations.items()
        if not name.endswith("attn.qkv.bias")
        and dev >= bound_for(name)
    }
    assert not failures, failures
