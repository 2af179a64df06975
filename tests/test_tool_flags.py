"""The tools' shared flags: one vocabulary, deprecated names, the architecture read from
`--pretrained_weights`, and one-line errors instead of tracebacks.

The width-48 ViT/16 fixture (`backbone_vit_mini16.pth`: 5 blocks, 3 heads, no record of
its heads) is the "small checkpoint of a custom width" of these tests; the tiny DINO
training checkpoint of `test_examples.py` (width 32, 2 heads, patch 8, heads in its
`args`) the full checkpoint.
"""

import importlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# Runs in one backend's process (tests/conftest.py): flag parsing; tools run in subprocesses with their own backend.
pytestmark = pytest.mark.once

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every tool that loads a backbone through the backbone flags of tools/common.py.
BACKBONE_TOOLS = ("eval_knn", "eval_linear", "eval_copy_detection", "eval_image_retrieval",
                  "eval_video_segmentation", "eval_attention_segmentation", "video_generation",
                  "visualize_attention", "visualize_features", "extract_features")

# (tool, old name, new name, value given, value the new flag gets)
ALIASES = [
    ("extract_features", "image_size", "eval_size", "96", 96),
    ("extract_features", "resize_size", "eval_resize", "110", 110),
    ("export", "image_size", "eval_size", "64", 64),
    ("serving_client", "image_size", "eval_size", "32", 32),
    ("serving_client", "model", "model_name", "mini", "mini"),
    ("classify", "linear_weights", "pretrained_linear", "a.pth", "a.pth"),
    ("classify", "topk", "top_classes", "3", 3),
    ("visualize_features", "threshold", "foreground_threshold", "0.25", 0.25),
    ("eval_video_segmentation", "scale_size", "image_size", "64", ["64"]),
]


def _tool(name):
    return importlib.import_module(f"keras_dino.tools.{name}")


def _flags(name, *args):
    from absl import flags

    values = flags.FlagValues()
    _tool(name).define_flags(values)
    required = ["--input_path=."] if name == "video_generation" else []  # a required flag
    values([name, *required, *args])
    return values


@pytest.fixture(scope="module")
def mini16(fixtures_dir):
    return fixtures_dir / "backbone_vit_mini16.pth"


@pytest.mark.parametrize("tool, old, new, given, value", ALIASES)
def test_deprecated_name_sets_the_new_flag_and_says_so_once(tool, old, new, given, value,
                                                             capsys):
    values = _flags(tool, f"--{old}={given}")
    assert values[new].value == value and values[new].present
    assert not values[new].using_default_value
    assert capsys.readouterr().err == f"--{old} is deprecated, use --{new}\n"
    _flags(tool, f"--{new}={given}")  # the new name says nothing
    assert capsys.readouterr().err == ""


def test_deprecated_name_works_in_a_flag_file(tmp_path, capsys):
    flagfile = tmp_path / "old.flags"
    flagfile.write_text("--image_size=48\n--resize_size=64\n")
    values = _flags("extract_features", f"--flagfile={flagfile}")
    assert (values.eval_size, values.eval_resize) == (48, 64)
    assert capsys.readouterr().err.splitlines() == [
        "--image_size is deprecated, use --eval_size",
        "--resize_size is deprecated, use --eval_resize"]


def test_one_meaning_one_name_across_the_tools():
    """A flag name shared by tools has one type everywhere, and the eval view is named
    --eval_size/--eval_resize wherever the tools feed center crops."""
    kinds = {}
    for path in sorted((REPO / "keras_dino" / "tools").glob("*.py")):
        if path.stem in ("__init__", "common", "train"):
            continue
        values = _flags(path.stem)
        for name, flag in values._flags().items():
            if flag.help.startswith("Deprecated name of"):
                continue
            kinds.setdefault(name, set()).add((flag.flag_type(), path.stem))
    mixed = {name: sorted(tools) for name, tools in kinds.items()
             if len({kind for kind, _ in tools}) > 1}
    assert not mixed, f"one name, several types: {mixed}"
    # --image_size: the official visualize_attention.py resize wherever it exists.
    assert {tool for _, tool in kinds["image_size"]} == {
        "visualize_attention", "visualize_features", "eval_attention_segmentation",
        "eval_video_segmentation"}
    assert {tool for _, tool in kinds["eval_size"]} >= {
        "eval_knn", "eval_linear", "classify", "extract_features", "export", "serving_client"}
    assert "resize_size" not in kinds and "linear_weights" not in kinds
    assert {tool for _, tool in kinds["topk"]} == {"eval_video_segmentation"}  # official
    assert {tool for _, tool in kinds["threshold"]} == {
        "visualize_attention", "video_generation", "eval_attention_segmentation"}


@pytest.mark.parametrize("tool", BACKBONE_TOOLS)
def test_every_tool_reads_the_architecture_from_the_file(tool, mini16, capsys):
    from keras_dino.tools.common import backbone_from_flags

    values = _flags(tool, f"--pretrained_weights={mini16}", "--num_heads=3")
    backbone = backbone_from_flags(values)
    assert (backbone.embed_dim, backbone.depth, backbone.num_heads, backbone.patch_size) == (
        48, 5, 3, 16)
    out = capsys.readouterr().out
    assert "architecture from backbone_vit_mini16.pth: vit (width 48, depth 5, 3 heads)/16\n" in out


def test_a_full_checkpoint_gives_its_heads_and_a_preset_name_its_architecture(tmp_path, capsys):
    import keras_dino
    from keras_dino.tools.common import architecture_name, backbone_from_flags

    model = keras_dino.DINO(arch="vit_test", patch_size=8, out_dim=64, epochs=1,
                            warmup_epochs=0, vit_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
                            head_kwargs=dict(hidden_dim=32, bottleneck_dim=16))
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    # visualize_attention defaults to --patch_size=8, eval_copy_detection to vit_base/8.
    for tool in ("visualize_attention", "eval_copy_detection"):
        backbone = backbone_from_flags(_flags(tool, f"--pretrained_weights={path}"))
        assert (backbone.embed_dim, backbone.num_heads, backbone.patch_size) == (32, 2, 8)
    assert capsys.readouterr().out.count(
        "architecture from checkpoint.pth: vit (width 32, depth 2, 2 heads)/8") == 2
    # A name that is no official architecture names the model; the file gives its shape.
    backbone_from_flags(_flags("eval_knn", f"--pretrained_weights={path}", "--arch=vit_test",
                               "--patch_size=8"))
    assert "architecture from checkpoint.pth: vit (width 32, depth 2, 2 heads)/8" in (
        capsys.readouterr().out)
    assert architecture_name(keras_dino.models.vit_small(patch_size=16)) == "vit_small/16"
    # Every family names itself (its converter does): an official name, else the shape.
    from keras_dino.models.resnet import RESNETS, ResNet
    from keras_dino.models.xcit import XCITS, XCiT

    assert architecture_name(ResNet(**RESNETS["resnet50"])) == "resnet50"
    assert architecture_name(ResNet("basic", (1, 1), stage_widths=(8, 16), stem_width=8)) == (
        "resnet (basic blocks 1,1, widths 8,16, stem 8)")
    assert architecture_name(XCiT(**XCITS["xcit_small_12_p8"])) == "xcit_small_12_p8"
    assert architecture_name(XCiT(patch_size=8, embed_dim=32, depth=1, num_heads=4)) == (
        "xcit (width 32, depth 1, 4 heads)/8")
    import keras

    assert architecture_name(keras.Sequential([keras.layers.Dense(2)], name="mine")) == "mine"


def test_visualize_features_takes_a_vit16_file_with_its_default_flags(mini16, tmp_path, capsys):
    """The default --patch_size=8 of visualize_features no longer contradicts a /16 file."""
    values = _flags("visualize_features", f"--pretrained_weights={mini16}", "--num_heads=3",
                    "--image_size=64", f"--output_dir={tmp_path}")
    written = _tool("visualize_features").run(values)
    assert sorted(os.path.basename(p) for p in written) == ["foreground.png", "pca.png"]
    assert "architecture from backbone_vit_mini16.pth" in capsys.readouterr().out


@pytest.mark.parametrize("flag, message", [
    ("--patch_size=8", "patch_size=8 was asked for, but the checkpoint has patch size 16. "
                       "Leave out --patch_size=8 to use the file's architecture."),
    ("--arch=vit_small", "holds a Vision Transformer of width 48 and depth 5, not a vit_small "
                         "(width 384, depth 12). Leave out --arch=vit_small"),
])
def test_flags_that_contradict_the_file_name_both(flag, message, mini16):
    from absl import app

    from keras_dino.tools.common import backbone_from_flags

    values = _flags("visualize_attention", f"--pretrained_weights={mini16}", "--num_heads=3",
                    flag)
    with pytest.raises(app.UsageError) as error:
        backbone_from_flags(values)
    assert message in str(error.value) and len(str(error.value)) < 300


def test_short_errors_name_the_flag_to_fix(mini16, tmp_path):
    from absl import app

    import keras_dino
    from keras_dino.tools.common import backbone_from_flags, read_image

    model = keras_dino.DINO(arch="vit_test", patch_size=8, out_dim=64, epochs=1,
                            warmup_epochs=0, vit_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
                            head_kwargs=dict(hidden_dim=32, bottleneck_dim=16))
    full = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    cases = [
        (["--pretrained_weights=/no/such/weights.pth"],
         "--pretrained_weights: '/no/such/weights.pth' is neither a preset nor an existing file"),
        ([f"--pretrained_weights={mini16}"],
         "pass num_heads=N, one of 1, 2, 3, 4, 6, 8, 12, 16, 24, 48. On the command line: "
         "--num_heads=N."),
        ([f"--pretrained_weights={full}", "--checkpoint_key=studnt"],
         "--checkpoint_key: checkpoint_key 'studnt' is not in"),
        (["--arch=vit_smal"], "--arch=vit_smal: no --pretrained_weights"),
    ]
    for args, message in cases:
        with pytest.raises(app.UsageError) as error:
            backbone_from_flags(_flags("eval_knn", *args))
        assert message in str(error.value), str(error.value)
        assert len(str(error.value)) < 400
    assert "did you mean --arch=vit_small?" in str(error.value)
    with pytest.raises(app.UsageError, match="--image_path=/no/such.jpg is not a file"):
        read_image("/no/such.jpg")
    (tmp_path / "not_an_image.jpg").write_text("text")
    with pytest.raises(app.UsageError, match="not an image PIL can read"):
        read_image(str(tmp_path / "not_an_image.jpg"), "--image_path2")


def test_one_image_reader_reads_as_pil_and_the_official_tools():
    from PIL import Image

    from keras_dino.datasets import cifar10_mini
    from keras_dino.tools import visualize_attention, visualize_features
    from keras_dino.tools.common import read_image

    images = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared")) / "images"
    path = images / "chelsea.jpg"
    if not path.is_file():  # no shared/ folder: an embedded CIFAR-10 JPEG instead
        path = sorted((cifar10_mini("test") / "cat").iterdir())[0]
    pixels, name = read_image(str(path))
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    assert name == str(path) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)
    for module in (visualize_attention, visualize_features):
        assert module.read_image is read_image


def _command(*args):
    return subprocess.run([sys.executable, "-m", "keras_dino", *args], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "torch"})


@pytest.mark.slow
def test_eval_knn_on_a_width_48_file_without_num_heads_is_one_line(mini16, tmp_path):
    result = _command("eval-knn", f"--pretrained_weights={mini16}", "--data_path=embedded",
                      "--eval_size=32", "--eval_resize=32", f"--output_dir={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("keras-dino eval-knn: error: ") and "--num_heads=N" in last
    result = _command("eval-knn", f"--pretrained_weights={mini16}", "--num_heads=3",
                      "--data_path=/no/such/folder", f"--output_dir={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "keras-dino eval-knn: error: --data_path: /no/such/folder/train is not a folder (the "
        "official layout: <data_path>/train and <data_path>/val, or embedded).")


@pytest.mark.parametrize("tool, flag, layout", [
    ("eval_copy_detection", "--data_path", "Copydays root"),
    ("eval_image_retrieval", "--data_path", "roxford5k/gnd_roxford5k.pkl"),
    ("eval_video_segmentation", "--data_path", "DAVIS-2017 root"),
    ("eval_linear", "--data_path", "<data_path>/train and <data_path>/val"),
])
def test_a_missing_data_folder_is_named_before_the_model_loads(tool, flag, layout, tmp_path,
                                                               capsys):
    from absl import app

    missing = tmp_path / "missing"
    values = _flags(tool, f"{flag}={missing}", "--pretrained_weights=/no/such/weights.pth")
    with pytest.raises(app.UsageError) as error:
        _tool(tool).run(values)
    assert str(error.value).startswith(f"{flag}: {missing}") and layout in str(error.value)


@pytest.mark.tf_only
@pytest.mark.slow
def test_export_says_the_architecture_it_read(mini16, tmp_path, capsys):
    values = _flags("export", f"--pretrained_weights={mini16}", "--num_heads=3",
                    f"--output_dir={tmp_path}", "--eval_size=32")
    _tool("export").run(values)
    assert "architecture from backbone_vit_mini16.pth: vit (width 48, depth 5, 3 heads)/16" in (
        capsys.readouterr().out)


@pytest.mark.slow
def test_eval_knn_reads_the_heads_it_is_given_for_a_width_48_file(mini16, tmp_path, capsys):
    import shutil

    from keras_dino.datasets import cifar10_mini

    root = tmp_path / "data"
    for split, target in (("train", "train"), ("test", "val")):
        for folder in sorted(cifar10_mini(split).iterdir())[:2]:
            (root / target / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:4]:
                shutil.copy(image, root / target / folder.name / image.name)
    values = _flags("eval_knn", f"--pretrained_weights={mini16}", "--num_heads=3",
                    f"--data_path={root}", "--eval_size=32", "--eval_resize=32", "--nb_knn=3",
                    f"--output_dir={tmp_path}", "--verbose=0")
    results = _tool("eval_knn").run(values)
    top1, top5 = results[3]
    assert 0.0 <= top1 <= 100.0 and top5 == 100.0  # 2 classes: both in the top 5
    assert "architecture from backbone_vit_mini16.pth: vit (width 48, depth 5, 3 heads)/16" in (
        capsys.readouterr().out)


@pytest.mark.slow
def test_train_starts_from_the_architecture_of_the_file(tmp_path):
    """train --pretrained_weights with a --patch_size that contradicts the file is one line.

    (Without --arch/--patch_size it builds the file's network and says so: the training
    run of test_examples.py::test_train_dino_continues_from_pretrained_weights.)"""
    import shutil

    from keras_dino.checkpoints import official, write_torch_checkpoint
    from keras_dino.datasets import cifar10_mini
    from keras_dino.models import VisionTransformer

    backbone = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    backbone.build((None, 32, 32, 3))
    weights = tmp_path / "backbone.pth"
    write_torch_checkpoint(official.state_dict_of(official.backbone_variable_map(backbone)),
                           weights)
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for image in sorted((cifar10_mini("train") / "cat").iterdir())[:16]:
        shutil.copy(image, images / image.name)
    run = ["train", f"--pretrained_weights={weights}", "--num_heads=2",
           f"--data_path={images.parent}",
           f"--output_dir={tmp_path / 'out'}", "--out_dim=64", "--head_hidden_dim=32",
           "--head_bottleneck_dim=16", "--global_size=32", "--local_size=16",
           "--local_crops_number=2", "--batch_size_per_gpu=8", "--epochs=1",
           "--warmup_epochs=0", "--use_fp16=false", "--saveckp_freq=0", "--num_workers=1",
           "--export=false", "--verbose=0", "--backend=tensorflow"]
    result = _command(*run, "--patch_size=16")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "patch_size=16" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


@pytest.mark.parametrize("tool, flag", [("visualize_attention", "--image_path"),
                                        ("visualize_features", "--image_path"),
                                        ("visualize_features", "--image_path2")])
def test_a_wrong_image_path_ends_before_the_weights_load(tool, flag, tmp_path, monkeypatch):
    """The image is read first: a typo in its path is one line at once, not after a
    download of the default weights (or an offline download error)."""
    from absl import app

    module = _tool(tool)

    def load_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the image was read")

    monkeypatch.setattr(module, "backbone_from_flags", load_weights)
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30)).save(image)
    paths = {"--image_path": image, "--image_path2": image, flag: tmp_path / "missing.jpg"}
    args = [f"{name}={path}" for name, path in paths.items()
            if name == "--image_path" or tool == "visualize_features"]
    with pytest.raises(app.UsageError, match=f"{flag}=.*missing.jpg is not a file"):
        module.run(_flags(tool, *args, f"--output_dir={tmp_path}"))


@pytest.mark.parametrize("value", ["0", "20,-1", "ten"])
def test_eval_knn_takes_whole_numbers_of_neighbours(value):
    """--nb_knn=0 stopped inside knn_classifier with a traceback; now a flag error."""
    from absl import flags

    with pytest.raises(flags.IllegalFlagValueError, match="--nb_knn takes whole numbers of "
                       "at least 1"):
        _flags("eval_knn", f"--nb_knn={value}")
    assert _flags("eval_knn", "--nb_knn=10,20").nb_knn == ["10", "20"]
