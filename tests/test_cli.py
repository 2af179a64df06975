"""`keras-dino <tool> [flags]`: the installed command (keras_dino/cli.py).

The command lists the tools, shows every flag of one (the backbone flags that
keras_dino/tools/common.py defines included), answers an unknown name with the closest
one and exit status 2, and runs a tool on the backend that `--backend` names, whatever
KERAS_BACKEND says. The console script of pyproject.toml is `keras_dino.cli:main`; the
subprocesses run `python -m keras_dino`, the same `main`, so the shared editable install
is left alone.
"""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

# Runs in one backend's process (tests/conftest.py): the console script; tools run in subprocesses with their own backend.
pytestmark = pytest.mark.once

# Resolved: under Bazel this file is a symlink into the checkout.
REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "official_dino" / "backbone_vit_mini16.pth"  # 3 heads


def _keras_dino(*args, timeout=300, backend=None):
    """Runs `python -m keras_dino <args>` (what the `keras-dino` script runs)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "keras_dino", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_console_script_is_cli_main():
    from keras_dino import cli

    # The [project.scripts] table (read by hand: tomllib needs Python 3.11).
    text = (REPO / "pyproject.toml").read_text()
    table = text.split("\n[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    entries = [line for line in table.splitlines() if line and not line.startswith("#")]
    assert entries == ['keras-dino = "keras_dino.cli:main"']
    assert callable(cli.main)


def test_every_tool_has_a_command_and_every_script_its_tool():
    from keras_dino.cli import TOOLS

    modules = {p.stem for p in (REPO / "keras_dino" / "tools").glob("*.py")}
    assert sorted(m for _, (m, _) in TOOLS.items()) == sorted(modules - {"__init__", "common"})
    assert all("_" not in name for name in TOOLS), "commands are spelled with hyphens"
    assert TOOLS["train"][0] == "train" and TOOLS["eval-knn"][0] == "eval_knn"
    # Each examples/ script runs one tool's main(), and every tool has its script.
    run = {}
    for script in (REPO / "examples").glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "keras_dino.tools.") and [a.name for a in node.names] == ["main"]:
                run[script.name] = node.module.rpartition(".")[2]
    assert sorted(run.values()) == sorted(m for m, _ in TOOLS.values())
    assert run["train_dino.py"] == "train" and run["export_saved_model.py"] == "export"


def test_help_lists_every_tool_with_a_line():
    from keras_dino.cli import TOOLS

    result = _keras_dino("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: keras-dino <tool>")
    for name, (_, description) in TOOLS.items():
        assert any(line.split()[:1] == [name] and line.endswith(description) for line in lines)


def test_no_arguments_list_the_tools_with_a_usage_status(capsys):
    from keras_dino.cli import main

    assert main(["keras-dino"]) == 2
    out = capsys.readouterr().out
    assert "eval-knn" in out and "serving-client" in out


def test_unknown_tool_suggests_the_closest_name():
    result = _keras_dino("eval-kn", "--arch=vit_small")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("keras-dino: unknown tool 'eval-kn'. Did you mean 'eval-knn'? "
                             "'keras-dino --help' lists the tools.\n")


def test_unknown_tool_without_a_close_name(capsys):
    from keras_dino.cli import main

    assert main(["keras-dino", "zzz"]) == 2
    err = capsys.readouterr().err
    assert "unknown tool 'zzz'." in err and "Did you mean" not in err


def test_train_help_shows_every_flag_the_model_flags_included():
    result = _keras_dino("train", "--help")
    assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's --help: 0 or 1
    out = result.stdout
    assert out.startswith("Train DINO with `model.fit`: the official main_dino.py, in Keras.")
    for flag in ("--pretrained_weights", "--arch", "--patch_size", "--batch_size_per_gpu",
                 "--backend", "--strategy", "--epochs"):
        assert f"  {flag}:" in out, f"{flag} is missing from keras-dino train --help"
    assert "keras-dino train:" in out  # absl's heading of the command's key flags


def test_eval_knn_help_shows_the_backbone_flags_of_common():
    # These come from keras_dino/tools/common.py: absl shows them under --help only
    # because they are key flags of the command.
    result = _keras_dino("eval_knn", "--help")  # the module's spelling is accepted too
    assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's --help: 0 or 1
    for flag in ("--pretrained_weights", "--arch", "--patch_size", "--checkpoint_key",
                 "--num_heads", "--backend", "--nb_knn", "--temperature"):
        assert f"  {flag}:" in result.stdout, f"{flag} is missing from eval-knn --help"
    assert "(default: 'vit_small')" in result.stdout


def test_eval_knn_runs_on_the_backend_of_the_flag(tmp_path):
    """`keras-dino eval-knn --backend=torch` under KERAS_BACKEND=jax: the official fixture
    backbone's features, as this process computes them, and the k-NN of those features."""
    pytest.importorskip("torch")
    from keras_dino.datasets import cifar10_mini

    data = tmp_path / "data"
    for split, target, count in (("train", "train", 6), ("test", "val", 3)):
        for folder in sorted(cifar10_mini(split).iterdir())[:3]:
            (data / target / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, data / target / folder.name / image.name)
    result = _keras_dino(
        "eval-knn", "--backend=torch", f"--pretrained_weights={FIXTURE}", "--arch=vit_mini",
        "--num_heads=3", f"--data_path={data}", "--eval_size=32", "--eval_resize=32",
        "--nb_knn=3", "--verbose=0", f"--dump_features={tmp_path / 'features'}",
        f"--output_dir={tmp_path / 'out'}", backend="jax",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on torch" in result.stdout.splitlines()[0], result.stdout[:500]
    [log] = [json.loads(line)
             for line in (tmp_path / "out" / "log.txt").read_text().splitlines()]
    assert (log["nb_knn"], log["train_images"], log["test_images"]) == (3, 18, 9)

    # The same features and vote in this process.
    from keras import ops

    from keras_dino.checkpoints import read_checkpoint
    from keras_dino.evaluation import (
        extract_features,
        image_folder_dataset,
        knn_classifier,
        l2_normalize,
    )
    from keras_dino.tools.common import load_backbone

    backbone = load_backbone(str(FIXTURE), "vit_mini", 16, num_heads=3)
    ours = []
    for split in ("train", "val"):
        dataset, _, _ = image_folder_dataset(str(data / split), 9, 32, 32)
        features, labels = extract_features(backbone, dataset, verbose=0)
        ours += [ops.convert_to_numpy(l2_normalize(features)), labels]
    dumped = [np.asarray(read_checkpoint(str(tmp_path / "features" / name)))
              for name in ("trainfeat.pth", "trainlabels.pth", "testfeat.pth",
                           "testlabels.pth")]
    np.testing.assert_allclose(dumped[0], ours[0], atol=1e-4)
    np.testing.assert_allclose(dumped[2], ours[2], atol=1e-4)
    np.testing.assert_array_equal(dumped[1], ours[1])
    top1, top5 = knn_classifier(*dumped, k=3, T=0.07)
    assert (log["top1"], log["top5"]) == (top1, top5)
    assert f"3-NN classifier result: Top1: {top1}, Top5: {top5}" in result.stdout


def test_select_backend_sets_the_backend_and_tensorflows_cpu_kernels(monkeypatch):
    """`--backend` wins over KERAS_BACKEND; TensorFlow's oneDNN kernels are asked for
    (it picks them by itself only on CPUs with AVX-512 VNNI, AVX-VNNI, bf16 or AMX), and
    a value the user set is kept."""
    from keras_dino.tools.common import select_backend

    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    select_backend(["keras-dino train", "--backend", "jax"])
    assert os.environ["KERAS_BACKEND"] == "jax"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    select_backend(["keras-dino train", "--backend=torch"])
    assert os.environ["KERAS_BACKEND"] == "torch"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_tools_keep_the_frameworks_start_up_noise_out_of_the_terminal(tmp_path):
    """TensorFlow's C++ start-up lines (oneDNN, CUDA probing) go to a temporary file that
    is deleted when the tool ends on a user error: the terminal shows the one line."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow", TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "keras_dino", "extract-features", "--data_path=nowhere"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "keras-dino extract-features: error: --data_path=nowhere does not exist."]
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`keras-dino train ... | head -1`: the reader goes away; the tool stops with status 1
    and no traceback (Python's BrokenPipeError, its flush at exit included)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_dino", "train", "--data_path=nowhere",
         f"--output_dir={tmp_path / 'out'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    proc.stdout.close()  # nobody reads: the first line written breaks the pipe
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    assert stderr == "", stderr[-2000:]
