"""DINO multi-crop input pipeline: `tf.data` on the host, Keras ops on the accelerator.

Full host pipeline (float32 normalised crops):

>>> from keras_dino.data import multicrop_dataset
>>> ds = multicrop_dataset("../shared/images", batch_size=2, seed=0)  # doctest: +SKIP

Split mode (uint8 crops from the host, photometric part inside the compiled step):

>>> from keras_dino.data import MultiCropPhotometric
>>> ds = multicrop_dataset("../shared/images", batch_size=2, split=True)  # doctest: +SKIP
>>> crops = MultiCropPhotometric()(next(iter(ds)))  # doctest: +SKIP

`MultiCropPhotometric` needs only Keras (any backend); the rest needs TensorFlow, which is
imported on first use of those names.
"""

from __future__ import annotations

import importlib

from keras_dino.data.config import PhotometricConfig, ViewSpec, dino_views
from keras_dino.data.photometric import MultiCropPhotometric

_LAZY = {
    "DataAugmentationDINO": "keras_dino.data.augment",
    "sample_photometric_params": "keras_dino.data.augment",
    "multicrop_dataset": "keras_dino.data.pipeline",
    "MultiCropInfo": "keras_dino.data.pipeline",
    "detect_source_type": "keras_dino.data.source_datasets",
    "read_image_list": "keras_dino.data.source_datasets",
    "list_image_files": "keras_dino.data.sources",
    "ImageFolderListing": "keras_dino.data.sources",
    "decode_image": "keras_dino.data.sources",
    "scan_images": "keras_dino.data.sources",
    "ScanResult": "keras_dino.data.sources",
    "IMAGE_EXTENSIONS": "keras_dino.data.sources",
    "ops": "keras_dino.data.ops",
}

__all__ = [
    "DataAugmentationDINO",
    "IMAGE_EXTENSIONS",
    "ImageFolderListing",
    "MultiCropInfo",
    "MultiCropPhotometric",
    "PhotometricConfig",
    "ScanResult",
    "ViewSpec",
    "decode_image",
    "detect_source_type",
    "dino_views",
    "list_image_files",
    "multicrop_dataset",
    "read_image_list",
    "sample_photometric_params",
    "scan_images",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_dino.data' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "ops" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
