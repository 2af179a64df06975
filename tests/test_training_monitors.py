"""What DINO reports while it trains: the loss's entropy/KL parts, k-NN, collapse warnings."""

import math
import warnings

import numpy as np
import pytest
from test_dino_training import tiny_crops, tiny_dino

from keras_dino import callbacks as dino_callbacks
from keras_dino.evaluation import extract_features, knn_classifier
from keras_dino.losses import dino_loss, dino_loss_terms, teacher_entropy


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_teacher_entropy_of_uniform_and_of_a_peaked_teacher():
    k = 16
    uniform = np.zeros((4, k), "float32")
    center = np.zeros((1, k), "float32")
    # q = 1/16 exactly; 16 float32 logs (4 ulps each) summed and averaged: a few ulps of
    # log(16) = 2.77 (2.4e-7 each); 1e-5 is 40 ulps.
    assert float(teacher_entropy(uniform, center, 0.04)) == pytest.approx(math.log(k), abs=1e-5)
    peaked = np.zeros((4, k), "float32")
    peaked[:, 3] = 1.0  # a margin of 1 / 0.04 = 25 nats: one prototype takes everything
    # Analytically 15 * e^-25 * 26 = 5.4e-9 (float32 rounds the top q to 1, log 1 = 0);
    # 1e-5 is far above that and any round-off, far below log(16).
    assert float(teacher_entropy(peaked, center, 0.04)) < 1e-8 * 1e3


def test_loss_is_exactly_teacher_entropy_plus_kl():
    rng = np.random.default_rng(0)
    batch, k, ncrops = 3, 10, 4
    student = rng.normal(size=(ncrops * batch, k)).astype("float32")
    teacher = rng.normal(size=(2 * batch, k)).astype("float32")
    center = rng.normal(size=(1, k)).astype("float32") * 0.1
    loss, entropy, kl = (float(v) for v in dino_loss_terms(student, teacher, center, 0.07, 0.1))
    # numpy, pair by pair: H(q_i) and KL(q_i || p_v) over the pairs i != v
    q = _softmax((teacher - center) / 0.07).reshape(2, batch, k)
    p = _softmax(student / 0.1).reshape(ncrops, batch, k)
    pairs = [(i, v) for i in range(2) for v in range(ncrops) if i != v]
    h = np.mean([-(q[i] * np.log(q[i])).sum(-1).mean() for i, _ in pairs])
    kl_np = np.mean([(q[i] * (np.log(q[i]) - np.log(p[v]))).sum(-1).mean() for i, v in pairs])
    # Two float32 programs: logits (t - c) / 0.07 reach 34, a few of whose ulps (3.8e-6
    # each) move q and H by a few 1e-6 relative (5e-7 measured); 1e-5 relative.
    assert entropy == pytest.approx(h, rel=1e-5)
    # kl = loss - entropy: both errors above; rel 1e-4 leaves room for cancellation when
    # the KL is much smaller than the loss (here it is not), abs 1e-6 for a KL near 0.
    assert kl == pytest.approx(kl_np, rel=1e-4, abs=1e-6)
    # The loss *is* dino_loss on the same inputs (identical bits); rel 1e-6 is 8 ulps.
    assert loss == pytest.approx(float(dino_loss(student, teacher, center, 0.07, 0.1)), rel=1e-6)
    # kl = float32(loss - entropy): one rounding, u relative (6e-8).
    assert loss == pytest.approx(entropy + kl, rel=1e-6)


def test_fit_logs_teacher_entropy_and_kl_that_add_up_to_the_loss():
    model = tiny_dino(out_dim=32)
    history = model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0).history
    for epoch in range(2):
        entropy, kl, loss = (history[key][epoch] for key in ("teacher_entropy", "kl", "loss"))
        # A float32 entropy <= log(32) = 3.47, a few ulps (2.4e-7) over at most: 1e-5.
        assert 0.0 <= entropy <= math.log(32) + 1e-5
        # Epoch means of the three per-batch values, each kept in float32 by Keras'
        # metrics: a few roundings at magnitude ~ log(32) per batch, ~1e-6; 1e-5.
        assert loss == pytest.approx(entropy + kl, rel=1e-5, abs=1e-5)


@pytest.mark.slow
# a 3-epoch tiny DINO on 16 noise images may collapse (torch: at epoch 3); the k-NN is
# what is checked here, the collapse monitor has its own tests
@pytest.mark.filterwarnings("ignore::keras_dino.callbacks.CollapseDetected")
def test_knn_evaluation_logs_the_accuracy_of_the_teacher_backbone():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(24, 16, 16, 3)).astype("float32")
    labels = np.arange(24) % 3
    train, test = (images[:16], labels[:16]), (images[16:], labels[16:])
    monitor = dino_callbacks.KNNEvaluation(train, test, every_n_epochs=2, k=5)
    model = tiny_dino(epochs=3)
    history = model.fit(tiny_crops(), batch_size=4, epochs=3, verbose=0, callbacks=[monitor])
    # Epochs 2 (every 2nd) and 3 (the last): a value, in the logs and in `history`.
    assert [epoch for epoch, _, _ in monitor.history] == [1, 2]
    assert "knn_top1" in history.history
    assert len(history.history["knn_top1"]) == 2
    # The last value is the official k-NN of the trained teacher's features.
    train_f, train_y = extract_features(model.backbone, train, verbose=0)
    test_f, test_y = extract_features(model.backbone, test, verbose=0)
    top1, top5 = knn_classifier(train_f, train_y, test_f, test_y, k=5)
    assert monitor.history[-1][1:] == (top1, top5)
    # The same accuracy from counts over 8 images, only passed through float32 in the
    # logs: approx's rel 1e-6 is 16 times float32's rounding.
    assert history.history["knn_top1"][-1] == pytest.approx(top1)
    with pytest.raises(ValueError, match="every_n_epochs"):
        dino_callbacks.KNNEvaluation(train, test, every_n_epochs=0)


@pytest.mark.parametrize(
    "entropy, kl, expected",
    [
        (0.97 * math.log(1024), 0.01, "uniform"),
        (0.02 * math.log(1024), 0.01, "one_prototype"),
        (0.5 * math.log(1024), 0.01, None),  # sharp enough, diverse enough
        (0.97 * math.log(1024), 0.8, None),  # the student still learns from the teacher
        (float("nan"), 0.01, None),
    ],
)
def test_collapse_diagnosis(entropy, kl, expected):
    assert dino_callbacks.CollapseWarning().diagnose(entropy, kl, 1024) == expected


def test_collapse_warning_names_the_kind_once():
    model = tiny_dino(out_dim=32)
    monitor = dino_callbacks.CollapseWarning()
    monitor.set_model(model)
    uniform = {"teacher_entropy": math.log(32) - 1e-3, "kl": 1e-3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.on_epoch_end(0, dict(uniform))  # the first epoch is not checked
        monitor.on_epoch_end(1, dict(uniform))
        monitor.on_epoch_end(2, dict(uniform))  # the same kind is not repeated
    messages = [str(w.message) for w in caught if w.category is dino_callbacks.CollapseDetected]
    assert len(messages) == 1
    assert "uniform" in messages[0] and "epoch 2" in messages[0] and "teacher_temp" in messages[0]
    assert [kind for _, kind, _ in monitor.warnings] == ["uniform"]


@pytest.mark.slow
def test_dino_fit_warns_of_a_collapse_by_default(monkeypatch):
    # Every epoch diagnosed as collapsed: fit must have a CollapseWarning of its own.
    monkeypatch.setattr(dino_callbacks.CollapseWarning, "diagnose", lambda *a: "uniform")
    model = tiny_dino()
    with pytest.warns(dino_callbacks.CollapseDetected, match="uniform"):
        model.fit(tiny_crops(), batch_size=4, epochs=2, verbose=0)
