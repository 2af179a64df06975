"""The command-line tools of examples/: the official flags, and end-to-end runs.

`train_dino.py`, `eval_knn.py`, `eval_linear.py` and `visualize_attention.py` mirror the
official `main_dino.py`, `eval_knn.py`, `eval_linear.py` and `visualize_attention.py`:
every official argument that applies keeps its name and default (checked against tables
written from the official scripts, through each script's own `--helpxml`). The three
evaluation tools then run in-process on a tiny DINO checkpoint saved by keras_dino and a
small ImageFolder cut from the embedded CIFAR-10 subset.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

# Resolved: under Bazel this file is a symlink into the checkout.
REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared"))
IMAGES = SHARED / "images"

# The official argparse defaults (facebookresearch/dino), for the arguments that apply
# (the torch.distributed ones, --dist_url and --local_rank, do not; nor does --use_cuda).
OFFICIAL_DEFAULTS = {
    "train_dino.py": dict(
        arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True,
        momentum_teacher=0.996, use_bn_in_head=False, warmup_teacher_temp=0.04,
        teacher_temp=0.04, warmup_teacher_temp_epochs=0, use_fp16=True, weight_decay=0.04,
        weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=64, epochs=100,
        freeze_last_layer=1, lr=0.0005, warmup_epochs=10, min_lr=1e-6, optimizer="adamw",
        drop_path_rate=0.1, global_crops_scale=(0.4, 1.0), local_crops_number=8,
        local_crops_scale=(0.05, 0.4), data_path="/path/to/imagenet/train/", output_dir=".",
        saveckp_freq=20, seed=0, num_workers=10,
    ),
    "eval_knn.py": dict(
        batch_size_per_gpu=128, nb_knn=(10, 20, 100, 200), temperature=0.07,
        pretrained_weights="", arch="vit_small", patch_size=16, checkpoint_key="teacher",
        dump_features=None, load_features=None, num_workers=10, data_path="/path/to/imagenet/",
    ),
    "eval_linear.py": dict(
        n_last_blocks=4, avgpool_patchtokens=False, arch="vit_small", patch_size=16,
        pretrained_weights="", checkpoint_key="teacher", epochs=100, lr=0.001,
        batch_size_per_gpu=128, data_path="/path/to/imagenet/", num_workers=10, val_freq=1,
        output_dir=".", num_labels=1000, evaluate=False,
    ),
    "eval_copy_detection.py": dict(
        data_path="/path/to/copydays/", whitening_path="/path/to/whitening_data/",
        distractors_path="/path/to/distractors/", imsize=320, batch_size_per_gpu=16,
        pretrained_weights="", use_cuda=True, arch="vit_base", patch_size=8,
        checkpoint_key="teacher", num_workers=10,
    ),
    "eval_image_retrieval.py": dict(
        data_path="/path/to/revisited_paris_oxford/", dataset="roxford5k", multiscale=False,
        imsize=224, pretrained_weights="", use_cuda=True, arch="vit_small", patch_size=16,
        checkpoint_key="teacher", num_workers=10,
    ),
    "visualize_attention.py": dict(
        arch="vit_small", patch_size=8, pretrained_weights="", checkpoint_key="teacher",
        image_path=None, image_size=(480, 480), output_dir=".", threshold=None,
    ),
}


def _typed(flag):
    """A `--helpxml` <flag>'s default as a Python value (None for an empty default)."""
    kind, text = flag.findtext("type"), flag.findtext("default") or ""
    if kind == "bool":
        return text == "true"
    if text == "":
        return None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind.startswith("comma separated list"):
        return tuple(text.split(","))
    return text


def _run_script(script, *args, timeout=120, backend=None):
    """Runs examples/<script> in a subprocess with these command-line arguments (and
    KERAS_BACKEND=`backend` when given)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if backend:
        env["KERAS_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
        timeout=timeout, env=env,
    )


def _script_defaults(script):
    result = _run_script(script, "--helpxml")
    assert "<AllFlags>" in result.stdout, result.stderr[-2000:]
    root = ET.fromstring(result.stdout)
    module = "keras_dino.tools." + TOOL_MODULES.get(script[:-3], script[:-3])
    return {
        flag.findtext("name"): _typed(flag)
        for flag in root.iter("flag")
        # The tool's own flags (keras_dino/tools/<module>.py) and the shared ones it
        # defines through keras_dino/tools/common.py.
        if flag.findtext("file", "") in (module, "keras_dino.tools.common")
    }


def _same(official, ours):
    if official in (None, ""):
        return ours in (None, "")  # --helpxml writes both as an empty default
    if isinstance(official, tuple):
        return ours is not None and len(ours) == len(official) and all(
            math.isclose(float(a), float(b)) for a, b in zip(official, ours)
        )
    if isinstance(official, float):
        return ours is not None and math.isclose(official, ours)
    return official == ours


def _flags_file(path):
    """`{name: value}` of a flags file (`--name=value` lines; comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("--"):
            name, _, value = line[2:].partition("=")
            values[name] = value
    return values


@pytest.mark.once
def test_flags_files_use_train_dino_flags_and_the_official_rn50_recipe():
    known = _script_defaults("train_dino.py")
    for path in sorted((REPO / "examples" / "flags").glob("*.flags")):
        unknown = sorted(set(_flags_file(path)) - set(known))
        assert not unknown, f"{path.name} sets flags train_dino.py does not have: {unknown}"
    # The official README's ResNet-50 command, flag for flag.
    assert _flags_file(REPO / "examples" / "flags" / "resnet50_imagenet.flags") == {
        "arch": "resnet50", "optimizer": "sgd", "lr": "0.03", "weight_decay": "1e-4",
        "weight_decay_end": "1e-4", "global_crops_scale": "0.14,1",
        "local_crops_scale": "0.05,0.14",
    }


@pytest.mark.once
@pytest.mark.parametrize("script", sorted(OFFICIAL_DEFAULTS))
def test_official_flag_names_and_defaults(script):
    ours = _script_defaults(script)
    missing = sorted(set(OFFICIAL_DEFAULTS[script]) - set(ours))
    assert not missing, f"{script} lacks the official flags {missing}"
    different = {
        name: (official, ours[name])
        for name, official in OFFICIAL_DEFAULTS[script].items()
        if not _same(official, ours[name])
    }
    assert not different, f"{script}: (official, ours) defaults differ: {different}"


@pytest.mark.once
@pytest.mark.parametrize("script", ["eval_knn.py", "eval_linear.py", "visualize_attention.py"])
def test_stray_positional_argument_is_a_usage_error(script):
    # A forgotten "--" must not be silently dropped (it would run with a default instead).
    result = _run_script(script, "--arch=vit_small", "imagenet")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "unexpected arguments: imagenet" in result.stderr


@pytest.mark.once
def test_no_argparse_in_examples():
    """Every tool parses its command line with absl, as the official-flag tools do."""
    scripts = [*EXAMPLES.glob("*.py"), *(REPO / "keras_dino" / "tools").glob("*.py")]
    users = [p.name for p in scripts if "import argparse" in p.read_text()]
    assert not users, f"argparse in {users}"


@pytest.mark.once
def test_deprecated_hyphenated_flags_are_renamed_with_a_message():
    from keras_dino.tools.common import translate_deprecated

    export = _load("export_saved_model")
    told = []
    argv = translate_deprecated(
        ["export_saved_model.py", "ckpt.pth", "--out", "exports", "--model-name=mini",
         "--l2-normalize", "--num-heads=3", "--version=2"],
        export.DEPRECATED_FLAGS, warn=told.append,
    )
    assert argv == ["export_saved_model.py", "ckpt.pth", "--output_dir", "exports",
                    "--model_name=mini", "--l2_normalize", "--num_heads=3", "--version=2"]
    assert told == [  # the line of every deprecated name (tools/common.py)
        "--out is deprecated, use --output_dir",
        "--model-name is deprecated, use --model_name",
        "--l2-normalize is deprecated, use --l2_normalize",
        "--num-heads is deprecated, use --num_heads",
    ]


@pytest.mark.once
def test_export_tool_needs_weights_once():
    from absl import app, flags

    export = _load("export_saved_model")
    values = flags.FlagValues()
    export.define_flags(values)
    values(["export_saved_model.py", "--pretrained_weights=a.pth"])
    assert export._weights(values, []) == "a.pth"
    with pytest.raises(app.UsageError, match="once"):
        export._weights(values, ["b.pth"])
    with pytest.raises(app.UsageError, match="unexpected arguments: c.pth"):
        export._weights(values, ["b.pth", "c.pth"])
    values = flags.FlagValues()
    export.define_flags(values)
    values(["export_saved_model.py"])
    assert export._weights(values, ["b.pth"]) == "b.pth"
    with pytest.raises(app.UsageError, match="--pretrained_weights"):
        export._weights(values, [])
    values = flags.FlagValues()
    export.define_flags(values)
    values(["export_saved_model.py", "--arch=vit_small", "--patch_size=8"])
    assert export._weights(values, []) == "dino_vits8"


@pytest.mark.once  # the tool runs in its own TensorFlow process
def test_export_tool_old_and_new_flags(checkpoint, tmp_path):
    """The 0.1 command line still exports (with deprecation messages); --describe reads it."""
    result = _run_script(
        "export_saved_model.py", str(checkpoint), "--out", str(tmp_path / "exports"),
        "--model-name", "mini", "--image-size", "32", "--num-heads", "2", timeout=300,
        backend="tensorflow",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--out is deprecated" in result.stderr and "use --model_name" in result.stderr
    assert (tmp_path / "exports" / "mini" / "1" / "saved_model.pb").is_file()
    assert "docker run" in result.stdout
    result = _run_script("export_saved_model.py", f"--describe={tmp_path / 'exports' / 'mini'}",
                         backend="tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "serve_bytes" in result.stdout


@pytest.mark.once
def test_serving_client_flags():
    from absl import flags

    client = _load("serving_client")
    values = flags.FlagValues()
    client.define_flags(values)
    values(["serving_client.py", "--rest_port=9001", "--signature=attention", "--random=2"])
    assert (values.rest_port, values.signature, values.random) == (9001, "attention", 2)
    assert values.eval_size == 224 and values.protocol == "rest"
    assert values.model_name == "dino"


# --- end to end -------------------------------------------------------------------------


# examples/<script>.py runs keras_dino/tools/<module>.py.
TOOL_MODULES = {"train_dino": "train", "export_saved_model": "export"}


def _load(name):
    """The `keras_dino.tools` module of examples/<name>.py."""
    return importlib.import_module(f"keras_dino.tools.{TOOL_MODULES.get(name, name)}")


def run_tool(name, **flag_values):
    """Runs the tool of examples/<name>.py in this process, with its own flags; returns `run`'s result."""
    from absl import flags

    module = _load(name)
    values = flags.FlagValues()
    module.define_flags(values)
    values([name] + [f"--{key}={value}" for key, value in flag_values.items()])
    return module.run(values)


def _log(folder):
    with open(os.path.join(folder, "log.txt")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.once
def test_eval_data_paths():
    from absl import app

    from keras_dino.datasets import cifar10_mini
    from keras_dino.tools.common import eval_split_paths, resolve_data_path

    train, test = str(cifar10_mini("train")), str(cifar10_mini("test"))
    assert eval_split_paths("embedded") == (train, test)
    assert eval_split_paths("embedded:test") == (train, test)
    assert eval_split_paths("embedded:train") == (train, train)
    assert eval_split_paths("/data/imagenet") == ("/data/imagenet/train", "/data/imagenet/val")
    assert resolve_data_path("embedded:test") == test
    assert resolve_data_path("embedded:train") == resolve_data_path("embedded") == train
    assert resolve_data_path("embedded", natural="test") == test
    assert resolve_data_path("/data/x") == "/data/x"
    with pytest.raises(app.UsageError, match="embedded:train, embedded:test"):
        resolve_data_path("embedded:val")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An official checkpoint.pth of a tiny DINO (width 32, 2 blocks, 2 heads, patch 8)."""
    import keras_dino

    model = keras_dino.DINO(
        arch="vit_test", patch_size=8, out_dim=64, epochs=1, warmup_epochs=0,
        vit_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
        head_kwargs=dict(hidden_dim=32, bottleneck_dim=16),
    )
    return model.save_official_checkpoint(tmp_path_factory.mktemp("dino") / "checkpoint.pth")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ (4 classes x 8) and val/ (4 x 4) CIFAR-10 images, the official layout."""
    from keras_dino.datasets import cifar10_mini

    root = tmp_path_factory.mktemp("data")
    for split, target, count in (("train", "train", 8), ("test", "val", 4)):
        for folder in sorted(cifar10_mini(split).iterdir())[:4]:
            (root / target / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / target / folder.name / image.name)
    return root


def _model_flags(checkpoint):
    return dict(pretrained_weights=checkpoint, arch="vit_test", patch_size=8)


@pytest.mark.slow
def test_eval_knn(checkpoint, image_folder, tmp_path):
    from keras import ops

    from keras_dino import load_pretrained
    from keras_dino.checkpoints import read_checkpoint
    from keras_dino.evaluation import (
        extract_features,
        image_folder_dataset,
        knn_classifier,
        l2_normalize,
    )

    out, features = tmp_path / "knn", tmp_path / "features"
    common = dict(nb_knn="1,5,20", temperature=0.1, verbose=0)
    results = run_tool(
        "eval_knn", **_model_flags(checkpoint), data_path=image_folder, eval_size=32,
        eval_resize=32, batch_size_per_gpu=16, dump_features=features, output_dir=out, **common,
    )
    records = _log(out)
    assert [r["nb_knn"] for r in records] == [1, 5, 20]
    arrays = [read_checkpoint(features / n) for n in
              ("trainfeat.pth", "trainlabels.pth", "testfeat.pth", "testlabels.pth")]
    assert arrays[0].shape == (32, 32) and arrays[2].shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(arrays[0], axis=1), 1.0, rtol=1e-5)
    assert arrays[1].tolist() == sorted(list(range(4)) * 8)
    # The features are those of the checkpoint's teacher on the center crops.
    backbone = load_pretrained(checkpoint, patch_size=8)
    dataset, _, _ = image_folder_dataset(image_folder / "val", 16, 32, 32)
    expected, labels = extract_features(backbone, dataset, verbose=0)
    np.testing.assert_allclose(arrays[2], ops.convert_to_numpy(l2_normalize(expected)),
                               rtol=1e-5, atol=1e-6)
    assert arrays[3].tolist() == labels.tolist()
    for record in records:
        want = knn_classifier(*arrays, k=record["nb_knn"], T=0.1)
        assert 0.0 <= record["top1"] <= record["top5"] <= 100.0
        assert (record["top1"], record["top5"]) == want == results[record["nb_knn"]]
        assert (record["train_images"], record["test_images"]) == (32, 16)

    # --load_features: the same numbers, without the model or the images.
    run_tool("eval_knn", load_features=features, output_dir=tmp_path / "again", **common)
    assert _log(tmp_path / "again") == records


@pytest.mark.slow
def test_eval_linear_trains_resumes_and_evaluates(checkpoint, image_folder, tmp_path):
    from keras_dino.checkpoints import read_checkpoint

    out = tmp_path / "linear"
    args = dict(
        **_model_flags(checkpoint), n_last_blocks=2, data_path=image_folder, eval_size=32,
        eval_resize=32, num_labels=4, batch_size_per_gpu=16, lr=0.01, output_dir=out,
        verbose=0,
    )
    result = run_tool("eval_linear", epochs=1, **args)
    (record,) = _log(out)
    base_lr = 0.01 * 16 / 256
    assert record["epoch"] == 0 and record["train_lr"] == pytest.approx(base_lr)
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert 0.0 <= record["test_acc1"] <= record["test_acc5"] <= 100.0
    assert result["best_acc"] == record["test_acc1"]
    saved = read_checkpoint(out / "checkpoint.pth.tar")
    assert saved["epoch"] == 1 and saved["best_acc"] == record["test_acc1"]
    assert saved["state_dict"]["module.linear.weight"].shape == (4, 2 * 32)

    # Rerunning with more epochs resumes after the saved one.
    result = run_tool("eval_linear", epochs=2, **args)
    records = _log(out)
    assert [r["epoch"] for r in records] == [0, 1] and result["start_epoch"] == 1
    assert records[1]["train_lr"] == pytest.approx(base_lr * 0.5)  # cosine over 2 epochs
    assert read_checkpoint(out / "checkpoint.pth.tar")["epoch"] == 2

    # --evaluate validates the saved classifier again.
    stats = run_tool("eval_linear", epochs=2, evaluate=True, **args)
    assert stats["acc1"] == pytest.approx(records[1]["test_acc1"])
    assert len(_log(out)) == 2


@pytest.mark.once
def test_eval_linear_evaluates_a_released_resnet_classifier(image_folder, tmp_path):
    # The official tool's `--evaluate` with an official ResNet and its linear classifier
    # (the zoo fixtures, 100 labels): the accuracy of the library's classifier.
    from absl import app

    from keras_dino.evaluation import (
        evaluate_linear_probe,
        image_folder_dataset,
        load_pretrained_classifier,
    )

    zoo = SHARED / "fixtures" / "official_dino_zoo"
    flags = dict(pretrained_weights=zoo / "backbone_resnet_mini.pth", arch="resnet_mini",
                 pretrained_linear=zoo / "linear_resnet_mini.pth", num_labels=100,
                 data_path=image_folder, eval_size=32, eval_resize=32, verbose=0,
                 output_dir=tmp_path)
    stats = run_tool("eval_linear", evaluate=True, **flags)
    classifier = load_pretrained_classifier(flags["pretrained_weights"],
                                            flags["pretrained_linear"], arch="resnet_mini")
    val, _, _ = image_folder_dataset(image_folder / "val", 128, 32, 32)
    expected = evaluate_linear_probe(classifier, val, verbose=0)
    assert stats["acc1"] == pytest.approx(expected["acc1"])
    assert stats["acc5"] == pytest.approx(expected["acc5"])
    with pytest.raises(app.UsageError, match="--pretrained_linear=.*missing.pth is not a file"):
        run_tool("eval_linear", evaluate=True, **{**flags,
                                                  "pretrained_linear": tmp_path / "missing.pth"})


@pytest.mark.slow
def test_visualize_attention(checkpoint, tmp_path):
    from PIL import Image

    image = IMAGES / "chelsea.jpg"
    if not image.is_file():  # no shared/ folder: an embedded CIFAR-10 image instead
        from keras_dino.datasets import cifar10_mini

        image = sorted((cifar10_mini("test") / "cat").iterdir())[0]
    out = tmp_path / "attention"
    paths = run_tool(
        "visualize_attention", **_model_flags(checkpoint), image_path=image,
        image_size="60,90", threshold=0.6, output_dir=out,
    )
    heads = [f"attn-head{i}.png" for i in range(2)]
    masks = [f"mask_th0.6_head{i}.png" for i in range(2)]
    expected = sorted(["img.png", "attn-overlay.png", *heads, *masks])
    assert sorted(p.name for p in out.iterdir()) == expected
    assert sorted(os.path.basename(p) for p in paths) == expected
    for name in ["img.png", *heads, *masks]:  # 60x90 cut to whole 8-pixel patches
        assert Image.open(out / name).size == (88, 56), name
    mask = np.asarray(Image.open(out / masks[0]).convert("RGB"))
    shown = np.asarray(Image.open(out / "img.png").convert("RGB"))
    assert (mask != shown).any()  # the mask is drawn on the image


TINY_RUN = [
    "--arch=tiny", "--embed_dim=32", "--depth=1", "--num_heads=2", "--patch_size=8",
    "--out_dim=64", "--head_hidden_dim=32", "--head_bottleneck_dim=16",
    "--global_size=32", "--local_size=16", "--local_crops_number=2",
    "--batch_size_per_gpu=8", "--epochs=2", "--warmup_epochs=0", "--use_fp16=false",
    "--saveckp_freq=0", "--num_workers=1", "--export=false", "--verbose=0",
]


def _train_dino(*args):
    return _run_script("train_dino.py", "--backend=tensorflow", *TINY_RUN, *args, timeout=600)


@pytest.fixture(scope="module")
def tiny_training(image_folder, tmp_path_factory):
    """One short `train_dino.py` run that several tests read (one run, not one each).

    2 epochs of 4 optimizer steps (32 images, effective batch 8: 2 micro-batches of 4,
    --gradient_accumulation_steps=2) with --momentum_teacher=0.5
    --final_momentum_teacher=0.9, through --batched_crops (the crops of a batch made at
    once) in split mode (--photometric_on_device), a ViT with 2 register tokens, with
    the official --use_fp16=true on this CPU, and run settings that checkpoint.pth's args
    must record.
    """
    out, data = tmp_path_factory.mktemp("tiny_training") / "out", image_folder / "train"
    result = _train_dino(f"--data_path={data}", f"--output_dir={out}",
                         "--momentum_teacher=0.5", "--final_momentum_teacher=0.9",
                         "--batched_crops=true", "--use_fp16=true", "--seed=7",
                         "--saveckp_freq=5", "--global_crops_scale=0.3,1.0",
                         "--photometric_on_device", "--num_register_tokens=2",
                         "--batch_size_per_gpu=4", "--gradient_accumulation_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out, data


@pytest.mark.once
def test_train_dino_final_momentum_teacher(tiny_training):
    """--final_momentum_teacher (not official) moves the end of the momentum's cosine.

    The epoch logs carry the momentum of each epoch's last step,
    `final + (base - final) * (1 + cos(pi * step / 8)) / 2`.
    """
    _, out, _ = tiny_training
    base, final, total = 0.5, 0.9, 8
    epochs = [r for r in _log(out) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for record, step in zip(epochs, (3, 7)):
        expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total))
        assert math.isclose(record["train_momentum"], expected, rel_tol=1e-5), (
            record, expected)


@pytest.mark.once
def test_train_dino_gradient_accumulation(tiny_training):
    """--gradient_accumulation_steps=2 with batches of 4: the official run on batches of 8.

    32 images make 4 optimizer steps an epoch (8 batches): the epoch logs carry the
    momentum of the steps 3 and 7 of 8 (test_train_dino_final_momentum_teacher), and
    checkpoint.pth records the effective batch and the number of micro-batches.
    """
    result, out, _ = tiny_training
    assert "effective batch 8 (2 micro-batches of 4)" in result.stdout
    from keras_dino.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(out / "checkpoint.pth")
    args = dict(checkpoint["args"])
    assert (args["batch_size_per_gpu"], args["gradient_accumulation_steps"]) == (8, 2)
    assert int(checkpoint["epoch"]) == 2


@pytest.mark.once
def test_train_dino_teacher_weights(image_folder, tmp_path):
    """--teacher_weights: a frozen ResNet teacher (a full checkpoint: its teacher and head)
    trains the tiny ViT student of the command line; --out_dim comes from its head.

    The teacher momentum is 1 (no EMA), checkpoint.pth records where the teacher came
    from, and its student is the ViT (the network the run evaluates and exports).
    """
    from keras_dino.checkpoints import official, read_checkpoint
    from keras_dino.training.dino import DINO

    teacher = DINO(arch="resnet_test", out_dim=48, head_kwargs=dict(hidden_dim=16, bottleneck_dim=8),
                   resnet_kwargs=dict(block="basic", layers=[1, 1], stem_width=8,
                                      stage_widths=[8, 16]), local_crops_number=2)
    path = teacher.save_official_checkpoint(tmp_path / "teacher.pth")
    out = tmp_path / "out"
    tiny = [flag for flag in TINY_RUN if not flag.startswith("--out_dim")]
    result = _run_script("train_dino.py", "--backend=tensorflow", *tiny,
                         f"--data_path={image_folder / 'train'}", f"--output_dir={out}",
                         f"--teacher_weights={path}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [r for r in _log(out) if "epoch" in r]
    assert [r["train_momentum"] for r in epochs] == [1.0, 1.0]
    checkpoint = read_checkpoint(out / "checkpoint.pth")
    args = dict(checkpoint["args"])
    assert args["teacher_weights"] == str(path) and args["out_dim"] == 48
    assert args["momentum_teacher"] == 1.0
    assert any("backbone.blocks." in k for k in checkpoint["student"])
    assert any("layer1" in k for k in checkpoint["teacher"])
    written = official.strip_prefixes(checkpoint["teacher"], ("module.",))
    for key, value in official.state_dict_of(teacher.teacher_map).items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(np.asarray(written[key]), value)
    mismatch = _run_script("train_dino.py", "--backend=tensorflow", *TINY_RUN,
                           f"--data_path={image_folder / 'train'}", f"--output_dir={out}2",
                           f"--teacher_weights={path}", timeout=600)
    assert mismatch.returncode != 0
    assert "out_dim=64 but the teacher's head" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr[-2000:]


@pytest.mark.once
def test_train_dino_unknown_arch_is_one_line_with_the_closest_name(tmp_path):
    """A misspelt --arch ends before the data is read, in one line that suggests the name
    meant (not a traceback from building the model)."""
    result = _run_script("train_dino.py", "--arch=vit_smal", "--data_path=embedded:train",
                         f"--output_dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: unknown arch 'vit_smal'; did you mean 'vit_small'?" in result.stderr
    assert "Traceback" not in result.stderr and "framework.log" not in result.stderr


@pytest.mark.once
def test_train_dino_final_momentum_teacher_out_of_range_is_a_usage_error():
    result = _run_script("train_dino.py", "--final_momentum_teacher=98")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "--final_momentum_teacher=98: 98.0 is not a number in the range [0.0, 1.0]" in (
        result.stderr)


@pytest.mark.once
def test_train_dino_photometric_on_device(tiny_training):
    """Split mode from the command line: uint8 crops in, photometric part in the step."""
    result, out, _ = tiny_training
    assert "split mode: the input pipeline sends uint8 crops" in result.stdout
    epochs = [r for r in _log(out) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    # DINO refuses uint8 crops without a photometric layer, so this ran with one.
    assert all(math.isfinite(r["train_loss"]) for r in epochs), epochs
    assert (out / "checkpoint.pth").is_file()


@pytest.mark.once
def test_train_dino_help_lists_pretrained_weights():
    result = _run_script("train_dino.py", "--helpfull")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # absl exits 1 after help
    assert "--pretrained_weights" in result.stdout and "--knn_every" in result.stdout


@pytest.mark.once
def test_train_dino_continues_from_pretrained_weights(image_folder, tmp_path):
    """--pretrained_weights: both backbones start from the file; a frozen teacher keeps it."""
    from keras_dino.checkpoints import official, write_torch_checkpoint
    from keras_dino.models import VisionTransformer

    backbone = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    backbone.build((None, 32, 32, 3))
    rng = np.random.default_rng(4)
    for variable in backbone.weights:
        variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    state = official.state_dict_of(official.backbone_variable_map(backbone))
    weights = tmp_path / "backbone.pth"
    write_torch_checkpoint(state, weights)
    out = tmp_path / "out"
    # No --arch, --patch_size, --embed_dim or --depth: the network is read from the file
    # (a ViT's heads are not in it). Teacher momentum 1: the teacher never moves, so it
    # must still be the file.
    from_file = [flag for flag in TINY_RUN
                 if not flag.startswith(("--arch", "--patch_size", "--embed_dim", "--depth"))]
    result = _run_script("train_dino.py", "--backend=tensorflow", *from_file,
                         f"--data_path={image_folder / 'train'}", f"--output_dir={out}",
                         f"--pretrained_weights={weights}", "--momentum_teacher=1.0",
                         "--final_momentum_teacher=1.0", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "architecture from backbone.pth: vit (width 32, depth 1, 2 heads)/8" in result.stdout
    from keras_dino.checkpoints import read_checkpoint

    written = read_checkpoint(out / "checkpoint.pth")
    for name, value in state.items():
        np.testing.assert_array_equal(written["teacher"][f"backbone.{name}"], value)
    # The student trained away from it.
    moved = [not np.array_equal(written["student"][f"module.backbone.{n}"], v)
             for n, v in state.items()]
    assert any(moved)


@pytest.mark.once
def test_train_dino_trains_a_vit_with_register_tokens(tiny_training):
    """--num_register_tokens: trained, and kept by checkpoint.pth (tensor and args)."""
    import keras_dino
    from keras_dino.checkpoints import read_checkpoint

    _, out, _ = tiny_training
    checkpoint = read_checkpoint(out / "checkpoint.pth")
    assert checkpoint["args"]["vit_kwargs"]["num_register_tokens"] == 2
    assert checkpoint["teacher"]["backbone.register_tokens"].shape == (1, 2, 32)
    backbone = keras_dino.load_pretrained(out / "checkpoint.pth", num_heads=2)
    assert backbone.num_register_tokens == 2 and backbone.num_prefix_tokens == 3


@pytest.mark.once
def test_train_dino_trains_a_custom_xcit(image_folder, tmp_path):
    """--arch=xcit_*: an XCiT student and teacher, checkpointed under the official names."""
    from keras_dino.checkpoints import read_checkpoint

    out = tmp_path / "out"
    args = [a for a in TINY_RUN if not a.startswith(("--arch", "--num_heads"))]
    result = _run_script("train_dino.py", "--backend=tensorflow", *args, "--arch=xcit_tiny",
                         "--num_heads=4", "--epochs=1", f"--data_path={image_folder / 'train'}",
                         f"--output_dir={out}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [r for r in _log(out) if "epoch" in r]
    assert math.isfinite(record["train_loss"])
    checkpoint = read_checkpoint(out / "checkpoint.pth")
    assert checkpoint["args"]["arch"] == "xcit_tiny"
    # BatchNorm in the backbone: main_dino DDP-wraps the teacher too (`module.` keys).
    teacher = checkpoint["teacher"]
    assert teacher["module.backbone.blocks.0.attn.temperature"].shape == (4, 1, 1)
    assert "module.backbone.pos_embeder.token_projection.weight" in checkpoint["student"]


@pytest.mark.once
def test_train_dino_resnet_knn_during_training_and_quiet_output(image_folder, tmp_path):
    """A small ResNet trains from the command line, with k-NN every epoch, quietly."""
    out = tmp_path / "out"
    result = _run_script(
        "train_dino.py", "--backend=tensorflow", "--arch=resnet_tiny", "--resnet_block=basic",
        "--resnet_layers=1,1", "--resnet_widths=8,16", "--resnet_stem_width=8",
        "--out_dim=64", "--head_hidden_dim=32", "--head_bottleneck_dim=16",
        "--global_size=32", "--local_size=16", "--local_crops_number=2",
        "--batch_size_per_gpu=8", "--epochs=2", "--warmup_epochs=0", "--use_fp16=false",
        "--saveckp_freq=0", "--num_workers=1", "--export=false", "--verbose=0",
        f"--data_path={image_folder / 'train'}", f"--knn_train_path={image_folder / 'train'}",
        f"--knn_test_path={image_folder / 'val'}", "--knn_every=1", "--knn_k=2",
        "--eval_size=32", "--eval_resize=32", f"--output_dir={out}",
        "--freeze_blocks=1", "--layer_decay=0.5", timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The best k-NN teacher so far (the starting weights count) and where it was.
    best = re.search(r"best_knn_top1 ([\d.]+) at epoch (\d)(, the starting weights)? "
                     r"\(checkpoint_best.pth\)", result.stdout)
    assert best, result.stdout[-2000:]
    epochs = [r for r in _log(out) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for record in epochs:
        assert 0.0 <= record["train_knn_top1"] <= 100.0
        assert record["train_loss"] == pytest.approx(
            record["train_teacher_entropy"] + record["train_kl"], rel=1e-4, abs=1e-4)
    assert "summary: " in result.stdout and "knn_top1_trained" in result.stdout
    assert "none for a ResNet" in result.stdout
    from keras_dino.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(out / "checkpoint.pth")
    # BatchNorm networks: the official code DDP-wraps the teacher too (`module.` keys).
    assert "module.backbone.conv1.weight" in checkpoint["teacher"]
    assert (checkpoint["args"]["freeze_blocks"], checkpoint["args"]["layer_decay"]) == (1, 0.5)
    best_top1, best_epoch = float(best.group(1)), int(best.group(2))
    (start,) = [r["knn_start"] for r in _log(out) if "knn_start" in r]  # the initial weights
    assert start["epoch"] == -1
    scores = [start["knn_top1"]] + [r["train_knn_top1"] for r in epochs]
    assert best_top1 == pytest.approx(max(scores), abs=0.05)
    assert best_top1 == pytest.approx(scores[best_epoch], abs=0.05)
    kept = read_checkpoint(out / "checkpoint_best.pth")
    assert kept["epoch"] == best_epoch
    # The stem and the first stage were frozen: the same in every teacher of the run.
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight"):
        key = f"module.backbone.{name}"
        np.testing.assert_array_equal(np.asarray(kept["teacher"][key]),
                                      np.asarray(checkpoint["teacher"][key]))
    # Quiet: the frameworks' start-up lines went to framework.log, not the terminal.
    terminal = result.stdout + result.stderr
    for noise in ("oneDNN", "cuda", "InitializeLog", "cpu_feature_guard", "shuffle"):
        assert noise not in terminal, noise
    assert (out / "framework.log").is_file()
    assert (out / "training_curves.png").is_file()


@pytest.mark.once
def test_use_fp16_falls_back_to_float32_without_a_gpu():
    from keras_dino.tools.common import has_gpu, mixed_precision_policy

    # The official default stays --use_fp16=true; only a GPU gets float16.
    assert mixed_precision_policy(True, False, gpu=True) == ("mixed_float16", None)
    policy, note = mixed_precision_policy(True, False, gpu=False)
    assert policy is None and "float32" in note and "GPU" in note and len(note) < 200
    assert mixed_precision_policy(False, False, gpu=False) == (None, None)
    assert mixed_precision_policy(True, True, gpu=False) == ("mixed_bfloat16", None)
    assert has_gpu() in (True, False)


@pytest.mark.once
def test_bf16_on_a_cpu_without_bf16_instructions_under_torch_says_it_is_slow():
    """torch emulates bfloat16 on a CPU without avx512_bf16 / AMX (6x a step on an AVX2-only
    CPU): --bf16 still runs, with a note naming the fix; elsewhere no note."""
    from keras_dino.tools.common import cpu_has_bf16, mixed_precision_policy

    policy, note = mixed_precision_policy(False, True, gpu=False, backend="torch",
                                          native_bf16=False)
    assert policy == "mixed_bfloat16" and len(note) < 250
    assert "avx512_bf16" in note and "drop --bf16" in note and "--backend=tensorflow" in note
    for gpu, backend, native in ((True, "torch", False), (False, "torch", True),
                                 (False, "torch", None), (False, "tensorflow", False),
                                 (False, "jax", False)):
        assert mixed_precision_policy(False, True, gpu, backend, native) == (
            "mixed_bfloat16", None), (gpu, backend, native)
    assert cpu_has_bf16() in (True, False, None)


@pytest.mark.once
def test_train_dino_on_a_cpu_says_it_trains_in_float32(tiny_training):
    from keras_dino.tools.common import has_gpu

    if has_gpu():
        pytest.skip("this machine has a GPU: --use_fp16 trains in float16 there")
    result, out, _ = tiny_training  # --use_fp16=true, the official default
    assert result.stdout.count("--use_fp16: no GPU here, so training runs in float32") == 1
    assert [r["epoch"] for r in _log(out) if "epoch" in r] == [0, 1]


@pytest.mark.once
def test_train_dino_checkpoint_args_record_the_run(tiny_training):
    """checkpoint.pth's args say what ran: seed, precision, batch, data, output, crops."""
    from keras_dino.checkpoints import read_checkpoint
    from keras_dino.tools.common import has_gpu

    _, out, data = tiny_training
    args = dict(read_checkpoint(out / "checkpoint.pth")["args"])
    # --use_fp16=true ran float16 only on a GPU (float32 here): args record what ran.
    assert args["seed"] == 7 and args["use_fp16"] is has_gpu()
    assert args["batch_size_per_gpu"] == 8 and args["world_size"] == 1
    assert args["data_path"] == str(data) and args["output_dir"] == str(out)
    assert args["saveckp_freq"] == 5 and tuple(args["global_crops_scale"]) == (0.3, 1.0)
    assert args["arch"] == "tiny" and args["patch_size"] == 8 and args["epochs"] == 2
