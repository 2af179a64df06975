"""Segmentation from attention: Jaccard, label resizing, the VOC reader, and the tool.

The Jaccard index is checked on hand-made masks; the evaluation on a PASCAL VOC layout
folder written here from the real photos, at twice the evaluation resolution so that
nearest-neighbour resizing is exact. Its ground truths are built with answers known in
advance: one head's own thresholded mask (that head scores 100, whatever the weights),
and the left half of the image with a threshold of 1 (every mask is the whole image:
every head scores 50).
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import IMAGES

from keras_dino.evaluation import (
    attention_segmentation_masks,
    evaluate_attention_segmentation,
    image_attention_jaccard,
    jaccard_index,
)
from keras_dino.evaluation.attention_segmentation import (
    read_image_set,
    read_index_mask,
    resize_labels_nearest,
    voc_palette,
    voc_segmentation_files,
)
from keras_dino.models import VisionTransformer

SIZE = 34  # evaluation shorter side: half of the 68-pixel photos written below
HEAD = 1  # the head whose own mask is the object ground truth
PHOTOS = {  # id: (photo, (width, height)) at twice the evaluation size
    "2007_000001": ("astronaut.jpg", (68, 68)),
    "2007_000002": ("chelsea.jpg", (102, 68)),
    "2007_000003": ("coffee.jpg", (68, 102)),  # portrait: the photo turned
    "2008_000004": ("rocket.jpg", (102, 68)),
}


def _write_mask(labels, path):
    from PIL import Image

    mask = Image.fromarray(np.asarray(labels, np.uint8))
    mask.putpalette(voc_palette())
    mask.save(path)


def _read_rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _jaccard_by_hand(pred, fg, void):
    """|pred ∩ fg| / |pred ∪ fg| over the non-void pixels, written out for the tests."""
    pred, fg = pred & ~void, fg & ~void
    return np.logical_and(pred, fg).sum() / np.logical_or(pred, fg).sum()


# --- Jaccard and label resizing -------------------------------------------------------


def test_jaccard_by_hand_with_void_pixels_and_empty_masks():
    gt = np.array([[0, 1, 1, 0],
                   [255, 1, 0, 0],
                   [0, 0, 2, 255]])
    pred = np.array([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]],    # void pixels predicted
                     [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]],    # exactly the objects
                     [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],    # nothing
                     [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]],   # everything
                    bool)
    # head 0: common {(0,1), (2,2)}; union adds (0,0), (0,2), (1,1): 2/5.
    # head 3: 4 foreground pixels among the 10 non-void ones.
    np.testing.assert_allclose(jaccard_index(pred, gt), [2 / 5, 1.0, 0.0, 4 / 10])
    assert float(jaccard_index(pred[0], gt)) == pytest.approx(0.4)  # one mask: a scalar
    background = np.zeros((3, 4), int)
    # No object: a mask that predicts nothing agrees (1), one that predicts anything misses.
    np.testing.assert_allclose(jaccard_index(pred, background), [0.0, 0.0, 1.0, 0.0])
    # All void: nothing is scored, every head agrees.
    np.testing.assert_allclose(jaccard_index(pred, np.full((3, 4), 255)), [1.0] * 4)
    with pytest.raises(ValueError, match="one resolution"):
        jaccard_index(pred, gt[:, :3])


def test_labels_resize_by_nearest_neighbour_like_pil():
    from PIL import Image

    labels = np.array([[1, 2], [3, 255]], np.uint8)
    np.testing.assert_array_equal(resize_labels_nearest(labels, (4, 6)),
                                  labels.repeat(2, axis=0).repeat(3, axis=1))
    grid = np.arange(36).reshape(6, 6)
    np.testing.assert_array_equal(resize_labels_nearest(grid, (3, 2)), grid[1::2, 1::3])
    # Odd sources have no exact ties, where PIL's float rounding may differ: same pixels.
    rng = np.random.default_rng(0)
    for height, width, new_h, new_w in [(375, 501, 480, 640), (33, 45, 20, 60), (7, 9, 31, 4)]:
        labels = rng.integers(0, 256, (height, width)).astype(np.uint8)
        expected = np.asarray(Image.fromarray(labels).resize((new_w, new_h), Image.NEAREST))
        np.testing.assert_array_equal(resize_labels_nearest(labels, (new_h, new_w)), expected)


# --- the VOC layout -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    keras.utils.set_random_seed(0)
    return VisionTransformer(patch_size=8, embed_dim=24, depth=1, num_heads=3)


def _object_truth(masks, shape, rng):
    """A ground truth at `shape` (twice the masks' resolution, plus an unscored border)
    whose resizing gives back `masks[HEAD]`: its foreground split into instances 1 and 2,
    void (255) pixels scattered over both regions, and objects in the border the patch
    cut drops. Returns it and its void pixels at the masks' resolution."""
    mask = masks[HEAD]
    h, w = mask.shape
    small = np.where(mask, 1 + (np.arange(w) >= w // 2), 0).astype(np.uint8)
    void = rng.random((h, w)) < 0.1
    small[void] = 255
    truth = np.full(shape, 7, np.uint8)  # the cut border: labels nobody scores
    truth[: 2 * h, : 2 * w] = small.repeat(2, axis=0).repeat(2, axis=1)
    return truth, void


@pytest.fixture(scope="module")
def voc(tmp_path_factory, vit):
    """A VOC2012-layout folder of the four photos: SegmentationObject/ is head HEAD's own
    mask (at threshold 0.6), SegmentationClass/ the left half of the scored area."""
    from PIL import Image

    if not IMAGES.is_dir():
        raise FileNotFoundError(f"the shared photos are not at {IMAGES}; set KERAS_DINO_SHARED")
    root = tmp_path_factory.mktemp("VOC2012")
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass",
                "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {"masks": {}, "void": {}}
    for image_id, (photo, (width, height)) in PHOTOS.items():
        with Image.open(IMAGES / photo) as image:
            image = image.convert("RGB")
            if height > width:
                image = image.transpose(Image.Transpose.ROTATE_90)
            image.resize((width, height), Image.BICUBIC).save(root / f"JPEGImages/{image_id}.jpg")
        pixels = _read_rgb(root / f"JPEGImages/{image_id}.jpg")  # as the evaluation reads it
        masks = attention_segmentation_masks(vit, pixels, SIZE, 0.6)
        truth, void = _object_truth(masks, (height, width), rng)
        _write_mask(truth, root / f"SegmentationObject/{image_id}.png")
        h, w = masks.shape[1:]
        half = np.full((height, width), 9, np.uint8)
        half[: 2 * h, : 2 * w] = 0
        half[: 2 * h, :w] = 15  # left half of the scored area (twice w // 2 columns)
        _write_mask(half, root / f"SegmentationClass/{image_id}.png")
        expected["masks"][image_id], expected["void"][image_id] = masks, void
    lists = root / "ImageSets/Segmentation"
    (lists / "val.txt").write_text("\n".join(PHOTOS) + "\n\n")
    (lists / "train.txt").write_text("2008_000004\n")
    return root, expected


def test_reader_lists_ids_and_reads_palette_indices(voc, tmp_path):
    root, _ = voc
    assert read_image_set(root, "val") == list(PHOTOS)
    files = voc_segmentation_files(root, "val", "class")
    assert [f[0] for f in files] == list(PHOTOS)
    assert files[1][1].endswith(os.path.join("JPEGImages", "2007_000002.jpg"))
    assert files[1][2].endswith(os.path.join("SegmentationClass", "2007_000002.png"))
    labels = read_index_mask(files[1][2])
    assert labels.shape == (68, 102) and set(np.unique(labels)) == {0, 9, 15}
    # indices, not colours: 255 (void) survives a full-palette PNG round trip
    _write_mask([[0, 1, 2], [255, 20, 0]], tmp_path / "m.png")
    assert read_index_mask(tmp_path / "m.png").tolist() == [[0, 1, 2], [255, 20, 0]]


def test_a_heads_own_mask_scores_100_and_the_others_their_overlap(voc, vit):
    root, expected = voc
    result = evaluate_attention_segmentation(vit, root, "val", image_size=SIZE, verbose=0)
    assert result["num_images"] == 4 and result["ids"] == list(PHOTOS)
    assert result["per_image"].shape == (4, 3)
    assert result["jaccard_per_head"][HEAD] == pytest.approx(100.0)
    by_hand = np.array([[100 * _jaccard_by_hand(masks[h], masks[HEAD], expected["void"][i])
                         for h in range(3)] for i, masks in expected["masks"].items()])
    np.testing.assert_allclose(result["per_image"], by_hand, atol=1e-9)
    np.testing.assert_allclose(result["jaccard_per_head"], by_hand.mean(axis=0), atol=1e-9)
    assert result["best_head"] == int(np.argmax(by_hand.mean(axis=0)))
    assert result["jaccard_best_head"] == pytest.approx(100.0)
    # one image of another list, and the per-image function the benchmark times
    one = evaluate_attention_segmentation(vit, root, "train", image_size=SIZE, verbose=0)
    assert one["ids"] == ["2008_000004"]
    np.testing.assert_allclose(one["jaccard_per_head"], by_hand[3], atol=1e-9)
    image = _read_rgb(root / "JPEGImages/2008_000004.jpg")
    mask = read_index_mask(root / "SegmentationObject/2008_000004.png")
    np.testing.assert_allclose(100 * image_attention_jaccard(vit, image, mask, SIZE),
                               by_hand[3], atol=1e-9)


def test_whole_image_masks_score_the_foreground_fraction(voc, vit):
    root, _ = voc
    # threshold 1: every patch holds some attention, every mask is the whole image;
    # the class ground truth covers half of it: 50 for every head.
    result = evaluate_attention_segmentation(vit, root, "val", image_size=SIZE, threshold=1.0,
                                             segmentation="class", max_images=3, verbose=0)
    assert result["num_images"] == 3
    np.testing.assert_allclose(result["jaccard_per_head"], [50.0] * 3, atol=1e-9)
    assert result["best_head"] == 0  # a tie: the first head


def test_saved_masks_are_the_heads_masks_at_the_image_size(voc, vit, tmp_path):
    root, expected = voc
    evaluate_attention_segmentation(vit, root, "train", image_size=SIZE, verbose=0,
                                    save_masks_dir=str(tmp_path))
    masks = expected["masks"]["2008_000004"]
    h, w = masks.shape[1:]
    for head in range(3):
        saved = read_index_mask(tmp_path / f"head{head}" / "2008_000004.png")
        assert saved.shape == (68, 102)
        np.testing.assert_array_equal(saved[: 2 * h, : 2 * w],
                                      masks[head].repeat(2, axis=0).repeat(2, axis=1))
        assert not saved[2 * h:].any() and not saved[:, 2 * w:].any()


def _broken(tmp_path, ids, images=(), masks=()):
    """A VOC folder listing `ids`, with the given images and masks `(id, (w, h), mode)`."""
    from PIL import Image

    for sub in ("JPEGImages", "SegmentationObject", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids))
    for image_id, size in images:
        Image.new("RGB", size).save(tmp_path / f"JPEGImages/{image_id}.jpg")
    for image_id, size, mode in masks:
        if mode == "P":
            _write_mask(np.zeros(size[::-1]), tmp_path / f"SegmentationObject/{image_id}.png")
        else:
            Image.new(mode, size).save(tmp_path / f"SegmentationObject/{image_id}.png")
    return tmp_path


def test_bad_datasets_are_named(tmp_path, vit):
    with pytest.raises(FileNotFoundError, match="no image-set list"):
        read_image_set(tmp_path, "val")
    root = _broken(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="val.txt is empty"):
        evaluate_attention_segmentation(vit, root, verbose=0)
    root = _broken(tmp_path / "no_image", ["a", "b"], [("a", (32, 24))],
                   [("a", (32, 24), "P"), ("b", (32, 24), "P")])
    with pytest.raises(FileNotFoundError, match="no image for 'b'"):
        voc_segmentation_files(root)
    root = _broken(tmp_path / "no_mask", ["a"], [("a", (32, 24))])
    with pytest.raises(FileNotFoundError, match="no mask for 'a'.*SegmentationObject"):
        voc_segmentation_files(root)
    with pytest.raises(ValueError, match="segmentation must be one of object, class"):
        voc_segmentation_files(root, segmentation="instance")
    root = _broken(tmp_path / "sizes", ["a"], [("a", (32, 24))], [("a", (24, 32), "P")])
    with pytest.raises(ValueError, match="'a': the image is 32x24 but its mask 24x32"):
        voc_segmentation_files(root)
    for mode in ("RGB", "L"):
        root = _broken(tmp_path / mode, ["a"], [("a", (32, 24))], [("a", (32, 24), mode)])
        with pytest.raises(ValueError, match=f"mode '{mode}' image, not a palette"):
            evaluate_attention_segmentation(vit, root, image_size=16, verbose=0)
    with pytest.raises(ValueError, match="in \\(0, 1\\]; got 0.0"):
        evaluate_attention_segmentation(vit, root, threshold=0.0, verbose=0)
    with pytest.raises(ValueError, match="the same size"):
        image_attention_jaccard(vit, np.zeros((24, 32, 3), "uint8"), np.zeros((24, 30)), 16)
    with pytest.raises(ValueError, match="has none"):
        attention_segmentation_masks(object(), np.zeros((24, 32, 3), "uint8"), 16)


# --- the tool -------------------------------------------------------------------------


def _tool():
    from keras_dino.tools import eval_attention_segmentation

    return eval_attention_segmentation


@pytest.mark.slow  # one backend suffices: the numerics are tested per backend
def test_tool_prints_the_jaccard_per_head_and_logs_it(voc, vit, tmp_path, capsys):
    from absl import flags

    root, _ = voc
    weights = tmp_path / "vit.keras"
    vit.save(weights)
    tool = _tool()
    values = flags.FlagValues()
    tool.define_flags(values)
    values(["eval_attention_segmentation", f"--pretrained_weights={weights}",
            f"--data_path={root}", f"--image_size={SIZE}", f"--output_dir={tmp_path}",
            "--save_masks", "--verbose=1"])
    stats = tool.run(values)
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert set(last) == {"jaccard_best_head", "jaccard_per_head"}
    assert last["jaccard_best_head"] == 100.0 and last["jaccard_per_head"][HEAD] == 100.0
    assert last["jaccard_per_head"] == [round(v, 2) for v in stats["jaccard_per_head"]]
    assert "4/4" in out  # the progress bar
    logged = json.loads((tmp_path / "log.txt").read_text().splitlines()[-1])
    assert logged["num_images"] == 4 and logged["threshold"] == 0.6
    assert len(list((tmp_path / "masks" / f"head{HEAD}").glob("*.png"))) == 4
