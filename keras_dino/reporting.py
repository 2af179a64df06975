"""Plots of a training run, for people who would rather look than read."""

import json
import os

CURVES = (
    ("train_loss", "loss"),
    ("train_lr", "learning rate"),
    ("train_wd", "weight decay"),
    ("train_momentum", "teacher momentum"),
    ("train_teacher_temp", "teacher temperature"),
)


def read_log(path) -> list[dict]:
    """The per-epoch records of a `log.txt` (JSON lines; other lines are ignored)."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "epoch" in record:
                records.append(record)
    return records


def plot_training_curves(log_path, output_path) -> str:
    """Draws loss, lr, weight decay, teacher momentum and temperature per epoch to a PNG.

    Example:

    ```python
    plot_training_curves("out/log.txt", "out/training_curves.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} holds no epoch records to plot.")
    # A resumed run appends: keep the last record of each epoch.
    by_epoch = {int(r["epoch"]): r for r in records}
    epochs = sorted(by_epoch)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.2 * len(CURVES), 2.8))
    for ax, (key, title) in zip(axes, CURVES):
        values = [by_epoch[e].get(key) for e in epochs]
        points = [(e + 1, v) for e, v in zip(epochs, values) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fig.savefig(output_path, dpi=100)
    plt.close(fig)
    return output_path
