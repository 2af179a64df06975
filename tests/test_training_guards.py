"""Continuing from trained weights: freeze_blocks, layer_decay and the best k-NN checkpoint."""

import keras
import numpy as np
import pytest
from keras import ops
from test_dino_training import all_weights, tiny_crops, tiny_dino

from keras_dino import callbacks as dino_callbacks
from keras_dino.models.official_names import layer_of
from keras_dino.training.dino import DINO

pytestmark = pytest.mark.filterwarnings("ignore::keras_dino.callbacks.CollapseDetected")

DEPTH = 3
VIT = dict(embed_dim=16, depth=DEPTH, num_heads=2)
EMBEDDING = ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
             "backbone.patch_embed.proj.bias")


def _expected_layer(name):
    """The layer of a tiny ViT's parameter, spelled out by name (not by `layer_of`)."""
    if name in EMBEDDING:
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return DEPTH + 1  # backbone.norm.*, head.*


def test_freeze_blocks_keeps_student_and_teacher_copies_bit_identical():
    # A large weight decay: a decayed frozen parameter would move at the first step.
    model = tiny_dino(vit_kwargs=VIT, freeze_blocks=2, weight_decay=0.4, weight_decay_end=0.4)
    groups = model.parameter_groups()
    frozen = {n for n in groups.averaged if _expected_layer(n) <= 2}
    assert set(groups.frozen) == frozen
    assert set(EMBEDDING) <= frozen and "backbone.blocks.1.mlp.fc2.weight" in frozen
    assert not any(n.startswith(("backbone.blocks.2.", "backbone.norm", "head.")) for n in frozen)
    before = all_weights(model)
    model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
    after = all_weights(model)
    trained = {model.parameter_groups().name_of(v) for v in model.trainable_variables}
    for name in groups.averaged:
        for part in ("student", "teacher"):
            same = np.array_equal(before[part][name], after[part][name])
            if name in frozen:
                assert same, f"{part} {name} moved"
            elif name in trained:
                assert not same, f"{part} {name} did not train"
    # No moments and no step count for a frozen parameter: the optimizer never touched it.
    optimizer = model.optimizer
    for variable in model.trainable_variables:
        i = optimizer._get_variable_index(variable)
        untouched = groups.name_of(variable) in frozen
        assert optimizer.is_frozen(variable) == untouched
        assert (float(ops.convert_to_numpy(optimizer.steps[i])) == 0.0) == untouched
        assert (not np.any(ops.convert_to_numpy(optimizer.exp_avg_sq[i]))) == untouched


def test_frozen_parameters_are_not_weight_decayed():
    # A zero gradient: AdamW moves a parameter by its decoupled decay alone.
    model = tiny_dino(vit_kwargs=VIT, freeze_blocks=1, warmup_epochs=0, steps_per_epoch=2,
                      weight_decay=0.4, weight_decay_end=0.4, lr=0.5)
    model.compile()
    groups = model.parameter_groups()
    variables = model.trainable_variables
    before = [ops.convert_to_numpy(v).copy() for v in variables]
    model.optimizer.apply([ops.zeros(v.shape) for v in variables], variables)
    lr = float(ops.convert_to_numpy(model.schedules.lr(0)))
    assert lr > 0
    for variable, old in zip(variables, before, strict=True):
        name = groups.name_of(variable)
        new = ops.convert_to_numpy(variable)
        if name in groups.frozen:
            np.testing.assert_array_equal(new, old, err_msg=name)
        elif name in groups.regularized and name not in groups.last_layer:
            np.testing.assert_allclose(new, old * (1 - lr * 0.4), rtol=1e-6, err_msg=name)


def test_layer_decay_multipliers_and_the_first_adamw_step():
    r = 0.5
    model = tiny_dino(vit_kwargs=VIT, layer_decay=r, warmup_epochs=0, steps_per_epoch=2,
                      clip_grad=0.0, freeze_last_layer=0, weight_decay=0.1,
                      weight_decay_end=0.1)
    model.compile()
    optimizer, groups = model.optimizer, model.parameter_groups()
    variables = model.trainable_variables
    for variable in variables:
        name = groups.name_of(variable)
        # BEiT's and DINOv2's rule: embedding r**4, blocks r**3 .. r, norm and head 1
        exponent = max(DEPTH + 1 - _expected_layer(name), 0)
        assert optimizer.lr_scale_of(variable) == r**exponent, name
    assert {optimizer.lr_scale_of(v) for v in variables} == {1.0, r, r**2, r**3, r**4}
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
    before = [ops.convert_to_numpy(v).astype("float64") for v in variables]
    optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
    lr = float(ops.convert_to_numpy(model.schedules.lr(0)))
    wd = float(ops.convert_to_numpy(model.schedules.wd(0)))
    for variable, g, p in zip(variables, grads, before, strict=True):
        name = groups.name_of(variable)
        scaled = lr * r ** max(DEPTH + 1 - _expected_layer(name), 0)
        # First AdamW step: m = (1 - b1) g and v = (1 - b2) g^2, so the bias-corrected
        # moments are g and g^2: p (1 - lr wd) - lr g / (|g| + eps), at the layer's lr.
        decay = wd if name in groups.regularized else 0.0
        g = g.astype("float64")
        expected = p * (1 - scaled * decay) - scaled * g / (np.abs(g) + 1e-8)
        np.testing.assert_allclose(ops.convert_to_numpy(variable), expected, rtol=2e-6,
                                   atol=2e-7, err_msg=name)


def test_layer_decay_default_leaves_the_optimizer_unchanged():
    model = tiny_dino()
    model.compile()
    assert model.optimizer._guards == {}
    assert model.parameter_groups().frozen == ()


def test_guards_are_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="has 3 blocks"):
        tiny_dino(vit_kwargs=VIT, freeze_blocks=4)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        tiny_dino(layer_decay=1.5)
    with pytest.raises(ValueError, match="freeze_blocks must be"):
        tiny_dino(freeze_blocks=-1)
    model = tiny_dino(vit_kwargs=VIT, freeze_blocks=3, layer_decay=0.75)  # every block
    assert model.get_config()["freeze_blocks"] == 3
    path = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    restored = DINO.from_official_checkpoint(path)
    assert (restored.hparams["freeze_blocks"], restored.hparams["layer_decay"]) == (3, 0.75)


def test_resnet_freeze_blocks_counts_the_stem_and_stages():
    resnet = dict(block="basic", layers=[1, 1, 1], stem_width=8, stage_widths=[8, 8, 16])
    model = tiny_dino(arch="resnet_test", resnet_kwargs=resnet, freeze_blocks=2,
                      layer_decay=0.5)
    groups = model.parameter_groups()
    assert groups.depth == 3
    assert {n.split(".")[1] for n in groups.frozen} == {"conv1", "bn1", "layer1", "layer2"}
    assert groups.lr_scales["backbone.conv1.weight"] == 0.0625  # the stem: r**(L+1)
    assert groups.lr_scales["backbone.layer2.0.conv1.weight"] == 0.25
    assert groups.lr_scales["backbone.layer3.0.conv1.weight"] == 0.5  # the last stage: r
    assert groups.lr_scales["head.mlp.0.weight"] == 1.0
    assert layer_of("backbone.layer3.0.bn2.bias", 3) == 3
    with pytest.raises(ValueError, match="ResNet has 3 stages"):
        tiny_dino(arch="resnet_test", resnet_kwargs=resnet, freeze_blocks=4)


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.teachers = []

    def on_epoch_end(self, epoch, logs=None):
        self.teachers.append(all_weights(self.model)["teacher"])


def test_knn_evaluation_keeps_the_best_teacher(tmp_path, monkeypatch):
    from keras_dino.checkpoints import read_checkpoint

    rng = np.random.default_rng(3)
    images = rng.normal(size=(24, 16, 16, 3)).astype("float32")
    labels = np.arange(24) % 3
    path = tmp_path / "checkpoint_best.pth"
    monitor = dino_callbacks.KNNEvaluation((images[:16], labels[:16]), (images[16:], labels[16:]),
                                           k=5, save_best=path)
    # Scripted accuracies (the k-NN itself is tested in test_training_monitors): the
    # starting weights, then three epochs; the best is the second epoch, so the file must
    # follow neither the start nor the last epoch.
    scripted = iter([(40.0, 80.0), (50.0, 90.0), (70.0, 95.0), (60.0, 92.0)])
    monkeypatch.setattr(monitor, "evaluate", lambda backbone: next(scripted))
    snapshots = _Snapshots()
    model = tiny_dino(epochs=3)
    model.fit(tiny_crops(), batch_size=4, epochs=3, verbose=0, callbacks=[monitor, snapshots])
    assert [e for e, _, _ in monitor.history] == [-1, 0, 1, 2]
    assert monitor.best == (1, 70.0)
    best = read_checkpoint(path)
    final = all_weights(model)["teacher"]
    moved = 0
    for name, value in snapshots.teachers[1].items():
        np.testing.assert_array_equal(np.asarray(best["teacher"][name]), value, err_msg=name)
        moved += not np.array_equal(value, final[name])
    assert moved > 0  # the file holds epoch 2's teacher, not the last one
    assert best["epoch"] == 2
    restored = DINO.from_official_checkpoint(path)
    np.testing.assert_array_equal(all_weights(restored)["teacher"]["backbone.pos_embed"],
                                  snapshots.teachers[1]["backbone.pos_embed"])
    # A resumed run that knows a better earlier evaluation keeps the file as it is.
    stamp = path.stat().st_mtime_ns
    again = dino_callbacks.KNNEvaluation((images[:16], labels[:16]), (images[16:], labels[16:]),
                                         k=5, save_best=path, initial_best=(1, 70.0))
    monkeypatch.setattr(again, "evaluate", lambda backbone: (65.0, 90.0))
    model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0, callbacks=[again])
    assert again.best == (1, 70.0) and path.stat().st_mtime_ns == stamp


def test_knn_evaluation_keeps_the_starting_weights_when_training_only_loses(tmp_path,
                                                                             monkeypatch):
    from keras_dino.checkpoints import read_checkpoint

    rng = np.random.default_rng(4)
    images = rng.normal(size=(16, 16, 16, 3)).astype("float32")
    data = (images, np.arange(16) % 2)
    path = tmp_path / "checkpoint_best.pth"
    monitor = dino_callbacks.KNNEvaluation(data, data, k=3, save_best=path)
    scripted = iter([(41.0, 90.0), (38.0, 85.0), (36.0, 84.0)])
    monkeypatch.setattr(monitor, "evaluate", lambda backbone: next(scripted))
    model = tiny_dino(epochs=2)
    start = all_weights(model)["teacher"]
    model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0, callbacks=[monitor])
    assert monitor.best == (-1, 41.0)
    best = read_checkpoint(path)
    assert best["epoch"] == 0
    for name, value in start.items():
        np.testing.assert_array_equal(np.asarray(best["teacher"][name]), value, err_msg=name)
    assert not np.array_equal(all_weights(model)["teacher"]["backbone.pos_embed"],
                              start["backbone.pos_embed"])


def test_xcit_layers_run_through_its_blocks_then_its_class_attention_blocks():
    from keras_dino.models import DINOHead, MultiCropWrapper
    from keras_dino.models.official_names import parameter_groups
    from keras_dino.models.xcit import XCiT

    net = MultiCropWrapper(XCiT(patch_size=8, embed_dim=32, depth=1, num_heads=4),
                           DINOHead(out_dim=64, in_dim=32))
    groups = parameter_groups(net, freeze_blocks=2, layer_decay=0.5)
    assert groups.depth == 3  # 1 block + 2 class-attention blocks
    layers = groups.layers
    assert layers["backbone.cls_token"] == layers["backbone.pos_embeder.token_projection.weight"] == 0
    assert layers["backbone.blocks.0.attn.temperature"] == 1
    assert layers["backbone.cls_attn_blocks.0.norm1.weight"] == 2
    assert layers["backbone.cls_attn_blocks.1.norm1.weight"] == 3
    assert groups.lr_scales["backbone.patch_embed.proj.0.0.weight"] == 0.0625
    assert groups.lr_scales["backbone.cls_attn_blocks.1.norm1.weight"] == 0.5
    assert groups.lr_scales["backbone.norm.weight"] == groups.lr_scales["head.mlp.0.weight"] == 1.0
    frozen = set(groups.frozen)
    assert "backbone.cls_attn_blocks.0.attn.qkv.weight" in frozen
    assert not any(n.startswith(("backbone.cls_attn_blocks.1.", "backbone.norm", "head."))
                   for n in frozen)


def test_a_resumed_train_run_knows_the_best_it_kept(tmp_path):
    import json

    from keras_dino.tools.train import best_of_interrupted_run

    lines = [
        {"train_knn_top1": 55.0, "epoch": 0},  # an earlier, finished run in the same folder
        {"summary": {"epochs": 1}},
        {"knn_start": {"epoch": -1, "knn_top1": 40.7, "knn_top5": 85.0}},
        {"train_loss": 5.0, "train_knn_top1": 37.4, "epoch": 0},
        {"train_loss": 4.9, "train_knn_top1": 38.2, "epoch": 1},
    ]
    (tmp_path / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert best_of_interrupted_run(tmp_path) is None  # no checkpoint_best.pth: a new run
    (tmp_path / "checkpoint_best.pth").write_bytes(b"")
    assert best_of_interrupted_run(tmp_path) is None  # no backup/: a new run
    (tmp_path / "backup").mkdir()
    assert best_of_interrupted_run(tmp_path) == (-1, 40.7)
    with open(tmp_path / "log.txt", "a") as log:
        log.write(json.dumps({"train_knn_top1": 41.5, "epoch": 2}) + "\n")
    assert best_of_interrupted_run(tmp_path) == (2, 41.5)


@pytest.mark.once
def test_a_run_that_replaces_a_finished_one_says_so(tmp_path):
    """A finished run leaves checkpoint.pth and no backup/: rerunning its command trains
    anew, and a line says it replaces the file; an interrupted run (backup/) resumes."""
    from keras_dino.tools.train import replaced_run_note

    assert replaced_run_note(tmp_path) is None  # a new folder
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    note = replaced_run_note(tmp_path)
    assert note.startswith(f"{tmp_path} holds an earlier run's checkpoint.pth and no backup/")
    assert "this run starts anew and replaces it" in note and "--pretrained_weights" in note
    (tmp_path / "backup").mkdir()
    assert replaced_run_note(tmp_path) is None  # resumes from backup/
