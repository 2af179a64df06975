"""Running the ONNX and LiteRT exports from Python, with named errors for bad images.

`OnnxFeatureExtractor(path)` (ONNX Runtime) and `LiteRTFeatureExtractor(path)` (the
LiteRT interpreter) take a batch `[B, H, W, 3]` (or one image `[H, W, 3]`) of raw RGB
pixels in the export's input dtype and return `{output name: numpy array}`. Before
running, they check the images and raise:

* `ImageChannelsError` for an array that is not RGB `[..., H, W, 3]` (grayscale, RGBA,
  channels-first);
* `ImageDtypeError` for a dtype other than the export's (`uint8` or `float32`);
* `ImageSizeError` for a height and width the file was not exported for (LiteRT, and ONNX
  exported with a fixed `image_size`), or smaller than one patch.

All three are `InvalidImagesError`s, itself a `ValueError` (`ImageDtypeError` is also a
`TypeError`).
"""

import pathlib

import numpy as np


class InvalidImagesError(ValueError):
    """Images an export cannot take."""


class ImageChannelsError(InvalidImagesError):
    """The array is not RGB channels-last `[..., H, W, 3]`."""


class ImageDtypeError(InvalidImagesError, TypeError):
    """The array's dtype is not the export's input dtype."""


class ImageSizeError(InvalidImagesError):
    """The height and width are not ones the export takes."""


class _FeatureExtractor:
    kind = ""

    def __init__(self, path):
        from keras_dino.export.metadata import load_metadata

        self.path = str(path)
        self.metadata = load_metadata(path)
        pre = self.metadata["preprocessing"]
        self.input_dtype = np.dtype(pre["input_dtype"])
        self.image_size = self.metadata.get("image_size")
        self.patch_size = self.metadata["model"].get("patch_size") or 1
        outputs = self.metadata["signatures"]["serving_default"]["outputs"]
        self.output_names = list(outputs)

    def check_images(self, images) -> np.ndarray:
        """`images` as a `[B, H, W, 3]` array, or a named `InvalidImagesError`."""
        images = np.asarray(images)
        size = (f"{self.image_size}x{self.image_size}" if self.image_size
                else "any height and width")
        expected = (f"{self.kind} export {pathlib.Path(self.path).name} takes RGB images "
                    f"[batch, H, W, 3] (NHWC, {size}) of raw {self.input_dtype} pixel "
                    "values 0..255")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            hint = ""
            if images.ndim == 4 and images.shape[1] == 3:
                hint = " (channels-first? transpose to NHWC)"
            elif images.ndim in (2, 3) or (images.ndim == 4 and images.shape[-1] in (1, 4)):
                hint = " (grayscale or RGBA? convert to RGB)"
            raise ImageChannelsError(f"{expected}; got shape {images.shape}{hint}.")
        if images.dtype != self.input_dtype:
            raise ImageDtypeError(
                f"{expected}; got dtype {images.dtype}. Convert with "
                f"images.astype('{self.input_dtype}') (values 0..255, not normalised).")
        height, width = images.shape[1:3]
        if self.image_size and (height, width) != (self.image_size, self.image_size):
            raise ImageSizeError(
                f"{expected}; got {height}x{width}. This file was exported for "
                f"{self.image_size}x{self.image_size}: resize or crop the images, or export "
                "again with that image_size (ONNX: image_size=None takes any size).")
        if min(height, width) < self.patch_size:
            raise ImageSizeError(f"{expected}; got {height}x{width}, smaller than one patch "
                                 f"({self.patch_size} pixels).")
        return images

    def __call__(self, images) -> dict:
        return self._run(self.check_images(images))


class OnnxFeatureExtractor(_FeatureExtractor):
    """Runs an ONNX export of keras_dino with ONNX Runtime.

    Args:
        path: the `.onnx` file.
        providers: ONNX Runtime execution providers (default: CPU).
        num_threads: intra-op threads (default: ONNX Runtime's).

    Example:

    ```python
    extractor = OnnxFeatureExtractor("exports/dino.onnx")
    extractor(np.zeros((2, 480, 320, 3), np.uint8))["cls_embedding"].shape   # (2, 384)
    ```
    """

    kind = "ONNX"

    def __init__(self, path, providers=None, num_threads: int | None = None):
        super().__init__(path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(
            self.path, options, providers=providers or ["CPUExecutionProvider"])

    def _run(self, images):
        values = self.session.run(self.output_names, {"images": images})
        return dict(zip(self.output_names, values))


def litert_interpreter(path, num_threads: int | None = None):
    """A LiteRT interpreter of the file: `ai_edge_litert`'s, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)


class LiteRTFeatureExtractor(_FeatureExtractor):
    """Runs a LiteRT (TFLite) export of keras_dino with the LiteRT interpreter.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads (default: the interpreter's).

    Example:

    ```python
    extractor = LiteRTFeatureExtractor("exports/dino.tflite")
    extractor(np.zeros((2, 224, 224, 3), np.uint8))["cls_embedding"].shape   # (2, 384)
    ```
    """

    kind = "LiteRT"

    def __init__(self, path, num_threads: int | None = None):
        super().__init__(path)
        self.interpreter = litert_interpreter(path, num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def _run(self, images):
        outputs = self.runner(images=images)
        return {name: np.array(outputs[name]) for name in self.output_names}


def load_feature_extractor(path, **kwargs):
    """`OnnxFeatureExtractor` or `LiteRTFeatureExtractor`, by the file's suffix."""
    suffix = pathlib.Path(path).suffix
    if suffix == ".onnx":
        return OnnxFeatureExtractor(path, **kwargs)
    if suffix == ".tflite":
        return LiteRTFeatureExtractor(path, **kwargs)
    raise ValueError(f"{path}: not an ONNX (.onnx) or LiteRT (.tflite) export.")
