"""Dense features, their pictures (PCA, foreground, correspondences) and the feature shards."""

import json
import os

import numpy as np
import pytest
from keras import ops

from keras_dino.checkpoints import official
from keras_dino.evaluation import (
    block_output,
    cls_features,
    feature_images,
    foreground_mask,
    last_blocks_cls,
    linear_features,
    mean_patch_features,
    mutual_nearest_neighbours,
    patch_features,
    pca_rgb,
    principal_components,
    read_feature_shards,
    write_feature_shards,
)
from keras_dino.evaluation.retrieval import global_descriptor
from keras_dino.models import ResNet, VisionTransformer, XCiT, vit_tiny
from keras_dino.preprocessing import EvalConfig
from keras_dino.testing.parity import vit_bound, xcit_bound
from keras_dino.testing.tolerance import assert_within, network_tolerance, vit_reductions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def vit():
    return vit_tiny(16, depth=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 48, 64, 3)).astype("float32")


def test_patch_grid_is_the_last_layer_reshaped(vit, images):
    last = _np(vit.get_intermediate_layers(images, n=1)[-1])  # (2, 1 + 3 * 4, 192)
    grid = _np(patch_features(vit, images))
    assert grid.shape == (2, 3, 4, 192)
    np.testing.assert_allclose(grid, last[:, 1:].reshape(2, 3, 4, 192), atol=1e-5)
    np.testing.assert_allclose(grid[:, 1, 2], last[:, 1 + 1 * 4 + 2], atol=1e-5)  # row-major
    np.testing.assert_allclose(_np(cls_features(vit, images)), last[:, 0], atol=1e-5)
    np.testing.assert_allclose(_np(mean_patch_features(vit, images)), last[:, 1:].mean(1),
                               atol=1e-5)


def test_last_blocks_and_block_outputs_are_the_official_layers(vit, images):
    np.testing.assert_allclose(_np(last_blocks_cls(vit, images, n=2)),
                               _np(linear_features(vit, images, n_last_blocks=2)), atol=1e-5)
    layers = [_np(t) for t in vit.get_intermediate_layers(images, n=3)]
    for block in range(3):
        tokens = _np(block_output(vit, images, block=block, tokens=True))
        np.testing.assert_allclose(tokens, layers[block], atol=1e-5)
        np.testing.assert_allclose(_np(block_output(vit, images, block=block - 3)),
                                   layers[block][:, 1:].reshape(2, 3, 4, -1), atol=1e-5)
    with pytest.raises(ValueError, match="block must be in"):
        block_output(vit, images, block=3)


@pytest.mark.slow  # backend-independent composition of checked pieces: one backend
def test_multiscale_is_the_official_descriptor(vit, images):
    one = images[:1]  # the official code runs one image at a time
    ours = _np(cls_features(vit, one, multiscale=True))
    np.testing.assert_allclose(ours[0], global_descriptor(vit, one[0], True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _np(last_blocks_cls(vit, one, n=2, multiscale=True)).shape == (1, 384)


def _official_vit(fixtures_dir):
    state = dict(np.load(fixtures_dir / "backbone_vit_mini16.npz"))
    model = VisionTransformer(**official.infer_backbone_config(state, num_heads=3))
    official.load_state_dict(official.backbone_variable_map(model), state)
    return model


def _numpy_pca_rgb(rows, n=3):
    """PCA by an eigendecomposition of the covariance: independent of the SVD route."""
    centred = rows - rows.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    proj = centred @ vectors[:, np.argsort(values)[::-1][:n]]
    proj *= np.sign(proj[np.argmax(np.abs(proj), axis=0), np.arange(n)])  # the documented sign
    return (proj - proj.min(0)) / (proj.max(0) - proj.min(0))


def _pca_rgb_bound(rows, bound, step=1e-7):
    """First-order worst case of how far `_numpy_pca_rgb(rows)` moves when each entry of
    `rows` may move by `bound`: sum_i |d colours / d rows_i| bound_i, by central differences
    (float64: their error is ~1e-16 |colour| / step, 1e-9)."""
    rows = np.asarray(rows, np.float64)
    bound = np.broadcast_to(bound, rows.shape)
    total = np.zeros((len(rows), 3))
    for i, j in np.ndindex(rows.shape):
        up, down = rows.copy(), rows.copy()
        up[i, j] += step
        down[i, j] -= step
        total += np.abs(_numpy_pca_rgb(up) - _numpy_pca_rgb(down)) * (bound[i, j] / (2 * step))
    return total


def test_pca_of_the_official_patch_features_matches_numpy(fixtures_dir, official_inputs):
    model = _official_vit(fixtures_dir)
    ref = np.load(fixtures_dir / "outputs_vit_mini16.npz")
    x = official_inputs["96x96"]
    grid = _np(patch_features(model, x))  # (2, 6, 6, 48)
    official_patches = ref["96x96/intermediate4"][-1][:, 1:]  # the official last layer
    # two float32 programs: the bound of the network's reductions (keras_dino/testing/parity.py)
    bound = vit_bound(model, (6, 6), "intermediate", official_patches,
                      np.abs(ref["96x96/tokens"]).max())
    assert_within(grid.reshape(2, 36, 48), official_patches, bound, "patch features")
    rgb = pca_rgb(grid)
    want = _numpy_pca_rgb(official_patches.reshape(-1, 48).astype(np.float64))
    # Our features may differ from the official ones by `bound` (1.9e-4); the colours then
    # move by at most the first-order propagation of that through the PCA (the principal
    # axes turn by ~ the covariance's change / the eigengap). It was atol 1e-4, which
    # features within their bound exceed (random +-bound: 3-5e-4); up to 1.3e-2 here, 5e-7
    # measured.
    rows = official_patches.reshape(-1, 48)
    colour_bound = _pca_rgb_bound(rows, np.broadcast_to(bound, official_patches.shape).reshape(-1, 48))
    assert_within(rgb.reshape(-1, 3), want, colour_bound, "PCA colours")
    # Of our own features, only the PCA route (SVD vs eigh, float64: ~1e-14 here) and the
    # float32 colours (u = 6e-8) differ: 1e-6 is 16 u, the PCA itself checked tightly.
    np.testing.assert_allclose(
        rgb.reshape(-1, 3), _numpy_pca_rgb(grid.reshape(-1, 48).astype(np.float64)), atol=1e-6)
    # Sign-invariant too: each colour channel is a principal axis of the features.
    proj, comps, mean = principal_components(grid, 3)
    # float64 SVD: orthonormal to ~1e-15.
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-9)
    # The same float64 product of the same float64 rows: identical (0 measured).
    np.testing.assert_allclose(proj, (grid.reshape(-1, 48) - mean) @ comps.T, atol=1e-6)
    # Foreground only: fitted on the mask's patches, the others black.
    mask = foreground_mask(grid, threshold=0.5)
    rgb = pca_rgb(grid, foreground=mask)
    assert not rgb[~mask].any()
    # The same features, two float64 PCA routes (SVD, eigh: ~1e-14 here) and colours stored
    # in float32 (u = 6e-8): 1e-4 is loose (3e-8 measured); a wrong axis, sign or scale is O(1).
    np.testing.assert_allclose(rgb[mask], _numpy_pca_rgb(grid[mask].astype(np.float64)),
                               atol=1e-4)


def test_foreground_is_the_side_away_from_the_border():
    rng = np.random.default_rng(1)
    grid = rng.normal(size=(8, 10, 16)) * 0.05
    grid[2:6, 3:8] += rng.normal(size=16) * 3.0  # an object
    want = np.zeros((8, 10), bool)
    want[2:6, 3:8] = True
    for sign in (1.0, -1.0):  # whatever the component's sign
        np.testing.assert_array_equal(foreground_mask(sign * grid), want)
    batch = foreground_mask(np.stack([grid, grid[::-1]]))
    np.testing.assert_array_equal(batch, np.stack([want, want[::-1]]))


def test_correspondence_of_an_image_with_itself_is_the_identity(vit, images):
    grid = _np(patch_features(vit, images[:1]))[0]
    pairs, similarities = mutual_nearest_neighbours(grid, grid)
    np.testing.assert_array_equal(pairs, np.stack([np.arange(12)] * 2, axis=1))
    np.testing.assert_allclose(similarities, 1.0, atol=1e-6)
    # A shuffled copy: every patch finds its own feature again.
    order = np.random.default_rng(0).permutation(12)
    pairs, _ = mutual_nearest_neighbours(grid.reshape(12, -1), grid.reshape(12, -1)[order])
    np.testing.assert_array_equal(order[pairs[:, 1]], pairs[:, 0])
    assert len(pairs) == 12


@pytest.mark.slow  # backend-independent composition of checked pieces: one backend
def test_resnet_cells_are_its_patches():
    x = np.random.default_rng(2).normal(size=(1, 64, 96, 3)).astype("float32")
    model = ResNet("basic", (1, 1, 1, 1), stem_width=8, stage_widths=(8, 8, 16, 16))
    grid = _np(patch_features(model, x))
    assert grid.shape == (1, 2, 3, 16)
    np.testing.assert_allclose(grid, _np(model.forward_features(x)["layer4"]), atol=1e-6)
    np.testing.assert_allclose(_np(mean_patch_features(model, x)), _np(model(x)), atol=1e-5)
    assert _np(block_output(model, x, block=0)).shape == (1, 16, 24, 8)  # layer1
    shown = np.zeros((64, 96, 3), np.uint8)
    pictures = feature_images(model, [x[0], x[0]], [shown, shown])
    assert pictures["pca.png"].shape == (64, 96, 3)
    assert pictures["correspondences.png"].shape == (64, 192, 3)


@pytest.mark.slow  # backend-independent composition of checked pieces: one backend
def test_xcit_blocks_and_grid_are_the_official_tokens(zoo_dir, zoo_inputs):
    from keras_dino.models.official_names import xcit_map

    model = XCiT(patch_size=16, embed_dim=48, depth=2, num_heads=4, cls_attn_layers=2)
    official.load_state_dict(xcit_map(model), dict(np.load(zoo_dir / "backbone_xcit_mini16.npz")),
                             "XCiT")
    ref = np.load(zoo_dir / "outputs_xcit_mini16.npz")
    x = zoo_inputs["96x64"][:1]  # odd grid: every stride-2 convolution rounds up
    rows, cols = (int(v) for v in ref["96x64/grid_hw"])
    # two float32 programs: `xcit_bound` of the reductions up to each output (it was rtol
    # 1e-4 + atol 2e-5, set by one machine); 1 + rows x cols tokens
    n = 1 + rows * cols
    for block, key in ((0, "tokens_after_xca_block0"), (-1, "tokens_after_xca_last")):
        tokens = _np(block_output(model, x, block=block, normalize=False, tokens=True))
        expected = ref[f"96x64/{key}"][:1]
        assert_within(tokens, expected, xcit_bound(model, n, expected, f"xca{block % model.depth}"), key)
    final = ref["96x64/tokens_final_norm"][:1]
    grid = _np(patch_features(model, x))
    assert grid.shape == (1, rows, cols, 48)
    assert_within(grid.reshape(1, -1, 48), final[:, 1:], xcit_bound(model, n, final[:, 1:]),
                  "grid")
    assert_within(_np(cls_features(model, x)), final[:, 0], xcit_bound(model, n, final[:, 0]),
                  "cls")
    shown = np.zeros((96, 64, 3), np.uint8)
    pictures = feature_images(model, [x[0], x[0]], [shown, shown])
    assert pictures["pca.png"].shape == (96, 64, 3)
    assert pictures["correspondences.png"].shape == (96, 128, 3)


# --- shards -------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "images"
    for i in range(6):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (36 + 3 * i, 40, 3), np.uint8)
        Image.fromarray(pixels).save(root / f"class{i % 2}" / f"{i}.png")
    (root / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def _batched_bound(model, reference):
    """Features of the same model on the same 32x32 images, computed in other batches (the
    shards, compiled or not): kernels block the sums differently per batch size, so these
    are two float32 programs, bounded by the ViT's reductions over 1 + 2 x 2 tokens."""
    reductions = vit_reductions(model.depth, model.embed_dim, 5, model.patch_size,
                                model.num_heads, model.mlp_ratio)
    return network_tolerance(reductions, np.abs(reference).max())


def _model_features(model, root, names):
    config = EvalConfig(32, 32)
    x = np.stack([config.load(os.path.join(root, str(n))) for n in names])
    return _np(patch_features(model, x))


def test_shards_hold_the_models_features_and_resume(vit, folder, tmp_path):
    out = str(tmp_path / "features")
    args = dict(features="patch", image_size=32, resize_size=32, batch_size=4, shard_size=4,
                verbose=0)
    summary = write_feature_shards(vit, folder, out, **args)
    assert (summary["num_images"], summary["num_skipped"], summary["shards_written"]) == (6, 1, 2)
    assert summary["skipped"][0]["file"] == os.path.join("class1", "broken.jpg")
    assert summary["grid_shape"] == [2, 2] and summary["feature_shape"] == [2, 2, 192]
    with np.load(os.path.join(out, "features-00001.npz")) as shard:  # numpy alone reads it
        assert shard["files"].tolist() == ["class1/3.png", "class1/5.png"]
        assert shard["skipped"].tolist() == ["class1/broken.jpg"]
        assert shard["grid_shape"].tolist() == [2, 2]
    data = read_feature_shards(out)
    want = _model_features(vit, folder, data["files"])
    assert_within(data["features"], want, _batched_bound(vit, want), "shards")
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["complete"] is True

    # Resume: a deleted shard and an interrupted one (its temporary file) are computed
    # again; the complete one is reused.
    os.remove(os.path.join(out, "features-00001.npz"))
    with open(os.path.join(out, "features-00001.npz.partial"), "wb") as f:
        f.write(b"PK\x03\x04 half a shard")
    again = write_feature_shards(vit, folder, out, **args)
    assert (again["shards_written"], again["shards_reused"]) == (1, 1)
    assert not os.path.exists(os.path.join(out, "features-00001.npz.partial"))
    # (atol 1e-6 before: 0.4-0.75 of it measured on each backend)
    assert_within(read_feature_shards(out)["features"], data["features"],
                  _batched_bound(vit, data["features"]), "resumed shards")
    # A shard cut short (a copy that stopped) is not taken as complete.
    with open(os.path.join(out, "features-00000.npz"), "r+b") as f:
        f.truncate(100)
    assert write_feature_shards(vit, folder, out, **args)["shards_written"] == 1
    with pytest.raises(ValueError, match="other settings"):
        write_feature_shards(vit, folder, out, **{**args, "features": "cls"})
    with pytest.raises(ValueError, match="weights_sha256"):  # other weights: no reuse
        write_feature_shards(vit_tiny(16, depth=3), folder, out, **args)
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(ValueError, match="no manifest.json"):
        write_feature_shards(vit, folder, out, **args)


def test_list_files_vector_features_and_multiscale_rules(vit, folder, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text("images/class0/0.png\n# a comment\nimages/class1/broken.jpg\n"
                       "images/class1/3.png\n")
    out = str(tmp_path / "cls")
    summary = write_feature_shards(vit, listing, out, features="last_blocks", n_last_blocks=2,
                                   image_size=32, resize_size=32, compiled=False, verbose=0)
    data = read_feature_shards(out)
    assert data["files"].tolist() == ["images/class0/0.png", "images/class1/3.png"]
    assert summary["num_skipped"] == 1 and summary["feature_shape"] == [384]
    config = EvalConfig(32, 32)
    x = np.stack([config.load(tmp_path / str(n)) for n in data["files"]])
    np.testing.assert_allclose(data["features"], _np(linear_features(vit, x, 2)), atol=1e-5)
    with pytest.raises(ValueError, match="multiscale"):
        write_feature_shards(vit, listing, str(tmp_path / "x"), features="patch",
                             multiscale=True, verbose=0)


# --- the tools ---------------------------------------------------------------------------
def _tool(name):
    import importlib

    return importlib.import_module(f"keras_dino.tools.{name}")


@pytest.mark.slow
def test_extract_features_tool_writes_the_models_features(fixtures_dir, folder, tmp_path,
                                                          capsys):
    from absl import flags

    tool = _tool("extract_features")
    out = tmp_path / "out"
    values = flags.FlagValues()
    tool.define_flags(values)
    values(["extract_features", f"--pretrained_weights={fixtures_dir / 'backbone_vit_mini16.pth'}",
            "--arch=vit_mini", "--num_heads=3", f"--data_path={folder}", "--features=patch",
            "--eval_size=32", "--eval_resize=32", "--shard_size=3", f"--output_dir={out}",
            "--verbose=0"])
    tool.run(values)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["num_images"], last["num_skipped"], last["num_shards"]) == (6, 1, 3)
    assert last["grid_shape"] == [2, 2]
    data = read_feature_shards(out)
    model = _official_vit(fixtures_dir)
    want = _model_features(model, folder, data["files"])
    assert_within(data["features"], want, _batched_bound(model, want), "tool's shards")
    tool.run(values)  # a rerun reuses every shard
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["shards_written"], last["shards_reused"]) == (0, 3)


@pytest.mark.slow
def test_visualize_features_tool_writes_pictures_at_the_input_size(fixtures_dir, folder,
                                                                   tmp_path, capsys):
    from absl import flags
    from PIL import Image

    tool = _tool("visualize_features")
    values = flags.FlagValues()
    tool.define_flags(values)
    values(["visualize_features", f"--pretrained_weights={fixtures_dir / 'backbone_vit_mini16.pth'}",
            "--arch=vit_mini", "--num_heads=3", "--patch_size=16",
            f"--image_path={folder / 'class0' / '0.png'}",
            f"--image_path2={folder / 'class1' / '5.png'}", "--image_size=64",
            "--foreground_only", "--foreground_threshold=0.3", f"--output_dir={tmp_path}"])
    tool.run(values)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = sorted(os.path.basename(p) for p in last["files"])
    assert names == ["correspondences.png", "foreground.png", "foreground2.png", "pca.png",
                     "pca2.png"]
    for name, image in (("pca.png", "0.png"), ("foreground2.png", "5.png")):
        # Each image's pictures at its own resolution (the sizes the tool reports).
        original = Image.open(folder / ("class0" if image == "0.png" else "class1") / image)
        assert Image.open(tmp_path / name).size == original.size
    h, w = (int(v) for v in last["sizes"][0].split("x"))
    assert (h, w) == Image.open(folder / "class0" / "0.png").size[::-1]
    # The correspondences: the two model inputs side by side, 64 on the shorter side cut
    # to whole patches: 64x64 (from 36x40) and 80x64 (from 51x40), on an 80-high canvas.
    assert Image.open(tmp_path / "correspondences.png").size == (64 + 64, 80)
