"""The official linear classifiers (`eval_linear.py` files) on ViT, ResNet and XCiT.

`../shared/fixtures/official_dino_zoo/linear_*.pth` were written by the official
`eval_linear.py` for the reduced ViT (both recipes: ViT-S's 4 CLS tokens, ViT-B's CLS
and mean patch token) the reduced torchvision ResNet and the reduced XCiT, with the official features,
logits and accuracy on the same images.
"""

import json
import socket

import numpy as np
import pytest
from keras import ops

import keras_dino
from keras_dino.checkpoints.pretrained import PretrainedDownloadError, preset_url
from keras_dino.evaluation import (
    LinearProbe,
    linear_features,
    linear_recipe,
    load_linear_checkpoint,
    load_pretrained_classifier,
)
from keras_dino.testing.parity import resnet_reductions, xcit_reductions
from keras_dino.testing.tolerance import assert_within, network_tolerance, vit_reductions

RECIPES = {
    "resnet_mini": {},
    "vit_mini16_vits_recipe": dict(n_last_blocks=4, avgpool_patchtokens=False),
    "vit_mini16_vitb_recipe": dict(n_last_blocks=1, avgpool_patchtokens=True),
    "xcit_mini16": {},  # "vit" is not in "xcit": the official tool feeds model(x)
}


@pytest.fixture(scope="module")
def images(zoo_inputs):
    """The 224x224 inputs: the official val transform makes 224 crops."""
    return zoo_inputs["224x224"]


def _reductions(name, backbone):
    """The reductions the official 224x224 features depend on, and the linear layer's.

    Features and logits against the official numbers are two float32 programs: bounded by
    `network_tolerance` of these (keras_dino/testing/tolerance.py; it was rtol 1e-4 +
    atol 1e-5 for all four, set by one machine). ViT-S recipe: the last 4 blocks' CLS
    tokens (197 tokens), then 4 x 48 inputs; ViT-B recipe: the last block, the mean of the
    196 patch tokens, then 2 x 48; ResNet: the network and its 7 x 7 average pool, then
    512; XCiT: `model(x)`, then 48.
    """
    if name.startswith("resnet"):
        return resnet_reductions(backbone, pool=49), [backbone.embed_dim]
    if name.startswith("xcit"):
        return xcit_reductions(backbone, 197), [backbone.embed_dim]
    features = vit_reductions(backbone.depth, backbone.embed_dim, 197, backbone.patch_size,
                              backbone.num_heads, backbone.mlp_ratio)
    recipe = RECIPES.get(name, {})
    if recipe.get("avgpool_patchtokens"):
        return features + [196], [2 * backbone.embed_dim]
    return features, [recipe.get("n_last_blocks", 4) * backbone.embed_dim]


def _check_logits(name, backbone, logits, expected):
    features, linear = _reductions(name, backbone)
    assert_within(logits, expected, network_tolerance(features + linear, np.abs(expected).max()),
                  f"{name} logits")


def _backbone_file(name, zoo_dir, fixtures_dir):
    if name.startswith("resnet"):
        return zoo_dir / "backbone_resnet_mini.pth", dict(arch="resnet_mini")
    if name.startswith("xcit"):
        return zoo_dir / "backbone_xcit_mini16.pth", {}
    return fixtures_dir / "backbone_vit_mini16.pth", dict(num_heads=3)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_official_linear_classifiers_reproduce_eval_linear(zoo_dir, fixtures_dir, images, name):
    ref = np.load(zoo_dir / f"linear_outputs_{name}.npz")
    path, kwargs = _backbone_file(name, zoo_dir, fixtures_dir)
    backbone = keras_dino.load_pretrained(path, **kwargs)
    recipe = RECIPES[name]
    probe = LinearProbe(backbone, num_labels=100, **recipe)
    state = load_linear_checkpoint(probe, zoo_dir / f"linear_{name}.pth")
    features = ops.convert_to_numpy(linear_features(backbone, images, **recipe))
    bound = network_tolerance(_reductions(name, backbone)[0], np.abs(ref["features"]).max())
    assert_within(features, ref["features"], bound, f"{name} features")
    _check_logits(name, backbone, ops.convert_to_numpy(probe(images)), ref["logits"])
    stats = json.loads(str(ref["official_stats"]))
    assert state["best_acc"] == pytest.approx(stats["acc1"])


@pytest.mark.slow  # one backend suffices: the numerics are tested per backend
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_pretrained_classifier_reads_its_recipe_off_the_linear_layer(zoo_dir, fixtures_dir,
                                                                     images, name):
    path, kwargs = _backbone_file(name, zoo_dir, fixtures_dir)
    classifier = load_pretrained_classifier(path, zoo_dir / f"linear_{name}.pth", **kwargs)
    expected = RECIPES[name] or dict(n_last_blocks=4, avgpool_patchtokens=False)
    assert (classifier.n_last_blocks, classifier.avgpool_patchtokens) == (
        expected["n_last_blocks"], expected["avgpool_patchtokens"])
    logits = np.load(zoo_dir / f"linear_outputs_{name}.npz")["logits"]
    _check_logits(name, classifier.backbone, ops.convert_to_numpy(classifier(images)), logits)


def test_linear_recipe_refuses_a_layer_that_does_not_fit(fixtures_dir, zoo_dir):
    vit = keras_dino.load_pretrained(fixtures_dir / "backbone_vit_mini16.pth", num_heads=3)
    assert linear_recipe(vit, 48 * 5) == dict(n_last_blocks=5, avgpool_patchtokens=False)
    with pytest.raises(ValueError, match="does not fit a ViT of width 48 and 5 blocks"):
        linear_recipe(vit, 48 * 6)
    with pytest.raises(ValueError, match="does not fit"):
        linear_recipe(vit, 50)
    resnet = keras_dino.load_pretrained(zoo_dir / "backbone_resnet_mini.pth", arch="resnet_mini")
    with pytest.raises(ValueError, match="takes 2048 features; this ResNet gives 512"):
        linear_recipe(resnet, 2048)
    with pytest.raises(ValueError, match="linear_weights is needed"):
        load_pretrained_classifier(resnet)


def test_released_classifier_preset_offline_names_the_linear_weights(monkeypatch, tmp_path):
    def no_network(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(PretrainedDownloadError) as info:
        keras_dino.load_pretrained_classifier("dino_resnet50")
    url = preset_url("dino_resnet50", file="linear")
    assert url.endswith("/dino_resnet50_pretrain/dino_resnet50_linearweights.pth")
    assert url in str(info.value)
    assert str(tmp_path / "models" / "keras_dino" / "dino_resnet50_linearweights.pth") in str(
        info.value)


def test_classifier_loads_files_with_an_overridable_recipe(zoo_dir, fixtures_dir, images):
    # load_pretrained_classifier(backbone file, linear file, **load_pretrained kwargs).
    backbone = fixtures_dir / "backbone_vit_mini16.pth"
    linear = zoo_dir / "linear_vit_mini16_vitb_recipe.pth"
    classifier = keras_dino.load_pretrained_classifier(backbone, linear, num_heads=3)
    assert (classifier.n_last_blocks, classifier.avgpool_patchtokens) == (1, True)
    logits = np.load(zoo_dir / "linear_outputs_vit_mini16_vitb_recipe.npz")["logits"]
    _check_logits("vit_mini16_vitb_recipe", classifier.backbone,
                  ops.convert_to_numpy(classifier(images)), logits)
    # a recipe that does not fit the layer's width says which one would
    with pytest.raises(ValueError, match="give 192. Its width fits n_last_blocks=1, "
                                         "avgpool_patchtokens=True"):
        keras_dino.load_pretrained_classifier(backbone, linear, n_last_blocks=4, num_heads=3)


@pytest.mark.parametrize("linear_head", [True, "dino_vits16_linearweights.pth"])
def test_backbone_loader_points_to_the_classifier_loader(fixtures_dir, linear_head):
    # The loader builds backbones and never imports the classifier task that wraps one.
    with pytest.raises(TypeError, match=r"call keras_dino\.load_pretrained_classifier\("):
        keras_dino.load_pretrained(fixtures_dir / "backbone_vit_mini16.pth", num_heads=3,
                                   linear_head=linear_head)
    backbone = keras_dino.load_pretrained(fixtures_dir / "backbone_vit_mini16.pth",
                                          num_heads=3, linear_head=None)
    assert isinstance(backbone, keras_dino.VisionTransformer)


def test_imagenet_class_names_ship_with_the_package():
    from keras_dino.evaluation.classifier import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[281], names[999]) == ("tench", "tabby", "toilet tissue")


def test_classify_tool_prints_the_top_classes(zoo_dir, capsys):
    import json
    import os

    from absl import flags

    from keras_dino.evaluation import linear_features
    from keras_dino.preprocessing import EvalConfig

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from keras_dino.tools import classify

    image = os.path.join(repo, "keras_dino", "datasets", "cifar10_mini", "test")
    image = sorted(os.path.join(d, f) for d, _, fs in os.walk(image) for f in fs)[0]
    values = flags.FlagValues()
    classify.define_flags(values)
    values(["classify", f"--pretrained_weights={zoo_dir / 'backbone_resnet_mini.pth'}",
            "--arch=resnet_mini", f"--pretrained_linear={zoo_dir / 'linear_resnet_mini.pth'}",
            f"--image_path={image}", "--top_classes=3"])
    top = classify.run(values)
    # the same numbers by hand: backbone output, the linear layer, a softmax
    backbone = keras_dino.load_pretrained(zoo_dir / "backbone_resnet_mini.pth")
    state = np.load(zoo_dir / "linear_resnet_mini.npz")
    x = EvalConfig(224).load(image)[None]
    logits = (ops.convert_to_numpy(linear_features(backbone, x))[0]
              @ state["state_dict/module.linear.weight"].T + state["state_dict/module.linear.bias"])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    expected = np.argsort(-p)[:3]
    assert [index for _, index, _ in top] == expected.tolist()
    np.testing.assert_allclose([q for _, _, q in top], p[expected], rtol=1e-4)
    assert top[0][0] == f"class {expected[0]}"  # 100 labels: not ImageNet's names
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [c["index"] for c in last["top3"]] == expected.tolist()
