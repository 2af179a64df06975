"""Where a training run executes: one device, a `tf.distribute` strategy, or a JAX mesh.

`Launch.start(...)` sets the distribution up once, before a model is built, and the
returned object answers what a training script must know afterwards: the number of
replicas (the official global batch is `batch_size_per_gpu * replicas`), whether this
process is the chief (the one that writes logs and checkpoints), the scope to build the
model in, how to feed it a dataset, and the chief-only backup callback for
`keras.callbacks.BackupAndRestore` resumption. The strategies are TensorFlow's
(`mirrored`, `multi_worker`, `tpu`) and Keras' (`keras.distribution.DataParallel` on
JAX, optionally over several processes after `jax.distributed.initialize`).

TensorFlow is imported only for the TensorFlow strategies and for the input shards of a
multi-process JAX run.
"""

import contextlib
import os
import sys

import keras

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _tf_strategy(strategy, tpu, collective_timeout):
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"strategy '{strategy}' needs the TensorFlow backend (got "
            f"{keras.backend.backend()}); on JAX use distribution='data_parallel'."
        )
    import tensorflow as tf

    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multi_worker":
        # Cluster and task from TF_CONFIG; a lost worker fails the others' collectives
        # (after `collective_timeout` seconds at most) instead of leaving them waiting.
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout or None
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if not tpu:
        raise ValueError("strategy 'tpu' needs a TPU: a name, grpc://host:8470, or 'local'.")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _jax_data_parallel(multi_process, jax_distributed_kwargs):
    if keras.backend.backend() != "jax":
        raise ValueError(
            "distribution 'data_parallel' is for the JAX backend; on TensorFlow use the "
            "strategies 'mirrored', 'multi_worker' or 'tpu'."
        )
    import jax

    if multi_process:
        jax.distributed.initialize(**jax_distributed_kwargs)
    # Every process feeds its own shard (`Launch.input_context`), so Keras must not
    # shard the per-process dataset again.
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(auto_shard_dataset=jax.process_count() == 1)
    )
    return jax.device_count()


@contextlib.contextmanager
def undistributed():
    """No `keras.distribution` inside: for what the chief alone does (saving checkpoints).

    Under a multi-process JAX distribution, creating or assigning a variable is a
    collective operation that every process must join; saving creates a few variables
    (Keras builds a throwaway optimizer), which must stay local to the chief.

    Example:

    >>> with undistributed():
    ...     print(keras.distribution.distribution())
    None
    """
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


class Launch:
    """The distribution of one training process, set up by `Launch.start`.

    Attributes:
        strategy: the `tf.distribute` strategy, or None.
        replicas: devices that share the global batch of one step.
        chief: whether this process writes the run's files (logs, checkpoints).
        distributed: several replicas or processes: datasets repeat endlessly with
            static batch shapes, and an epoch is a fixed number of steps.
        multi_process: JAX over several processes (`jax.distributed`).

    Example:

    >>> launch = Launch.start()
    >>> launch.replicas, launch.chief, launch.distributed
    (1, True, False)
    """

    def __init__(self, strategy=None, replicas=1, chief=True, distributed=False,
                 multi_process=False):
        self.strategy = strategy
        self.replicas = replicas
        self.chief = chief
        self.distributed = distributed
        self.multi_process = multi_process

    @classmethod
    def start(cls, strategy: str = "default", distribution: str | None = None,
              tpu: str | None = None, collective_timeout: int = 0,
              jax_multiprocess: bool = False, **jax_distributed_kwargs) -> "Launch":
        """Sets the distribution up; call it before building or seeding anything.

        Args:
            strategy: `default` (one device), `mirrored` (every local GPU),
                `multi_worker` (`MultiWorkerMirroredStrategy`, cluster from
                `TF_CONFIG`) or `tpu` (`TPUStrategy` on `tpu`); TensorFlow backend.
            distribution: `data_parallel` for `keras.distribution.DataParallel` on
                every device of every process (JAX backend), or None.
            tpu: for `strategy="tpu"`: a name, a `grpc://host:8470` address or `local`.
            collective_timeout: `multi_worker`: seconds after which a cross-worker
                collective fails instead of waiting for a lost worker (0: no limit).
            jax_multiprocess: call `jax.distributed.initialize(**jax_distributed_kwargs)`
                first (`coordinator_address`, `num_processes`, `process_id`, ...;
                auto-detected on TPU pods, SLURM and Open MPI when not given).

        Returns:
            The `Launch`. Raises `ValueError` on a combination that cannot run.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}.")
        if distribution not in (None, "data_parallel"):
            raise ValueError(f"unknown distribution '{distribution}'; known: data_parallel.")
        if strategy != "default" and distribution:
            raise ValueError("a tf.distribute strategy (TensorFlow) and a keras.distribution "
                             "(JAX) exclude each other.")
        if jax_multiprocess and (keras.backend.backend() != "jax" or not distribution):
            raise ValueError("jax_multiprocess needs the JAX backend and "
                             "distribution='data_parallel'.")
        if distribution:
            import jax

            replicas = _jax_data_parallel(jax_multiprocess, jax_distributed_kwargs)
            return cls(None, replicas, jax.process_index() == 0, True, jax_multiprocess)
        if strategy == "default":
            return cls()
        tf_strategy = _tf_strategy(strategy, tpu, collective_timeout)
        # TensorFlow's own rule (the `chief` task, or worker 0 when there is none).
        chief = bool(tf_strategy.extended.should_checkpoint)
        return cls(tf_strategy, tf_strategy.num_replicas_in_sync, chief, True)

    def scope(self):
        """The context to build and compile the model in."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    @property
    def input_context(self):
        """This JAX process's input shard (`tf.distribute.InputContext`), else None."""
        if not self.multi_process:
            return None
        import jax
        import tensorflow as tf

        return tf.distribute.InputContext(
            num_input_pipelines=jax.process_count(),
            input_pipeline_id=jax.process_index(),
            num_replicas_in_sync=jax.process_count(),
        )

    def dataset(self, make_dataset):
        """`make_dataset(input_context)` for every input pipeline, ready for `fit`.

        `input_context` is None on one process. When distributed, each pipeline must
        repeat its shard; the result is declared endless so that the batch dimension
        stays static (XLA and TPUs need static shapes).
        """

        def endless(input_context=None):
            dataset = make_dataset(input_context)
            if not self.distributed:
                return dataset
            import tensorflow as tf

            return dataset.apply(
                tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)
            )

        if self.strategy is not None:
            return self.strategy.distribute_datasets_from_function(endless)
        return endless(self.input_context)

    @staticmethod
    def steps_per_epoch(num_images: int, global_batch: int, num_pipelines: int = 1) -> int:
        """Full global batches per epoch when every pipeline reads its shard of the files.

        Example:

        >>> Launch.steps_per_epoch(1000, 64, num_pipelines=2)
        15
        """
        steps = (num_images // num_pipelines) // (global_batch // num_pipelines)
        if steps < 1:
            raise ValueError(f"{num_images} images make no full global batch of "
                             f"{global_batch}: lower the batch size.")
        return steps

    def backup_callback(self, backup_dir: str) -> keras.callbacks.Callback:
        """`keras.callbacks.BackupAndRestore` that only the chief writes.

        Every worker restores from the same `backup_dir` (storage that all workers see
        when they run on several machines: GCS, NFS); only the chief writes and, at the
        end, deletes it, so workers never race on the files.
        """
        chief = self.chief

        class ChiefBackupAndRestore(keras.callbacks.BackupAndRestore):
            def _save_model(self):
                if chief:
                    with undistributed():
                        super()._save_model()

            def on_train_end(self, logs=None):
                if chief:
                    super().on_train_end(logs)

        return ChiefBackupAndRestore(backup_dir, double_checkpoint=True)

    @contextlib.contextmanager
    def fail_fast(self):
        """Multi-process JAX: a failed process exits at once (status 1, traceback shown).

        Otherwise, after a peer is lost, it would wait minutes in `jax.distributed`'s
        shutdown barrier for the peer before aborting.
        """
        try:
            yield
        except BaseException:
            if not self.multi_process:
                raise
            import traceback

            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    def local_copy(self, model, build):
        """`model`'s weights in `build()`, a fresh model on this process's devices only.

        For the chief's reports after a multi-process run, when the other processes are
        done and the trained weights are arrays over every process's devices.
        """
        from keras import ops

        if not self.multi_process:
            return model
        values = [ops.convert_to_numpy(v) for v in model.weights]
        keras.distribution.set_distribution(None)
        copy = build()
        for variable, value in zip(copy.weights, values):
            variable.assign(value)
        return copy
