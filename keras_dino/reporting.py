"""Plots of a training run, for people who would rather look than read."""

import json
import os

CURVES = (
    ("train_loss", "loss"),
    ("train_knn_top1", "k-NN top-1 (%)"),
    ("train_jaccard", "attention Jaccard (best head)"),
    ("train_teacher_entropy", "teacher entropy"),
    ("train_kl", "KL(teacher || student)"),
    ("train_lr", "learning rate"),
    ("train_wd", "weight decay"),
    ("train_momentum", "teacher momentum"),
    ("train_teacher_temp", "teacher temperature"),
)


def append_log(output_dir, record: dict) -> str:
    """Appends one JSON line to `<output_dir>/log.txt`, as the official tools do.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = append_log(folder, {"train_loss": 3.5, "epoch": 0})
    >>> read_log(path)
    [{'train_loss': 3.5, 'epoch': 0}]
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "log.txt")
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


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


def agg_figure(**kwargs):
    """A matplotlib `Figure` drawn by its own Agg canvas, outside pyplot.

    The user's backend (`matplotlib.use`, an open notebook's figures) is left as it was,
    and nothing stays registered with pyplot once the figure is saved.

    Example:

    >>> fig = agg_figure(figsize=(2, 1))
    >>> type(fig.canvas).__name__
    'FigureCanvasAgg'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_training_curves(log_path, output_path, out_dim: int | None = None) -> str:
    """Draws the per-epoch curves of a `log.txt` to a PNG.

    One panel per logged value: the loss, the k-NN accuracy (when
    `keras_dino.callbacks.KNNEvaluation` ran), the Jaccard index of the thresholded
    attention against true masks (`jaccard`, which `bench/emergence.py` logs), the
    teacher's entropy and the KL divergence
    from teacher to student (the collapse indicators; with `out_dim`, the entropy of a
    uniform output, `log(out_dim)`, is drawn as a dashed line), the learning rate, the
    weight decay, the teacher momentum and temperature. Values never logged get no panel.

    Example:

    ```python
    plot_training_curves("out/log.txt", "out/training_curves.png", out_dim=65536)
    ```
    """
    import math

    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} holds no epoch records to plot.")
    # A resumed run appends: keep the last record of each epoch.
    by_epoch = {int(r["epoch"]): r for r in records}
    epochs = sorted(by_epoch)
    panels = [(k, t) for k, t in CURVES if any(by_epoch[e].get(k) is not None for e in epochs)]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = agg_figure(figsize=(3.2 * columns, 2.8 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, panels):
        points = [(e + 1, by_epoch[e][key]) for e in epochs if by_epoch[e].get(key) is not None]
        ax.plot(*zip(*points), marker="o", markersize=3)
        if key == "train_teacher_entropy" and out_dim:
            ax.axhline(math.log(out_dim), color="grey", linestyle="--", linewidth=1,
                       label=f"uniform, log({out_dim})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fig.savefig(output_path, dpi=100)
    return output_path
