"""Scale-out on this machine: several training processes over loopback, and TPU readiness.

TensorFlow: 2 workers under `MultiWorkerMirroredStrategy` (a `TF_CONFIG` cluster of two
`127.0.0.1:<port>` workers); JAX: 2 processes under `keras.distribution.DataParallel`
after `jax.distributed.initialize` (coordinator on `127.0.0.1`). Every process runs
`tests/multiprocess/dino_job.py`: the distribution code of `examples/train_dino.py`
(strategy, chief, chief-only checkpoints and logs, per-process shards) on a tiny DINO fed
fixed crops of embedded CIFAR-10 JPEGs in a fixed order, so the final weights must equal
those of one process that sees the same global batches (global batch 8: each of the 2
processes feeds its 4 rows). `test_tf_train_dino_cli_two_workers` runs the example
script itself on 2 workers.

TPU readiness: the whole training step compiles under XLA (`jit_compile=True`), checked
against the eager step by tests/test_dino_training.py::test_tf_step_compiles_with_xla;
here, the multi-crop input pipeline has no Python function in its graph and only static
shapes.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "multiprocess"))

import dino_job  # noqa: E402

JOB = REPO / "tests" / "multiprocess" / "dino_job.py"
TRAIN_DINO = REPO / "examples" / "train_dino.py"
EPOCHS = 3
TIMEOUT = 300  # seconds for one multi-process run, start-up included (a loaded CI machine)


# --------------------------------------------------------------------------- helpers


def _free_ports(count):
    """`count` distinct free loopback ports (all held open while they are picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(backend, **extra):
    """A clean environment for one process: its backend, one CPU device, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env


class Processes:
    """Subprocesses started together, waited for with a deadline, always cleaned up."""

    def __init__(self, logs_dir):
        self.logs_dir = pathlib.Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.procs, self.logs = [], []

    def start(self, name, args, env):
        log = self.logs_dir / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, *map(str, args)], env=env, cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def wait(self, timeout=TIMEOUT):
        """Return codes, in start order; kills everything and fails after `timeout`.

        `self.exit_times[i]`: when process i was seen to end (time.monotonic()).
        """
        deadline = time.monotonic() + timeout
        self.exit_times = [None] * len(self.procs)
        while None in self.exit_times:
            for i, proc in enumerate(self.procs):
                if self.exit_times[i] is None and proc.poll() is not None:
                    self.exit_times[i] = time.monotonic()
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"processes still running after {timeout}s\n{self.tails()}")
            time.sleep(0.2)
        return [proc.returncode for proc in self.procs]

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: it and its children
                proc.wait()

    def output(self, index):
        return self.logs[index].read_text(errors="replace")

    def tails(self, lines=40):
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def _tf_workers(procs, output_dirs, results, extra=None, script=JOB, args=()):
    """2 MultiWorkerMirroredStrategy workers (TF_CONFIG) on two loopback ports."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    for i in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        job_args = [f"--results={results[i]}"] if script == JOB else []
        procs.start(
            f"worker{i}",
            [script, "--backend=tensorflow", "--strategy=multi_worker",
             "--collective_timeout=120", f"--output_dir={output_dirs[i]}",
             f"--epochs={EPOCHS}", *job_args, *args, *((extra or {}).get(i, ()))],
            _env("tensorflow", TF_CONFIG=json.dumps(tf_config)),
        )


# JAX processes compile with XLA's backend optimisations off: twice as fast to start on
# a CPU, and the reference (also a subprocess, see one_process_weights) is compiled alike.
# The test command's choice of XLA's CPU kernel emitter (scripts/test.sh) carries over.
_LEGACY_EMITTER = "--xla_cpu_use_fusion_emitters=false"
JAX_XLA_FLAGS = " ".join(
    ["--xla_backend_optimization_level=0"]
    + [_LEGACY_EMITTER] * (_LEGACY_EMITTER in os.environ.get("XLA_FLAGS", "").split())
)


def _jax_processes(procs, output_dirs, results, extra=None):
    """2 JAX processes (one CPU device each) joined by jax.distributed on loopback."""
    (port,) = _free_ports(1)
    for i in range(2):
        procs.start(
            f"process{i}",
            [JOB, "--backend=jax", "--distribution=data_parallel", "--jax_multiprocess",
             f"--coordinator_address=127.0.0.1:{port}",
             f"--coordinator_bind_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}", f"--output_dir={output_dirs[i]}", f"--epochs={EPOCHS}",
             f"--results={results[i]}", *((extra or {}).get(i, ()))],
            _env("jax", XLA_FLAGS=JAX_XLA_FLAGS),
        )


def _assert_ok(procs, codes):
    assert codes == [0] * len(codes), f"return codes {codes}\n{procs.tails()}"


def _assert_same_weights(result, reference, embed=dino_job.EMBED_DIM):
    """Each tensor within 1e-5 of its largest value (as tests/test_dino_training.py)."""
    worst = {}
    for key in reference:
        if not key.startswith(("student/", "teacher/")) and key != "center":
            continue
        x = np.asarray(result[key], np.float64)
        y = np.asarray(reference[key], np.float64)
        assert x.shape == y.shape, key
        if key.endswith("attn.qkv.bias"):
            # key third: analytically zero gradient, float32 noise only (golden test)
            x = np.concatenate([x[:embed], x[2 * embed :]])
            y = np.concatenate([y[:embed], y[2 * embed :]])
        worst[key] = float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))
    assert len(worst) > 10
    name = max(worst, key=worst.get)
    assert worst[name] < 1e-5, f"{name} deviates by {worst[name]:.3g} of its largest value"
    assert int(result["iterations"]) == int(reference["iterations"])


def _log_epochs(output_dir):
    records = [json.loads(line) for line in (pathlib.Path(output_dir) / "log.txt").open()]
    return [record["epoch"] for record in records if "epoch" in record]


@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory):
    """The reference of a backend: one process, one device, the same global batches in
    the same order, trained by the job script in a subprocess as the workers are (JAX:
    compiled alike). `one_process_weights("tensorflow")`; each backend's trains once.

    Every process these tests train is a subprocess, so the tests need no backend of
    their own: the TensorFlow ones are `once` tests (tests/conftest.py); the JAX ones stay
    in the JAX process.
    """
    trained = {}

    def weights(backend):
        if backend not in trained:
            tmp = tmp_path_factory.mktemp(f"one_process_{backend}")
            extra = {"XLA_FLAGS": JAX_XLA_FLAGS} if backend == "jax" else {}
            with Processes(tmp / "logs") as procs:
                procs.start(
                    "single",
                    [JOB, f"--backend={backend}", f"--output_dir={tmp / 'out'}",
                     f"--epochs={EPOCHS}", f"--results={tmp / 'r.npz'}"],
                    _env(backend, **extra),
                )
                _assert_ok(procs, procs.wait())
            result = dict(np.load(tmp / "r.npz"))
            assert int(result["replicas"]) == 1 and bool(result["chief"])
            trained[backend] = result
        return trained[backend]

    return weights


# ------------------------------------------------------------------ TensorFlow workers


@pytest.mark.once
def test_tf_two_workers_equal_one_process(tmp_path, one_process_weights):
    """2 MultiWorkerMirroredStrategy workers; only worker 0 (the chief) writes."""
    outs = [tmp_path / "worker0_out", tmp_path / "worker1_out"]  # as on two machines
    results = [tmp_path / "r0.npz", tmp_path / "r1.npz"]
    with Processes(tmp_path / "logs") as procs:
        _tf_workers(procs, outs, results)
        _assert_ok(procs, procs.wait())
    r0, r1 = np.load(results[0]), np.load(results[1])
    assert int(r0["replicas"]) == int(r1["replicas"]) == 2
    assert bool(r0["chief"]) and not bool(r1["chief"])
    _assert_same_weights(r0, one_process_weights("tensorflow"))
    _assert_same_weights(r1, r0)
    # Chief only: log.txt and checkpoint.pth from worker 0; worker 1 wrote nothing. The
    # backup (BackupAndRestore) is deleted when training completes.
    assert sorted(p.name for p in outs[0].iterdir()) == ["checkpoint.pth", "log.txt"]
    assert _log_epochs(outs[0]) == list(range(EPOCHS))
    assert not outs[1].exists()


@pytest.mark.once
def test_tf_worker_killed_fails_cleanly_then_restart_resumes(tmp_path, one_process_weights):
    """SIGKILL worker 1 after epoch 2: worker 0 fails with an error, no hang; a restart
    of both resumes from the chief's backup of epoch 2 and ends as an uninterrupted run."""
    out = tmp_path / "out"  # shared by the workers (GCS/NFS on real clusters)
    results = [tmp_path / "r0.npz", tmp_path / "r1.npz"]
    with Processes(tmp_path / "logs_killed") as procs:
        _tf_workers(procs, [out, out], results, extra={1: ["--kill_at_epoch=1"]})
        codes = procs.wait()
        chief_output = procs.output(0)
    assert codes[1] == -signal.SIGKILL, procs.tails()
    assert codes[0] not in (0, None), procs.tails()
    detected_after = procs.exit_times[0] - procs.exit_times[1]
    assert detected_after < 120, f"the chief took {detected_after:.0f}s to fail"
    # A clear error naming the lost peer (collectives aborted by the coordination service,
    # or --collective_timeout).
    error = re.search(r"(Unavailable|DeadlineExceeded|Aborted|Cancelled|Internal)Error", chief_output)
    assert error, chief_output[-3000:]
    assert re.search(r"task:1|unhealthy|failed to connect|peer", chief_output), chief_output[-3000:]
    metadata = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2
    assert _log_epochs(out) == [0, 1]
    assert not results[0].exists() and not results[1].exists()

    with Processes(tmp_path / "logs_restarted") as procs:
        _tf_workers(procs, [out, out], results)
        _assert_ok(procs, procs.wait())
    r0, r1 = np.load(results[0]), np.load(results[1])
    assert r0["epochs_run"].tolist() == r1["epochs_run"].tolist() == [2]  # only epoch 3
    _assert_same_weights(r0, one_process_weights("tensorflow"))
    _assert_same_weights(r1, r0)
    assert _log_epochs(out) == [0, 1, 2]
    assert not (out / "backup").exists()


@pytest.mark.once  # the workers are TensorFlow processes; this one only reads their files
def test_tf_train_dino_cli_two_workers(tmp_path):
    """examples/train_dino.py --strategy=multi_worker: per-worker shards, chief-only files."""
    from keras_dino.data import list_image_files
    from keras_dino.datasets import cifar10_mini

    data = tmp_path / "images"
    files = list_image_files(cifar10_mini("train")).files
    for f in files[:: len(files) // 16][:16]:
        target = data / pathlib.Path(f).parent.name / pathlib.Path(f).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    outs = [tmp_path / "out0", tmp_path / "out1"]
    args = [
        f"--data_path={data}", "--arch=tiny", "--embed_dim=32", "--depth=1", "--num_heads=2",
        "--patch_size=8", "--out_dim=64", "--head_hidden_dim=32", "--head_bottleneck_dim=16",
        "--global_size=32", "--local_size=16", "--local_crops_number=2",
        "--batch_size_per_gpu=4", "--warmup_epochs=0", "--use_fp16=false",
        "--saveckp_freq=0", "--num_workers=1", "--export=false", "--verbose=0",
    ]
    with Processes(tmp_path / "logs") as procs:
        _tf_workers(procs, outs, None, script=TRAIN_DINO, args=args)
        _assert_ok(procs, procs.wait())
        chief_output = procs.output(0)
    # 16 images, 8 per worker; global batch 4 x 2 replicas = 8: 2 steps per epoch.
    assert "8 images, 0 skipped (this worker's shard of 2); global batch 8 on 2 replica(s)" in (
        chief_output
    ), chief_output[-3000:]
    assert _log_epochs(outs[0]) == list(range(EPOCHS))
    assert {"checkpoint.pth", "log.txt", "training_curves.png"} <= {
        p.name for p in outs[0].iterdir()
    }
    assert not outs[1].exists()


# --------------------------------------------------------------------- JAX processes


@pytest.mark.backends("jax")
def test_jax_two_processes_equal_one_process(tmp_path, one_process_weights):
    """2 processes under DataParallel (jax.distributed on loopback); process 0 writes."""
    outs = [tmp_path / "process0_out", tmp_path / "process1_out"]
    results = [tmp_path / "r0.npz", tmp_path / "r1.npz"]
    with Processes(tmp_path / "logs") as procs:
        _jax_processes(procs, outs, results)
        _assert_ok(procs, procs.wait())
    r0, r1 = np.load(results[0]), np.load(results[1])
    assert int(r0["replicas"]) == int(r1["replicas"]) == 2
    assert bool(r0["chief"]) and not bool(r1["chief"])
    _assert_same_weights(r0, one_process_weights("jax"))
    _assert_same_weights(r1, r0)
    assert sorted(p.name for p in outs[0].iterdir()) == ["checkpoint.pth", "log.txt"]
    assert _log_epochs(outs[0]) == list(range(EPOCHS))
    assert not outs[1].exists()


@pytest.mark.backends("jax")
def test_jax_process_killed_fails_cleanly_then_restart_resumes(tmp_path, one_process_weights):
    """SIGKILL process 1 after epoch 2: process 0 fails at once (no wait in the
    jax.distributed shutdown); a restart of both resumes from epoch 2's backup."""
    out = tmp_path / "out"
    results = [tmp_path / "r0.npz", tmp_path / "r1.npz"]
    with Processes(tmp_path / "logs_killed") as procs:
        _jax_processes(procs, [out, out], results, extra={1: ["--kill_at_epoch=1"]})
        codes = procs.wait()
        chief_output = procs.output(0)
    assert codes == [1, -signal.SIGKILL], procs.tails()
    detected_after = procs.exit_times[0] - procs.exit_times[1]
    assert detected_after < 60, f"process 0 took {detected_after:.0f}s to fail"
    assert "Traceback" in chief_output and "Error" in chief_output, chief_output[-3000:]
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    assert _log_epochs(out) == [0, 1]

    with Processes(tmp_path / "logs_restarted") as procs:
        _jax_processes(procs, [out, out], results)
        _assert_ok(procs, procs.wait())
    r0, r1 = np.load(results[0]), np.load(results[1])
    assert r0["epochs_run"].tolist() == r1["epochs_run"].tolist() == [2]
    _assert_same_weights(r0, one_process_weights("jax"))
    _assert_same_weights(r1, r0)
    assert _log_epochs(out) == [0, 1, 2]
    assert not (out / "backup").exists()


# ------------------------------------------------------------------- TPU readiness

PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _graph_ops(dataset):
    """Every op type in a tf.data pipeline's graph, function bodies included."""
    from tensorflow.core.framework import graph_pb2

    graph = graph_pb2.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


@pytest.mark.tf_only
def test_multicrop_pipeline_has_no_python_in_hot_path():
    """TPU readiness of the input: graph ops only, static batch shapes."""
    from keras_dino.data import multicrop_dataset
    from keras_dino.datasets import cifar10_mini

    dataset = multicrop_dataset(cifar10_mini("train"), 8, seed=0)
    ops = _graph_ops(dataset)
    assert "ParallelMapDatasetV2" in ops or "MapDataset" in ops  # the augmentation is there
    assert not ops & PYTHON_OPS, sorted(ops & PYTHON_OPS)
    for spec in dataset.element_spec:
        assert spec.shape.is_fully_defined(), spec  # drop_remainder: static for XLA/TPU
    # The pipeline of the multi-process tests too.
    assert not _graph_ops(dino_job.dataset()) & PYTHON_OPS
