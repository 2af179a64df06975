"""k-NN, linear probe and attention-map arithmetic against independent references."""

import math

import numpy as np
import pytest
from keras import ops

from keras_dino.evaluation import (
    EpochCosineSchedule,
    LinearClassifier,
    LinearProbe,
    attention_threshold_mask,
    cls_attention_maps,
    knn_classifier,
    linear_features,
)
from keras_dino.models import vit_tiny
from keras_dino.testing.tolerance import UNIT_ROUNDOFF


def brute_force_knn(train, train_labels, test, test_labels, k, T, num_classes):
    """One test sample at a time, straight from the description in the paper's code."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    top1 = top5 = 0
    for x, y in zip(test, test_labels):
        sims = train @ x
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_labels[j]] += math.exp(sims[j] / T)
        ranking = np.argsort(-votes, kind="stable")
        top1 += ranking[0] == y
        top5 += y in ranking[: min(5, k)]
    n = len(test_labels)
    return 100.0 * top1 / n, 100.0 * top5 / n


@pytest.mark.parametrize("k", [1, 10, 20, 100])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    num_classes, dim = 12, 16
    centers = rng.normal(size=(num_classes, dim))
    train_labels = rng.integers(0, num_classes, 400)
    test_labels = rng.integers(0, num_classes, 150)
    train = (centers[train_labels] + 1.5 * rng.normal(size=(400, dim))).astype("float32")
    test = (centers[test_labels] + 1.5 * rng.normal(size=(150, dim))).astype("float32")
    got = knn_classifier(train, train_labels, test, test_labels, k=k, T=0.07,
                         num_classes=num_classes, chunk_size=64)
    want = brute_force_knn(train, train_labels, test, test_labels, k, 0.07, num_classes)
    # Accuracies over 150 test images are counts (one image is 0.67 points), both
    # percentages formed in float64: abs 1e-9 asks for the same counts.
    assert got == pytest.approx(want, abs=1e-9)
    assert 100.0 / num_classes < got[0] < 100.0  # informative but not trivial data


def test_knn_takes_class_names_as_labels():
    """String labels (class names) give the accuracy of their integer indices; integral
    float labels are indices."""
    rng = np.random.default_rng(0)
    names = np.array(["cat", "dog", "ant", "bee"])
    centers = rng.normal(size=(4, 8))
    train_idx, test_idx = rng.integers(0, 4, 60), rng.integers(0, 4, 25)
    train = (centers[train_idx] + 0.8 * rng.normal(size=(60, 8))).astype("float32")
    test = (centers[test_idx] + 0.8 * rng.normal(size=(25, 8))).astype("float32")
    by_index = knn_classifier(train, train_idx, test, test_idx, k=5)
    assert knn_classifier(train, names[train_idx], test, names[test_idx], k=5) == by_index
    assert knn_classifier(train, train_idx.astype("float64"), test, test_idx, k=5) == by_index
    assert 25.0 < by_index[0] < 100.0  # informative but not trivial


def test_knn_rejects_k_larger_than_train_set():
    from keras_dino.errors import InputError

    # An InputError: the eval-knn tool ends in its one line, not a traceback.
    with pytest.raises(InputError, match=r"k must be in \[1, 3\] \(the number of training "):
        knn_classifier(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], k=5)


def test_knn_names_features_and_labels_that_do_not_match():
    """One label per feature and one feature width, or a ValueError (not an accuracy:
    10 features with 9 labels scored 100% before)."""
    features, labels = np.eye(10, dtype="float32"), np.arange(10)
    with pytest.raises(ValueError, match="10 train features but 9 train labels"):
        knn_classifier(features, labels[:9], features, labels, k=5)
    with pytest.raises(ValueError, match="10 test features but 4 test labels"):
        knn_classifier(features, labels, features, labels[:4], k=5)
    with pytest.raises(ValueError, match="10 dimensions and test features 6: extract both"):
        knn_classifier(features, labels, features[:, :6], labels, k=5)
    with pytest.raises(ValueError, match="train_features must be \\(N, D\\)"):
        knn_classifier(features[0], labels[:1], features, labels, k=1)
    # (N, 1) labels, as keras.datasets gives them, are one label per feature
    assert knn_classifier(features, labels[:, None], features, labels[:, None], k=1) == (
        100.0, 100.0)


def test_threshold_keeps_the_smallest_set_with_the_mass():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 14, 14)) ** 4
    masks = attention_threshold_mask(maps, 0.6)
    for head, mask in zip(maps, masks):
        p = head / head.sum()
        kept = p[mask]
        # A float64 sum of <= 196 probabilities: round-off ~1e-14, far below 1e-12.
        assert kept.sum() >= 0.6 - 1e-12
        # minimal: dropping the weakest kept patch falls below the threshold,
        # and every dropped patch is weaker than every kept one
        assert kept.sum() - kept.min() < 0.6
        assert p[~mask].max() <= kept.min()


def test_cls_attention_maps_are_rows_of_last_attention():
    model = vit_tiny(16, depth=2)
    image = np.random.default_rng(1).normal(size=(64, 48, 3)).astype("float32")
    maps = cls_attention_maps(model, image)
    attn = ops.convert_to_numpy(model.get_last_selfattention(image[None]))
    assert maps.shape == (3, 4, 3)
    np.testing.assert_array_equal(maps.reshape(3, -1), attn[0, :, 0, 1:])


def test_linear_features_official_layout():
    model = vit_tiny(16, depth=4)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    blocks = [ops.convert_to_numpy(t) for t in model.get_intermediate_layers(x, 4)]
    got = ops.convert_to_numpy(linear_features(model, x, 4))
    # The same forward pass on the same input: identical bits (0 measured); rtol 1e-6 is 8 ulps.
    np.testing.assert_allclose(got, np.concatenate([b[:, 0] for b in blocks], -1), rtol=1e-6)
    pooled = ops.convert_to_numpy(linear_features(model, x, 1, avgpool_patchtokens=True))
    last = blocks[-1]
    expected = np.stack([last[:, 0], last[:, 1:].mean(1)], -1).reshape(2, -1)
    # The same pass (identical tokens), then a mean of 4 patch tokens in numpy's and the
    # backend's order: 3 roundings, <= 3 u max|x| each program, 2 programs: atol 6 u max|x|
    # (1.4e-6 at |x| = 4; it was 1e-6), for means that cancel; rtol 1e-5 is 168 u.
    atol = 6 * UNIT_ROUNDOFF * float(np.abs(last[:, 1:]).max())
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=atol)
    with pytest.raises(ValueError, match="n_last_blocks=1"):
        linear_features(model, x, 2, avgpool_patchtokens=True)


def test_linear_classifier_init():
    layer = LinearClassifier(1000)
    layer.build((None, 1536))
    w = ops.convert_to_numpy(layer.linear.kernel)
    n = w.size
    # std of the sample std of n normals is sigma / sqrt(2n): allow 5 of those.
    assert abs(w.std() - 0.01) < 5 * 0.01 / math.sqrt(2 * n)
    assert abs(w.mean()) < 5 * 0.01 / math.sqrt(n)
    assert not ops.convert_to_numpy(layer.linear.bias).any()


def test_epoch_cosine_schedule_is_torch_cosine_annealing():
    import torch

    schedule = EpochCosineSchedule(0.004, epochs=5, steps_per_epoch=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.004, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5, eta_min=0)
    for epoch in range(5):
        # float32 lr = base * (1 + cos x) / 2: x = pi * epoch / 5 carries 1.5 u relative, cos
        # 4 ulps (<= 8 u |cos x|), both divided by 1 + cos x (0.19 at epoch 4: 48 u there);
        # 3 more roundings. torch's float64 is exact by comparison. (It was rel 1e-6 = 17 u.)
        x = math.pi * epoch / 5
        rel = UNIT_ROUNDOFF * (
            (1.5 * x * abs(math.sin(x)) + 8 * abs(math.cos(x))) / (1 + math.cos(x)) + 3)
        for step in range(3):
            assert float(schedule.lr(epoch * 3 + step)) == pytest.approx(
                opt.param_groups[0]["lr"], rel=rel)
        opt.step()
        sched.step()


def test_linear_probe_learns_and_matches_torch_sgd():
    import torch

    rng = np.random.default_rng(3)
    backbone = vit_tiny(16, depth=1)
    labels = rng.integers(0, 2, 64)
    images = rng.normal(scale=0.1, size=(64, 32, 32, 3)).astype("float32")
    images[labels == 1] += 1.0
    probe = LinearProbe(backbone, num_labels=2, n_last_blocks=1)
    probe.compile_official(lr=0.5, batch_size=256, epochs=4)
    w0 = ops.convert_to_numpy(probe.classifier.linear.kernel).copy()
    b0 = ops.convert_to_numpy(probe.classifier.linear.bias).copy()
    history = probe.fit(images, labels, batch_size=16, epochs=4, shuffle=False, verbose=0)
    assert history.history["acc1"][-1] == 1.0

    # The same 16 steps in torch: SGD(momentum 0.9) + CosineAnnealingLR per epoch.
    feats = torch.tensor(ops.convert_to_numpy(linear_features(backbone, images, 1)))
    lin = torch.nn.Linear(feats.shape[1], 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w0.T))
        lin.bias.copy_(torch.tensor(b0))
    opt = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4, eta_min=0)
    y = torch.tensor(labels)
    for _ in range(4):
        for start in range(0, 64, 16):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(feats[start : start + 16]), y[start : start + 16])
            loss.backward()
            opt.step()
        sched.step()
    np.testing.assert_allclose(
        ops.convert_to_numpy(probe.classifier.linear.kernel), lin.weight.detach().numpy().T,
        # 16 momentum-SGD steps: each gradient a 16-sample float32 sum (sum_tolerance(16):
        # ~5e-6 of its terms) carried into the weights, the softmax's saturation damping it;
        # 6e-7 measured, rtol 1e-4 is 20 times one gradient's error, atol for weights near 0.
        rtol=1e-4, atol=1e-5,
    )


@pytest.mark.once  # matplotlib's state, the same whichever Keras backend is imported
def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path):
    # In a fresh process: `matplotlib.use` is process-wide.
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    repo = pathlib.Path(__file__).resolve().parents[1]
    code = f"""
import json, numpy as np, matplotlib
matplotlib.use("svg")
from keras_dino.evaluation.attention_maps import save_attention_images, save_threshold_masks
from keras_dino.reporting import plot_training_curves
out = {str(tmp_path)!r}
with open(out + "/log.txt", "w") as f:
    for epoch in range(2):
        f.write(json.dumps({{"epoch": epoch, "train_loss": 1.0 - epoch / 4}}) + "\\n")
paths = [plot_training_curves(out + "/log.txt", out + "/curves.png")]
maps = np.random.default_rng(0).random((2, 3, 4))
paths += save_attention_images(np.zeros((24, 32, 3), "uint8"), maps, out + "/attn", 8)
paths += save_threshold_masks(np.zeros((24, 32, 3), "uint8"), maps, out + "/masks", 8)
import matplotlib.pyplot as plt
print(json.dumps([matplotlib.get_backend(), len(plt.get_fignums()), paths]))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300, cwd=repo)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    backend, open_figures, paths = json.loads(result.stdout.strip().splitlines()[-1])
    assert backend == "svg" and open_figures == 0
    assert len(paths) == 1 + 1 + 2 + 1 + 2  # curves; image, 2 heads, overlay; 2 masks
    for path in paths:
        assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
