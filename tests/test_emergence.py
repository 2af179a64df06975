"""bench/emergence.py: its images and masks are exact, its Jaccard is the library's, and the
figures it prints are those of the checkpoint and the evaluation files it writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import emergence  # noqa: E402 (bench/ is not a package)


@pytest.mark.once
def test_ellipse_mask_is_the_pixels_whose_centres_are_inside():
    # 4x4: the corner pixels' centres (0.5, 0.5) are at (-0.75, -0.75) in units of the
    # half-axes, outside (0.5625 * 2 > 1); the others are inside.
    assert emergence.ellipse_mask(4, 4).astype(int).tolist() == [
        [0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    # A large ellipse covers pi/4 of its box, within the pixel discretisation.
    mask = emergence.ellipse_mask(300, 200)
    assert abs(mask.mean() - np.pi / 4) < 0.005
    assert (mask == mask[::-1]).all() and (mask == mask[:, ::-1]).all()


@pytest.mark.once
def test_composite_masks_are_exactly_where_the_objects_were_pasted():
    from PIL import Image

    rng = np.random.default_rng(5)
    textures = emergence.make_textures(3, 96, rng)
    objects = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    images, masks, placements = emergence.make_composites(
        objects, textures, 12, np.random.default_rng(7), image_size=64, object_scale=(0.3, 0.6))
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (12, 64, 64) and masks.dtype == bool
    for image, mask, p in zip(images, masks, placements):
        assert p["object"] in range(4) and p["texture"] in range(3)
        box = (slice(p["top"], p["top"] + p["height"]), slice(p["left"], p["left"] + p["width"]))
        assert 0.3 * 64 - 2 <= np.sqrt(p["height"] * p["width"]) <= 0.6 * 64 + 2
        # The mask: the box's inscribed ellipse, nothing outside the box.
        expected = np.zeros((64, 64), bool)
        expected[box] = emergence.ellipse_mask(p["height"], p["width"])
        np.testing.assert_array_equal(mask, expected)
        # Inside the mask the object's pixels, resized to the box; outside, the texture's.
        resized = np.asarray(Image.fromarray(objects[p["object"]]).resize(
            (p["width"], p["height"]), Image.BICUBIC))
        np.testing.assert_array_equal(image[box][mask[box]], resized[mask[box]])
        background = textures[p["texture"], p["texture_top"]:p["texture_top"] + 64,
                               p["texture_left"]:p["texture_left"] + 64]
        if p["flip"]:
            background = background[:, ::-1]
        np.testing.assert_array_equal(image[~mask], background[~mask])
    # Seeded: the same generator state gives the same images.
    again, _, _ = emergence.make_composites(objects, textures, 12, np.random.default_rng(7))
    np.testing.assert_array_equal(images, again)


@pytest.mark.once
def test_jaccard_of_a_mask_with_itself_and_with_a_shifted_copy():
    from keras_dino.evaluation.attention_segmentation import jaccard_index

    truth = np.zeros((64, 64), bool)
    truth[16:32, 16:32] = True  # 16x16 = 256 pixels
    shifted = np.roll(truth, 4, axis=1)  # 16x12 in common: 192 / (2 * 256 - 192) = 0.6
    scores = jaccard_index(np.stack([truth, shifted, ~truth]), truth.astype(np.uint8))
    np.testing.assert_allclose(scores, [1.0, 0.6, 0.0])


@pytest.mark.once
def test_batched_attention_jaccard_is_the_library_image_by_image():
    """`attention_jaccards` (one forward pass per batch) gives, image by image and head by
    head, what `image_attention_jaccard` gives on the image and its 0/1 mask."""
    from keras_dino.evaluation import image_attention_jaccard
    from keras_dino.models import VisionTransformer

    rng = np.random.default_rng(0)
    textures = emergence.make_textures(2, 96, rng)
    objects = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    images, masks, _ = emergence.make_composites(objects, textures, 5, rng)
    vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=24, depth=2, num_heads=3)
    scores, kept = emergence.attention_jaccards(vit, images, masks, 0.6, batch_size=2)
    assert scores.shape == (5, 3) and kept.shape == (5, 3, 64, 64)
    for image, mask, row in zip(images, masks, scores):
        np.testing.assert_allclose(
            image_attention_jaccard(vit, image, mask.astype(np.uint8), 64, 0.6), row,
            rtol=0, atol=1e-12)
    best, head, per_head = emergence.summarize(scores)
    assert best == scores.mean(axis=0).max() == scores.mean(axis=0)[head]
    assert per_head == [round(float(v), 4) for v in scores.mean(axis=0)]


@pytest.mark.once
def test_bench_files_are_consistent_with_its_figures(tmp_path):
    """A tiny run: the files and the JSON line are there, and the Jaccard computed from the
    saved checkpoint and evaluation files, image by image with the library, is the
    reported `jaccard_trained`."""
    import keras
    from PIL import Image

    import keras_dino
    from keras_dino.evaluation import image_attention_jaccard

    backend = keras.backend.backend()
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "bench/emergence.py", f"--output_dir={tmp_path}", "--steps=4",
         "--steps_per_epoch=2", "--num_train=64", "--num_eval=20", "--batch_size_per_gpu=8",
         "--embed_dim=24", "--depth=1", "--out_dim=64", "--head_hidden_dim=32",
         "--head_bottleneck_dim=16", "--local_crops_number=2", "--warmup_steps=2",
         "--grid_images=3", "--knn_k=5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    result = lines[-1]
    assert [line["epoch"] for line in lines[:-1]] == [0, 1, 2]
    for key in ("jaccard_trained", "jaccard_random", "steps", "wall_s", "knn5_top1_trained",
                "knn5_top1_random", "jaccard_per_head_trained", "best_head_trained"):
        assert key in result, key
    assert result["steps"] == 4 and result["wall_s"] > 0 and result["backend"] == backend
    assert json.loads((tmp_path / "results.json").read_text()) == result
    # The curve starts from the random network and ends at the trained one.
    assert lines[0]["jaccard"] == result["jaccard_random"]
    assert lines[-2]["jaccard"] == result["jaccard_trained"]
    log = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all("train_jaccard" in r for r in log)
    for picture in ("attention_grid.png", "training_curves.png"):
        assert (tmp_path / picture).stat().st_size > 1000, picture
    names = sorted(p.name for p in (tmp_path / "eval" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "eval" / "masks").iterdir())
    assert len(names) == 20

    backbone = keras_dino.load_pretrained(str(tmp_path / "checkpoint.pth"))
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_heads) == (8, 24, 3)
    scores = []
    for name in names:
        image = np.asarray(Image.open(tmp_path / "eval" / "images" / name))
        mask = np.asarray(Image.open(tmp_path / "eval" / "masks" / name))
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        scores.append(image_attention_jaccard(backbone, image, (mask > 0).astype(np.uint8), 64))
    per_head = np.mean(scores, axis=0)
    assert result["jaccard_trained"] == pytest.approx(per_head.max(), abs=1e-4)
    assert result["best_head_trained"] == int(per_head.argmax())
