"""keras_dino: DINO self-supervised Vision Transformers for Keras 3.

Example:

```python
import keras_dino

keras_dino.list_presets()  # the released weights: names, sizes, ImageNet accuracy
model = keras_dino.load_pretrained("dino_vits16")
features = model(keras_dino.preprocess_images(images))
```
"""

from keras_dino import callbacks, errors, evaluation, layers, models, optim, training
from keras_dino.checkpoints.pretrained import PRESETS, load_pretrained
from keras_dino.evaluation.classifier import load_pretrained_classifier
from keras_dino.models import (
    DINOHead,
    MultiCropWrapper,
    Preset,
    ResNet,
    VisionTransformer,
    XCiT,
    list_presets,
    vit_base,
    vit_small,
    vit_tiny,
)
from keras_dino.preprocessing import normalize_images, preprocess_images
from keras_dino.training.dino import DINO
from keras_dino.version import __version__


def __getattr__(name):
    # The input pipeline and the export need TensorFlow: imported on first use, not with
    # the package, so the JAX and torch backends do not load it until then.
    import importlib

    if name in ("data", "export"):
        module = importlib.import_module(f"keras_dino.{name}")
        globals()[name] = module
        return module
    if name == "export_saved_model":
        return importlib.import_module("keras_dino.export").export_saved_model
    raise AttributeError(f"module 'keras_dino' has no attribute {name!r}")

__all__ = [
    "DINO",
    "PRESETS",
    "DINOHead",
    "MultiCropWrapper",
    "Preset",
    "ResNet",
    "VisionTransformer",
    "XCiT",
    "__version__",
    "callbacks",
    "data",
    "errors",
    "evaluation",
    "export",
    "export_saved_model",
    "training",
    "layers",
    "list_presets",
    "load_pretrained",
    "load_pretrained_classifier",
    "models",
    "normalize_images",
    "optim",
    "preprocess_images",
    "vit_base",
    "vit_small",
    "vit_tiny",
]
