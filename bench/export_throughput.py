"""CPU images/s of the SavedModel, ONNX (onnxruntime) and LiteRT exports of one backbone.

Exports the same backbone three ways (`keras_dino.export.export`, TensorFlow backend), all
with uint8 `images` normalised in the graph, checks that the three give the same
embedding, and times each on the same random pixels:

* `saved_model`: `tf.saved_model.load(...).signatures["serving_default"]`;
* `onnx`: an `onnxruntime.InferenceSession` (CPU provider) of the `.onnx` file (dynamic
  height and width);
* `litert`: the LiteRT interpreter's `serving_default` signature runner of the `.tflite`
  file (224x224, dynamic batch);

at batch 1 and batch `--batch` (32), after warm-up calls: images/s from the median call
time, and the ratio to the SavedModel's. Prints one JSON line per (format, batch), then a
summary line. Weights do not change the timings: without `--weights`, the architecture
is randomly initialised (this machine may be offline). Needs the `export` extra.

    python bench/export_throughput.py                        # vit_small/16 at 224
    python bench/export_throughput.py --threads 1 --runs 50
    python bench/export_throughput.py --tiny                 # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from timing import median_seconds  # bench/timing.py, next to this script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FORMATS = ("saved_model", "onnx", "litert")


def _runners(paths, threads):
    """`{format: callable(uint8 images) -> cls embedding}`."""
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    from keras_dino.export.feature_extractors import litert_interpreter

    served = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(paths["onnx"], options, providers=["CPUExecutionProvider"])
    interpreter = litert_interpreter(paths["litert"], num_threads=threads or None)
    runner = interpreter.get_signature_runner("serving_default")
    return {
        "saved_model": lambda x: served(images=tf.constant(x))["cls_embedding"].numpy(),
        "onnx": lambda x: session.run(["cls_embedding"], {"images": x})[0],
        "litert": lambda x: np.asarray(runner(images=x)["cls_embedding"]),
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
    parser.add_argument("--runs", type=int, default=20, help="timed batch-1 calls")
    parser.add_argument("--batch-runs", type=int, default=5, help="timed large-batch calls")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of every runtime (0: each runtime's default)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: vit_tiny depth 2 at 32x32, batch 4, 2 runs")
    args = parser.parse_args(argv)
    if args.tiny:
        args.image_size, args.batch, args.runs, args.batch_runs, args.warmup = 32, 4, 2, 2, 1

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
        name = args.weights
    else:
        kwargs = {"depth": 2} if args.tiny else {}
        arch = "vit_tiny" if args.tiny else args.arch
        model = getattr(vision_transformer, arch)(patch_size=args.patch_size, **kwargs)
        model.build((None, args.image_size, args.image_size, 3))
        name = f"{arch}/{args.patch_size}" + (" depth 2" if args.tiny else "")
    size, batch = args.image_size, args.batch
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)

    rows, export_seconds = [], {}
    with tempfile.TemporaryDirectory() as base:
        paths = {}
        for fmt in FORMATS:
            start = time.perf_counter()
            options = {"image_size": size} if fmt != "onnx" else {}
            paths[fmt] = export.export(model, base, format=fmt, **options)
            export_seconds[fmt] = round(time.perf_counter() - start, 1)
        runners = _runners(paths, args.threads)
        reference = runners["saved_model"](pixels[:2])
        for fmt in FORMATS[1:]:  # the timed paths compute the same thing
            np.testing.assert_allclose(runners[fmt](pixels[:2]), reference, atol=1e-4)
        for n, runs, warmup in ((1, args.runs, args.warmup), (batch, args.batch_runs, 1)):
            x = np.ascontiguousarray(pixels[:n])
            for fmt in FORMATS:
                seconds = median_seconds(lambda fmt=fmt, x=x: runners[fmt](x), runs, warmup)
                rows.append({"benchmark": "export_throughput", "format": fmt, "batch": n,
                             "images_per_s": round(n / seconds, 2),
                             "median_call_ms": round(1000 * seconds, 2), "runs": runs})
    for row in rows:
        base_row = next(r for r in rows if r["format"] == "saved_model"
                        and r["batch"] == row["batch"])
        row["ratio_vs_saved_model"] = round(row["images_per_s"] / base_row["images_per_s"], 3)
        print(json.dumps(row), flush=True)

    import onnxruntime

    summary = {
        "benchmark": "export_throughput",
        "summary": {f"{r['format']}/batch_{r['batch']}": r["images_per_s"] for r in rows},
        "model": name,
        "image_size": size,
        "batch": batch,
        "keras_backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads or "default",
        "export_seconds": export_seconds,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
