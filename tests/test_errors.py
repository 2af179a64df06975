"""Bad input gets a short error (or warning) that names the fix (`keras_dino.errors`)."""

import functools
import inspect
import warnings

import keras
import numpy as np
import pytest
from test_dino_training import tiny_dino

import keras_dino
from keras_dino import errors
from keras_dino.evaluation import dense_features
from keras_dino.evaluation.features import extract_features
from keras_dino.models import DINOHead, MultiCropWrapper, ResNet, XCiT, vit_tiny

SHORT = 400  # characters: a message, not a screen of internals


def _short(error, *fixes):
    message = str(error)
    assert len(message) < SHORT, f"{len(message)} characters: {message[:600]}"
    for fix in fixes:
        assert fix in message, message
    return message


def test_every_error_is_a_keras_dino_error_and_its_builtin_type():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, Exception) and not issubclass(obj, Warning)
               and obj.__module__ == errors.__name__]
    assert set(errors.__all__) >= {c.__name__ for c in classes}
    for cls in classes:
        assert issubclass(cls, errors.KerasDinoError), cls
        builtins = [b for b in cls.__mro__ if b.__module__ == "builtins"
                    and b not in (Exception, BaseException, object)]
        assert cls is errors.KerasDinoError or cls is errors.CheckpointError or builtins, cls
    # The old homes keep working.
    from keras_dino.callbacks import NonFiniteLossError
    from keras_dino.checkpoints import CheckpointFormatError, UnsafeCheckpointError
    from keras_dino.checkpoints.official import CheckpointKeyError, CheckpointShapeError
    from keras_dino.checkpoints.pretrained import PretrainedDownloadError
    assert NonFiniteLossError is errors.NonFiniteLossError
    assert CheckpointKeyError is errors.CheckpointKeyError
    assert issubclass(CheckpointFormatError, ValueError)
    assert issubclass(UnsafeCheckpointError, errors.CheckpointError)
    assert issubclass(CheckpointShapeError, ValueError)
    assert issubclass(PretrainedDownloadError, OSError)


# ----------------------------------------------------------------------- backbones


@functools.cache
def _backbone(kind):
    """One small backbone of each family, built once for the tests of this module (calling
    a backbone changes nothing in it)."""
    if kind == "vit":
        return vit_tiny(patch_size=16, depth=1)
    if kind == "resnet":
        return ResNet(block="basic", layers=(1, 1, 1, 1), name="rn")
    return XCiT(patch_size=8, embed_dim=32, depth=1, num_heads=4)


@pytest.mark.parametrize("kind", ["vit", "resnet", "xcit"])
@pytest.mark.parametrize("dtype", ["uint8", "int32"])
def test_integer_images_name_preprocess_images(kind, dtype):
    model = _backbone(kind)
    for images in (np.zeros((1, 32, 32, 3), dtype),
                   keras.ops.convert_to_tensor(np.zeros((1, 32, 32, 3), dtype))):
        with pytest.raises(errors.InputError) as info:
            model(images)
        assert isinstance(info.value, ValueError)
        _short(info.value, f"got {dtype} images", "keras_dino.preprocess_images(images)")


@pytest.mark.parametrize("kind", ["vit", "resnet", "xcit"])
def test_float_pixels_in_0_255_name_preprocess_images(kind):
    model = _backbone(kind)
    raw = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    with pytest.raises(errors.InputError) as info:
        model(raw)
    _short(info.value, "values 0..255", "keras_dino.preprocess_images(images)")
    if kind != "resnet":
        with pytest.raises(errors.InputError, match="values 0..255"):
            model.get_last_selfattention(raw)
    # Normalised pixels (and a tensor, whose values are not read) go through.
    normalised = keras_dino.normalize_images(raw)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(keras.ops.convert_to_numpy(normalised))),
        keras.ops.convert_to_numpy(model(normalised)))


@pytest.mark.parametrize("kind", ["vit", "resnet", "xcit"])
def test_one_image_without_a_batch_axis_names_the_fix(kind):
    """(H, W, 3) into a backbone: one line saying to add the batch axis (it was a Keras
    error from inside the patch embedding or the stem's padding)."""
    model = _backbone(kind)
    with pytest.raises(errors.InputError) as info:
        model(np.zeros((32, 32, 3), "float32"))
    _short(info.value, "got one image of shape (32, 32, 3)", "add a batch axis (images[None])")
    with pytest.raises(errors.InputError, match=r"a batch of channels-last RGB images"):
        model(np.zeros((1, 1, 32, 32, 3), "float32"))


def test_dtype_check_does_not_break_symbolic_inputs():
    model = vit_tiny(patch_size=16, depth=1)
    inputs = keras.Input((32, 32, 3))
    functional = keras.Model(inputs, model(inputs))
    x = np.zeros((2, 32, 32, 3), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(functional(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    with pytest.raises(errors.InputError, match="got uint8 images"):
        model(keras.Input((32, 32, 3), dtype="uint8"))


# ------------------------------------------------------------------- preprocessing


def test_preprocess_images_warns_once_on_pixels_in_0_1():
    unit = np.random.default_rng(0).uniform(0, 1, (2, 40, 40, 3)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):  # one call site: one warning
            keras_dino.preprocess_images(unit, size=32)
    assert len(caught) == 1 and caught[0].category is errors.InputWarning
    assert caught[0].filename == __file__  # points at the caller
    _short(caught[0].message, "0..255", "images * 255")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_dino.preprocess_images(unit * 255, size=32)
        keras_dino.preprocess_images((unit * 255).astype("uint8"), size=32)


# ---------------------------------------------------------------------- evaluation


def test_feature_functions_refuse_a_dino_model_and_name_its_teacher_backbone():
    dino = tiny_dino()
    x = np.zeros((2, 32, 32, 3), "float32")
    for fn in (dense_features.cls_features, dense_features.patch_features,
               dense_features.mean_patch_features, dense_features.last_blocks_cls,
               dense_features.block_output):
        with pytest.raises(errors.WrongModelError) as info:
            fn(dino, x)
        assert isinstance(info.value, TypeError)
        _short(info.value, f"keras_dino.evaluation.{fn.__name__} takes a backbone",
               "not a DINO training model", "model.teacher.backbone")
    with pytest.raises(errors.WrongModelError, match="model.teacher.backbone"):
        extract_features(dino, (x, np.arange(2)), verbose=0)
    wrapper = MultiCropWrapper(vit_tiny(16, depth=1), DINOHead(192, 8))
    with pytest.raises(errors.WrongModelError) as info:
        dense_features.cls_features(wrapper, x)
    _short(info.value, "MultiCropWrapper", "wrapper.backbone")
    # What the message says to pass works.
    features = dense_features.cls_features(dino.teacher.backbone, x)
    assert tuple(features.shape) == (2, 16)


def test_attention_functions_name_the_backbones_that_have_attention():
    """A ResNet (no self-attention) or a DINO training model into the attention functions:
    a WrongModelError naming the fix, not an AttributeError ('patch_grid')."""
    from keras_dino.evaluation.attention_maps import cls_attention_maps, save_attention_examples
    from keras_dino.evaluation.attention_segmentation import attention_segmentation_masks
    from keras_dino.evaluation.video_attention import frame_attention

    resnet = _backbone("resnet")
    image = np.zeros((32, 32, 3), "float32")
    for call, what in ((lambda: cls_attention_maps(resnet, image), "attention maps"),
                       (lambda: save_attention_examples(resnet, [], "unused"), "attention maps"),
                       (lambda: attention_segmentation_masks(resnet, image), "segmentation"),
                       (lambda: frame_attention(resnet, image), "attention videos")):
        with pytest.raises(errors.WrongModelError) as info:
            call()
        _short(info.value, what, "a ResNet has none: use a Vision Transformer or an XCiT")
    dino = keras_dino.DINO(arch="vit_t", patch_size=8, out_dim=16, epochs=1,
                           vit_kwargs=dict(embed_dim=16, depth=1, num_heads=2),
                           head_kwargs=dict(hidden_dim=16, bottleneck_dim=8))
    with pytest.raises(errors.WrongModelError, match=r"pass its teacher backbone "
                       r"\(model.teacher.backbone\)"):
        cls_attention_maps(dino, image)


def test_dense_features_refuse_raw_pixels():
    with pytest.raises(errors.InputError, match="got uint8 images"):
        dense_features.cls_features(vit_tiny(16, depth=1), np.zeros((1, 32, 32, 3), "uint8"))


# -------------------------------------------------------------------------- data


@pytest.mark.tf_only
def test_missing_relative_folder_is_not_a_screen_of_tfds_names(tmp_path, monkeypatch):
    from keras_dino.data import multicrop_dataset

    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.DataSourceNotFoundError) as info:
        multicrop_dataset("my_photoz", 8)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    message = _short(info.value, "no folder 'my_photoz'", str(tmp_path), "'tfds:<name>'")
    assert info.value.__suppress_context__  # the TFDS listing is not chained either
    with pytest.raises(errors.DataSourceNotFoundError) as info:
        multicrop_dataset("tfds:my_photoz", 8)
    _short(info.value, "TFDS has no data set 'my_photoz'", "tfds_data_dir=")
    with pytest.raises(FileNotFoundError) as info:
        multicrop_dataset("photos/my_photoz", 8)
    _short(info.value, "'photos/my_photoz'")
    assert message
