"""The benchmark scripts run (tiny configurations) so they cannot rot; no timing asserts."""

import json
import os
import subprocess
import sys

import pytest

from keras_dino.tools.common import cpu_has_bf16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.once
def test_train_throughput_tiny_with_and_without_remat():
    """--compare_remat: one row with rematerialised student blocks, then one without."""
    rows = _run(["bench/train_throughput.py", "--tiny", "--compare_remat"], "jax")
    assert [row["remat"] for row in rows] == [True, False]
    for row in rows:
        assert row["backend"] == "jax" and row["batch"] == 4 and row["steps_timed"] == 20
        for key in ("images_per_s", "step_ms_median", "compile_s", "peak_memory_gib",
                    "tflops"):
            assert row[key] > 0, key
        assert abs(row["images_per_s"] - 4000.0 / row["step_ms_median"]) / (
            row["images_per_s"]) < 0.01


@pytest.mark.once
def test_train_throughput_tiny_accumulation():
    """2 micro-batches of 4 per optimizer step, then the same 8 images as one batch."""
    accumulated, plain = _run(["bench/train_throughput.py", "--tiny",
                               "--gradient_accumulation_steps=2", "--compare_accumulation"], "jax")
    assert (accumulated["batch"], accumulated["gradient_accumulation_steps"]) == (4, 2)
    assert (plain["batch"], plain["gradient_accumulation_steps"]) == (8, 1)
    for row in (accumulated, plain):
        assert row["effective_batch"] == 8 and row["peak_memory_gib"] > 0
        assert abs(row["images_per_s"] - 8000.0 / row["step_ms_median"]) / row["images_per_s"] < 0.01


@pytest.mark.once
def test_export_throughput_tiny():
    """SavedModel, ONNX and LiteRT of one backbone: one row per (format, batch), a summary."""
    *rows, summary = _run(["bench/export_throughput.py", "--tiny"], "tensorflow")
    assert [(r["format"], r["batch"]) for r in rows] == [
        (fmt, batch) for batch in (1, 4) for fmt in ("saved_model", "onnx", "litert")]
    for row in rows:
        assert row["images_per_s"] > 0 and row["ratio_vs_saved_model"] > 0
    assert summary["summary"]["onnx/batch_4"] == rows[4]["images_per_s"]
    assert set(summary["export_seconds"]) == {"saved_model", "onnx", "litert"}


@pytest.mark.once
def test_eval_tools_tiny():
    """Every evaluation tool's step is timed beside the forward pass; then a summary."""
    *rows, summary = _run(["bench/eval_tools.py", "--tiny"], "tensorflow")
    steps = [f"{r['tool']}/{r['step']}" for r in rows]
    assert steps == ["video_segmentation/features", "video_segmentation/propagation",
                     "video_attention/frame", "attention_segmentation/image",
                     "retrieval/multiscale", "copy_detection/batch"]
    for row in rows:
        assert row["ms_per_item"] > 0 and row["ratio_vs_forward"] > 0
        assert abs(row["items_per_s"] * row["ms_per_item"] - 1000) < 0.02 * 1000
    assert summary["summary"] == {s: r["ms_per_item"] for s, r in zip(steps, rows)}
    assert rows[1]["context_frames"] == 8 and summary["peak_rss_gib"] > 0


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


@pytest.mark.once
def test_bf16_loss_curve_tracks_float32():
    """mixed_bfloat16 from the same start on the same CIFAR-10 crops follows float32.

    bench/bf16_loss_curve.py runs where bfloat16 runs at full speed: under torch on a CPU
    with bfloat16 instructions (avx512_bf16 or AMX), under TensorFlow on one without
    (torch emulates them there, 6x slower than its float32; TensorFlow's bfloat16 steps
    are not slower than its float32 ones). Measured alone on one thread: 35-40 s under
    torch with native bfloat16 at batch 16 (84 s under JAX without XLA's optimisations);
    48 s under TensorFlow on an AVX2-only CPU at batch 4, where torch took 143 s beside
    the other test processes. A subprocess of the torch process, which ends the test
    command first. Batch 4 keeps the margins: largest relative gap after the first window
    0.00027 under torch, 0.0014 under TensorFlow (bound 0.01); largest gap 0.8% of the
    loss's range under torch, 5.7% under TensorFlow (bound 25%).
    """
    backend = "torch" if cpu_has_bf16() else "tensorflow"
    *windows, summary = _run(["bench/bf16_loss_curve.py", "--steps=80", "--window=20",
                              "--batch=4", "--out_dim=256"], backend)
    assert summary["backend"] == backend and summary["windows"] == len(windows) == 4
    assert [row["steps"] for row in windows] == [20, 40, 60, 80]
    fp32 = [row["loss_fp32"] for row in windows]
    bf16 = [row["loss_bf16"] for row in windows]
    assert fp32 != bf16  # bf16 really ran in bf16
    assert summary["max_rel_gap_after_first_window"] < 0.01, summary
    # the gap is small next to how far the loss itself moves over the run
    gap = max(abs(b - f) for f, b in zip(fp32, bf16))
    assert gap < 0.25 * (max(fp32) - min(fp32)), (windows, summary)


@pytest.mark.backends("torch")
def test_golden_spread_one_condition():
    """The spread script replays the golden run in a subprocess and pools the excesses."""
    *rows, summary = _run(["bench/golden_spread.py", "--conditions=torch_threads1"], "torch")
    assert rows[0]["condition"] == "torch_threads1"
    tensors = rows[1:]
    assert len(tensors) > 100 and all(0 <= row["max_excess"] < 1 for row in tensors)
    assert summary["summary"] == "golden_spread" and summary["max_excess"] < 1
    assert summary["max_excess"] == max(row["max_excess"] for row in tensors)


@pytest.mark.once
def test_knn_bench_trains_the_quickstart_recipe_with_its_stated_departures():
    """bench/knn_cifar10.py --arch=resnet reads examples/flags/quickstart.flags: the same
    head and schedules, the network at twice the width; only that, RECIPES["resnet"] and
    the run's length differ."""
    import dataclasses

    sys.path.insert(0, os.path.join(REPO, "bench"))
    import knn_cifar10

    from keras_dino.tools import train

    quickstart, _ = train.recipe(knn_cifar10.QUICKSTART)
    config, crops = knn_cifar10.quickstart_recipe(knn_cifar10.parse_args([]))
    departures = {f.name for f in dataclasses.fields(config)
                  if getattr(config, f.name) != getattr(quickstart, f.name)}
    assert departures == {"lr", "batch_size_per_gpu", "batch_size", "steps_per_epoch",
                          "resnet_kwargs"}
    assert (config.lr, config.min_lr, config.batch_size_per_gpu) == (0.002, 5e-4, 128)
    wider = dict(quickstart.resnet_kwargs)
    wider.update(stem_width=2 * wider["stem_width"],
                 stage_widths=[2 * width for width in wider["stage_widths"]])
    assert config.arch == "resnet_quickstart"
    assert dict(config.resnet_kwargs) == wider == dict(
        block="basic", layers=[1, 1, 1, 1], stem_width=32, stage_widths=[32, 64, 128, 256])
    assert tuple(crops.global_crops_scale) == (0.14, 1.0) and crops.local_crops_number == 0
