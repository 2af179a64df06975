"""How far float32 arithmetic moves the golden training run, against the derived bounds.

Replays the official golden run (`keras_dino.testing.golden`) once per condition that
changes the float summation order the way another machine would (backend, oneDNN
kernels, XLA fusion, intra-op threads, steps per execution), each in its own process,
and prints JSON lines:

* one per condition: its largest deviation/bound ratio ("excess") and the tensor;
* one per tensor: its bound, its largest excess over the conditions and where;
* a summary: the worst excess of all (below 1 passes; docs/tolerances.md records it).

    python bench/golden_spread.py                    # every condition (about 5 minutes)
    python bench/golden_spread.py --conditions=tf_default,torch_default

Float64 replays (`tf_float64`, `torch_float64`) measure the official float32 run's own
distance from exact arithmetic (one program's error: half the two-program bound).
"""

import json
import os
import subprocess
import sys

from absl import app, flags

CONDITIONS = {
    # name: (backend, extra environment, flags of `python -m keras_dino.testing.golden`)
    "tf_default": ("tensorflow", {}, []),
    "tf_onednn0": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
    "tf_threads1": ("tensorflow", {}, ["--threads=1"]),
    "tf_xla": ("tensorflow", {}, ["--jit_compile"]),
    "tf_onednn0_xla": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "0"}, ["--jit_compile"]),
    "tf_spe3": ("tensorflow", {}, ["--steps_per_execution=3"]),
    "jax_default": ("jax", {}, []),
    "jax_threads1": (
        "jax",
        {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
        [],
    ),
    "jax_spe3": ("jax", {}, ["--steps_per_execution=3"]),
    "torch_default": ("torch", {}, []),
    "torch_threads1": ("torch", {}, ["--threads=1"]),
    "tf_float64": ("tensorflow", {}, ["--dtype_policy=float64"]),
    "torch_float64": ("torch", {}, ["--dtype_policy=float64"]),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("conditions", list(CONDITIONS), "Conditions to run (names above).")


def run_condition(name):
    backend, env, extra = CONDITIONS[name]
    environ = {**os.environ, **env, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_dino.testing.golden", *extra],
        env=environ, capture_output=True, text=True, check=False,
    )
    if result.returncode:
        tail = result.stderr.strip().splitlines()[-5:]
        raise SystemExit(f"golden_spread: condition {name} failed:\n" + "\n".join(tail))
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.conditions) - set(CONDITIONS))
    if unknown:
        raise app.UsageError(f"unknown conditions {unknown}; choose from {sorted(CONDITIONS)}")
    per_tensor = {}
    worst = (0.0, None, None)
    for name in FLAGS.conditions:
        rows = run_condition(name)
        top = max(rows, key=lambda row: row["excess"])
        print(json.dumps({"condition": name, "max_excess": round(top["excess"], 4),
                          "tensor": top["tensor"]}), flush=True)
        if name.endswith("float64"):
            continue  # one program against exact arithmetic: reported, not pooled
        for row in rows:
            entry = per_tensor.setdefault(row["tensor"], {"bound": row["bound"], "excess": -1})
            if row["excess"] > entry["excess"]:
                entry.update(excess=row["excess"], condition=name, deviation=row["deviation"])
            if row["excess"] > worst[0]:
                worst = (row["excess"], row["tensor"], name)
    for tensor, entry in sorted(per_tensor.items(), key=lambda kv: -kv[1]["excess"]):
        print(json.dumps({"tensor": tensor, "bound": entry["bound"],
                          "max_deviation": entry["deviation"],
                          "max_excess": round(entry["excess"], 4),
                          "condition": entry["condition"]}))
    print(json.dumps({"summary": "golden_spread", "max_excess": round(worst[0], 4),
                      "tensor": worst[1], "condition": worst[2],
                      "conditions": len(FLAGS.conditions)}))


if __name__ == "__main__":
    app.run(main)
