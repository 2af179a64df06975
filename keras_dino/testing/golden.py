"""Replays the official golden training run and measures the deviation per tensor.

Used by the tests and by `python -m keras_dino.testing.golden` (prints the deviations
as JSON lines). The golden run lives in `shared/fixtures/official_dino/golden/`: an
initial official checkpoint, the crops fed, the per-iteration trace and the final
checkpoint, all computed by the official code.
"""

import json
import os
import pathlib

import keras
import numpy as np
from keras import ops

from keras_dino.checkpoints import official

# The golden comparison's tolerance, relative to each tensor's largest magnitude, and the
# float32 cases with a stated bound (tests/test_golden_training.py explains each):
# the patch-embedding kernel (the golden second view is the mirror image of the first,
# so part of its gradient cancels to rounding noise) and the AdamW moments of the
# weight-normalised last layer (the weight-norm projection cancels likewise); and the
# query/value attention biases, whose gradients sum every token of every crop.
TOLERANCE = 1e-5
FLOAT32_CANCELLATION_BOUND = 2e-5
FLOAT32_CANCELLATION_SUFFIXES = (
    "patch_embed.proj.weight",
    "attn.qkv.bias",  # the query and value thirds; the key third is noise only
    "optimizer/state/14/exp_avg",
    "optimizer/state/14/exp_avg_sq",
)


def bound_for(name: str) -> float:
    """The tolerance of one tensor of the golden comparison (see above)."""
    if name.endswith(FLOAT32_CANCELLATION_SUFFIXES):
        return FLOAT32_CANCELLATION_BOUND
    return TOLERANCE


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


def final_deviations(model, golden_dir) -> dict:
    """`{tensor name: max |ours - official| / max |official|}` over the final checkpoint."""
    from keras_dino.checkpoints.dino_checkpoint import official_checkpoint_dict

    ref = np.load(pathlib.Path(golden_dir) / "checkpoint.npz")
    ours = official_checkpoint_dict(model)
    flat = {f"student/{k}": v for k, v in ours["student"].items()}
    flat.update({f"teacher/{k}": v for k, v in ours["teacher"].items()})
    flat["dino_loss/center"] = ours["dino_loss"]["center"]
    for idx, slots in ours["optimizer"]["state"].items():
        for slot, value in slots.items():
            flat[f"optimizer/state/{idx}/{slot}"] = value
    out = {}
    for key in ref.files:
        if ref[key].dtype.kind not in "fiu" or key == "epoch":
            continue
        if key not in flat:
            out[key] = float("inf")
            continue
        r = np.asarray(ref[key], np.float64)
        a = np.asarray(flat[key], np.float64)
        out[key] = float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30))
    out["epoch"] = float(int(ours["epoch"]) != int(ref["epoch"]))
    return out


if __name__ == "__main__":
    shared = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", "../shared"))
    gdir = shared / "fixtures" / "official_dino" / "golden"
    import sys

    policy = sys.argv[1] if len(sys.argv) > 1 else None
    trained, _ = run_golden(gdir, record=False, dtype_policy=policy)
    devs = final_deviations(trained, gdir)
    for name, dev in sorted(devs.items(), key=lambda kv: -kv[1]):
        line = {"backend": keras.backend.backend(), "dtype": policy or "float32"}
        print(json.dumps({**line, "tensor": name, "max_rel_dev": dev}))
