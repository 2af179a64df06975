"""keras_dino: DINO self-supervised Vision Transformers for Keras 3.

Example:

```python
import keras_dino

keras_dino.list_presets()  # the released weights: names, sizes, ImageNet accuracy
model = keras_dino.load_pretrained("dino_vits16")
features = model(keras_dino.preprocess_images(images))
```
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

from keras_dino.version import __version__

if TYPE_CHECKING:  # what the names below are, for type checkers and the API reference
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
    from keras_dino.training.hparams import DINOConfig

# The public API is imported on first use, not with the package: Keras fixes its backend
# when it is first imported, and the command-line tools (keras_dino.cli) choose it from
# their `--backend` flag after `import keras_dino` has run. The first name used imports
# the Keras part of the library (every model and layer registers for `keras.saving`);
# `data` and `export`, which import TensorFlow, wait until they are used themselves, so
# the JAX and torch backends do not load TensorFlow until then.
_CORE = ("callbacks", "errors", "evaluation", "layers", "models", "optim", "training")
_NAMES = {
    "PRESETS": "keras_dino.checkpoints.pretrained",
    "load_pretrained": "keras_dino.checkpoints.pretrained",
    "load_pretrained_classifier": "keras_dino.evaluation.classifier",
    "DINOHead": "keras_dino.models",
    "MultiCropWrapper": "keras_dino.models",
    "Preset": "keras_dino.models",
    "ResNet": "keras_dino.models",
    "VisionTransformer": "keras_dino.models",
    "XCiT": "keras_dino.models",
    "list_presets": "keras_dino.models",
    "vit_base": "keras_dino.models",
    "vit_small": "keras_dino.models",
    "vit_tiny": "keras_dino.models",
    "normalize_images": "keras_dino.preprocessing",
    "preprocess_images": "keras_dino.preprocessing",
    "DINO": "keras_dino.training.dino",
    "DINOConfig": "keras_dino.training.hparams",
}


def _load_core():
    for name in _CORE:
        globals()[name] = importlib.import_module(f"keras_dino.{name}")
    for name, module in _NAMES.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
    if name in _CORE or name in _NAMES:
        _load_core()
        return globals()[name]
    if name in ("data", "export"):
        module = importlib.import_module(f"keras_dino.{name}")
        globals()[name] = module
        return module
    if name == "export_saved_model":
        return importlib.import_module("keras_dino.export").export_saved_model
    if not name.startswith("_") and importlib.util.find_spec(f"keras_dino.{name}"):
        _load_core()  # a submodule (`keras_dino.checkpoints`, ...), as with eager imports
        return importlib.import_module(f"keras_dino.{name}")
    raise AttributeError(f"module 'keras_dino' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DINO",
    "DINOConfig",
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
