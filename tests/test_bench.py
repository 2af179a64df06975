"""The benchmark scripts run (tiny configurations) so they cannot rot; no timing asserts."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.backends("jax")
def test_train_throughput_tiny():
    (row,) = _run(["bench/train_throughput.py", "--tiny"], "jax")
    assert row["backend"] == "jax" and row["batch"] == 4 and row["steps_timed"] == 20
    for key in ("images_per_s", "step_ms_median", "compile_s", "peak_memory_gib", "tflops"):
        assert row[key] > 0, key
    assert abs(row["images_per_s"] - 4000.0 / row["step_ms_median"]) / row["images_per_s"] < 0.01


def test_flop_count_is_analytic():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import argparse

    from train_throughput import step_flops, vit_flops

    # ViT-S/16 at 224: ~4.6 G multiply-adds forward (the "GFLOPs" the ViT papers quote).
    assert 4.4 < vit_flops(384, 12, 197, 16) / 2e9 < 4.8
    # anchors.md: ~124 GFLOP per image for 2x224 + 10x96 crops, out_dim 65536.
    cfg = argparse.Namespace(
        patch_size=16, global_crops=2, local_crops=10, global_size=224, local_size=96,
        batch=1, hidden_dim=2048, bottleneck_dim=256, out_dim=65536,
    )
    assert 120 < step_flops(cfg, 384, 12) / 1e9 < 128
