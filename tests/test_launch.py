"""keras_dino.training.launch: the distribution a training script sets up once.

The multi-process behaviour (two workers, two JAX processes, a lost worker) is
tests/test_multiprocess.py's; here, one process: what `Launch` decides and refuses.
"""

import os

import keras
import numpy as np
import pytest

from keras_dino.training.launch import Launch, undistributed


def test_default_is_one_device_that_is_the_chief():
    launch = Launch.start()
    assert (launch.strategy, launch.replicas, launch.chief) == (None, 1, True)
    assert not launch.distributed and not launch.multi_process
    assert launch.input_context is None
    seen = []
    assert launch.dataset(lambda ctx: seen.append(ctx) or "the dataset") == "the dataset"
    assert seen == [None]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="horovod"), "unknown strategy 'horovod'"),
        (dict(distribution="model_parallel"), "unknown distribution 'model_parallel'"),
        (dict(strategy="mirrored", distribution="data_parallel"), "exclude each other"),
        (dict(jax_multiprocess=True), "jax_multiprocess needs the JAX backend"),
    ],
)
def test_impossible_combinations_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Launch.start(**kwargs)


def test_each_backend_keeps_its_own_distribution_api():
    if keras.backend.backend() == "jax":
        with pytest.raises(ValueError, match="needs the TensorFlow backend"):
            Launch.start("mirrored")
    else:
        with pytest.raises(ValueError, match="is for the JAX backend"):
            Launch.start(distribution="data_parallel")


@pytest.mark.tf_only
def test_tpu_strategy_needs_a_tpu():
    with pytest.raises(ValueError, match="needs a TPU"):
        Launch.start("tpu")


@pytest.mark.tf_only
def test_mirrored_strategy_feeds_an_endless_static_dataset():
    import tensorflow as tf

    launch = Launch.start("mirrored")
    assert launch.distributed and launch.chief and launch.replicas >= 1
    assert isinstance(launch.strategy, tf.distribute.MirroredStrategy)

    def make(ctx):
        # Unknown cardinality (a filter), as a pipeline that skips unreadable files.
        data = tf.data.Dataset.from_tensor_slices(np.arange(8.0)).filter(lambda x: x >= 0)
        return data.repeat().batch(2, drop_remainder=True)

    dataset = launch.dataset(make)
    assert isinstance(dataset, tf.distribute.DistributedDataset)
    specs = tf.nest.flatten(dataset.element_spec, expand_composites=True)
    assert specs and all(s.shape[0] is not None for s in specs)  # static batch dimension
    batch = launch.strategy.experimental_local_results(next(iter(dataset)))
    assert [int(b.shape[0]) for b in batch] == [2] * launch.replicas
    with launch.scope():
        variable = keras.Variable(1.0)
    assert "Mirrored" in type(variable.value).__name__


@pytest.mark.backends("jax")
def test_jax_data_parallel_uses_every_device_and_shards_nothing_on_one_process():
    import jax

    previous = keras.distribution.distribution()
    try:
        launch = Launch.start(distribution="data_parallel")
        assert launch.replicas == jax.device_count() == 2
        assert launch.chief and launch.distributed and not launch.multi_process
        assert launch.input_context is None
        current = keras.distribution.distribution()
        assert isinstance(current, keras.distribution.DataParallel)
        with undistributed():
            assert keras.distribution.distribution() is None
        assert keras.distribution.distribution() is current
    finally:
        keras.distribution.set_distribution(previous)


def test_steps_per_epoch_is_full_global_batches_of_every_shard():
    assert Launch.steps_per_epoch(1000, 64) == 15
    # 2 pipelines of 500 images, 32 each per step: 15 full steps each.
    assert Launch.steps_per_epoch(1000, 64, num_pipelines=2) == 15
    assert Launch.steps_per_epoch(130, 64, num_pipelines=2) == 2
    with pytest.raises(ValueError, match="63 images make no full global batch of 64"):
        Launch.steps_per_epoch(63, 64)


def _fit_tiny(callback, epochs=2):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 3), "float32")
    model.fit(x, x[:, :1], epochs=epochs, batch_size=4, verbose=0, callbacks=[callback])
    return model


def test_only_the_chief_writes_backups(tmp_path):
    worker = tmp_path / "worker"
    _fit_tiny(Launch(chief=False).backup_callback(str(worker)), epochs=1)
    assert not worker.exists()

    chief = tmp_path / "chief"

    class Look(keras.callbacks.Callback):
        files = []

        def on_epoch_end(self, epoch, logs=None):
            Look.files.append(sorted(os.listdir(chief)) if chief.exists() else [])

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 3), "float32")
    backup = Launch(chief=True).backup_callback(str(chief))
    model.fit(x, x[:, :1], epochs=2, batch_size=4, verbose=0, callbacks=[backup, Look()])
    assert "training_metadata.json" in Look.files[-1]
    assert not chief.exists()  # deleted once training is done


def test_fail_fast_reraises_in_one_process():
    with pytest.raises(RuntimeError, match="boom"):
        with Launch().fail_fast():
            raise RuntimeError("boom")


def test_local_copy_is_the_model_itself_outside_multi_process_runs():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert Launch().local_copy(model, build=lambda: pytest.fail("no copy needed")) is model


def test_local_copy_carries_every_weight_into_a_fresh_model():
    def build():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    model = build()
    model.layers[0].kernel.assign(np.arange(6.0).reshape(3, 2))
    previous = keras.distribution.distribution()
    try:
        copy = Launch(multi_process=True).local_copy(model, build)
    finally:
        keras.distribution.set_distribution(previous)
    assert copy is not model
    for a, b in zip(copy.weights, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
