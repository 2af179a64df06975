"""Video object segmentation (label propagation) and the DAVIS-2017 J and F measures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from keras_dino.evaluation import davis
from keras_dino.evaluation import video_segmentation as vos
from keras_dino.models import vit_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(fixtures_dir):
    folder = fixtures_dir.parent.parent / "images"
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))]


@pytest.fixture(scope="module")
def tiny_vit():
    return vit_tiny(16, depth=1)


def write_sequence(root, name, frames, annotations, subset_names=None):
    """A DAVIS-2017 layout: JPEG frames, palette annotations (None: absent), a val list."""
    frame_dir = Path(root, "JPEGImages", "480p", name)
    label_dir = Path(root, "Annotations", "480p", name)
    frame_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(frame_dir / f"{t:05d}.jpg", quality=95)
    for t, labels in enumerate(annotations):
        if labels is not None:
            davis.write_indexed_png(label_dir / f"{t:05d}.png", labels)
    sets = Path(root, "ImageSets", "2017")
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("\n".join(subset_names or [name]) + "\n")
    return sorted(str(p) for p in frame_dir.glob("*.jpg"))


def grid_labels(height, width, patch=16):
    """Two objects aligned on the patch grid: 1 top-left block, 2 a bottom-right block."""
    labels = np.zeros((height, width), np.uint8)
    labels[patch:3 * patch, patch:3 * patch] = 1
    labels[2 * patch:4 * patch, 4 * patch:7 * patch] = 2
    return labels


# ------------------------------------------------------------------ reading as official


def test_palette_is_the_davis_palette():
    palette = davis.davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    # VOC's 192 is 191 in the DAVIS palette; 22..255 are grey levels.
    assert palette[9].tolist() == [191, 0, 0] and palette[21].tolist() == [128, 64, 128]
    assert (palette[22:] == np.arange(22, 256)[:, None]).all()


def test_cv2_resize_reproduced_bit_for_bit(photos):
    for photo in photos:
        for size in (vos.official_frame_size(*photo.shape[:2]), (480, 832), (123, 77),
                     (2 * photo.shape[0] + 3, photo.shape[1] + 5)):
            expected = cv2.resize(photo, (size[1], size[0]))
            np.testing.assert_array_equal(vos.resize_like_cv2(photo, size), expected)


def test_frames_read_as_the_official_reader(tmp_path, photos):
    photo = photos[1]  # 451x300
    path = str(tmp_path / "00000.jpg")
    Image.fromarray(photo).save(path, quality=95)
    frame, size = vos.read_frame(path)
    assert size == photo.shape[:2]
    assert frame.shape == (480, 704, 3)  # 480 * 451 / 300 = 721.6 -> 704
    decoded = cv2.imread(path)[:, :, ::-1]  # the official reader: OpenCV, BGR
    resized = cv2.resize(decoded, (704, 480)).astype(np.float32) / 255.0
    expected = (resized - np.float32([0.485, 0.456, 0.406])) / np.float32([0.228, 0.224, 0.225])
    np.testing.assert_allclose(frame, expected, atol=1e-6)
    assert vos.official_frame_size(854, 480) == (832, 480)  # portrait: width 480


# ------------------------------------------------------------------------ measures


def test_region_similarity_by_hand():
    gt = np.zeros((100, 100), bool)
    gt[10:30, 10:30] = True
    seg = np.roll(gt, 5, axis=1)
    assert davis.region_similarity(gt, seg) == pytest.approx(300 / 500)
    assert davis.region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert davis.region_similarity(gt, np.zeros_like(gt)) == 0.0


def test_boundary_f_measure_by_hand():
    # 100x100: tolerance ceil(0.008 * 141.4) = 2 pixels. A 20x20 square's boundary is a
    # 21x21 ring of 80 pixels; shifted 5 columns, 18 + 18 pixels of the horizontal sides
    # and 2 + 2 of one vertical side lie within 2 pixels of the other ring: P = R = 0.5.
    gt = np.zeros((100, 100), bool)
    gt[10:30, 10:30] = True
    assert davis.mask_boundary(gt).sum() == 80
    assert davis.boundary_f_measure(gt, np.roll(gt, 5, axis=1)) == pytest.approx(0.5)
    assert davis.boundary_f_measure(gt, np.roll(gt, 2, axis=1)) == 1.0  # within tolerance
    assert davis.boundary_f_measure(gt, gt) == 1.0
    assert davis.boundary_f_measure(gt, np.zeros_like(gt)) == 0.0
    empty = np.zeros_like(gt)
    assert davis.boundary_f_measure(empty, empty) == 1.0


def test_dilation_is_a_disk():
    point = np.zeros((9, 9), bool)
    point[4, 4] = True
    disk = davis.dilate_disk(point, 2)
    ys, xs = np.nonzero(disk)
    assert ((ys - 4) ** 2 + (xs - 4) ** 2 <= 4).all() and disk.sum() == 13
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True  # nothing wraps around the border
    assert davis.dilate_disk(corner, 1).sum() == 3


def test_sequence_measures_skip_first_and_last_and_void():
    gt = np.zeros((100, 100), np.uint8)
    gt[10:30, 10:30] = 1
    gt[0, :] = davis.VOID_LABEL  # void counts as background
    shifted = np.roll(np.where(gt == 1, 1, 0).astype(np.uint8), 5, axis=1)
    wrong = np.zeros_like(gt)  # first and last frames are not scored
    stats = davis.sequence_measures([gt, gt, gt, gt], [wrong, gt == 1, shifted, wrong])
    (j_mean, j_recall, j_decay), = stats["J"]
    assert j_mean == pytest.approx((1.0 + 0.6) / 2) and j_recall == 1.0
    assert j_decay == pytest.approx(0.4)
    assert stats["F"][0][0] == pytest.approx((1.0 + 0.5) / 2)
    summary = davis.summarize_measures({"s": stats})
    assert summary["J_mean"] == 80.0 and summary["F_mean"] == 75.0
    assert summary["JF_mean"] == 77.5
    with pytest.raises(ValueError, match="holds object 3"):
        davis.sequence_measures([gt] * 3, [gt, np.full_like(gt, 3), gt])


# --------------------------------------------------------------------- propagation


def test_propagation_weights_by_hand():
    # One target, three sources: cosines 1, 0.8, 0.6 with labels 0, 1, 1; top-2 keeps
    # the first two, weighted by exp(cos / 0.1).
    target = np.array([[1.0, 0.0]], "float32")
    sources = np.array([[2.0, 0.0], [0.8, 0.6], [0.6, 0.8]], "float32")  # norms differ
    labels = np.array([[1, 0], [0, 1], [0, 1]], "float32")
    soft = np.asarray(vos.propagate_labels(target, [sources], [labels], topk=2))
    w = np.exp(np.array([1.0, 0.8]) / 0.1)
    np.testing.assert_allclose(soft[0], [w[0] / w.sum(), w[1] / w.sum()], rtol=1e-5)
    # The neighbourhood mask removes the best source: the two others share the labels.
    mask = np.array([[0.0, 1.0, 1.0]], "float32")
    soft = np.asarray(vos.propagate_labels(target, [sources], [labels], topk=2, mask=mask))
    np.testing.assert_allclose(soft[0], [0.0, 1.0], atol=1e-6)
    # Ties with the k-th value are kept, as the official `aff < min(topk)` test.
    tied = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    soft = np.asarray(vos.propagate_labels(target, [tied], [labels], topk=1))
    np.testing.assert_allclose(soft[0], [0.5, 0.5], atol=1e-6)
    # Context frames are pooled: top-k runs over all of them together.
    soft = np.asarray(vos.propagate_labels(target, [sources[1:], sources[:1]],
                                           [labels[1:], labels[:1]], topk=1))
    np.testing.assert_allclose(soft[0], [1.0, 0.0], atol=1e-6)


def test_neighborhood_is_a_square_window():
    mask = vos.neighborhood_mask(5, 6, 1).reshape(5, 6, 5, 6)
    assert mask[2, 3].sum() == 9 and mask[0, 0].sum() == 4
    assert mask[2, 3, 1:4, 2:5].all()


def test_soft_labels_to_frame_labels():
    # A 1x3 grid, patch 4: channel 1 wins on the first patch only. Bilinear upsampling
    # (torch's half-pixel mapping) gives the first patch's pixels weights 1, 1, 0.875 and
    # 0.625 on it, the next pixel 0.375: the first 4 columns are label 1. Each channel is
    # min-max scaled before the argmax (channel 0: 0.2..0.6 -> 0..1).
    soft = np.array([[0.2, 0.9], [0.6, 0.0], [0.6, 0.0]], "float32")
    labels = vos.labels_from_soft(soft, (1, 3), 4, (4, 12))
    expected = np.zeros((4, 12), np.uint8)
    expected[:, :4] = 1
    np.testing.assert_array_equal(labels, expected)
    # Resized to the frame's size with nearest neighbours.
    assert vos.labels_from_soft(soft, (1, 3), 4, (2, 6)).tolist() == [[1, 1, 0, 0, 0, 0]] * 2
    # A positive constant map is 0/0 after scaling: torch.max then returns that channel.
    flat = np.array([[0.5, 0.0, 0.3], [0.5, 1.0, 0.3]], "float32")
    assert (vos.labels_from_soft(flat, (1, 2), 2, (2, 4)) == 0).all()


def band_labels(height, width, patch=16):
    """Two objects as full-width bands on patch rows: what label propagation can keep
    exactly (bilinear upsampling of patch labels rounds the corners of a block)."""
    labels = np.zeros((height, width), np.uint8)
    labels[patch:2 * patch] = 1
    labels[3 * patch:4 * patch] = 2
    return labels


def textured(photos):
    """A 64x128 crop of a real photo with no flat patch (distinct patch features)."""
    return np.ascontiguousarray(photos[1][100:164, 200:328])


def test_identical_frames_keep_the_first_mask(tmp_path, photos, tiny_vit):
    frame = textured(photos)
    labels = band_labels(64, 128)
    write_sequence(tmp_path, "still", [frame] * 4, [labels] * 4)
    # topk=1: a patch's best match among identical frames is itself (cosine 1).
    result = vos.evaluate_video_segmentation(tiny_vit, str(tmp_path), str(tmp_path / "out"),
                                             topk=1, scale_size=64, verbose=0,
                                             say=lambda m: None)
    for t in range(4):
        np.testing.assert_array_equal(
            davis.read_label_map(tmp_path / "out" / "still" / f"{t:05d}.png"), labels)
    assert result["J_mean"] == 100.0 and result["F_mean"] == 100.0
    assert result["JF_mean"] == 100.0 and result["frames"] == 4


def test_context_is_the_first_and_the_last_n_frames(tmp_path, photos, tiny_vit, monkeypatch):
    frames = write_sequence(tmp_path, "still", [textured(photos)] * 6,
                            [band_labels(64, 128)] + [None] * 5)
    seen, propagate = [], vos.propagate_labels

    def spy(target, features, labels, *args, **kwargs):
        seen.append(len(features))
        return propagate(target, features, labels, *args, **kwargs)

    monkeypatch.setattr(vos, "propagate_labels", spy)
    vos.segment_video(tiny_vit, frames, str(tmp_path / "a"), n_last_frames=2, scale_size=64,
                      verbose=0)
    assert seen == [1, 2, 3, 3, 3]  # the first frame, then up to 2 preceding ones
    seen.clear()  # 0: every preceding frame (the official unbounded queue.Queue(0))
    vos.segment_video(tiny_vit, frames, str(tmp_path / "b"), n_last_frames=0, scale_size=64,
                      verbose=0)
    assert seen == [1, 2, 3, 4, 5]


def test_moving_sequence_layout_and_scores(tmp_path, photos, tiny_vit):
    photo = photos[2]
    labels = grid_labels(64, 128)
    frames = [np.ascontiguousarray(photo[8 * t:8 * t + 64, 4 * t:4 * t + 128]) for t in range(5)]
    truth = [np.roll(labels, (-8 * t, -4 * t), axis=(0, 1)) for t in range(5)]
    write_sequence(tmp_path, "pan", frames, truth, subset_names=["pan", "still"])
    write_sequence(tmp_path, "still", [frames[0]] * 3, [labels, None, None],
                   subset_names=["pan", "still"])
    result = vos.evaluate_video_segmentation(tiny_vit, str(tmp_path), str(tmp_path / "out"),
                                             scale_size=64, verbose=0, say=lambda m: None)
    assert result["sequences"] == 2 and result["frames"] == 8
    assert result["scored_sequences"] == 1  # "still" has no annotations after its first
    written = sorted(os.listdir(tmp_path / "out" / "pan"))
    assert written == [f"{t:05d}.png" for t in range(5)]
    first = Image.open(tmp_path / "out" / "pan" / "00000.png")
    assert first.mode == "P" and first.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(np.asarray(first), labels)
    outputs = [davis.read_label_map(tmp_path / "out" / "pan" / n) for n in written]
    expected = davis.summarize_measures({"pan": davis.sequence_measures(truth, outputs)})
    assert {k: result[k] for k in expected} == expected
    assert set(np.unique(np.concatenate(outputs))) <= {0, 1, 2}


# ----------------------------------------------------------------------- bad input


def test_bad_input_named_errors(tmp_path, photos, tiny_vit):
    frame = np.ascontiguousarray(photos[0][:64, :128])
    labels = grid_labels(64, 128)
    run = lambda root: vos.evaluate_video_segmentation(  # noqa: E731
        tiny_vit, str(root), str(tmp_path / "out"), scale_size=64, verbose=0,
        say=lambda m: None)
    with pytest.raises(FileNotFoundError, match="ImageSets/2017/val.txt not found"):
        run(tmp_path / "nothing")
    # No first annotation.
    write_sequence(tmp_path / "a", "s", [frame] * 2, [None, None])
    with pytest.raises(FileNotFoundError, match="00000.png not found"):
        run(tmp_path / "a")
    # A later annotation with an object the first frame does not have.
    extra = labels.copy()
    extra[0, 0] = 3
    write_sequence(tmp_path / "b", "s", [frame] * 2, [labels, extra])
    with pytest.raises(ValueError, match=r"object index \[3\]"):
        run(tmp_path / "b")
    # Frames of different sizes.
    write_sequence(tmp_path / "c", "s", [frame, np.ascontiguousarray(photos[0][:80, :128])],
                   [labels, None])
    with pytest.raises(ValueError, match="a video's frames share one size"):
        run(tmp_path / "c")
    # An empty sequence folder.
    write_sequence(tmp_path / "d", "s", [], [])
    with pytest.raises(FileNotFoundError, match="no .jpg frames"):
        run(tmp_path / "d")
    # An RGB annotation instead of a palette one.
    write_sequence(tmp_path / "e", "s", [frame] * 2, [None, None])
    Image.fromarray(frame).save(tmp_path / "e" / "Annotations" / "480p" / "s" / "00000.png")
    with pytest.raises(ValueError, match="palette-indexed"):
        run(tmp_path / "e")
    # An annotation of another size than its frame.
    write_sequence(tmp_path / "f", "s", [frame] * 2, [labels[:32], None])
    with pytest.raises(ValueError, match="but its frame is 128x64"):
        run(tmp_path / "f")
    with pytest.raises(TypeError, match="uint8"):
        vos.resize_like_cv2(frame.astype(np.float32), (10, 10))


@pytest.mark.slow
def test_tool_end_to_end(tmp_path, photos):
    frame = textured(photos)
    labels = band_labels(64, 128)
    write_sequence(tmp_path / "davis", "still", [frame] * 3, [labels] * 3)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "eval_video_segmentation.py"),
         "--arch=vit_tiny", "--patch_size=16", f"--data_path={tmp_path / 'davis'}",
         f"--output_dir={out}", "--image_size=64", "--topk=1", "--verbose=0"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["J_mean"] == record["F_mean"] == record["JF_mean"] == 100.0
    assert record["frames"] == 3 and record["scored_sequences"] == 1
    assert sorted(os.listdir(out / "still")) == ["00000.png", "00001.png", "00002.png"]
    assert json.loads((out / "log.txt").read_text().splitlines()[-1])["JF_mean"] == 100.0
