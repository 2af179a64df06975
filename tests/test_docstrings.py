"""The docstring examples of the public modules run, under the current backend.

Every backend's CI process runs this file, so an example that only works on one backend
(or that no longer matches the API) fails here.
"""

import doctest
import importlib
import inspect
import pkgutil

import keras
import pytest

import keras_dino.layers
import keras_dino.models

# Runs in one backend's process (tests/conftest.py): the examples document the API; the backends' own behaviour is tested elsewhere.
pytestmark = pytest.mark.once

MODULES = sorted(
    [f"keras_dino.layers.{m.name}" for m in pkgutil.iter_modules(keras_dino.layers.__path__)]
    + [f"keras_dino.models.{m.name}" for m in pkgutil.iter_modules(keras_dino.models.__path__)]
    + [
        "keras_dino.preprocessing",
        "keras_dino.errors",
        "keras_dino.data.augment",
        "keras_dino.data.config",
        "keras_dino.data.ops",
        "keras_dino.data.photometric",
        "keras_dino.data.pipeline",
        "keras_dino.data.source_datasets",
        "keras_dino.data.sources",
        "keras_dino.checkpoints.official",
        "keras_dino.checkpoints.pretrained",
        "keras_dino.checkpoints.teacher",
        "keras_dino.checkpoints.weights",
        "keras_dino.checkpoints.converters",
        "keras_dino.checkpoints.converters.base",
        "keras_dino.checkpoints.converters.resnet",
        "keras_dino.checkpoints.converters.vit",
        "keras_dino.checkpoints.converters.xcit",
        "keras_dino.optim.optimizers",
        "keras_dino.optim.schedules",
        "keras_dino.training.hparams",
        "keras_dino.training.inputs",
        "keras_dino.training.launch",
        "keras_dino.losses",
        "keras_dino.evaluation.attention_maps",
        "keras_dino.evaluation.attention_segmentation",
        "keras_dino.evaluation.classifier",
        "keras_dino.evaluation.copy_detection",
        "keras_dino.evaluation.retrieval",
        "keras_dino.evaluation.video_segmentation",
        "keras_dino.evaluation.datasets",
        "keras_dino.evaluation.davis",
        "keras_dino.evaluation.dense_features",
        "keras_dino.evaluation.feature_maps",
        "keras_dino.evaluation.feature_shards",
        "keras_dino.evaluation.features",
        "keras_dino.evaluation.knn",
        "keras_dino.evaluation.linear",
        "keras_dino.evaluation.video_attention",
        "keras_dino.export.options",
        "keras_dino.export.tf_serving",
    ]
)

# Modules whose every public function, class and method must carry an example: the
# foundation (layers, backbone, head, preprocessing, official weights). The `DINO`
# training model overrides Keras' own training API, documented by Keras.
EXAMPLE_REQUIRED = [
    m
    for m in MODULES
    if m.startswith(("keras_dino.layers.", "keras_dino.models.", "keras_dino.checkpoints."))
    and m != "keras_dino.training.dino"
    or m == "keras_dino.preprocessing"
]
# Keras hooks documented by Keras itself.
_KERAS_HOOKS = {
    "build",
    "call",
    "compute_output_shape",
    "compute_output_spec",
    "from_config",
    "get_config",
}


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    previous = keras.mixed_precision.dtype_policy()
    report = []
    try:
        for test in finder.find(module, module_name, globs=dict(vars(module))):
            runner.run(test, out=report.append)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


def _public_objects(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            yield name, obj
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in _KERAS_HOOKS or not inspect.isfunction(member):
                    continue
                yield f"{name}.{attr}", member


@pytest.mark.parametrize("module_name", EXAMPLE_REQUIRED)
def test_public_api_has_docstrings_with_examples(module_name):
    module = importlib.import_module(module_name)
    missing = [
        name
        for name, obj in _public_objects(module)
        if ">>>" not in (inspect.getdoc(obj) or "") and "```python" not in (obj.__doc__ or "")
    ]
    assert not missing, f"{module_name}: no docstring example for {', '.join(missing)}"
