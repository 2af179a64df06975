"""Per-item time of the paper's evaluation tools, beside a plain forward pass.

Times, on the current Keras backend (TensorFlow, JAX or torch; a GPU when there is
one), one JSON line per step:

* `video_segmentation/features`: last-block patch tokens of one DAVIS frame
  (480x832 after the official resize);
* `video_segmentation/propagation`: label propagation of one frame from the first and
  `n_last_frames` context frames, upsampling and argmax included;
* `video_attention/frame`: `frame_attention` of one frame (shorter side 480);
* `attention_segmentation/image`: `image_attention_jaccard` of one 480-pixel image;
* `retrieval/multiscale`: the official multi-scale descriptor of a 224 thumbnail;
* `copy_detection/batch`: CLS + GeM descriptors of a batch of 320x320 images;

each with `ms_per_item`, `items_per_s` and `ratio_vs_forward`: the time over that of
the backbone's own forward pass on the same input, timed in the same process. The
last line is a summary with the peak resident memory. Weights do not change timings:
the architecture is randomly initialised (this machine may be offline).

    python bench/eval_tools.py                                 # vit_small/16
    KERAS_BACKEND=jax python bench/eval_tools.py --patch_size 8
    python bench/eval_tools.py --tiny                          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys

from timing import median_seconds  # bench/timing.py, next to this script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--n_last_frames", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--copy_batch", type=int, default=16)
    parser.add_argument("--tiny", action="store_true",
                        help="vit_tiny depth 1 on small inputs, 1 run: a smoke test.")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from keras_dino.evaluation import attention_segmentation, copy_detection, retrieval
    from keras_dino.evaluation import video_attention as va
    from keras_dino.evaluation import video_segmentation as vos
    from keras_dino.evaluation.attention_maps import attention_input
    from keras_dino.models.vision_transformer import ARCHITECTURES, VisionTransformer

    if args.tiny:
        backbone = VisionTransformer(**{**ARCHITECTURES["vit_tiny"], "depth": 1},
                                     patch_size=args.patch_size)
        frame_hw, short, thumb, copy_size = (64, 128), 64, 64, 64
        args.runs, args.warmup, args.copy_batch = 1, 1, 2
    else:
        backbone = VisionTransformer(**ARCHITECTURES[args.arch], patch_size=args.patch_size)
        frame_hw, short, thumb, copy_size = (480, 832), 480, 224, 320
    rng = np.random.default_rng(0)
    timed = lambda fn: median_seconds(fn, args.runs, args.warmup)  # noqa: E731

    def forward(x):
        return lambda: keras.ops.convert_to_numpy(backbone(x, training=False))

    rows = []

    def report(tool, step, seconds, forward_seconds, items=1, **extra):
        row = {"tool": tool, "step": step, "ms_per_item": round(1000 * seconds / items, 2),
               "items_per_s": round(items / seconds, 2),
               "ratio_vs_forward": round(seconds / forward_seconds, 3), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # Video segmentation: per-frame features, then propagation from 1 + n context frames.
    frame = rng.normal(size=(*frame_hw, 3)).astype("float32")
    base = timed(forward(frame[None]))
    features, grid = vos.frame_features(backbone, frame)
    report("video_segmentation", "features",
           timed(lambda: keras.ops.convert_to_numpy(vos.frame_features(backbone, frame)[0])),
           base, grid=list(grid))
    context = 1 + args.n_last_frames
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, grid[0] * grid[1])]
    mask = vos.neighborhood_mask(*grid, 12)

    def propagate():
        soft = vos.propagate_labels(features, [features] * context, [labels] * context, 5, mask)
        vos.labels_from_soft(soft, grid, backbone.patch_size, frame_hw)

    report("video_segmentation", "propagation", timed(propagate), base, context_frames=context)

    # Attention over a video and segmentation from attention: one frame / image.
    image = rng.integers(0, 256, size=(short, int(short * 16 / 9), 3), dtype=np.uint8)
    x, _ = attention_input(image, [short], backbone.patch_size)
    base = timed(forward(x[None]))
    report("video_attention", "frame", timed(lambda: va.frame_attention(backbone, image)),
           base, size=list(image.shape[:2]))
    gt = (rng.random(image.shape[:2]) < 0.3).astype(np.uint8)
    report("attention_segmentation", "image",
           timed(lambda: attention_segmentation.image_attention_jaccard(
               backbone, image, gt, image_size=short)), base)

    # Retrieval (multi-scale) and copy detection descriptors.
    thumbnail = rng.normal(size=(thumb, thumb, 3)).astype("float32")
    base = timed(forward(thumbnail[None]))
    report("retrieval", "multiscale",
           timed(lambda: retrieval.global_descriptor(backbone, thumbnail, multiscale=True)),
           base)
    batch = rng.normal(size=(args.copy_batch, copy_size, copy_size, 3)).astype("float32")
    base = timed(forward(batch))
    report("copy_detection", "batch",
           timed(lambda: keras.ops.convert_to_numpy(
               copy_detection.copy_detection_features(backbone, batch))),
           base, items=args.copy_batch)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"summary": {f"{r['tool']}/{r['step']}": r["ms_per_item"] for r in rows},
                      "backend": keras.backend.backend(), "arch": "vit_tiny" if args.tiny
                      else args.arch, "patch_size": args.patch_size,
                      "peak_rss_gib": round(peak, 2), "machine": platform.machine()}),
          flush=True)


if __name__ == "__main__":
    main()
