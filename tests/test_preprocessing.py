"""`keras_dino.preprocess_images` and `normalize_images`, against numpy. Every backend."""

import numpy as np
import pytest
from keras import ops

import keras_dino
from keras_dino.preprocessing import IMAGENET_MEAN, IMAGENET_STD

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def _np(x):
    return ops.convert_to_numpy(x)


def _normalise(u8):
    """torchvision ToTensor + Normalize, in float32 (the fixtures' recipe)."""
    return ((np.asarray(u8, np.float32) / np.float32(255) - MEAN) / STD).astype(np.float32)


def test_imagenet_statistics():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_normalize_images_is_the_official_arithmetic():
    u8 = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)
    x = _np(keras_dino.normalize_images(u8))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, _normalise(u8))


@pytest.mark.parametrize("shape", [(300, 400, 3), (2, 512, 384, 3)])
def test_constant_image_gives_the_exact_normalised_constant(shape):
    value = 137
    images = np.full(shape, value, np.uint8)
    x = _np(keras_dino.preprocess_images(images))
    assert x.shape == shape[:-3] + (224, 224, 3) and x.dtype == np.float32
    # Every interpolation weight set sums to 1, and the result is rounded like PIL's
    # uint8 output, so the resize keeps the constant exactly.
    expected = np.broadcast_to(_normalise(np.full(3, value, np.uint8)), x.shape)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("height, width", [(256, 320), (320, 256), (256, 256)])
def test_center_crop_without_resize(height, width):
    """The shorter side is already 256: no resize, the crop is the exact center slice."""
    u8 = np.random.default_rng(1).integers(0, 256, (height, width, 3), np.uint8)
    x = _np(keras_dino.preprocess_images(u8, size=224))
    # torchvision CenterCrop: top = round((H - 224) / 2), left = round((W - 224) / 2).
    top, left = int(round((height - 224) / 2.0)), int(round((width - 224) / 2.0))
    np.testing.assert_array_equal(x, _normalise(u8[top : top + 224, left : left + 224]))
    # The same through the batch path.
    batch = _np(keras_dino.preprocess_images(np.stack([u8, u8[::-1]])))
    np.testing.assert_array_equal(batch[0], x)
    np.testing.assert_array_equal(
        batch[1], _normalise(u8[::-1][top : top + 224, left : left + 224])
    )


def test_custom_size_and_resize_size():
    u8 = np.random.default_rng(2).integers(0, 256, (100, 130, 3), np.uint8)
    # Shorter side already equal to resize_size: only the crop of 96 at (2, 17).
    x = _np(keras_dino.preprocess_images(u8, size=96, resize_size=100))
    np.testing.assert_array_equal(x, _normalise(u8[2:98, 17:113]))
    # The default resize size is size * 256 / 224 (110 for 96): this image is resized.
    assert _np(keras_dino.preprocess_images(u8, size=96)).shape == (96, 96, 3)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((300, 451, 3), (224, 224, 3)),  # landscape, single image
        ((451, 300, 3), (224, 224, 3)),  # portrait
        ((3, 200, 150, 3), (3, 224, 224, 3)),  # a batch, upscaled
        ((1, 480, 640, 3), (1, 224, 224, 3)),
    ],
)
def test_output_shapes(shape, expected):
    images = np.random.default_rng(3).integers(0, 256, shape, np.uint8)
    x = _np(keras_dino.preprocess_images(images))
    assert x.shape == expected and x.dtype == np.float32
    # Values stay within the normalised range of 0..255 pixels.
    assert np.all(x >= _normalise(np.zeros(3)) - 1e-6) and np.all(
        x <= _normalise(np.full(3, 255)) + 1e-6
    )


def test_float_images_are_accepted():
    u8 = np.random.default_rng(4).integers(0, 256, (256, 300, 3), np.uint8)
    np.testing.assert_array_equal(
        _np(keras_dino.preprocess_images(u8.astype(np.float32))),
        _np(keras_dino.preprocess_images(u8)),
    )


def test_a_list_of_images_of_different_sizes_is_one_batch():
    """Photos as they come (each its own size): each is resized and cropped, then stacked."""
    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 256, shape, np.uint8) for shape in ((100, 120, 3), (80, 90, 3))]
    batch = _np(keras_dino.preprocess_images(photos, size=64))
    assert batch.shape == (2, 64, 64, 3)
    for image, row in zip(photos, batch):
        np.testing.assert_array_equal(row, _np(keras_dino.preprocess_images(image, size=64)))
    with pytest.raises(ValueError, match=r"a list of images holds \(H, W, 3\) images"):
        keras_dino.preprocess_images([photos[0], photos[1][None]])


@pytest.mark.parametrize(
    "shape",
    [(256, 256), (256, 256, 4), (2, 256, 256, 1), (256,), (1, 2, 256, 256, 3)],
)
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"RGB images \(H, W, 3\) or \(B, H, W, 3\)"):
        keras_dino.preprocess_images(np.zeros(shape, np.uint8))


def test_crop_larger_than_the_resized_image_raises():
    with pytest.raises(ValueError, match="too small to crop 224x224"):
        keras_dino.preprocess_images(np.zeros((300, 300, 3), np.uint8), resize_size=200)


def test_eval_config_gives_the_official_pil_pixels(tmp_path):
    """EvalConfig.load is torchvision's eval transform on PIL images, pixel for pixel."""
    import pathlib

    from conftest import IMAGES
    from PIL import Image

    from keras_dino.preprocessing import EvalConfig

    photos = sorted(pathlib.Path(IMAGES).glob("*.jpg"))
    assert photos
    config = EvalConfig(224)
    for photo in photos[:2]:
        image = Image.open(photo).convert("RGB")
        w, h = image.size
        new_h, new_w = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
        resized = np.asarray(image.resize((new_w, new_h), Image.BICUBIC), np.float32)
        top, left = round((new_h - 224) / 2.0), round((new_w - 224) / 2.0)
        crop = resized[top : top + 224, left : left + 224] / np.float32(255)
        mean = np.float32([0.485, 0.456, 0.406])
        std = np.float32([0.229, 0.224, 0.225])
        np.testing.assert_array_equal(config.load(photo), (crop - mean) / std)
    assert config.to_dict()["decoder"] == "PIL"
    with pytest.raises(ValueError, match="smaller than size"):
        EvalConfig(224, resize_size=200)
