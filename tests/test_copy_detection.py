"""Copy detection on Copydays: descriptor, whitening, the per-block mAP, and the tool.

The descriptor and the whitening are checked analytically (GeM of known tokens, the
whitened second moment is the identity); the tool end to end on a Copydays-layout
folder built from embedded CIFAR-10 images, whose queries are exact or flipped copies.
"""

import os
import shutil

import numpy as np
import pytest
from keras import ops

from keras_dino.evaluation.copy_detection import (
    PCAWhitening,
    copy_detection_features,
    gem,
    image_files,
    load_square,
)
from keras_dino.models import vit_tiny
from keras_dino.testing.tolerance import assert_within, network_tolerance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gem_is_the_generalised_mean_of_clamped_tokens():
    tokens = np.array([[[1.0, -2.0], [3.0, 0.0]]], "float32")  # (B=1, N=2, E=2)
    out = ops.convert_to_numpy(gem(tokens))
    # column 0: ((1 + 81) / 2)^(1/4); column 1: negatives and zeros clamp to 1e-6
    # one float32 program against float64, relative to each value: the 4th power (2
    # products), the mean over 2 tokens, the 1/4 power (a library function, 4 ulps):
    # network_tolerance([4, 2, 16], programs=1) = 1.7e-6 (rtol 1e-5 before)
    expected = np.array([(41.0) ** 0.25, 1e-6])
    assert_within(out[0], expected, network_tolerance([4, 2, 16], expected, programs=1), "gem")


def test_descriptor_is_cls_then_gem_of_the_last_blocks_patch_tokens():
    vit = vit_tiny(16, depth=2)
    x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype("float32")
    tokens = ops.convert_to_numpy(vit.get_intermediate_layers(x, 1)[0])
    expected = np.concatenate(
        [tokens[:, 0], np.mean(np.maximum(tokens[:, 1:], 1e-6) ** 4, axis=1) ** 0.25], axis=1)
    # two float32 programs (Keras, numpy) on the same tokens: the CLS half is copied, the
    # GeM half rounds a 4th power, a mean over the 6 patch tokens and a 1/4 power, in each:
    # network_tolerance([4, 6, 16]) of each value (rtol 1e-4 + atol 1e-6 before)
    bound = network_tolerance([4, 6, 16], np.abs(expected))
    assert_within(ops.convert_to_numpy(copy_detection_features(vit, x)), expected, bound, "GeM")
    from keras_dino.models.resnet import resnet

    with pytest.raises(ValueError, match="official tool is ViT-only"):
        copy_detection_features(resnet("resnet18"), x)


def test_whitening_whitens_the_second_moment_and_keeps_dim_components():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 3.0
    pca = PCAWhitening(whit=0.5).fit(features)
    moment = features.T @ features / len(features)
    np.testing.assert_allclose(pca.dvt @ moment @ pca.dvt.T, np.eye(6), atol=1e-8)
    # projected features are centred by the learned mean
    np.testing.assert_allclose(pca.transform(features).mean(axis=0), 0.0, atol=1e-8)
    reduced = PCAWhitening(dim=2, whit=0.5).fit(features)
    assert reduced.transform(features).shape == (400, 2) and 0 < reduced.energy_kept < 1
    with pytest.raises(ValueError, match="fit the PCAWhitening first"):
        PCAWhitening().transform(features)


def test_images_are_resized_square_with_pil_bicubic(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, (30, 50, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    x = load_square(tmp_path / "a.png", 40)
    expected = np.asarray(Image.fromarray(pixels).resize((40, 40), Image.BICUBIC), np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x, (expected / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [os.path.basename(p) for p in image_files(tmp_path)] == ["a.png"]


@pytest.fixture(scope="module")
def copydays(tmp_path_factory):
    """original/ 6 images whose first two (prefix 2000) are the same picture, jpegqual/75
    copies, crops/50 horizontally flipped copies, strong/ copies of 200000 and 200300,
    plus distractor and whitening folders."""
    from PIL import Image

    from keras_dino.data import list_image_files
    from keras_dino.datasets import cifar10_mini

    root = tmp_path_factory.mktemp("copydays")
    files = list_image_files(cifar10_mini("test")).files
    picked = files[::150][:5]
    originals = [picked[0], picked[0], *picked[1:]]
    names = ["200000.jpg", "200001.jpg", "200100.jpg", "200200.jpg", "200300.jpg", "200400.jpg"]
    for sub in ("original", "strong", "jpegqual/75", "crops/50"):
        (root / sub).mkdir(parents=True)
    for src, name in zip(originals, names):
        shutil.copy(src, root / "original" / name)
        shutil.copy(src, root / "jpegqual/75" / name)
        Image.open(src).transpose(Image.FLIP_LEFT_RIGHT).save(root / "crops/50" / name)
    # strong: a copy of 200000 (prefix 2000: two positives) and one of 200300
    shutil.copy(originals[0], root / "strong" / "200000_s.jpg")
    shutil.copy(originals[4], root / "strong" / "200300_s.jpg")
    for folder, offset in (("distractors", 3), ("whitening", 7)):
        (root / folder).mkdir()
        for i, src in enumerate(files[offset::80][:12]):
            shutil.copy(src, root / folder / f"{i:03d}.jpg")
    return root


def _tool():
    from keras_dino.tools import eval_copy_detection

    return eval_copy_detection


@pytest.mark.slow  # one backend suffices: the numerics are tested per backend
@pytest.mark.parametrize("extras", (False, True), ids=("plain", "whitened+distractors"))
def test_copy_detection_tool_scores_every_block(copydays, tmp_path, extras, capsys):
    from absl import flags

    tool = _tool()
    values = flags.FlagValues()
    tool.define_flags(values)
    args = ["eval_copy_detection", "--arch=vit_tiny", "--patch_size=8",
            f"--data_path={copydays}", "--imsize=32", "--verbose=0", f"--output_dir={tmp_path}"]
    if extras:
        args += [f"--whitening_path={copydays / 'whitening'}",
                 f"--distractors_path={copydays / 'distractors'}"]
    values(args)
    stats = tool.run(values)
    assert stats["whitened"] is extras
    assert stats["num_database"] == (18 if extras else 6)
    # Exact copies come first, except that 200001's copy ties with 200000 (the same
    # picture, earlier in the database): its positive is second, AP (0/1 + 1/2) / 2.
    assert stats["original"] == pytest.approx((5 + 0.25) / 6)
    assert stats["jpegqual/75"] == pytest.approx((5 + 0.25) / 6)
    # strong: positives by 4-character prefix. 200000_s finds both 2000* originals
    # first (AP 1); 200300_s finds 200300 (AP 1); a 1:1 mapping would score 0.5.
    assert stats["strong"] == pytest.approx(1.0)
    assert 0.0 <= stats["crops/50"] <= 1.0
    assert set(stats) == {"original", "strong", "jpegqual/75", "crops/50", "num_database",
                          "whitened"}
    assert (tmp_path / "log.txt").read_text().count('"strong"') == 1
    import json

    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["mAP"] == {b: round(stats[b], 4)
                           for b in ("original", "strong", "jpegqual/75", "crops/50")}
