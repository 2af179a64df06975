"""DINO training-step throughput on the current Keras backend, as JSON lines.

Builds `keras_dino.DINO` for an architecture, crop set, batch, head size and precision,
puts synthetic crops on the device once, compiles the training step (the one `fit`
runs: forward, loss, per-parameter clipping, optimizer, teacher EMA and centering) and
times it without host round trips. Prints one JSON line per configuration: images/s,
median step ms over >= 20 steps after compilation, compile seconds, peak device memory,
and TFLOP/s from an analytic FLOP count.

    KERAS_BACKEND=jax python bench/train_throughput.py --arch=vit_small --patch_size=16 \\
        --global_crops=2 --local_crops=10 --batch=128 --out_dim=65536 --precision=bf16
    python bench/train_throughput.py --tiny      # seconds on a CPU (CI smoke test)

`--gradient_accumulation_steps=k` times optimizer steps of `k` micro-batches of `--batch`
(`step_ms_median` and `images_per_s` per optimizer step of `k * batch` images);
`--compare_accumulation` then measures the same effective batch without accumulation
(`--batch` times `k` images a step) in the same process and prints both: the peak
memory of each (reset between them on TensorFlow and torch GPUs; elsewhere the second,
larger, peak is still its own) shows what accumulation saves. `--compare_remat` does the
same for `--remat`: the configuration with rematerialised student blocks first, then
without.
"""

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def vit_flops(embed, depth, tokens, patch, mlp_ratio=4.0):
    """Forward FLOPs of one image through the backbone (2 FLOPs per multiply-add)."""
    per_token_block = (4 + 2 * mlp_ratio) * embed * embed  # qkv + proj + mlp
    attention = 2 * tokens * embed  # q @ k and attn @ v
    blocks = depth * tokens * (per_token_block + attention)
    patch_embed = (tokens - 1) * 3 * patch * patch * embed
    return 2 * (blocks + patch_embed)


def head_flops(embed, hidden, bottleneck, out_dim, nlayers=3):
    widths = [embed] + [hidden] * (nlayers - 1) + [bottleneck]
    mlp = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2 * (mlp + bottleneck * out_dim)


def step_flops(cfg, embed, depth):
    def crop(size):
        tokens = (size // cfg.patch_size) ** 2 + 1
        return vit_flops(embed, depth, tokens, cfg.patch_size) + head_flops(
            embed, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim
        )

    student = cfg.global_crops * crop(cfg.global_size) + cfg.local_crops * crop(cfg.local_size)
    teacher = cfg.global_crops * crop(cfg.global_size)
    return cfg.batch * (3 * student + teacher)  # backward ~ 2x forward


def reset_peak_memory():
    """Starts a new peak where the backend allows it; False where it cannot (JAX, host)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return True
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
            return True
    return False


def peak_memory_bytes():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), str(jax.devices()[0].platform)
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated()), "cuda"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "gpu"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"


def build(cfg):
    import keras

    import keras_dino

    if cfg.precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    elif cfg.precision == "fp16":
        keras.config.set_dtype_policy("mixed_float16")
    vit = dict(keras_dino.models.ARCHITECTURES.get(cfg.arch, {}))
    if cfg.embed_dim:
        vit.update(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads)
    vit["use_fused_attention"] = cfg.fused_attention
    vit["remat"] = cfg.remat
    photometric = None
    if cfg.uint8_photometric:
        from keras_dino.data import MultiCropPhotometric

        photometric = MultiCropPhotometric(seed=0)
    model = keras_dino.DINO(
        photometric=photometric,
        arch=cfg.arch,
        patch_size=cfg.patch_size,
        out_dim=cfg.out_dim,
        vit_kwargs=vit,
        head_kwargs=dict(hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim),
        local_crops_number=cfg.local_crops,
        epochs=100,
        steps_per_epoch=1000 * cfg.gradient_accumulation_steps,
        batch_size=cfg.batch * cfg.gradient_accumulation_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    model.compile(jit_compile=True)
    return model, vit


def synthetic_crops(cfg):
    import numpy as np

    rng = np.random.default_rng(0)
    sizes = [cfg.global_size] * cfg.global_crops + [cfg.local_size] * cfg.local_crops
    if cfg.uint8_photometric:  # split mode: raw uint8 crops, photometric part on device
        return tuple(rng.integers(0, 256, (cfg.batch, s, s, 3), dtype="uint8") for s in sizes)
    return tuple(rng.normal(size=(cfg.batch, s, s, 3)).astype("float32") for s in sizes)


def compiled_step(model, crops):
    """The DINO training step compiled for the backend, and a runner of n steps."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step = jax.jit(model.train_step, donate_argnums=0)
        state = [
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        ]
        batch = tuple(jax.device_put(c) for c in crops)
        holder = {"state": state}

        def run(n):
            logs = None
            for _ in range(n):
                logs, holder["state"] = step(holder["state"], batch)
            jax.block_until_ready(logs["loss"])
            return float(logs["loss"])

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        batch = tuple(tf.constant(c) for c in crops)
        step = tf.function(model.train_step, jit_compile=True)

        def run(n):
            logs = None
            for _ in range(n):
                logs = step(batch)
            return float(logs["loss"])

        return run
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = tuple(torch.as_tensor(c, device=device) for c in crops)

    def run(n):
        logs = None
        for _ in range(n):
            logs = model.train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return float(logs["loss"])

    return run


def measure(cfg, peak_reset=False):
    import keras

    k = cfg.gradient_accumulation_steps
    model, vit = build(cfg)
    crops = synthetic_crops(cfg)
    model.schedules.base_lr = model.hparams["lr"] * cfg.batch * k / 256.0
    run = compiled_step(model, crops)
    start = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - start
    if k > 1:
        run(k - 1)  # to the first optimizer step's boundary
    times = []
    for _ in range(cfg.steps):
        start = time.perf_counter()
        loss = run(k)  # one optimizer step
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = step_flops(cfg, vit["embed_dim"], vit["depth"]) * k
    memory, memory_kind = peak_memory_bytes()
    if not peak_reset and memory_kind != "host RSS":
        memory_kind += " (peak of the process so far)"
    return {
        "backend": keras.backend.backend(),
        "arch": cfg.arch,
        "patch_size": cfg.patch_size,
        "crops": f"{cfg.global_crops}x{cfg.global_size}+{cfg.local_crops}x{cfg.local_size}",
        "batch": cfg.batch,
        "gradient_accumulation_steps": k,
        "effective_batch": cfg.batch * k,
        "out_dim": cfg.out_dim,
        "precision": cfg.precision,
        "fused_attention": cfg.fused_attention,
        "remat": cfg.remat,
        "uint8_photometric": cfg.uint8_photometric,
        "images_per_s": round(cfg.batch * k / step_s, 2),
        "step_ms_median": round(1000 * step_s, 2),
        "steps_timed": cfg.steps,
        "compile_s": round(compile_s, 2),
        "peak_memory_gib": round(memory / 2**30, 3),
        "peak_memory_of": memory_kind,
        "tflops": round(flops / step_s / 1e12, 4),
        "final_loss": loss,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--embed_dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--num_heads", type=int, default=None)
    parser.add_argument("--global_crops", type=int, default=2)
    parser.add_argument("--local_crops", type=int, default=10)
    parser.add_argument("--global_size", type=int, default=224)
    parser.add_argument("--local_size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out_dim", type=int, default=65536)
    parser.add_argument("--hidden_dim", type=int, default=2048)
    parser.add_argument("--bottleneck_dim", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--fused_attention", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--remat", action="store_true",
                        help="recompute the student's blocks in the backward pass (memory for "
                        "compute); tflops still counts the model's FLOPs only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="micro-batches of --batch per optimizer step")
    parser.add_argument("--compare_accumulation", action="store_true",
                        help="also measure the effective batch without accumulation first")
    parser.add_argument("--compare_remat", action="store_true",
                        help="measure with --remat, then without, in this process")
    parser.add_argument("--uint8_photometric", action="store_true",
                        help="feed uint8 crops through keras_dino.data.MultiCropPhotometric "
                        "inside the step (split mode)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long CPU configuration")
    cfg = parser.parse_args(argv)
    if cfg.tiny:
        cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads = "tiny", 32, 2, 2
        cfg.patch_size, cfg.global_size, cfg.local_size = 8, 32, 16
        cfg.local_crops, cfg.batch, cfg.out_dim = 2, 4, 256
        cfg.hidden_dim, cfg.bottleneck_dim, cfg.precision, cfg.steps = 64, 32, "fp32", 20
    if cfg.compare_accumulation and cfg.compare_remat:
        parser.error("--compare_accumulation and --compare_remat: one comparison a run")
    # The smaller peak first: where it cannot be reset (JAX, host RSS) the second
    # configuration's peak is still its own, the larger one.
    configs = [cfg]
    if cfg.compare_accumulation and cfg.gradient_accumulation_steps > 1:
        plain = copy.copy(cfg)
        plain.batch *= cfg.gradient_accumulation_steps
        plain.gradient_accumulation_steps = 1
        configs.append(plain)
    if cfg.compare_remat:
        configs = [copy.copy(cfg), copy.copy(cfg)]
        configs[0].remat, configs[1].remat = True, False
    for i, config in enumerate(configs):
        if i:
            import keras

            keras.backend.clear_session()
        print(json.dumps(measure(config, reset_peak_memory())), flush=True)


if __name__ == "__main__":
    main()
