"""Image retrieval on revisited Oxford/Paris: the benchmark's measures and the official tool.

The measures are checked on rankings worked out by hand (trapezoidal AP, junk removed
before counting, the benchmark's precision@k), the multi-scale descriptor against
torch's own `interpolate`, and the tool end to end on a small revisited-layout data set
built from embedded CIFAR-10 images, where queries are copies of database images.
"""

import os
import pickle
import shutil

import numpy as np
import pytest

from keras_dino.checkpoints import UnsafeCheckpointError
from keras_dino.evaluation.retrieval import (
    average_precision,
    global_descriptor,
    load_ground_truth,
    load_image,
    mean_average_precision,
    protocol,
    resize_like_torch,
)
from keras_dino.testing.tolerance import assert_within, bilinear_tolerance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_average_precision_is_the_benchmarks_trapezoid():
    assert average_precision([0], 1) == 1.0
    assert average_precision([0, 1, 2], 3) == 1.0
    # positives at ranks 1 and 3 of 2: precision before/after each, trapezoids of 1/2:
    # (0/1 + 1/2)/4 + (1/3 + 2/4)/4
    assert average_precision([1, 3], 2) == pytest.approx(0.125 + (1 / 3 + 0.5) / 4)
    # a positive never retrieved counts zero: 2 of 4 positives, both on top
    assert average_precision([0, 1], 4) == pytest.approx(0.5)


def test_junk_is_removed_before_counting_and_precision_at_k():
    # database 0..5; query 0 ranks 5, 3, 0, 1, 2, 4
    ranks = np.array([[5], [3], [0], [1], [2], [4]])
    gt = [{"ok": [0, 2], "junk": [3]}]
    m, aps, mpk, prs = mean_average_precision(ranks, gt, kappas=[1, 2, 5])
    # without junk: 5, 0, 1, 2, 4 -> positives at ranks 1 and 3
    assert m == pytest.approx(0.125 + (1 / 3 + 0.5) / 4)
    # precision@k: positives at 1-based 2 and 4; k is capped by the last positive (4)
    assert mpk.tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert prs.shape == (1, 3)


def test_queries_without_positives_are_left_out():
    ranks = np.array([[0, 1], [1, 0]])
    m, aps, _, _ = mean_average_precision(ranks, [{"ok": [], "junk": []},
                                                  {"ok": [0], "junk": []}])
    # query 1 finds its positive second: (0/1 + 1/2) / 2
    assert np.isnan(aps[0]) and aps[1] == pytest.approx(0.25) and m == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no query has a positive"):
        mean_average_precision(ranks, [{"ok": [], "junk": []}] * 2)


def test_protocols_move_easy_and_hard_between_positives_and_junk():
    gnd = [{"bbx": [0, 0, 1, 1], "easy": [1, 2], "hard": [3], "junk": [4]}]
    assert protocol(gnd, "medium") == [{"ok": [1, 2, 3], "junk": [4]}]
    assert protocol(gnd, "hard") == [{"ok": [3], "junk": [4, 1, 2]}]
    assert protocol(gnd, "easy") == [{"ok": [1, 2], "junk": [4, 3]}]
    with pytest.raises(ValueError, match="unknown protocol 'extreme'"):
        protocol(gnd, "extreme")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_ground_truth_pickles_are_read_without_running_code(tmp_path):
    good = tmp_path / "gnd_roxford5k.pkl"
    good.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"],
                                   "gnd": [{"bbx": [0.5, 1, 2, 3], "easy": [0], "hard": [],
                                            "junk": []}]}))
    assert load_ground_truth(good)["gnd"][0]["bbx"] == [0.5, 1, 2, 3]
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Evil()]}))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
        load_ground_truth(evil)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"imlist": []}))
    with pytest.raises(ValueError, match="needs 'imlist', 'qimlist' and 'gnd'"):
        load_ground_truth(wrong)


def test_multiscale_resize_is_torch_interpolate():
    import torch  # installed for the torch backend
    x = np.random.default_rng(0).normal(size=(1, 37, 50, 3)).astype("float32")
    for scale in (1 / 2**0.5, 0.5):
        ours = np.asarray(resize_like_torch(x, scale))
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=scale, mode="bilinear",
            align_corners=False).permute(0, 2, 3, 1).numpy()
        assert ours.shape == theirs.shape
        # torch's coefficients are float32, ours float64: the worst case of its rounded
        # source coordinates plus both programs' 4-term sums (`bilinear_tolerance`, 3.7e-5
        # of max |x| for 50 columns); rtol 1e-5 + atol 1e-5 before, measured 0.47 of it
        assert_within(ours, theirs, bilinear_tolerance(50, np.abs(x).max()), f"scale {scale}")


@pytest.mark.slow  # one backend suffices: the numerics are tested per backend
def test_multiscale_descriptor_is_the_normalised_mean_of_three_scales():
    from keras import ops

    from keras_dino.models import vit_tiny

    vit = vit_tiny(8, depth=1)
    image = np.random.default_rng(1).normal(size=(45, 61, 3)).astype("float32")
    ours = global_descriptor(vit, image, multiscale=True)
    parts = []
    for scale in (1.0, 2**-0.5, 0.5):
        scaled = image[None] if scale == 1 else resize_like_torch(image[None], scale)
        h, w = scaled.shape[1] // 8 * 8, scaled.shape[2] // 8 * 8  # a stride-8 embedding
        parts.append(ops.convert_to_numpy(vit(scaled[:, :h, :w]))[0])
    assert [p.shape for p in parts] == [(192,)] * 3
    expected = np.mean(parts, axis=0)
    np.testing.assert_allclose(ours, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    assert global_descriptor(vit, image).shape == (192,)


def test_images_are_thumbnails_and_queries_can_be_cropped(tmp_path):
    from PIL import Image

    path = tmp_path / "x.jpg"
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(path)
    assert load_image(path, 224).shape == (168, 224, 3)  # longer side 224, aspect kept
    assert load_image(path, None, bbx=[10, 20, 110, 70]).shape == (50, 100, 3)
    assert load_image(path, 1000).shape == (300, 400, 3)  # thumbnail never enlarges


@pytest.fixture(scope="module")
def revisited(tmp_path_factory):
    """`<root>/roxford5k/{gnd_roxford5k.pkl, jpg/}`: 12 database images, 2 query copies."""
    from keras_dino.data import list_image_files
    from keras_dino.datasets import cifar10_mini

    root = tmp_path_factory.mktemp("revisitop")
    jpg = root / "roxford5k" / "jpg"
    jpg.mkdir(parents=True)
    files = list_image_files(cifar10_mini("test")).files[::80][:12]
    names = []
    for i, f in enumerate(files):
        shutil.copy(f, jpg / f"db_{i:02d}.jpg")
        names.append(f"db_{i:02d}")
    shutil.copy(jpg / "db_03.jpg", jpg / "query_0.jpg")
    shutil.copy(jpg / "db_07.jpg", jpg / "query_1.jpg")
    gnd = [{"bbx": [0, 0, 32, 32], "easy": [3], "hard": [], "junk": []},
           {"bbx": [0, 0, 32, 32], "easy": [], "hard": [7], "junk": [3]}]
    with open(root / "roxford5k" / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": names, "qimlist": ["query_0", "query_1"], "gnd": gnd}, f)
    return root


@pytest.mark.slow  # one backend suffices: the numerics are tested per backend
@pytest.mark.parametrize("multiscale", (False, True))
def test_retrieval_tool_finds_the_copies(revisited, tmp_path, multiscale, capsys):
    from absl import flags

    from keras_dino.tools import eval_image_retrieval

    values = flags.FlagValues()
    eval_image_retrieval.define_flags(values)
    values(["eval_image_retrieval", "--arch=vit_tiny", "--patch_size=8",
            f"--data_path={revisited}", "--dataset=roxford5k", f"--multiscale={multiscale}",
            "--imsize=32", f"--output_dir={tmp_path}", "--verbose=0"])
    stats = eval_image_retrieval.run(values)
    # Each query is a copy of its positive: ranked first, whatever the (random) weights.
    assert stats["mAP_medium"] == pytest.approx(100.0)
    assert stats["mAP_hard"] == pytest.approx(100.0)  # query 0 has no hard positive
    assert stats["mP@k_medium"] == {1: pytest.approx(100.0), 5: pytest.approx(100.0),
                                    10: pytest.approx(100.0)}
    assert (stats["num_database"], stats["num_queries"]) == (12, 2)
    assert (tmp_path / "log.txt").read_text().count("mAP_M") == 1
    import json

    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["dataset"], last["mAP_M"], last["mAP_H"]) == ("roxford5k", 100.0, 100.0)
