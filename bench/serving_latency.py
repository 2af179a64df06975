"""CPU latency and throughput of an exported SavedModel vs `model.predict`.

Exports a backbone with `keras_dino.export_saved_model` (current Keras backend: TensorFlow
or JAX), loads it with `tf.saved_model.load` and times, on the same images:

* `saved_model`: the `serving_default` signature (uint8 pixels, normalised in the graph);
* `saved_model_bytes`: the `serve_bytes` signature on JPEG files (decode, resize 256, crop,
  normalise in the graph), i.e. what a TF Serving request costs beyond the transport;
* `keras_predict`: `model.predict` on the normalised float32 images (what the export is
  checked against);

at batch 1 (latency: median and 90th percentile over `--runs` calls) and at batch 32
(throughput: images/s over `--batch-runs` calls), after warm-up calls. Prints one JSON
object. Weights do not change the timings: without `--weights`, the architecture is
randomly initialised (this machine may be offline).

    python bench/serving_latency.py                               # vit_small/16 at 224
    KERAS_BACKEND=jax python bench/serving_latency.py --arch vit_tiny
    python bench/serving_latency.py --weights dino_vits16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

from timing import timed_runs  # bench/timing.py, next to this script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHOTOS = REPO.parent / "shared" / "images"


def _latency(times):
    ordered = sorted(times)
    return {
        "median_ms": round(1000 * statistics.median(ordered), 2),
        "p90_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "runs": len(ordered),
    }


def _throughput(times, batch):
    return {
        "images_per_s": round(batch * len(times) / sum(times), 2),
        "median_batch_ms": round(1000 * statistics.median(times), 1),
        "runs": len(times),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", default="vit_small", choices=["vit_tiny", "vit_small", "vit_base"]
    )
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--weights", default=None, help="preset name or checkpoint file")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=30, help="batch-1 calls")
    parser.add_argument("--batch-runs", type=int, default=5, help="batch calls")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: all)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    import keras_dino
    from keras_dino import export
    from keras_dino.models import vision_transformer

    if args.weights:
        model = keras_dino.load_pretrained(args.weights)
    else:
        model = getattr(vision_transformer, args.arch)(patch_size=args.patch_size)
        model.build((None, args.image_size, args.image_size, 3))
    size, batch = args.image_size, args.batch
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    normalised = keras.ops.convert_to_numpy(keras_dino.normalize_images(pixels))
    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]
    photos = (photos * (batch // max(len(photos), 1) + 1))[:batch]

    with tempfile.TemporaryDirectory() as base:
        start = time.perf_counter()
        path = export.export_saved_model(model, base, image_size=size)
        export_s = time.perf_counter() - start
        served = tf.saved_model.load(path)
        default = served.signatures["serving_default"]
        from_bytes = served.signatures["serve_bytes"]
        one, many = tf.constant(pixels[:1]), tf.constant(pixels)
        one_jpeg, many_jpeg = tf.constant(photos[:1]), tf.constant(photos)
        np.testing.assert_allclose(  # the timed paths compute the same thing
            default(images=one)["cls_embedding"].numpy(),
            keras.ops.convert_to_numpy(model.predict(normalised[:1], verbose=0)),
            atol=1e-4,
        )
        results = {
            "saved_model": {
                "batch_1": _latency(timed_runs(lambda: default(images=one), args.runs, args.warmup)),
                f"batch_{batch}": _throughput(
                    timed_runs(lambda: default(images=many), args.batch_runs, 1), batch
                ),
            },
            "saved_model_bytes": {
                "batch_1": _latency(
                    timed_runs(lambda: from_bytes(image_bytes=one_jpeg), args.runs, args.warmup)
                ),
                f"batch_{batch}": _throughput(
                    timed_runs(lambda: from_bytes(image_bytes=many_jpeg), args.batch_runs, 1), batch
                ),
            },
            "keras_predict": {
                "batch_1": _latency(
                    timed_runs(lambda: model.predict(normalised[:1], verbose=0), args.runs, args.warmup)
                ),
                f"batch_{batch}": _throughput(
                    timed_runs(
                        lambda: model.predict(normalised, batch_size=batch, verbose=0),
                        args.batch_runs,
                        1,
                    ),
                    batch,
                ),
            },
        }
    report = {
        "benchmark": "serving_latency",
        "model": f"{args.arch}/{args.patch_size}" if not args.weights else args.weights,
        "image_size": size,
        "keras_backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tf_intra_op_threads": args.threads or "all",
        "export_seconds": round(export_s, 1),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
