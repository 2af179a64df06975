"""The official linear evaluation (`eval_linear.py`) on a frozen DINO backbone."""

import math
import os

import keras
import numpy as np
from keras import ops

from keras_dino.optim.optimizers import SGD


def has_blocks(backbone) -> bool:
    """Whether the linear features are a ViT's CLS tokens (else the backbone's output)."""
    return hasattr(backbone, "get_intermediate_layers")


def linear_features(backbone, images, n_last_blocks: int = 4, avgpool_patchtokens: bool = False):
    """What the official linear classifier sees.

    For a Vision Transformer, the CLS tokens of the last `n_last_blocks` blocks (normalised by the final norm),
    concatenated; with `avgpool_patchtokens` (used with `n_last_blocks=1`, as for ViT-B),
    the CLS token and the mean of the patch tokens interleaved per channel, exactly as
    the official `torch.cat((cls.unsqueeze(-1), mean.unsqueeze(-1)), -1).reshape(B, -1)`.
    For any other backbone (ResNet), its output: `eval_linear.py` takes that branch for
    every architecture whose name lacks "vit", and `n_last_blocks` and
    `avgpool_patchtokens` do not apply.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> x = linear_features(vit_tiny(16, depth=4), np.zeros((2, 32, 32, 3), "float32"))
    >>> tuple(x.shape)
    (2, 768)
    """
    if not has_blocks(backbone):
        return backbone(images, training=False)
    blocks = backbone.get_intermediate_layers(images, n_last_blocks)
    return features_from_blocks(blocks, backbone.num_prefix_tokens, avgpool_patchtokens)


def features_from_blocks(blocks, num_prefix_tokens: int = 1, avgpool_patchtokens: bool = False):
    """The official linear features from the normalised tokens of the last blocks.

    `blocks`: `get_intermediate_layers(images, n)` (or `forward_intermediates`'s
    `"blocks"`); the patch tokens start at `num_prefix_tokens` (the model's: the class
    token and any register tokens, which the official average over patches leaves out).

    Example:

    >>> import numpy as np
    >>> blocks = [np.ones((2, 5, 3), "float32")]
    >>> tuple(features_from_blocks(blocks, 1, avgpool_patchtokens=True).shape)
    (2, 6)
    """
    cls = ops.concatenate([t[:, 0] for t in blocks], axis=-1)
    if not avgpool_patchtokens:
        return cls
    if len(blocks) != 1:
        raise ValueError(
            "avgpool_patchtokens interleaves the CLS token with the mean patch token, which "
            "the official code defines for n_last_blocks=1 only."
        )
    mean = ops.mean(blocks[-1][:, num_prefix_tokens:], axis=1)
    both = ops.stack([cls, mean], axis=-1)
    return ops.reshape(both, (ops.shape(cls)[0], -1))


@keras.saving.register_keras_serializable(package="keras_dino")
class LinearClassifier(keras.layers.Layer):
    """The official linear head: a dense layer with weights N(0, 0.01) and zero bias.

    Example:

    >>> import numpy as np
    >>> tuple(LinearClassifier(10)(np.zeros((2, 384), "float32")).shape)
    (2, 10)
    """

    def __init__(self, num_labels: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.linear = keras.layers.Dense(
            num_labels,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer="zeros",
            name="linear",
        )

    def build(self, input_shape):
        self.linear.build(input_shape)

    def call(self, x):
        return self.linear(ops.reshape(x, (ops.shape(x)[0], -1)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_labels)

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels}


class EpochCosineSchedule:
    """`CosineAnnealingLR(T_max=epochs, eta_min=0)` stepped once per epoch, as officially.

    `lr(step) = base_lr * (1 + cos(pi * epoch / epochs)) / 2` with
    `epoch = step // steps_per_epoch`; no weight decay. Used by the torch-arithmetic SGD.
    """

    def __init__(self, base_lr: float, epochs: int, steps_per_epoch: int | None = None):
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def epoch_lr(self, epoch: int) -> float:
        """The learning rate of a whole epoch, as a Python float.

        Example:

        >>> EpochCosineSchedule(0.1, epochs=4).epoch_lr(2)
        0.05
        """
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def lr(self, step):
        if not self.steps_per_epoch:
            raise ValueError("steps_per_epoch is not set (LinearProbe.fit sets it).")
        epoch = ops.floor(ops.cast(step, "float32") / float(self.steps_per_epoch))
        return self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * epoch / float(self.epochs)))

    def wd(self, step):
        return ops.zeros(())

    def last_layer_trains(self, step):
        return True


class _SetStepsPerEpoch(keras.callbacks.Callback):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_train_begin(self, logs=None):
        if not self.schedule.steps_per_epoch:
            steps = self.params.get("steps")
            if not steps:
                raise ValueError("pass steps_per_epoch= to fit for an unsized dataset.")
            self.schedule.steps_per_epoch = int(steps)


@keras.saving.register_keras_serializable(package="keras_dino")
class LinearProbe(keras.Model):
    """A frozen backbone, the official linear features, and a trainable linear layer.

    Train it like the official `eval_linear.py`: SGD with momentum 0.9 and no weight
    decay, `lr * batch_size / 256` with per-epoch cosine annealing, cross-entropy; the
    backbone runs in inference mode and gets no gradient.

    Args:
        backbone: a `VisionTransformer`, or another backbone (ResNet) whose output
            is the feature vector.
        num_labels: number of classes.
        n_last_blocks: ViT: CLS tokens of this many last blocks (4 for ViT-S, 1 for
            ViT-B).
        avgpool_patchtokens: ViT: also the mean patch token (official for ViT-B).

    Example:

    ```python
    probe = keras_dino.evaluation.LinearProbe(model.backbone, num_labels=1000)
    probe.compile_official(lr=0.001, batch_size=256, epochs=100)
    probe.fit(train_ds, validation_data=val_ds, epochs=100)
    ```
    """

    def __init__(self, backbone, num_labels: int, n_last_blocks: int = 4,
                 avgpool_patchtokens: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        if not backbone.built:
            # Weights created after `trainable = False` would still be trainable.
            backbone.build((None, None, None, 3))
        self.backbone.trainable = False
        self.num_labels = num_labels
        self.n_last_blocks = n_last_blocks
        self.avgpool_patchtokens = avgpool_patchtokens
        self.classifier = LinearClassifier(num_labels, name="linear_classifier")
        width = backbone.embed_dim
        if has_blocks(backbone):
            width *= 2 if avgpool_patchtokens else n_last_blocks
        self.classifier.build((None, width))
        self.schedule = None

    def call(self, images, training=None):
        features = linear_features(
            self.backbone, images, self.n_last_blocks, self.avgpool_patchtokens
        )
        return self.classifier(ops.stop_gradient(features))

    @property
    def blocks_needed(self) -> int:
        """How many last blocks `logits_from` reads (0: the backbone's output only)."""
        return self.n_last_blocks if has_blocks(self.backbone) else 0

    def logits_from(self, embedding, blocks):
        """The logits from one backbone pass: its output `embedding` and the normalised
        tokens of its last `blocks_needed` blocks (`forward_intermediates`), so that an
        export computes the features and the logits from the same pass.

        Example:

        >>> import numpy as np
        >>> from keras_dino.models import vit_tiny
        >>> probe = LinearProbe(vit_tiny(16, depth=2), num_labels=3, n_last_blocks=2)
        >>> x = np.zeros((1, 32, 32, 3), "float32")
        >>> out = probe.backbone.forward_intermediates(x, probe.blocks_needed)
        >>> logits = keras.ops.convert_to_numpy(probe.logits_from(None, out["blocks"]))
        >>> bool(np.allclose(logits, keras.ops.convert_to_numpy(probe(x)), atol=1e-6))
        True
        """
        if not has_blocks(self.backbone):
            return self.classifier(embedding)
        features = features_from_blocks(blocks, self.backbone.num_prefix_tokens,
                                        self.avgpool_patchtokens)
        return self.classifier(features)

    def compile_official(self, lr: float = 0.001, batch_size: int = 256, epochs: int = 100, **kw):
        """SGD(momentum 0.9) with the official scaled lr and per-epoch cosine; top-1/5."""
        self.schedule = EpochCosineSchedule(lr * batch_size / 256.0, epochs)
        optimizer = SGD(self.schedule, clip_grad=0.0, momentum=0.9, name="linear_sgd")
        self.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="acc1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, self.num_labels), name="acc5"),
            ],
            **kw,
        )

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if self.schedule is not None:
            callbacks.insert(0, _SetStepsPerEpoch(self.schedule))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_labels": self.num_labels,
            "n_last_blocks": self.n_last_blocks,
            "avgpool_patchtokens": self.avgpool_patchtokens,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# --- training loop, evaluation and checkpoints of the official eval_linear.py ----------


def evaluate_linear_probe(probe, data, verbose: int = 1) -> dict:
    """Loss and top-1 / top-5 accuracy (in percent) of a probe on labelled batches.

    Args:
        probe: a `LinearProbe` compiled with `compile_official`.
        data: `(images, labels)` batches, e.g. `image_folder_dataset(...)[0]`.
        verbose: show a progress bar.

    Returns:
        `{"loss": ..., "acc1": ..., "acc5": ...}`, the keys of the official `test_*` logs.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from keras_dino.models import vit_tiny
    >>> probe = LinearProbe(vit_tiny(16, depth=1), num_labels=3, n_last_blocks=1)
    >>> probe.compile_official(epochs=1)
    >>> data = tf.data.Dataset.from_tensor_slices(
    ...     (np.zeros((4, 32, 32, 3), "float32"), np.array([0, 1, 2, 0]))).batch(2)
    >>> sorted(evaluate_linear_probe(probe, data, verbose=0))
    ['acc1', 'acc5', 'loss']
    """
    results = probe.evaluate(data, return_dict=True, verbose=verbose)
    return {
        "loss": float(results["loss"]),
        "acc1": 100.0 * float(results["acc1"]),
        "acc5": 100.0 * float(results["acc5"]),
    }


def _momentum_buffer(optimizer, variable):
    index = optimizer._get_variable_index(variable)
    return ops.convert_to_numpy(optimizer.momentum_buffers[index])


def save_linear_checkpoint(probe, path, epoch: int, best_acc: float) -> str:
    """Writes the official `checkpoint.pth.tar` of `eval_linear.py` for a trained probe.

    The layout the official script resumes from, written without torch: `epoch` (the
    next epoch to run), `state_dict` (`module.linear.weight` / `.bias`, torch layout),
    the SGD state (momentum buffers, param group), the `CosineAnnealingLR` state and
    `best_acc`.

    Args:
        probe: a `LinearProbe` compiled with `compile_official` (and trained, so that its
            optimizer is built).
        path: the file to write.
        epoch: number of epochs done.
        best_acc: best top-1 test accuracy so far, in percent.

    Returns:
        `path`.

    Example:

    >>> import tempfile
    >>> from keras_dino.models import vit_tiny
    >>> probe = LinearProbe(vit_tiny(16, depth=1), num_labels=3, n_last_blocks=1)
    >>> probe.compile_official(lr=0.01, batch_size=256, epochs=2)
    >>> path = save_linear_checkpoint(probe, tempfile.mktemp(suffix=".pth.tar"), 0, 0.0)
    >>> load_linear_checkpoint(probe, path)
    {'epoch': 0, 'best_acc': 0.0}
    """
    from keras_dino.checkpoints.torch_format import write_torch_checkpoint

    if probe.schedule is None:
        raise ValueError("compile the probe with compile_official() before saving it.")
    linear = probe.classifier.linear
    optimizer = probe.optimizer
    if not optimizer.built:
        optimizer.build(probe.trainable_variables)
    schedule = probe.schedule
    weight = ops.convert_to_numpy(linear.kernel).T
    bias = ops.convert_to_numpy(linear.bias)
    group = dict(
        lr=schedule.epoch_lr(epoch),
        momentum=float(optimizer.momentum),
        dampening=0,
        weight_decay=0,
        nesterov=False,
        maximize=False,
        foreach=None,
        differentiable=False,
        fused=None,
        initial_lr=schedule.base_lr,
        params=[0, 1],
    )
    checkpoint = {
        "epoch": int(epoch),
        "state_dict": {"module.linear.weight": weight, "module.linear.bias": bias},
        "optimizer": {
            "state": {
                0: {"momentum_buffer": _momentum_buffer(optimizer, linear.kernel).T},
                1: {"momentum_buffer": _momentum_buffer(optimizer, linear.bias)},
            },
            "param_groups": [group],
        },
        "scheduler": {
            "T_max": int(schedule.epochs),
            "eta_min": 0,
            "base_lrs": [schedule.base_lr],
            "last_epoch": int(epoch),
            "verbose": False,
            "_step_count": int(epoch) + 1,
            "_get_lr_called_within_step": False,
            "_last_lr": [schedule.epoch_lr(epoch)],
        },
        "best_acc": float(best_acc),
    }
    write_torch_checkpoint(checkpoint, path)
    return os.fspath(path)


def load_linear_checkpoint(probe, path) -> dict:
    """Restores a probe's linear layer (and SGD momentum) from a `checkpoint.pth.tar`.

    Reads what `save_linear_checkpoint` or the official `eval_linear.py` writes (the
    `module.` prefix is optional; a bare `{"linear.weight", "linear.bias"}` state dict
    works too). The optimizer's step count is left alone (`train_linear_probe` sets it).

    Returns:
        `{"epoch": ..., "best_acc": ...}` (0 and 0.0 when the file does not say).

    Example:

    ```python
    probe.compile_official(lr=0.001, batch_size=256, epochs=100)
    state = load_linear_checkpoint(probe, "out/checkpoint.pth.tar")   # {"epoch": 12, ...}
    ```
    """
    from keras_dino.checkpoints.torch_format import read_checkpoint

    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    linear = probe.classifier.linear
    weight = np.asarray(state["linear.weight"]).T
    bias = np.asarray(state["linear.bias"])
    if weight.shape != tuple(linear.kernel.shape):
        raise ValueError(
            f"{path} holds a linear layer of {weight.shape[0]} inputs and {weight.shape[1]} "
            f"labels; this probe has {linear.kernel.shape[0]} inputs and "
            f"{linear.kernel.shape[1]} labels (check --n_last_blocks, --avgpool_patchtokens "
            "and --num_labels)."
        )
    linear.kernel.assign(weight.astype("float32"))
    linear.bias.assign(bias.astype("float32"))
    buffers = (checkpoint.get("optimizer") or {}).get("state") or {}
    optimizer = getattr(probe, "optimizer", None)
    if buffers and isinstance(optimizer, SGD):
        if not optimizer.built:
            optimizer.build(probe.trainable_variables)
        for index, variable, transpose in ((0, linear.kernel, True), (1, linear.bias, False)):
            if index in buffers and "momentum_buffer" in buffers[index]:
                value = np.asarray(buffers[index]["momentum_buffer"], "float32")
                slot = optimizer.momentum_buffers[optimizer._get_variable_index(variable)]
                slot.assign(value.T if transpose else value)
    return {
        "epoch": int(checkpoint.get("epoch", 0)),
        "best_acc": float(checkpoint.get("best_acc", 0.0)),
    }


def _steps_per_epoch(data):
    try:
        steps = int(data.cardinality())
    except (AttributeError, TypeError):
        steps = -1
    if steps <= 0:
        raise ValueError(
            "the number of batches per epoch of this dataset is unknown: pass steps_per_epoch."
        )
    return steps


def train_linear_probe(
    probe,
    train_data,
    val_data,
    epochs: int,
    val_freq: int = 1,
    checkpoint_path=None,
    steps_per_epoch: int | None = None,
    on_epoch_end=None,
    verbose: int = 1,
) -> dict:
    """The epoch loop of the official `eval_linear.py`: train, validate, log, checkpoint.

    Each epoch trains the probe on `train_data` (one `fit` epoch), validates it on
    `val_data` every `val_freq` epochs and at the last one, calls `on_epoch_end` with the
    epoch's record (the official `log.txt` keys: `train_loss`, `train_lr`, `epoch`, and
    `test_loss`, `test_acc1`, `test_acc5` when validated) and writes the official
    checkpoint to `checkpoint_path`. If that file exists, training resumes after its
    epoch (weights, momentum, learning-rate schedule and best accuracy).

    Args:
        probe: a `LinearProbe` compiled with `compile_official(..., epochs=epochs)`.
        train_data: `(images, labels)` batches of training views.
        val_data: `(images, labels)` batches of evaluation views.
        epochs: total number of epochs (as the schedule's).
        val_freq: validate every this many epochs.
        checkpoint_path: where to save and resume from (None: neither).
        steps_per_epoch: batches per epoch, for datasets of unknown size.
        on_epoch_end: `fn(record, best_acc)` called after each epoch.
        verbose: progress bars.

    Returns:
        `{"best_acc": ..., "start_epoch": ..., "records": [...]}`.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from keras_dino.models import vit_tiny
    >>> probe = LinearProbe(vit_tiny(16, depth=1), num_labels=2, n_last_blocks=1)
    >>> probe.compile_official(lr=0.01, batch_size=256, epochs=1)
    >>> data = tf.data.Dataset.from_tensor_slices(
    ...     (np.zeros((4, 32, 32, 3), "float32"), np.array([0, 1, 0, 1]))).batch(2)
    >>> result = train_linear_probe(probe, data, data, epochs=1, verbose=0)
    >>> sorted(result["records"][0])
    ['epoch', 'test_acc1', 'test_acc5', 'test_loss', 'train_loss', 'train_lr']
    """
    if probe.schedule is None:
        raise ValueError("compile the probe with compile_official() first.")
    steps = steps_per_epoch or _steps_per_epoch(train_data)
    probe.schedule.steps_per_epoch = steps
    start, best = 0, 0.0
    if checkpoint_path and os.path.exists(checkpoint_path):
        restored = load_linear_checkpoint(probe, checkpoint_path)
        start, best = restored["epoch"], restored["best_acc"]
    if not probe.optimizer.built:
        probe.optimizer.build(probe.trainable_variables)
    probe.optimizer.iterations.assign(start * steps)
    records = []
    for epoch in range(start, epochs):
        history = probe.fit(
            train_data,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # the dataset shuffles itself
            verbose=verbose,
        )
        record = {
            "train_loss": float(history.history["loss"][-1]),
            "train_lr": probe.schedule.epoch_lr(epoch),
            "epoch": epoch,
        }
        if epoch % val_freq == 0 or epoch == epochs - 1:
            test = evaluate_linear_probe(probe, val_data, verbose=verbose)
            best = max(best, test["acc1"])
            record.update({f"test_{k}": v for k, v in test.items()})
        if on_epoch_end is not None:
            on_epoch_end(record, best)
        if checkpoint_path:
            save_linear_checkpoint(probe, checkpoint_path, epoch + 1, best)
        records.append(record)
    return {"best_acc": best, "start_epoch": start, "records": records}
