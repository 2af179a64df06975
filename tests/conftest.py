"""Shared test helpers: where the official fixtures live and which backend runs."""

import atexit
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

# Two host devices for the distribution tests, set before any backend initialises:
# XLA (JAX) reads this flag at start-up; TensorFlow's CPU is split in pytest_configure.
if os.environ.get("KERAS_BACKEND") == "jax" and "xla_force_host_platform_device_count" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()

# JAX compiles each new step function with XLA, most of the JAX tests' time. Many tests
# build the same small network and compile the same program: XLA's compilation cache
# gives them the executable compiled the first time (the same program, so the same
# numbers). The cache lives for this test run only (scripts/test.sh shares one between
# its processes); subprocesses that run a tool with JAX inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="keras_dino_jax_cache.")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
# Only programs that took a second or more to compile (training steps, whole forward
# passes) are written: JAX's eager mode compiles each operation at each new shape
# (~40 ms each, 1,136 of them in test_xcit.py's parity test), and writing those too cost
# more than reading them back saved. Measured under JAX on test_resnet.py, test_models.py
# and test_dino_training.py: 277 and 291 s of CPU time with this threshold (18 files written),
# 306 s writing every program (1,642 files), 308 s without the cache.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_dino"
IMAGES = SHARED / "images"
DATASETS = SHARED / "datasets"


def pytest_configure(config):
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(cpu) or []) < 2:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )


def pytest_report_header(config):
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()}, shared {SHARED}"


# The process that runs the `once` tests when one process runs per backend: scripts/test.sh
# sets torch's, the shortest (no step compilation). Unset (one pytest process, a Bazel
# test), they run in the process there is.
ONCE_BACKEND = os.environ.get("KERAS_DINO_ONCE_BACKEND")


def _runs_here(item, backend):
    tf_only = item.get_closest_marker("tf_only") is not None
    if tf_only and backend != "tensorflow":
        return False
    once_process = ONCE_BACKEND is None or backend == ONCE_BACKEND
    if item.get_closest_marker("once") and not tf_only:
        return once_process
    marker = item.get_closest_marker("backends")
    if item.get_closest_marker("slow"):
        # Once per CI run, not once per backend: in the first backend it names, else in
        # the process of the `once` tests (any process if unset). torch runs them without
        # compiling a step: the slow tests of 12 files took 110 s in the TensorFlow
        # process, the longest of the three, and take about 50 s in torch's.
        if marker:
            return backend == marker.args[0]
        return tf_only or once_process
    return marker is None or backend in marker.args


def pytest_collection_modifyitems(config, items):
    """Each backend's CI process runs the tests that apply to it.

    `tf_only` tests need TensorFlow itself (tf.data, tf.distribute, SavedModel) and run
    in the TensorFlow process; `backends(...)` names the backends a test is about (for
    example `steps_per_execution > 1`, which Keras' torch trainer does not have); `slow`
    tests, long end-to-end runs where a second backend adds nothing, run in one process
    only (the first of their `backends`, else with the `once` tests); `once` tests
    assert what no backend changes (documentation, import structure, command-line
    parsing, files read with numpy, tools run in a subprocess with their own backend)
    and run in the process of `KERAS_DINO_ONCE_BACKEND` only (scripts/test.sh: torch),
    in any process if unset.
    """
    import keras

    backend = keras.backend.backend()
    deselected = [item for item in items if not _runs_here(item, backend)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if _runs_here(item, backend)]


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        raise FileNotFoundError(
            f"official fixtures not found at {FIXTURES}; set KERAS_DINO_SHARED to the shared/ folder"
        )
    return FIXTURES


def _normalised(u8):
    """uint8 NHWC images as the official tools normalise them, float32."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((u8.astype(np.float32) / np.float32(255) - mean) / std).astype(np.float32)


@pytest.fixture(scope="session")
def zoo_dir(fixtures_dir):
    """`../shared/fixtures/official_dino_zoo/`: ResNet, XCiT and linear-classifier fixtures."""
    return fixtures_dir.parent / "official_dino_zoo"


@pytest.fixture(scope="session")
def zoo_inputs(zoo_dir):
    """The zoo fixtures' images at 224x224, 96x96, 64x64 and 96x64, normalised, NHWC."""
    data = np.load(zoo_dir / "inputs.npz")
    return {size: _normalised(data[f"{size}/uint8_nhwc"])
            for size in ("224x224", "96x96", "64x64", "96x64")}


@pytest.fixture(scope="session")
def official_inputs(fixtures_dir):
    """The fixture images, normalised exactly as the official tools do, NHWC float32."""
    data = np.load(fixtures_dir / "inputs.npz")
    return {size: _normalised(data[f"{size}/uint8_nhwc"])
            for size in ("224x224", "96x96", "480x320")}
