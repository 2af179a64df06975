"""`DINOConfig`: the one frozen description of DINO's hyper-parameters, and what derives
from it (the model, its schedules, the flags of `keras-dino train`, checkpoint `args`)."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
from test_dino_training import TINY_NETWORK
from test_examples import OFFICIAL_DEFAULTS

from keras_dino.checkpoints import read_checkpoint
from keras_dino.optim.optimizers import OPTIMIZERS
from keras_dino.optim.schedules import DINOSchedules
from keras_dino.training.dino import DINO
from keras_dino.training.hparams import DATA_DEFAULTS, RUN_DEFAULTS, DINOConfig

# Runs in one backend's process (tests/conftest.py): the configuration and the flags derived from it.
pytestmark = pytest.mark.once

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = TINY_NETWORK
# Flags of `keras-dino train` that are not DINO hyper-parameters: the run, the data, the
# architecture's parts (they make `vit_kwargs`, `resnet_kwargs`, `head_kwargs`), the
# distribution and the reports.
OTHER_TRAIN_FLAGS = {
    "use_fp16", "global_crops_scale", "local_crops_scale", "data_path", "output_dir",
    "saveckp_freq", "seed", "num_workers", "backend", "global_size", "local_size",
    "blur_radius", "photometric_on_device", "batched_crops", "pretrained_weights",
    "checkpoint_key", "load_heads", "embed_dim", "depth", "num_heads", "num_register_tokens",
    "resnet_block", "resnet_layers", "resnet_stem_width", "resnet_widths", "head_hidden_dim",
    "head_bottleneck_dim", "bf16", "fused_attention", "remat", "steps_per_execution",
    "jit_compile", "strategy", "tpu", "distribution", "jax_multiprocess",
    "coordinator_address", "num_processes", "process_id", "coordinator_bind_address",
    "collective_timeout", "knn_train_path", "knn_test_path", "knn_k", "knn_every",
    "eval_size", "eval_resize", "export", "verbose", "teacher_weights",
    "teacher_checkpoint_key",
}


def _python(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO, env={"PYTHONPATH": str(REPO),
                                                         **_environ()})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _environ():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_config_is_frozen_and_a_new_value_is_a_new_checked_config():
    config = DINOConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    with pytest.raises(TypeError, match="frozen"):
        config.vit_kwargs["depth"] = 4
    assert config.vit_kwargs == TINY["vit_kwargs"] and hash(config) == hash(DINOConfig(**TINY))
    faster = dataclasses.replace(config, lr=0.1)
    assert (faster.lr, config.lr) == (0.1, 0.0005) and faster != config
    with pytest.raises(ValueError, match="momentum_teacher must be in \\[0, 1\\]"):
        dataclasses.replace(config, momentum_teacher=1.01)


@pytest.mark.parametrize("values, message", [
    (dict(epochs=3, warmup_teacher_temp_epochs=4), "warmup_teacher_temp_epochs .* cannot exceed"),
    (dict(optimizer="adam"), "optimizer must be one of \\['adamw', 'lars', 'sgd'\\]"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be >= 1"),
    (dict(gradient_accumulation_steps=4, steps_per_epoch=6), "multiple of 4"),
    (dict(center_momentum=-0.5), "center_momentum must be in \\[0, 1\\]"),
    (dict(epochs=2.5), "epochs must be a whole number"),
    (dict(teacher_temp=-0.04), "teacher_temp must be > 0 \\(a softmax temperature"),
    (dict(student_temp=0.0), "student_temp must be > 0"),
    (dict(lr=-0.001), "lr must be >= 0"),
    (dict(drop_path_rate=1.5), "drop_path_rate must be in \\[0, 1\\]"),
    (dict(out_dim=0), "out_dim must be >= 1"),
    (dict(patch_size=0), "patch_size must be >= 1"),
])
def test_every_config_is_valid(values, message):
    with pytest.raises(ValueError, match=message):
        DINOConfig(**values)


def test_optimizer_choices_are_the_official_optimizers():
    (field,) = [f for f in DINOConfig.settings() if f.name == "optimizer"]
    assert sorted(field.metadata["choices"]) == sorted(OPTIMIZERS)


def test_official_fields_have_the_official_names_and_defaults(fixtures_dir):
    # The official main_dino.py defaults (tests/test_examples.py, written from the
    # official script), less the run's and the data's arguments.
    official = {k: v for k, v in OFFICIAL_DEFAULTS["train_dino.py"].items()
                if k not in RUN_DEFAULTS and k not in DATA_DEFAULTS}
    assert DINOConfig.official_defaults() == official
    # ... and each is an argument of a real official run (the golden checkpoint's args).
    args = dict(read_checkpoint(fixtures_dir / "golden" / "init_checkpoint.pth")["args"])
    assert set(official) <= set(args)
    # The config of that run's args is its values.
    config = DINOConfig.from_args(args)
    assert {k: getattr(config, k) for k in official} == {k: args[k] for k in official}


def test_dino_keywords_and_config_are_the_same_model():
    model = DINO(**TINY, lr=0.05, name="tiny")
    assert model.config == DINOConfig(**TINY, lr=0.05)
    again = DINO(config=DINOConfig(**TINY), lr=0.05, name="tiny")
    assert again.config == model.config and again.get_config() == model.get_config()
    assert dict(model.hparams) == model.config.to_dict()
    with pytest.raises(TypeError):
        model.hparams["lr"] = 1.0  # a view, not a second owner
    with pytest.raises(TypeError, match="DINOConfig"):
        DINO("vit_small")
    # The schedules are the config's.
    assert model.schedules == DINOSchedules.from_config(model.config)
    assert (model.schedules.base_lr, model.schedules.momentum_teacher) == (0.05, 0.996)


def test_a_misspelt_setting_names_the_setting_meant():
    """Keras' "Unrecognized keyword arguments" gave no hint; Keras' own keywords still work
    (name=, as above)."""
    with pytest.raises(ValueError, match=r"^DINO has no setting 'teacher_momentum' \(did you "
                       r"mean 'momentum_teacher'\?\), 'zzz'; keras_dino.DINOConfig.settings"):
        DINO(**TINY, teacher_momentum=0.99, zzz=1)
    with pytest.raises(ValueError, match=r"'warmup_epoch' \(did you mean 'warmup_epochs'\?\)"):
        DINO(**TINY, warmup_epoch=2)


def test_keras_config_keeps_its_keys_and_round_trips():
    model = DINO(**TINY, momentum_teacher=0.9, final_momentum_teacher=0.95)
    config = json.loads(json.dumps(model.get_config()))
    # The keys of keras_dino 0.1's DINO config: .keras files saved then load.
    assert {f.name for f in DINOConfig.settings()} <= set(config)
    assert DINO.from_config(config).config == model.config
    old = {k: v for k, v in config.items() if k not in ("student_temp", "batch_size")}
    assert DINO.from_config(old).config == model.config  # missing keys: the defaults


def test_checkpoint_args_round_trip_through_the_config(tmp_path):
    model = DINO(**TINY, lr=0.05, momentum_teacher=0.9, final_momentum_teacher=0.95,
                 center_momentum=0.8, student_temp=0.2, optimizer="sgd", batch_size=8,
                 batch_size_per_gpu=8, clip_grad=0.0, freeze_last_layer=0)
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    args = dict(read_checkpoint(path)["args"])
    recorded = model.config.checkpoint_args()
    assert {k: args[k] for k in recorded} == recorded
    assert DINO.from_official_checkpoint(path).config == model.config
    # Overrides replace the file's values, and are checked as any config.
    assert DINO.from_official_checkpoint(path, epochs=5).config == dataclasses.replace(
        model.config, epochs=5)
    with pytest.raises(ValueError, match="momentum_teacher must be in"):
        DINO.from_official_checkpoint(path, momentum_teacher=2.0)


def test_train_flags_are_the_config_fields():
    """Every scalar field is a flag of `keras-dino train` with its name and default."""
    defined = _python(
        "import json, sys; sys.argv = ['train']\n"
        "from keras_dino.tools import train\n"
        "flags = {name: train.F[name].default for name in train.F\n"
        "         if train.F.find_module_defining_flag(name) == 'keras_dino.tools.train'}\n"
        "print(json.dumps(flags))\n"
    )
    fields = {f.name: f for f in DINOConfig.settings()}
    flags = {name: fields[name] for name in defined if name in fields}
    assert set(defined) - set(flags) == OTHER_TRAIN_FLAGS
    nested = {name for name, f in fields.items() if not f.metadata["flag"]}
    assert set(flags) == set(fields) - nested == set(fields) - {
        "vit_kwargs", "resnet_kwargs", "head_kwargs"}
    for name, field in flags.items():
        assert defined[name] == field.metadata.get("flag_default", field.default), name


def test_train_builds_its_model_from_the_flags_through_the_config():
    built = _python(
        "import json, sys; sys.argv = ['train']\n"
        "from keras_dino.tools import train\n"
        "train.F(['train', '--arch=vit_tiny', '--lr=0.1', '--center_momentum=0.5',\n"
        "         '--depth=2', '--head_hidden_dim=64'])\n"
        "print(json.dumps(train.config_from_flags().to_dict()))\n"
    )
    expected = DINOConfig(arch="vit_tiny", lr=0.1, center_momentum=0.5, batch_size_per_gpu=64,
                          vit_kwargs=dict(depth=2, use_fused_attention=False, remat=False),
                          head_kwargs=dict(hidden_dim=64, bottleneck_dim=256))
    assert built == json.loads(json.dumps(expected.to_dict()))
    wrong = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['train']\n"
         "from keras_dino.tools import train\n"
         "train.F(['train', '--epochs=2', '--warmup_teacher_temp_epochs=3'])\n"
         "train.config_from_flags()\n"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PYTHONPATH": str(REPO), **_environ()})
    assert "UsageError: warmup_teacher_temp_epochs (3) cannot exceed epochs (2)" in wrong.stderr


def test_schedules_and_optimizers_take_the_config_defaults_not_their_own():
    defaults = [f.name for f in dataclasses.fields(DINOSchedules)
                if f.default is not dataclasses.MISSING]
    assert defaults == ["steps_per_epoch"]  # the settings' defaults are the config's
    with pytest.raises(ValueError, match="make_optimizer"):
        OPTIMIZERS["adamw"]()  # no silent default learning rate or weight decay
    schedules = DINOSchedules.from_config(DINOConfig(), steps_per_epoch=5)
    assert (schedules.base_lr, schedules.weight_decay_end, schedules.freeze_last_layer,
            schedules.steps_per_epoch) == (0.0005, 0.4, 1, 5)
