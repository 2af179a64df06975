"""A small model from a big one: `DINO(teacher=...)`, a frozen teacher of another architecture."""

import keras
import numpy as np
import pytest
from keras import ops
from test_dino_training import tiny_crops, tiny_dino

from keras_dino.checkpoints import official, read_checkpoint
from keras_dino.checkpoints.teacher import RANDOM_HEAD_SEED, random_head
from keras_dino.models.official_names import head_variable_map
from keras_dino.models.resnet import ResNet
from keras_dino.models.vision_transformer import VisionTransformer
from keras_dino.training.dino import DINO

RESNET = dict(block="basic", layers=[1, 1], stem_width=8, stage_widths=[8, 16])


def vit_teacher_checkpoint(tmp_path, **overrides):
    """A tiny ViT DINO trained one epoch, written as an official checkpoint.pth."""
    model = tiny_dino(vit_kwargs=dict(embed_dim=24, depth=2, num_heads=3), epochs=1,
                      **overrides)
    model.fit(tiny_crops(), batch_size=8, epochs=1, verbose=0)
    return model, model.save_official_checkpoint(tmp_path / "teacher.pth")


def numpy_weights(layer):
    return [np.array(ops.convert_to_numpy(v)) for v in layer.weights]


def resnet_student(teacher, **overrides):
    return tiny_dino(arch="resnet_test", resnet_kwargs=RESNET, teacher=teacher, **overrides)


# One trained ViT teacher and one ResNet student distilled from it serve the tests that
# only read them (each training traces and compiles a step of its own).
@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    """(trained ViT DINO, its checkpoint.pth)."""
    return vit_teacher_checkpoint(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def distilled(vit_teacher):
    """A ResNet student trained 2 epochs under the frozen ViT teacher of `vit_teacher`,
    with its weights before training and its history."""
    _, path = vit_teacher
    model = resnet_student(path, out_dim=None)
    before = dict(teacher=numpy_weights(model.teacher), student=numpy_weights(model.student))
    history = model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
    return model, before, history


def test_frozen_teacher_stays_bit_identical_while_the_student_trains(vit_teacher, distilled):
    big, path = vit_teacher
    model, before, history = distilled
    assert model.distillation.head_from_file and model.teacher_weights == str(path)
    assert model._ema_pairs == []
    assert model.backbone is model.student.backbone and isinstance(model.backbone, ResNet)
    assert isinstance(model.teacher.backbone, VisionTransformer)
    assert history.history["momentum"] == [1.0, 1.0]
    assert np.all(np.isfinite(history.history["loss"]))
    for b, a in zip(before["teacher"], numpy_weights(model.teacher)):
        np.testing.assert_array_equal(b, a)
    moved = [not np.array_equal(b, a)
             for b, a in zip(before["student"], numpy_weights(model.student))]
    assert sum(moved) > len(moved) // 2, moved
    # The teacher is the trained network of the file, head included.
    for ours, theirs in zip(numpy_weights(model.teacher), numpy_weights(big.teacher)):
        np.testing.assert_array_equal(ours, theirs)


def test_teacher_head_comes_from_the_checkpoint_and_fixes_out_dim(tmp_path):
    big, path = vit_teacher_checkpoint(tmp_path, out_dim=48)
    model = resnet_student(path, out_dim=None)
    assert model.hparams["out_dim"] == 48 == model.student.head.out_dim
    assert tuple(model.center.shape) == (1, 48)
    expected = official.state_dict_of(head_variable_map(big.teacher.head))
    ours = official.state_dict_of(head_variable_map(model.teacher.head))
    assert sorted(ours) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(ours[key], value)
    # --teacher_checkpoint_key=student: the file's student teaches.
    student_taught = resnet_student(path, out_dim=48, teacher_checkpoint_key="student")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(student_taught.teacher.head.last_layer.weights[0]),
        ops.convert_to_numpy(big.student.head.last_layer.weights[0]))
    with pytest.raises(ValueError, match=r"out_dim=32 but the teacher's head .* out_dim=48"):
        resnet_student(path, out_dim=32)


def test_backbone_only_teacher_gets_a_seeded_frozen_random_head():
    teacher = ResNet(block="basic", layers=[1, 1], stem_width=8, stage_widths=[8, 32],
                     name="rn_teacher")
    head_config = dict(out_dim=32, hidden_dim=16, bottleneck_dim=8)
    model = tiny_dino(teacher=teacher)  # a ViT student taught by a ResNet
    assert not model.distillation.head_from_file
    assert model.teacher.backbone is teacher and model.teacher.head.in_dim == 32
    expected = random_head(32, head_config, seed=RANDOM_HEAD_SEED)
    for ours, theirs in zip(numpy_weights(model.teacher.head), numpy_weights(expected)):
        np.testing.assert_array_equal(ours, theirs)
    kernel = numpy_weights(model.teacher.head)[0]
    assert abs(kernel.std() - 0.02) < 0.005 and abs(kernel.mean()) < 0.005
    other = random_head(32, head_config, seed=RANDOM_HEAD_SEED + 1)
    assert not np.array_equal(numpy_weights(other)[0], kernel)
    before = numpy_weights(model.teacher)
    model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
    for b, a in zip(before, numpy_weights(model.teacher)):
        np.testing.assert_array_equal(b, a)


def test_vit_student_of_a_resnet_checkpoint_teacher(tmp_path):
    big = tiny_dino(arch="resnet_test", resnet_kwargs=RESNET, use_bn_in_head=True, epochs=1)
    big.fit(tiny_crops(), batch_size=8, epochs=1, verbose=0)
    path = big.save_official_checkpoint(tmp_path / "resnet_teacher.pth")
    model = tiny_dino(teacher=path, out_dim=None)  # ViT student, no BatchNorm head
    assert model.teacher.head.use_bn and not model.student.head.use_bn
    before = numpy_weights(model.teacher)  # BatchNorm statistics included
    model.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
    for b, a in zip(before, numpy_weights(model.teacher)):
        np.testing.assert_array_equal(b, a)
    for ours, theirs in zip(before, numpy_weights(big.teacher)):
        np.testing.assert_array_equal(ours, theirs)


def test_distillation_checkpoint_round_trip(vit_teacher, distilled, tmp_path):
    _, path = vit_teacher
    model, _, _ = distilled
    saved = model.save_official_checkpoint(tmp_path / "checkpoint.pth")
    checkpoint = read_checkpoint(saved)
    args = dict(checkpoint["args"])
    assert args["teacher_weights"] == str(path) and args["arch"] == "resnet_test"
    assert args["teacher_args"]["vit_kwargs"] == {"num_heads": 3}
    assert any(k.startswith("backbone.blocks.") for k in checkpoint["teacher"])
    assert any("layer1" in k for k in checkpoint["student"])
    restored = DINO.from_official_checkpoint(saved)
    assert restored.teacher_weights == str(path) and restored._ema_pairs == []
    assert isinstance(restored.backbone, ResNet)
    for ours, theirs in ((restored.student, model.student), (restored.teacher, model.teacher)):
        for a, b in zip(numpy_weights(ours), numpy_weights(theirs)):
            np.testing.assert_array_equal(a, b)
    # Starting a new run from it (from_pretrained) continues with the student's network.
    again = DINO.from_pretrained(saved, epochs=1)
    assert again.distillation is None and isinstance(again.backbone, ResNet)
    np.testing.assert_array_equal(numpy_weights(again.teacher.backbone)[0],
                                  numpy_weights(model.student.backbone)[0])
    # load_pretrained: 'teacher' is the frozen ViT it learned from (said in one warning,
    # built from the teacher's own args); 'student' is the trained ResNet.
    import keras_dino

    with pytest.warns(UserWarning, match="distillation run.*checkpoint_key='student'"):
        teacher_backbone = keras_dino.load_pretrained(saved)
    assert isinstance(teacher_backbone, VisionTransformer) and teacher_backbone.num_heads == 3
    np.testing.assert_array_equal(numpy_weights(teacher_backbone)[0],
                                  numpy_weights(model.teacher.backbone)[0])
    student_backbone = keras_dino.load_pretrained(saved, checkpoint_key="student")
    assert isinstance(student_backbone, ResNet)
    np.testing.assert_array_equal(numpy_weights(student_backbone)[0],
                                  numpy_weights(model.student.backbone)[0])


def test_distillation_keras_round_trip(vit_teacher, distilled, tmp_path):
    _, path = vit_teacher
    model, _, _ = distilled
    config = model.get_config()
    assert config["teacher_weights"] == str(path)
    assert config["teacher"]["class_name"] == "MultiCropWrapper"
    model.save(tmp_path / "distill.keras")
    restored = keras.saving.load_model(tmp_path / "distill.keras")
    assert restored.teacher_weights == str(path) and restored._ema_pairs == []
    assert isinstance(restored.teacher.backbone, VisionTransformer)
    assert isinstance(restored.backbone, ResNet)
    # Only the student trains (the restored teacher's variables are not trainable).
    teacher_ids = {id(v) for v in restored.teacher.weights}
    assert not any(id(v) in teacher_ids for v in restored.trainable_variables)
    assert len(restored.trainable_variables) == len(model.trainable_variables)
    for a, b in zip(numpy_weights(restored), numpy_weights(model)):
        np.testing.assert_array_equal(a, b)
    teacher_before = numpy_weights(restored.teacher)
    restored.fit(tiny_crops(), batch_size=4, epochs=1, verbose=0)
    for b, a in zip(teacher_before, numpy_weights(restored.teacher)):
        np.testing.assert_array_equal(b, a)


def test_teacher_of_the_wrong_kind_is_a_short_error():
    with pytest.raises(TypeError, match="teacher must be a preset name, a weights file"):
        tiny_dino(teacher=3)
    with pytest.raises(ValueError, match="neither a preset nor an existing file"):
        tiny_dino(teacher="no_such_teacher.pth")


def test_from_pretrained_with_a_teacher_starts_only_the_student(vit_teacher, tmp_path):
    """`DINO.from_pretrained(weights, teacher=...)`: the file starts the student; the
    frozen teacher stays the one given."""
    _, teacher_path = vit_teacher
    small = tiny_dino(arch="resnet_test", resnet_kwargs=RESNET, epochs=1)
    start = small.save_official_checkpoint(tmp_path / "small.pth")
    model = DINO.from_pretrained(start, load_heads=False, teacher=teacher_path, out_dim=None,
                                 head_kwargs=dict(hidden_dim=16, bottleneck_dim=8))
    assert isinstance(model.backbone, ResNet) and model.teacher_weights == str(teacher_path)
    for ours, theirs in zip(numpy_weights(model.student.backbone),
                            numpy_weights(small.student.backbone)):
        np.testing.assert_array_equal(ours, theirs)
    taught = resnet_student(teacher_path, out_dim=None)
    for ours, theirs in zip(numpy_weights(model.teacher), numpy_weights(taught.teacher)):
        np.testing.assert_array_equal(ours, theirs)
