"""One process of a small, deterministic DINO run, for tests/test_multiprocess.py.

The distribution comes from `examples/train_dino.py` itself (`keras_dino.tools.train`: its
flags `--strategy`,
`--collective_timeout`, `--distribution`, `--jax_multiprocess`, `--coordinator_address`,
`--num_processes`, `--process_id`, `--output_dir`, `--epochs`, and its chief-only
checkpoints and logs); only the data differ: fixed crops of a few embedded CIFAR-10
JPEGs, in a fixed order, so that a run on several processes can be compared with one
process that sees the same global batches.

    # one process (the reference)
    python tests/multiprocess/dino_job.py --backend=tensorflow --output_dir=out --results=r.npz
    # worker i of 2 under MultiWorkerMirroredStrategy
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:p0", "127.0.0.1:p1"]},
                "task": {"type": "worker", "index": i}}' \\
      python tests/multiprocess/dino_job.py --backend=tensorflow --strategy=multi_worker ...
    # process i of 2 under keras.distribution.DataParallel
    python tests/multiprocess/dino_job.py --backend=jax --distribution=data_parallel \\
      --jax_multiprocess --coordinator_address=127.0.0.1:p --num_processes=2 --process_id=i ...

`--kill_at_epoch=K` makes this process SIGKILL itself at the end of epoch K (0-based),
once the chief has backed that epoch up: a worker lost between two epochs.
"""

import json
import os
import pathlib
import signal
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 2
NUM_IMAGES = GLOBAL_BATCH * STEPS_PER_EPOCH
EMBED_DIM = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def fixed_crops():
    """The crops of every image in training order: 2 global 32x32, 2 local 16x16."""
    import numpy as np
    import tensorflow as tf

    from keras_dino.data import list_image_files
    from keras_dino.datasets import cifar10_mini

    files = list_image_files(cifar10_mini("train")).files
    files = files[:: len(files) // NUM_IMAGES][:NUM_IMAGES]  # every class, a few images
    images = np.stack([tf.io.decode_jpeg(tf.io.read_file(f), channels=3).numpy() for f in files])
    images = ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)
    flipped = images[:, :, ::-1]
    return (
        images,
        flipped,
        np.ascontiguousarray(images[:, 8:24, 8:24]),
        np.ascontiguousarray(flipped[:, :16, 16:]),
    )


def shard_rows(pipeline_id=0, num_pipelines=1):
    """Rows of pipeline `pipeline_id`: its slice of every global batch, in step order."""
    local = GLOBAL_BATCH // num_pipelines
    return [
        step * GLOBAL_BATCH + pipeline_id * local + i
        for step in range(STEPS_PER_EPOCH)
        for i in range(local)
    ]


def dataset(pipeline_id=0, num_pipelines=1, crops=None, batch_size=None):
    """A tf.data pipeline of this pipeline's share of the global batches (no Python).

    `batch_size`: per element (default: the pipeline's share of a global batch); a
    pipeline feeding several replicas batches per replica, and its consecutive
    elements go to its replicas in order.
    """
    import tensorflow as tf

    crops = crops if crops is not None else fixed_crops()
    rows = shard_rows(pipeline_id, num_pipelines)
    local = tuple(c[rows] for c in crops)
    return tf.data.Dataset.from_tensor_slices(local).batch(
        batch_size or GLOBAL_BATCH // num_pipelines, drop_remainder=True
    ).repeat()


def distributed_dataset(strategy, crops=None):
    """The global batches split over a tf.distribute strategy's workers and replicas."""
    crops = crops if crops is not None else fixed_crops()
    return strategy.distribute_datasets_from_function(
        lambda ctx: dataset(
            ctx.input_pipeline_id, ctx.num_input_pipelines, crops,
            ctx.get_per_replica_batch_size(GLOBAL_BATCH),
        )
    )


def tiny_dino(epochs=3, seed=0):
    import keras

    from keras_dino.training.dino import DINO

    keras.utils.set_random_seed(seed)
    return DINO(
        arch="tiny_multiprocess",
        vit_kwargs=dict(embed_dim=EMBED_DIM, depth=1, num_heads=2),
        head_kwargs=dict(hidden_dim=32, bottleneck_dim=16),
        patch_size=8,
        out_dim=64,
        epochs=epochs,
        warmup_epochs=1,
        warmup_teacher_temp_epochs=1,
        teacher_temp=0.07,
        lr=0.05,
        drop_path_rate=0.0,
        momentum_teacher=0.9,
        local_crops_number=2,
    )


def final_weights(model):
    """`{"student/<official name>": array, "teacher/...": ..., "center": ...}`."""
    from keras import ops

    from keras_dino.checkpoints import official

    out = {f"student/{k}": v for k, v in official.state_dict_of(model.student_map).items()}
    out.update({f"teacher/{k}": v for k, v in official.state_dict_of(model.teacher_map).items()})
    out["center"] = ops.convert_to_numpy(model.center)
    out["iterations"] = ops.convert_to_numpy(model.optimizer.iterations)
    return out


def _kill_callback(epoch, backup_dir):
    import keras

    class KillAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index != epoch:
                return
            # Wait (bounded) until the chief has backed this epoch up, then die hard.
            metadata = os.path.join(backup_dir, "training_metadata.json")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    with open(metadata) as f:
                        if json.load(f)["epoch"] >= epoch + 1:
                            break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            print(f"dino_job: killing myself (pid {os.getpid()}) after epoch {index}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return KillAfterEpoch()


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_dino import callbacks as keras_dino_callbacks
    from keras_dino.tools import train as train_dino

    F = train_dino.F
    keras.config.disable_traceback_filtering()  # full tracebacks in the test's report
    launch = train_dino._launch()
    crops = fixed_crops()
    if launch.strategy is not None:
        data = distributed_dataset(launch.strategy, crops)
    else:
        ctx = launch.input_context
        data = dataset(ctx.input_pipeline_id, ctx.num_input_pipelines, crops) if ctx else (
            dataset(crops=crops)
        )
    with launch.scope():
        model = tiny_dino(F.epochs, F.seed)
        model.compile()
    backup = os.path.join(F.output_dir, "backup")
    callbacks = [
        launch.backup_callback(backup),
        keras_dino_callbacks.OfficialLog(F.output_dir, 0, chief=launch.chief),
    ]
    if F.kill_at_epoch is not None:
        callbacks.append(_kill_callback(F.kill_at_epoch, backup))
    with launch.fail_fast():
        history = model.fit(
            data, epochs=F.epochs, steps_per_epoch=STEPS_PER_EPOCH, callbacks=callbacks,
            verbose=0,
        )
    replicas, chief = launch.replicas, launch.chief
    results = final_weights(model)
    results["epochs_run"] = np.asarray(history.epoch)
    results["replicas"] = np.asarray(replicas)
    results["chief"] = np.asarray(chief)
    os.makedirs(os.path.dirname(os.path.abspath(F.results)), exist_ok=True)
    np.savez(F.results, **results)
    print(f"dino_job: done, epochs {history.epoch}, {replicas} replicas, chief {chief}",
          flush=True)


if __name__ == "__main__":
    sys.path[:0] = [str(REPO)]
    # Selects the backend from --backend and defines the flags of examples/train_dino.py.
    from absl import app, flags  # noqa: E402

    import keras_dino.tools.train  # noqa: E402, F401

    flags.DEFINE_string("results", None, "Where this process writes its final weights (.npz).")
    flags.DEFINE_integer("kill_at_epoch", None, "SIGKILL this process after this epoch.")
    flags.mark_flag_as_required("results")
    app.run(main)
