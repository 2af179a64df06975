"""bfloat16 against float32: one DINO run on CIFAR-10 JPEGs in both precisions, loss curves side by side.

Builds a small DINO once, copies its initial weights into a `mixed_bfloat16` twin, and
trains both on the same multi-crop batches (deterministic pipeline, same seed) with the
same schedules. Prints a JSON line per window of `--window` steps (each run's mean loss and
their relative gap) and a summary line (largest gap after the first window, loss drop of
each run). Data: the embedded CIFAR-10 subset by default, or any ImageFolder tree.

    KERAS_BACKEND=jax python bench/bf16_loss_curve.py --steps=300
    KERAS_BACKEND=jax python bench/bf16_loss_curve.py --data=/tmp/cifar10_jpeg/train --steps=500
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_dino(steps, window, batch, out_dim):
    """A quickstart-sized ViT (patch 4 for 32x32 images), schedules over `steps`."""
    import keras_dino

    return keras_dino.DINO(
        arch="vit_quickstart",
        patch_size=4,
        out_dim=out_dim,
        vit_kwargs=dict(embed_dim=96, depth=3, num_heads=3),
        head_kwargs=dict(hidden_dim=512, bottleneck_dim=128),
        norm_last_layer=False,
        momentum_teacher=0.99,
        lr=0.002,
        epochs=steps // window,
        warmup_epochs=1,
        steps_per_epoch=window,
        batch_size=batch,
        drop_path_rate=0.1,
        local_crops_number=2,
    )


def loss_curves(data=None, steps=300, window=20, batch=64, out_dim=1024, seed=0, verbose=0):
    """Mean loss per window of `steps` DINO steps, in float32 and in mixed bfloat16.

    Returns:
        `{"float32": [...], "mixed_bfloat16": [...]}`, one mean per window.
    """
    import keras

    from keras_dino.data import DataAugmentationDINO, multicrop_dataset
    from keras_dino.datasets import cifar10_mini

    if steps % window:
        raise ValueError(f"steps ({steps}) must be a multiple of window ({window}).")
    augmentation = DataAugmentationDINO(
        global_crops_scale=(0.35, 1.0), local_crops_scale=(0.1, 0.35),
        local_crops_number=2, global_size=32, local_size=16,
    )
    source = data or cifar10_mini("train")
    previous = keras.config.dtype_policy()
    curves, initial = {}, None
    try:
        for policy in ("float32", "mixed_bfloat16"):
            keras.config.set_dtype_policy(policy)
            keras.utils.set_random_seed(seed)
            model = small_dino(steps, window, batch, out_dim)
            if initial is None:
                initial = model.get_weights()
            else:
                model.set_weights(initial)  # the very same start
            model.compile()
            # deterministic: both runs see the same crops in the same order
            dataset = multicrop_dataset(source, batch, augmentation=augmentation, seed=seed,
                                        deterministic=True, repeat=True)
            history = model.fit(dataset, epochs=steps // window, steps_per_epoch=window,
                                verbose=verbose)
            curves[policy] = [float(v) for v in history.history["loss"]]
    finally:
        keras.config.set_dtype_policy(previous)
    return curves


def summarise(curves):
    """Largest relative gap between the runs after the first window, and each run's drop."""
    fp32, bf16 = curves["float32"], curves["mixed_bfloat16"]
    gaps = [abs(b - f) / f for f, b in zip(fp32, bf16)]
    return {
        "windows": len(fp32),
        "max_rel_gap_after_first_window": round(max(gaps[1:]), 5),
        "mean_rel_gap": round(sum(gaps) / len(gaps), 5),
        "fp32_first_last": [round(fp32[0], 4), round(fp32[-1], 4)],
        "bf16_first_last": [round(bf16[0], 4), round(bf16[-1], 4)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None,
                        help="ImageFolder tree of images (default: the embedded CIFAR-10 subset)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out_dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import time

    import keras

    start = time.time()
    curves = loss_curves(args.data, args.steps, args.window, args.batch, args.out_dim, args.seed)
    for i, (f, b) in enumerate(zip(curves["float32"], curves["mixed_bfloat16"])):
        print(json.dumps({"steps": (i + 1) * args.window, "loss_fp32": round(f, 5),
                          "loss_bf16": round(b, 5), "rel_gap": round(abs(b - f) / f, 5)}))
    print(json.dumps({"backend": keras.backend.backend(), "batch": args.batch,
                      "steps": args.steps, **summarise(curves),
                      "wall_s": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
