"""keras_dino: DINO self-supervised Vision Transformers for Keras 3.

Example:

```python
import keras_dino

model = keras_dino.load_pretrained("dino_vits16")
features = model(keras_dino.preprocess_images(images))
```
"""

from keras_dino import layers, models
from keras_dino.checkpoints.pretrained import PRESETS, load_pretrained
from keras_dino.models import (
    DINOHead,
    MultiCropWrapper,
    VisionTransformer,
    vit_base,
    vit_small,
    vit_tiny,
)
from keras_dino.preprocessing import normalize_images, preprocess_images
from keras_dino.version import __version__

__all__ = [
    "PRESETS",
    "DINOHead",
    "MultiCropWrapper",
    "VisionTransformer",
    "__version__",
    "layers",
    "load_pretrained",
    "models",
    "normalize_images",
    "preprocess_images",
    "vit_base",
    "vit_small",
    "vit_tiny",
]
