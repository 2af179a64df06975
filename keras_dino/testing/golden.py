"""Replays the official golden training run and measures the deviation per tensor.

Used by the tests and by `python -m keras_dino.testing.golden` (prints the deviations
as JSON lines). The golden run lives in `shared/fixtures/official_dino/golden/`: an
initial official checkpoint, the crops fed, the per-iteration trace and the final
checkpoint, all computed by the official code.
"""

import dataclasses
import json
import math
import os
import pathlib

import keras
import numpy as np
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.testing.tolerance import LAMBDA, UNIT_ROUNDOFF

# ----------------------------------------------------------------------- tolerances
# Two float32 programs of the same algorithm (the official torch run, and ours on any
# backend, CPU, BLAS/oneDNN kernel, thread count or XLA fusion) sum in different orders,
# so they differ by rounding. The bounds below follow from float32 arithmetic and the size
# of the golden run, not from the last digits one machine produced; the measured spread
# over those conditions is recorded in docs/tolerances.md (`bench/golden_spread.py`).
#
# * u = 2**-24, float32's unit roundoff. A sum of n terms evaluated in any order is off by
#   at most lambda * sqrt(n) * u * sum|terms| with probability 1 - 2 exp(-lambda^2 / 2)
#   (Higham and Mary's probabilistic bound, 2019); lambda = 6 makes that 1 - 3e-8.
# * The golden run's longest reductions are the 1,024 prototypes of the head (the loss's
#   softmax and its backward); the others are shorter (768 pixels of a patch, 216 tokens
#   of a batch, 192 hidden units).
# * Gradients, hence AdamW's moments, the center and the loss, are sums: relative to their
#   largest element, each program is within lambda * sqrt(1024) * u = 1.1e-5 of exact
#   arithmetic per step, two programs within twice that, and the 6 steps' independent
#   errors add in quadrature: STATE_TOLERANCE = 2 * 1.1e-5 * sqrt(6) = 5.6e-5.
# * A parameter starts equal in both programs; AdamW moves it by lr * m / sqrt(v) per
#   step, a ratio of its own gradient statistics, so a relative gradient error becomes a
#   relative error of the *movement*, amplified where the gradient is a difference of
#   nearly equal terms (the weight-norm projection of the last layer, the mirrored golden
#   views that cancel part of the patch kernel's gradient). MOVEMENT_TOLERANCE allows an
#   amplification (cancellation factor) of up to CANCELLATION = 200 on the two programs'
#   per-step gradient noise: 200 * 2 * 1.1e-5 = 0.46% of the reference's movement
#   (measured: at most 0.12% on any tensor, machine or condition). A wrong rule moves
#   some tensor by more than that (tests/test_golden_training.py breaks each rule in
#   turn and checks that the comparison fails by a wide margin).
# * On top of that, each stored parameter is rounded once per step by the decay, AdamW
#   and EMA updates: ROUNDING_TOLERANCE = 8 ulps per step over the 6 steps, relative to
#   the tensor's largest magnitude (LayerNorm gains near 1 that moved by 3e-4 differ by a
#   few ulps).
# * The key third of each attention's qkv bias has an exact gradient of zero (softmax
#   ignores a shift of every key), so both programs feed AdamW pure rounding noise there
#   and it moves by up to AdamW's largest steps: it is bounded separately
#   (`test_key_bias_is_null_space`) and left out here (`KEY_BIAS`).
GOLDEN_STEPS = 6
LONGEST_REDUCTION = 1024
GRADIENT_NOISE = LAMBDA * math.sqrt(LONGEST_REDUCTION) * UNIT_ROUNDOFF
STATE_TOLERANCE = 2.0 * GRADIENT_NOISE * math.sqrt(GOLDEN_STEPS)
CANCELLATION = 200.0
MOVEMENT_TOLERANCE = CANCELLATION * 2.0 * GRADIENT_NOISE
ROUNDING_TOLERANCE = 8 * GOLDEN_STEPS * 2.0 * UNIT_ROUNDOFF
# Schedules (lr, wd, momentum, teacher temperature) are a few float32 operations on an
# exact float64 formula: 16 ulps.
SCHEDULE_TOLERANCE = 16 * 2.0 * UNIT_ROUNDOFF
EMBED_DIM = 48  # golden run: the key bias is qkv.bias[48:96]


def without_key_bias(name: str, array) -> np.ndarray:
    """The query and value thirds of an `attn.qkv.bias`; other tensors unchanged."""
    array = np.asarray(array)
    if name.endswith("attn.qkv.bias") and array.shape[-1] == 3 * EMBED_DIM:
        return np.concatenate([array[..., :EMBED_DIM], array[..., 2 * EMBED_DIM :]], axis=-1)
    return array


@dataclasses.dataclass(frozen=True)
class Deviation:
    """One tensor of the comparison: `max |ours - ref|` against its bound."""

    deviation: float
    scale: float  # max |reference|
    movement: float  # max |reference - initial value|; for optimizer state, the scale
    is_parameter: bool

    @property
    def bound(self) -> float:
        if self.is_parameter:
            return ROUNDING_TOLERANCE * self.scale + MOVEMENT_TOLERANCE * self.movement
        return STATE_TOLERANCE * self.scale

    @property
    def excess(self) -> float:
        """Deviation over bound: below 1 passes."""
        return self.deviation / max(self.bound, 1e-30)


def compare(ours, reference, initial=None, name: str = "", is_parameter: bool = True):
    """`Deviation` of one tensor (the key third of qkv biases left out)."""
    ref = without_key_bias(name, np.asarray(reference, np.float64))
    got = without_key_bias(name, np.asarray(ours, np.float64))
    init = np.zeros_like(ref) if initial is None else without_key_bias(
        name, np.asarray(initial, np.float64))
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return Deviation(
        deviation=float(np.max(np.abs(got - ref))) if ref.size else 0.0,
        scale=scale,
        movement=float(np.max(np.abs(ref - init))) if is_parameter else scale,
        is_parameter=is_parameter,
    )


def failures(deviations: dict) -> dict:
    """`{name: excess}` of the tensors over their bound."""
    return {name: d.excess for name, d in deviations.items() if d.excess >= 1.0}


def digest(array) -> np.ndarray:
    """The fixtures' digest: `[sum, L2 norm, sum x * ((arange(n) % 13) - 6)]` in float64."""
    a = np.asarray(array, np.float64).ravel()
    weights = (np.arange(a.size) % 13) - 6
    return np.array([a.sum(), np.sqrt((a * a).sum()), (a * weights).sum()])


def golden_batches(golden_dir) -> tuple:
    """The 6 crops of the 3 golden batches, NHWC, stacked: `fit(x, batch_size=4)` input."""
    crops = np.load(pathlib.Path(golden_dir) / "crops.npz")
    g = crops["global_crops"].transpose(0, 1, 2, 4, 5, 3)  # (iters, 2, B, H, W, C)
    local = crops["local_crops"].transpose(0, 1, 2, 4, 5, 3)
    views = [g[:, 0], g[:, 1]] + [local[:, j] for j in range(local.shape[1])]
    return tuple(np.ascontiguousarray(v.reshape((-1,) + v.shape[2:])) for v in views)


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        self.steps.append(
            dict(
                logs={k: float(v) for k, v in (logs or {}).items()},
                student=official.state_dict_of(model.student_map),
                teacher=official.state_dict_of(model.teacher_map),
                center=np.asarray(ops.convert_to_numpy(model.center)),
            )
        )


def run_golden(
    golden_dir,
    steps_per_execution=1,
    record=True,
    dtype_policy=None,
    scope=None,
    gradient_accumulation_steps=1,
    **compile_kw,
):
    """Trains from `init_checkpoint` on the golden crops for 2 epochs of 3 steps.

    `dtype_policy="float64"` runs the same algorithm in double precision (TF and torch),
    which measures how far the official float32 reference is from exact arithmetic.
    `scope` (e.g. `strategy.scope()`) is entered while the model is built and trained.
    `gradient_accumulation_steps=k` feeds the same images as `k` times as many batches of
    `4 / k` (the recorder then sees every micro-batch): the same 3 official steps an epoch.
    """
    import contextlib

    from keras_dino.training.dino import DINO

    golden_dir = pathlib.Path(golden_dir)
    previous = keras.config.dtype_policy()
    if dtype_policy:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        with scope if scope is not None else contextlib.nullcontext():
            overrides = {}
            if gradient_accumulation_steps != 1:
                overrides["gradient_accumulation_steps"] = gradient_accumulation_steps
            model = DINO.from_official_checkpoint(
                golden_dir / "init_checkpoint.pth", **overrides
            )
            model.compile(steps_per_execution=steps_per_execution, **compile_kw)
            recorder = _Recorder()
            callbacks = [recorder] if record else []
            model.fit(
                golden_batches(golden_dir),
                batch_size=4 // gradient_accumulation_steps,
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )
    finally:
        keras.config.set_dtype_policy(previous)
    return model, recorder.steps


def initial_parameters(golden_dir) -> dict:
    """`{("student" | "teacher", trace name): array}` of the run's initial checkpoint, keyed
    as `trace.npz` names its parameters (no `module.` prefix)."""
    init = np.load(pathlib.Path(golden_dir) / "init_checkpoint.npz")
    return {
        ("student", key.split("/module.", 1)[1]) if key.startswith("student/")
        else ("teacher", key.split("/", 1)[1]): init[key]
        for key in init.files
        if key.startswith(("student/", "teacher/"))
    }


def flat_checkpoint(model) -> dict:
    """The model's official `checkpoint.pth` content as `{npz key: array}`."""
    from keras_dino.checkpoints.dino_checkpoint import official_checkpoint_dict

    ours = official_checkpoint_dict(model)
    flat = {f"student/{k}": v for k, v in ours["student"].items()}
    flat.update({f"teacher/{k}": v for k, v in ours["teacher"].items()})
    flat["dino_loss/center"] = ours["dino_loss"]["center"]
    for idx, slots in ours["optimizer"]["state"].items():
        for slot, value in slots.items():
            flat[f"optimizer/state/{idx}/{slot}"] = value
    flat["epoch"] = ours["epoch"]
    return flat


def compare_checkpoints(ours: dict, reference: dict, initial: dict) -> dict:
    """`{npz key: Deviation}` of every float tensor of `reference` (step counts and
    `epoch` are compared exactly by the tests; a tensor missing from `ours` is infinite)."""
    out = {}
    for key in reference:
        ref = np.asarray(reference[key])
        if ref.dtype.kind != "f" or key == "epoch" or key.endswith("/step"):
            continue
        if key not in ours:
            out[key] = Deviation(math.inf, 1.0, 1.0, False)
            continue
        is_parameter = key.startswith(("student/", "teacher/"))
        init = initial.get(key) if is_parameter else None
        if init is not None and np.shape(init) != ref.shape:
            init = None
        out[key] = compare(ours[key], ref, init, key, is_parameter)
    return out


def final_deviations(model, golden_dir) -> dict:
    """`{npz key: Deviation}` of the model against the golden run's final checkpoint."""
    golden_dir = pathlib.Path(golden_dir)
    ref = np.load(golden_dir / "checkpoint.npz")
    init = np.load(golden_dir / "init_checkpoint.npz")
    return compare_checkpoints(
        flat_checkpoint(model),
        {k: ref[k] for k in ref.files},
        {k: init[k] for k in init.files},
    )


def main(argv=None):
    """Replays the golden run once and prints one JSON line per tensor."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dtype_policy", default=None, help="e.g. float64")
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all)")
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    if args.threads and backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    elif args.threads and backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    shared = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", "../shared"))
    gdir = shared / "fixtures" / "official_dino" / "golden"
    kwargs = {"jit_compile": True} if args.jit_compile else {}
    trained, _ = run_golden(
        gdir,
        steps_per_execution=args.steps_per_execution,
        record=False,
        dtype_policy=args.dtype_policy,
        **kwargs,
    )
    devs = final_deviations(trained, gdir)
    for name, dev in sorted(devs.items(), key=lambda kv: -kv[1].excess):
        print(json.dumps({
            "backend": backend, "dtype": args.dtype_policy or "float32",
            "tensor": name, "deviation": dev.deviation, "scale": dev.scale,
            "movement": dev.movement, "bound": dev.bound, "excess": dev.excess,
        }))


if __name__ == "__main__":
    main()
