"""Multi-crop input throughput per CPU core: full host pipeline and split mode's host part.

Runs `keras_dino.data.multicrop_dataset` on the photos in `../shared/images` (ImageNet-like
sizes, 300-640 px) with a private tf.data thread pool of one thread and one thread per op,
and prints one JSON line per (mode, crop config) with images/s of wall time and of CPU time
(the process's user+system seconds, i.e. per core even when the machine is shared), after
a warm-up to the steady state. The 1-minute load average is printed with each line: on a
shared machine the numbers drop with the load of the other processes.
Pin the process to one core for a clean number:

    taskset -c 0 python bench/multicrop_throughput.py

Optionally (`--device-part`) it also times `MultiCropPhotometric` (the device half of split
mode) on the current Keras backend and device, compiled, for the same crop configs.

Reference: the official PIL/torchvision `DataAugmentationDINO`, one thread, 22 images/s per
core at 2x224+8x96 and 20 at 2x224+10x96 (`../shared/docs/anchors.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OFFICIAL = {8: 22.0, 10: 20.0}


def _configure_tf_single_thread():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def host_throughput(images_dir: str, locals_: int, split: bool, images: int, batch: int,
                    repeats: int, warmup: int) -> dict:
    tf = _configure_tf_single_thread()
    from keras_dino.data import DataAugmentationDINO, multicrop_dataset

    aug = DataAugmentationDINO(local_crops_number=locals_)
    ds = multicrop_dataset(
        images_dir, batch, augmentation=aug, split=split, seed=0, repeat=True,
        num_threads=1, num_parallel_calls=1, prefetch=1,
    )
    steps = max(1, images // batch)
    it = iter(ds)
    # Warm-up to the steady state: tracing, XLA compilation of the photometric program,
    # and oneDNN's kernels for the (bucketed) resampling shapes.
    for _ in range(max(1, warmup // batch)):
        next(it)
    best_wall, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            batch_out = next(it)
        # Touch the last batch so nothing is left pending.
        tf.nest.map_structure(lambda t: t.shape, batch_out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best_wall = max(best_wall, steps * batch / wall)
        best_cpu = max(best_cpu, steps * batch / cpu)
    return {
        "mode": "split_host" if split else "full_host",
        "crops": f"2x224+{locals_}x96",
        "images_per_s_wall": round(best_wall, 1),
        "images_per_s_per_core_cpu": round(best_cpu, 1),
        "official_per_core": OFFICIAL.get(locals_),
        "speedup_vs_official": round(best_cpu / OFFICIAL[locals_], 2)
        if locals_ in OFFICIAL else None,
        "threads": 1,
        "affinity": sorted(os.sched_getaffinity(0)),
        "images_timed": steps * batch,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def device_part(locals_: int, batch: int, repeats: int) -> dict:
    import keras
    import numpy as np

    from keras_dino.data import MultiCropPhotometric

    layer = MultiCropPhotometric(seed=0)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8) for _ in range(2)]
    crops += [rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8) for _ in range(locals_)]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        state = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def step(state, xs):
            out, state = layer.stateless_call([], state, xs)
            return sum(o.sum() for o in out), state

        def run(state):
            s, state = step(state, crops)
            s.block_until_ready()
            return state
    elif backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(c) for c in crops]
        fn = tf.function(lambda xs: tf.add_n([tf.reduce_sum(o) for o in layer(xs)]),
                         jit_compile=True)

        def run(state):
            fn(xs).numpy()
            return state
        state = None
    else:
        import torch

        xs = [torch.as_tensor(c) for c in crops]

        def run(state):
            with torch.no_grad():
                out = layer(xs)
                float(sum(o.sum() for o in out))
            return state
        state = None
    state = run(state)
    best = 1e9
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = run(state)
        best = min(best, time.perf_counter() - t0)
    return {
        "mode": "device_part",
        "backend": backend,
        "device": _device_name(),
        "crops": f"2x224+{locals_}x96",
        "batch": batch,
        "ms_per_batch": round(best * 1e3, 2),
        "images_per_s": round(batch / best, 1),
    }


def _device_name() -> str:
    try:
        import jax

        return str(jax.devices()[0])
    except Exception:  # noqa: BLE001 - informative only
        return "cpu"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=str(REPO.parent / "shared" / "images"))
    p.add_argument("--num-images", type=int, default=256, help="images per timed run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    p.add_argument("--warmup-images", type=int, default=256)
    p.add_argument("--locals", type=int, nargs="+", default=[8, 10])
    p.add_argument("--modes", nargs="*", default=["full_host", "split_host"],
                   help="host modes to time (none: only --device-part)")
    p.add_argument("--device-part", action="store_true")
    p.add_argument("--device-batch", type=int, default=64)
    args = p.parse_args(argv)
    for n in args.locals:
        for mode in args.modes:
            r = host_throughput(args.images, n, mode == "split_host", args.num_images,
                                args.batch, args.repeats, args.warmup_images)
            print(json.dumps(r), flush=True)
        if args.device_part:
            print(json.dumps(device_part(n, args.device_batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
