"""Keras callbacks that report DINO's teacher EMA and centering, and more.

The updates themselves run inside the compiled training step, exactly once per step:
a batch-level callback fires once per `steps_per_execution` chunk and, on JAX, forces a
state sync, so it cannot do them. Their settings belong to the model (`DINO.config`);
`TeacherEMA` and `Centering` put the current values in the epoch logs. Beside them:
the non-finite-loss stop, the collapse warning, k-NN during training and the official
run files (`OfficialLog`).
"""

import math
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_dino.errors import NonFiniteLossError  # noqa: F401 (its old home)
from keras_dino.reporting import append_log


def _refuse_values(callback, args, kwargs, names):
    if args or kwargs:
        raise TypeError(
            f"{callback} takes no values: the model owns them. Pass "
            f"DINO({', '.join(n + '=...' for n in names)}) (or a DINOConfig)."
        )


class TeacherEMA(keras.callbacks.Callback):
    """Reports the teacher momentum in the epoch logs (`momentum`).

    The teacher's exponential moving average of the student, `teacher = m * teacher +
    (1 - m) * student`, runs inside the compiled step after each optimizer step, with `m`
    following a cosine from the model's `momentum_teacher` to its
    `final_momentum_teacher`. Those are settings of the model:
    `DINO(momentum_teacher=..., final_momentum_teacher=...)`; this callback takes no
    values. `DINO.fit` adds it.

    Example:

    ```python
    model = keras_dino.DINO(momentum_teacher=0.99, final_momentum_teacher=0.999)
    model.fit(ds, epochs=100, callbacks=[keras_dino.callbacks.TeacherEMA()])
    ```
    """

    def __init__(self, *args, **kwargs):
        _refuse_values("TeacherEMA", args, kwargs,
                       ("momentum_teacher", "final_momentum_teacher", "center_momentum"))
        super().__init__()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            step = float(ops.convert_to_numpy(self.model.optimizer.iterations))
            logs["momentum"] = float(self.model.schedules.momentum(max(step - 1, 0)))


class Centering(keras.callbacks.Callback):
    """Reports the center of the teacher outputs in the epoch logs.

    `center = m * center + (1 - m) * mean(teacher logits over the global batch)` runs
    inside the compiled step, with `m` the model's `center_momentum` (a setting of the
    model: `DINO(center_momentum=...)`; this callback takes no values). The logs get
    `center_momentum` and `center_norm`. `DINO.fit` adds it.

    Example:

    ```python
    model.fit(ds, callbacks=[keras_dino.callbacks.Centering()])
    ```
    """

    def __init__(self, *args, **kwargs):
        _refuse_values("Centering", args, kwargs,
                       ("momentum_teacher", "final_momentum_teacher", "center_momentum"))
        super().__init__()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            center = ops.convert_to_numpy(self.model.center)
            logs["center_momentum"] = self.model.config.center_momentum
            logs["center_norm"] = float(np.linalg.norm(center))


class CollapseDetected(UserWarning):
    """The teacher's output collapsed (see `CollapseWarning`)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with a clear error when the loss stops being finite.

    Raising (rather than setting `stop_training`) ends `fit` before `on_epoch_end`, so
    `ModelCheckpoint` and `BackupAndRestore` keep the last good checkpoint instead of
    writing the diverged weights over it.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(
                f"the DINO loss is {loss} at training step {step} (epoch {self._epoch + 1}, "
                f"batch {batch + 1}); training stopped. Checkpoints written before this "
                "step were kept. Lower the learning rate, raise warmup, or check the data."
            )


class KNNEvaluation(keras.callbacks.Callback):
    """Weighted k-NN accuracy of the teacher backbone during training, every N epochs.

    At the end of every `every_n_epochs`-th epoch (and of the last one), the features
    of a small labelled reference split and a test split are extracted with the model's
    backbone (the teacher's, for `keras_dino.DINO`) and the test split is classified
    with the official weighted k-NN vote (`keras_dino.evaluation.knn_classifier`). The
    accuracies go into the epoch logs as `knn_top1` and `knn_top5` (percent), so the
    progress bar, `History`, `log.txt` and the training-curves plot show them beside
    the loss. Off by default: pass it to `fit`.

    Args:
        train_data: the labelled reference set: `(images, labels)` arrays of normalised
            NHWC images, or a dataset of such batches (e.g.
            `keras_dino.evaluation.image_folder_dataset(...)[0]`), read once.
        test_data: the images to classify, in the same forms.
        every_n_epochs: evaluate after every this many epochs (and after the last).
        k: neighbours (20, the paper's best).
        temperature: temperature of the vote weights (0.07).
        batch_size: images per feature-extraction batch.
        backbone: `fn(model) -> backbone` to evaluate; default `model.backbone`.
        save_best: a path: the model's full official checkpoint
            (`DINO.save_official_checkpoint`, the format of `checkpoint.pth`) is written
            there after every evaluation whose top-1 beats every earlier one, so the file
            always holds the weights of the best k-NN top-1 so far; `best` says which
            evaluation it was. The weights `fit` starts from are evaluated too (before
            the first epoch, recorded as the epoch before it: -1 for a new run), so,
            continuing from trained weights, a run that drifts can only keep them.
        initial_best: `(epoch, top1)` of the evaluation that `save_best` already holds
            (a resumed run): only a better one replaces it, and the start is not
            evaluated again.

    Example:

    ```python
    ds, _, _ = keras_dino.evaluation.image_folder_dataset("cifar/train", 500, 32, 32)
    test, _, _ = keras_dino.evaluation.image_folder_dataset("cifar/test", 500, 32, 32)
    model.fit(crops, epochs=10, callbacks=[keras_dino.callbacks.KNNEvaluation(ds, test)])
    ```

    Keeping the best teacher (`best` is `(epoch, top1)`, the epoch 0-based as in the logs):

    ```python
    knn = keras_dino.callbacks.KNNEvaluation(ds, test, save_best="out/checkpoint_best.pth")
    model.fit(crops, epochs=10, callbacks=[knn])
    best_epoch, best_top1 = knn.best
    ```
    """

    def __init__(
        self,
        train_data,
        test_data,
        every_n_epochs: int = 1,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 256,
        backbone=None,
        save_best=None,
        initial_best: tuple | None = None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"KNNEvaluation: every_n_epochs must be >= 1, got {every_n_epochs}")
        self._train_data, self._test_data = train_data, test_data
        self.every_n_epochs = int(every_n_epochs)
        self.k = int(k)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self._backbone = backbone or (lambda model: model.backbone)
        self._splits = None
        self.history = []  # (epoch, top1, top5) of every evaluation
        self._start_pending = save_best is not None and initial_best is None
        self.save_best = None if save_best is None else os.fspath(save_best)
        self.best = None if initial_best is None else (int(initial_best[0]),
                                                       float(initial_best[1]))

    def _arrays(self):
        from keras_dino.evaluation.datasets import labelled_arrays

        if self._splits is None:
            self._splits = (
                labelled_arrays(self._train_data, "KNNEvaluation"),
                labelled_arrays(self._test_data, "KNNEvaluation"),
            )
        return self._splits

    def evaluate(self, backbone) -> tuple[float, float]:
        """`(top1, top5)` of `backbone` on the callback's splits."""
        from keras_dino.evaluation import knn_accuracy

        train, test = self._arrays()
        return knn_accuracy(backbone, train, test, self.k, self.temperature, self.batch_size)

    def on_epoch_begin(self, epoch, logs=None):
        # The starting weights (after any restore from a backup): the first candidate.
        if self._start_pending:
            self._start_pending = False
            self._record(epoch - 1)

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        top1, top5 = self._record(epoch)
        if logs is not None:
            logs["knn_top1"] = top1
            logs["knn_top5"] = top5

    def _record(self, epoch):
        top1, top5 = self.evaluate(self._backbone(self.model))
        self.history.append((epoch, top1, top5))
        if self.best is None or top1 > self.best[1]:
            self.best = (epoch, top1)
            if self.save_best is not None:
                self.model.save_official_checkpoint(self.save_best)
        return top1, top5


class CollapseWarning(keras.callbacks.Callback):
    """Warns, once per kind, when the teacher's output collapses.

    DINO avoids the two trivial solutions by balancing centering and sharpening; the
    epoch logs' `teacher_entropy` and `kl` (`keras_dino.losses.dino_loss_terms`) show
    which one is winning. The paper's signature of a collapse is a KL divergence
    between teacher and student that falls to 0 (the student has nothing left to learn)
    while the teacher's entropy goes to an extreme:

    * near `log(out_dim)`: a uniform output, the same for every image (centering wins);
    * near 0 with the same prototype for every image (sharpening wins).

    The warning names the kind, the numbers and what usually helps. `keras_dino.DINO`
    adds this callback to `fit` unless one is given.

    Args:
        kl_threshold: KL (nats) under which the student is considered to have caught up.
        uniform_fraction: entropy above this fraction of `log(out_dim)` is "uniform".
        sharp_fraction: entropy below this fraction of `log(out_dim)` is "one prototype".
        start_epoch: epochs to wait before checking (the first one moves fast).

    Example:

    ```python
    model.fit(crops, callbacks=[keras_dino.callbacks.CollapseWarning(kl_threshold=0.05)])
    ```
    """

    def __init__(
        self,
        kl_threshold: float = 0.05,
        uniform_fraction: float = 0.9,
        sharp_fraction: float = 0.1,
        start_epoch: int = 1,
    ):
        super().__init__()
        self.kl_threshold = float(kl_threshold)
        self.uniform_fraction = float(uniform_fraction)
        self.sharp_fraction = float(sharp_fraction)
        self.start_epoch = int(start_epoch)
        self.warnings = []  # (epoch, kind, message)

    def diagnose(self, teacher_entropy: float, kl: float, out_dim: int) -> str | None:
        """`"uniform"`, `"one_prototype"` or None for an epoch's entropy and KL."""
        if not (math.isfinite(teacher_entropy) and math.isfinite(kl)) or kl >= self.kl_threshold:
            return None
        max_entropy = math.log(out_dim)
        if teacher_entropy >= self.uniform_fraction * max_entropy:
            return "uniform"
        if teacher_entropy <= self.sharp_fraction * max_entropy:
            return "one_prototype"
        return None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if epoch < self.start_epoch or "teacher_entropy" not in logs or "kl" not in logs:
            return
        out_dim = int(self.model.center.shape[-1])
        entropy, kl = float(logs["teacher_entropy"]), float(logs["kl"])
        kind = self.diagnose(entropy, kl, out_dim)
        if kind is None or any(k == kind for _, k, _ in self.warnings):
            return
        bound = f"log({out_dim}) = {math.log(out_dim):.2f}"
        if kind == "uniform":
            message = (
                f"DINO collapse (uniform) at epoch {epoch + 1}: the teacher's output is almost "
                f"uniform (entropy {entropy:.2f} of {bound}) and the student matches it (KL "
                f"{kl:.3f}), so the features no longer tell images apart. Centering is winning "
                "over sharpening: lower teacher_temp (e.g. 0.02), or lower out_dim or the "
                "learning rate."
            )
        else:
            message = (
                f"DINO collapse (one prototype) at epoch {epoch + 1}: the teacher puts every "
                f"image on the same few prototypes (entropy {entropy:.2f} of {bound}) and the "
                f"student matches it (KL {kl:.3f}). Sharpening is winning over centering: raise "
                "teacher_temp or the center momentum's weight (lower center_momentum)."
            )
        self.warnings.append((epoch, kind, message))
        warnings.warn(message, CollapseDetected, stacklevel=2)


class OfficialLog(keras.callbacks.Callback):
    """The official run's files: a `log.txt` line and `checkpoint.pth` after each epoch.

    As the official `main_dino.py`: one JSON line per epoch (`train_<metric>` for each
    logged metric, and `epoch`) appended to `<output_dir>/log.txt`; the full training
    checkpoint (`DINO.save_official_checkpoint`) written to `checkpoint.pth` every epoch
    and kept as `checkpoint<epoch:04d>.pth` every `saveckp_freq` epochs (0: never).
    Only the process that writes the run's files (`chief=True`) writes anything.

    Example:

    ```python
    model.fit(dataset, epochs=100, callbacks=[OfficialLog("out", saveckp_freq=20)])
    ```
    """

    def __init__(self, output_dir, saveckp_freq: int = 20, chief: bool = True):
        super().__init__()
        self.output_dir = os.fspath(output_dir)
        self.saveckp_freq = int(saveckp_freq or 0)
        self.chief = bool(chief)

    def on_epoch_end(self, epoch, logs=None):
        if not self.chief:
            return
        record = {f"train_{k}": float(v) for k, v in (logs or {}).items()}
        record["epoch"] = epoch
        append_log(self.output_dir, record)
        self.model.save_official_checkpoint(os.path.join(self.output_dir, "checkpoint.pth"))
        if self.saveckp_freq and (epoch + 1) % self.saveckp_freq == 0:
            self.model.save_official_checkpoint(
                os.path.join(self.output_dir, f"checkpoint{epoch:04d}.pth")
            )
