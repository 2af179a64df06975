"""ONNX and LiteRT exports (`keras_dino.export.export_onnx` / `export_litert`).

The official vit_mini16 checkpoint is exported from its file and the exports are run by
onnxruntime and the LiteRT interpreter in a fresh `python -I` process where keras_dino
cannot be imported (neither can TensorFlow: the runtimes need neither); their outputs
must match the official DINO code's outputs in the fixtures within float32 rounding
(ONNX at 224x224, 96x96 and 480x320 from one file: dynamic height and width; LiteRT at its
export size, 224x224). Float16 weights are compared with the float32 export. Conversion needs
TensorFlow itself, so these run in the TensorFlow process (`tf_only`); the other
backends check the error that says how to export.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from keras_dino import export
from keras_dino.testing.parity import vit_bound
from keras_dino.testing.tolerance import assert_within, network_tolerance, vit_reductions
from keras_dino.version import __version__

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_dino"
ZOO = SHARED / "fixtures" / "official_dino_zoo"
CHECKPOINT = FIXTURES / "backbone_vit_mini16.pth"  # official vit_mini16: 48 wide, depth 5
NUM_HEADS = 3
# Against the official outputs: the runtime and the official code are two float32 programs;
# `vit_bound` (keras_dino/testing/parity.py) bounds the rounding of the reductions each
# output depends on, plus the export's own uint8 normalisation (`normalizes=True`; the
# derivation is in tests/test_parity_official.py and keras_dino/testing/tolerance.py).
# Float16 weights against float32 weights, relative to the largest |output|: rounding a
# weight to float16 (round to nearest, the same bits on every machine) moves it by at most
# 2**-11 = 4.9e-4 relative, and the outputs by ~5e-4 (measured, ONNX and LiteRT alike); the
# difference between machines is only the float32 noise on top (< 1e-5 relative,
# docs/tolerances.md), so 10x the measured value is a bound, and far below what a weight
# left in float32 (0) or a wrong one (order 1) gives. The a-priori bound, 6 * 2**-11 *
# sqrt(~35 rounded tensors) = 1.7e-2, is looser than needed to catch a wrong conversion.
FLOAT16_REL_TOL = 5e-3
ONNX_SIZES = ("224x224", "96x96", "480x320")
# The keys of the SavedModel's metadata, which the file exports share.
SAVED_MODEL_KEYS = {"format", "model_name", "version", "model", "image_size", "preprocessing",
                    "signatures", "exported_with"}

# Runs every export with onnxruntime / the LiteRT interpreter, without keras_dino or
# TensorFlow (both blocked), and reads the metadata with onnx's and LiteRT's own readers.
_PLAIN_RUNTIME_SCRIPT = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_dino", "tensorflow", "keras"):
            raise ImportError(f"{name} is blocked: the export must run without it")

sys.meta_path.insert(0, Block())
import numpy as np
import onnxruntime as ort
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

files, inputs_path, out_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
inputs = np.load(inputs_path)
result, info = {}, {}
for tag, path in files.items():
    if path.endswith(".onnx"):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for size in inputs.files:
            for name, value in zip(names, session.run(None, {"images": inputs[size]})):
                result[f"{tag}/{size}/{name}"] = value
        info[tag] = {"inputs": [[i.name, i.type, [str(d) for d in i.shape]]
                                for i in session.get_inputs()],
                     "outputs": names,
                     "metadata": session.get_modelmeta().custom_metadata_map}
    else:
        runner = Interpreter(model_path=path).get_signature_runner("serving_default")
        x = inputs["224x224"]
        for batch in (x, x[:1], np.concatenate([x, x])):  # a dynamic batch
            for name, value in runner(images=batch).items():
                result[f"{tag}/224x224_b{len(batch)}/{name}"] = value
        model = schema.Model.GetRootAs(bytearray(open(path, "rb").read()), 0)
        metadata = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            if entry.Name().decode() == "keras_dino_export":
                metadata = json.loads(bytes(data).decode())
        info[tag] = {"metadata": metadata, "signatures": list(
            Interpreter(model_path=path).get_signature_list())}
np.savez(out_path, **result)
print(json.dumps({"info": info, "blocked_loaded": sorted(
    m for m in sys.modules if m.split(".")[0] in ("keras_dino", "tensorflow", "keras"))}))
"""


def _run_plain(files, inputs, tmp_path):
    script = tmp_path / "plain_runtime.py"
    script.write_text(_PLAIN_RUNTIME_SCRIPT)
    inputs_path, out = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_path, **inputs)
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-I", str(script), json.dumps({k: str(v) for k, v in files.items()}),
         str(inputs_path), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["blocked_loaded"] == []
    with np.load(out) as data:
        return {name: data[name] for name in data.files}, info["info"]


def _err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


_MODEL = {}


def _official_model():
    """The checkpoint loaded by keras_dino: its architecture sizes the bounds."""
    if "vit" not in _MODEL:
        import keras_dino

        _MODEL["vit"] = keras_dino.load_pretrained(CHECKPOINT, num_heads=NUM_HEADS)
    return _MODEL["vit"]


def _check(actual, expected, quantity, grid, what, ref):
    """`actual` (an export's output) against the official `expected` on a `grid`."""
    tokens = np.abs(ref[f"{'x'.join(str(16 * g) for g in grid)}/tokens"]).max()
    bound = vit_bound(_official_model(), grid, quantity, expected, tokens, normalizes=True)
    assert_within(actual, expected, bound, what)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The checkpoint exported four ways, run in a plain process, and the references."""
    base = tmp_path_factory.mktemp("file_exports")
    options = dict(load_kwargs={"num_heads": NUM_HEADS}, include_attention=True)
    files = {
        "onnx": export.export(CHECKPOINT, base, format="onnx", include_patch_tokens=True,
                              **options),
        "onnx16": export.export(CHECKPOINT, base, format="onnx", model_name="dino16",
                                float16=True, **options),
        "litert": export.export(CHECKPOINT, base, format="litert", **options),
        "litert16": export.export(CHECKPOINT, base, format="litert", model_name="dino16",
                                  float16=True, **options),
    }
    data = np.load(FIXTURES / "inputs.npz")
    inputs = {size: data[f"{size}/uint8_nhwc"] for size in ONNX_SIZES}
    tmp = tmp_path_factory.mktemp("plain_runtime")
    outputs, info = _run_plain(files, inputs, tmp)
    return dict(base=base, files=files, inputs=inputs, outputs=outputs, info=info,
                official=np.load(FIXTURES / "outputs_vit_mini16.npz"))


@pytest.mark.tf_only
def test_onnx_matches_official_at_any_size_without_keras_dino(exports):
    out, ref = exports["outputs"], exports["official"]
    for size in ONNX_SIZES:
        grid = [int(g) for g in ref[f"{size}/grid_hw"]]
        cls = out[f"onnx/{size}/cls_embedding"]
        assert cls.shape == (2, 48)
        _check(cls, ref[f"{size}/cls"], "cls", grid, f"{size}/cls", ref)
        attention = out[f"onnx/{size}/cls_attention"]
        assert attention.shape == (2, NUM_HEADS, *grid)
        _check(attention.reshape(2, NUM_HEADS, -1), ref[f"{size}/attn_cls"][:, :, 1:], "attn",
               grid, f"{size}/attn_cls", ref)
        # The last block's normalised tokens, at the fixture's token positions.
        idx = ref[f"{size}/token_idx"]
        patches = out[f"onnx/{size}/patch_tokens"]
        assert patches.shape == (2, grid[0] * grid[1], 48)
        tokens = np.concatenate([cls[:, None], patches], axis=1)
        _check(tokens[:, idx], ref[f"{size}/intermediate4"][-1], "intermediate", grid,
               f"{size}/patch_tokens", ref)
    info = exports["info"]["onnx"]
    assert info["inputs"] == [["images", "tensor(uint8)", ["batch", "height", "width", "3"]]]
    assert info["outputs"] == ["cls_embedding", "patch_tokens", "cls_attention"]


@pytest.mark.tf_only
def test_litert_matches_official_at_its_size_with_a_dynamic_batch(exports):
    out, ref = exports["outputs"], exports["official"]
    expected = ref["224x224/cls"]
    grid = (14, 14)
    _check(out["litert/224x224_b2/cls_embedding"], expected, "cls", grid, "b2", ref)
    _check(out["litert/224x224_b1/cls_embedding"], expected[:1], "cls", grid, "b1", ref)
    _check(out["litert/224x224_b4/cls_embedding"], np.concatenate([expected] * 2), "cls", grid,
           "b4", ref)
    attention = out["litert/224x224_b2/cls_attention"]
    assert attention.shape == (2, NUM_HEADS, 14, 14)
    _check(attention.reshape(2, NUM_HEADS, -1), ref["224x224/attn_cls"][:, :, 1:], "attn", grid,
           "attn_cls", ref)
    assert exports["info"]["litert"]["signatures"] == ["serving_default"]


@pytest.mark.tf_only
def test_float16_weights_stay_close_to_float32(exports):
    out = exports["outputs"]
    for f16, f32 in (("onnx16/480x320", "onnx/480x320"), ("onnx16/224x224", "onnx/224x224"),
                     ("litert16/224x224_b2", "litert/224x224_b2")):
        for name in ("cls_embedding", "cls_attention"):
            scale = float(np.abs(out[f"{f32}/{name}"]).max())
            err = _err(out[f"{f16}/{name}"], out[f"{f32}/{name}"])
            assert 0 < err < FLOAT16_REL_TOL * scale, (f16, name, err, scale)
    sizes = {tag: os.path.getsize(path) for tag, path in exports["files"].items()}
    assert sizes["onnx16"] < 0.6 * sizes["onnx"] and sizes["litert16"] < 0.7 * sizes["litert"]


@pytest.mark.tf_only
def test_metadata_round_trip(exports, capsys):
    files, info = exports["files"], exports["info"]
    for tag, path in files.items():
        meta = export.load_metadata(path)
        assert SAVED_MODEL_KEYS <= set(meta)
        assert json.loads(pathlib.Path(path + ".json").read_text()) == meta  # the sidecar
        assert meta["model"]["patch_size"] == 16 and meta["model"]["embed_dim"] == 48
        assert meta["model"]["depth"] == 5 and meta["model"]["num_heads"] == NUM_HEADS
        assert "sha256" in meta["model"]["weights_source"]
        pre = meta["preprocessing"]
        assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
        assert (pre["input_name"], pre["input_dtype"], pre["layout"]) == ("images", "uint8",
                                                                          "NHWC")
        assert meta["weights_dtype"] == ("float16" if tag.endswith("16") else "float32")
        assert meta["exported_with"]["keras_dino"] == __version__
    onnx_meta = export.load_metadata(files["onnx"])
    assert onnx_meta["format"] == "keras_dino.onnx/1" and onnx_meta["image_size"] is None
    assert "patch_grid" not in onnx_meta
    assert onnx_meta["signatures"]["serving_default"]["inputs"]["images"]["shape"] == [
        None, None, None, 3]
    litert_meta = export.load_metadata(files["litert"])
    assert litert_meta["format"] == "keras_dino.litert/1" and litert_meta["image_size"] == 224
    assert litert_meta["patch_grid"] == [14, 14]
    # Read by the runtimes' own readers, without keras_dino.
    flat = info["onnx"]["metadata"]
    assert json.loads(flat["keras_dino_export"]) == onnx_meta
    assert (flat["arch"], flat["patch_size"], flat["input_dtype"]) == ("custom", "16", "uint8")
    assert flat["keras_dino_version"] == onnx_meta["exported_with"]["keras_dino"]
    assert json.loads(flat["mean"]) == [0.485, 0.456, 0.406]
    assert info["litert"]["metadata"] == litert_meta
    export.describe(files["onnx"])
    export.describe(files["litert16"])
    printed = capsys.readouterr().out
    assert "input  images: uint8 [batch, height, width, 3]" in printed
    assert "output cls_attention: float32 [batch, 3, grid_h, grid_w]" in printed
    assert "LiteRT model" in printed and "(float16 weights)" in printed
    assert "input  images: uint8 [batch, 224, 224, 3]" in printed


@pytest.mark.tf_only
def test_feature_extractors_name_bad_images(exports):
    onnx = export.OnnxFeatureExtractor(exports["files"]["onnx"])
    litert = export.LiteRTFeatureExtractor(exports["files"]["litert"])
    x224, x96 = exports["inputs"]["224x224"], exports["inputs"]["96x96"]
    ref = exports["official"]
    _check(onnx(x96)["cls_embedding"], ref["96x96/cls"], "cls", (6, 6), "onnx 96x96", ref)
    _check(litert(x224[0])["cls_embedding"], ref["224x224/cls"][:1], "cls", (14, 14),
           "litert one image", ref)
    with pytest.raises(export.ImageSizeError, match="exported for 224x224"):
        litert(x96)
    with pytest.raises(export.ImageSizeError, match="smaller than one patch"):
        onnx(x224[:, :8, :8])
    for extractor in (onnx, litert):
        with pytest.raises(export.ImageChannelsError, match="RGBA"):
            extractor(np.zeros((1, 224, 224, 4), np.uint8))
        with pytest.raises(export.ImageChannelsError, match="channels-first"):
            extractor(np.transpose(x224, (0, 3, 1, 2)))
        with pytest.raises(export.ImageChannelsError, match="grayscale"):
            extractor(x224[0, :, :, 0])
        with pytest.raises(export.ImageDtypeError, match="got dtype float32"):
            extractor(x224.astype(np.float32))
    assert issubclass(export.ImageDtypeError, TypeError)
    assert issubclass(export.ImageSizeError, export.InvalidImagesError)


@pytest.mark.tf_only
def test_bad_arguments_and_overwrite(exports):
    base = exports["base"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export(CHECKPOINT, base, format="litert", load_kwargs={"num_heads": NUM_HEADS})
    with pytest.raises(ValueError, match="fixed image size"):
        export.export(CHECKPOINT, base, format="litert", model_name="x", image_size=None,
                      load_kwargs={"num_heads": NUM_HEADS})
    with pytest.raises(ValueError, match="multiple of the patch size"):
        export.export(CHECKPOINT, base, format="onnx", model_name="x", image_size=100,
                      load_kwargs={"num_heads": NUM_HEADS})
    with pytest.raises(ValueError, match="input_dtype"):
        export.export(CHECKPOINT, base, format="onnx", model_name="x", input_dtype="int32",
                      load_kwargs={"num_heads": NUM_HEADS})
    assert not (base / "x.onnx").exists() and not (base / "x.tflite").exists()


@pytest.mark.tf_only
def test_linear_classifier_exports_with_its_logits(tmp_path):
    """The official linear classifier (ViT-S recipe: 4 CLS tokens) at any image size."""
    import keras_dino
    from keras_dino.evaluation import LinearProbe, load_linear_checkpoint

    backbone = keras_dino.load_pretrained(CHECKPOINT, num_heads=NUM_HEADS)
    probe = LinearProbe(backbone, num_labels=100, n_last_blocks=4)
    load_linear_checkpoint(probe, ZOO / "linear_vit_mini16_vits_recipe.pth")
    path = export.export(probe, tmp_path, format="onnx", input_dtype="float32")
    meta = export.load_metadata(path)
    assert meta["classifier"] == {"num_labels": 100, "n_last_blocks": 4,
                                  "avgpool_patchtokens": False}
    extractor = export.OnnxFeatureExtractor(path)
    pixels = np.load(ZOO / "inputs.npz")["224x224/uint8_nhwc"].astype(np.float32)
    out = extractor(pixels)
    assert sorted(out) == ["cls_embedding", "logits"]
    expected = np.load(ZOO / "linear_outputs_vit_mini16_vits_recipe.npz")["logits"]
    # Two float32 programs: the backbone's 4 last CLS tokens (`vit_bound`, "intermediate"),
    # then the 4 x 48 = 192-wide linear layer.
    tokens = np.abs(np.load(FIXTURES / "outputs_vit_mini16.npz")["224x224/tokens"]).max()
    bound = vit_bound(backbone, (14, 14), "intermediate", expected, tokens, then=[192],
                      normalizes=True)
    assert_within(out["logits"], expected, bound, "logits at 224x224")
    # Another size: the Keras probe's own logits (the official code was run at 224 only);
    # the same bound at 480x320: 601 tokens, and the resized position embedding is computed
    # in float64 by both.
    small = np.load(FIXTURES / "inputs.npz")["480x320/uint8_nhwc"].astype(np.float32)
    keras_logits = np.asarray(probe(keras_dino.preprocessing.normalize_images(small)))
    scale = np.abs(keras_logits).max()
    reductions = [16] + vit_reductions(5, 48, 601, 16, NUM_HEADS) + [192]
    assert_within(extractor(small)["logits"], keras_logits, network_tolerance(reductions, scale),
                  "logits at 480x320")


@pytest.mark.once  # the tool runs in its own TensorFlow process
def test_export_tool_writes_onnx_and_litert(tmp_path):
    out_dir = tmp_path / "exports"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_BACKEND"] = "tensorflow"
    for fmt, suffix in (("onnx", ".onnx"), ("litert", ".tflite")):
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / "export_saved_model.py"),
             f"--pretrained_weights={CHECKPOINT}", "--num_heads=3", f"--format={fmt}",
             f"--output_dir={out_dir}", "--model_name=mini", "--attention", "--float16"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        path = out_dir / f"mini{suffix}"
        assert path.is_file() and (out_dir / f"mini{suffix}.json").is_file()
        assert "load_feature_extractor" in proc.stdout and "(float16 weights)" in proc.stdout
        meta = export.load_metadata(path)
        assert meta["image_size"] == (None if fmt == "onnx" else 224)
        assert "cls_attention" in meta["signatures"]["serving_default"]["outputs"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "export_saved_model.py"),
         f"--describe={out_dir / 'mini.onnx'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and "ONNX model" in proc.stdout
    # The resize before the crop belongs to the SavedModel, which decodes images.
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "export_saved_model.py"),
         f"--pretrained_weights={CHECKPOINT}", "--num_heads=3", "--format=onnx",
         f"--output_dir={tmp_path / 'refused'}", "--eval_resize=256"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "--eval_resize applies to --format=saved_model" in (
        proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.backends("jax", "torch")
def test_other_backends_explain_how_to_export(tmp_path):
    from keras_dino.models import vit_tiny

    for fmt in ("onnx", "litert"):
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
            export.export(vit_tiny(depth=1), tmp_path, format=fmt)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- register tokens

REGISTER_SIZES = ((224, 224), (480, 320))


def _small_vit(registers):
    import keras

    from keras_dino.models import VisionTransformer

    keras.utils.set_random_seed(registers)
    model = VisionTransformer(patch_size=16, embed_dim=48, depth=2, num_heads=3,
                              num_register_tokens=registers)
    model.build((None, None, None, 3))
    if registers:  # far from their ~1e-6 initialisation, so that misplacing them shows
        model.register_tokens.assign(
            np.random.default_rng(1).normal(size=(1, registers, 48)).astype("float32"))
    return model


@pytest.fixture(scope="module", params=[0, 4], ids=["registers0", "registers4"])
def register_exports(request, tmp_path_factory):
    """A small ViT with 0 or 4 register tokens, behind a linear probe (the ViT-B recipe:
    CLS and mean patch token), exported three ways from one `ExportOptions`, and the
    Keras model's own outputs at 224x224 and 480x320."""
    from keras_dino.evaluation import LinearProbe
    from keras_dino.preprocessing import normalize_images

    registers = request.param
    model = _small_vit(registers)
    probe = LinearProbe(model, num_labels=5, n_last_blocks=1, avgpool_patchtokens=True)
    probe.classifier.linear.kernel.assign(
        np.random.default_rng(2).normal(size=(96, 5)).astype("float32"))
    base = tmp_path_factory.mktemp(f"registers{registers}")
    options = export.ExportOptions(image_size=None, include_patch_tokens=True,
                                   include_attention=True)
    paths = {fmt: export.export(probe, base, format=fmt, options=options)
             for fmt in ("saved_model", "onnx")}
    paths["litert"] = export.export(probe, base, format="litert",
                                    options=options.replace(image_size=224))
    reference, rng = {}, np.random.default_rng(3)
    prefix = model.num_prefix_tokens
    for h, w in REGISTER_SIZES:
        pixels = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        x = normalize_images(pixels)
        tokens = np.asarray(model.forward_features(x))
        attn = np.asarray(model.get_last_selfattention(x))
        reference[(h, w)] = dict(
            pixels=pixels, cls_embedding=tokens[:, 0], patch_tokens=tokens[:, prefix:],
            cls_attention=attn[:, :, 0, prefix:].reshape(2, 3, h // 16, w // 16),
            logits=np.asarray(probe(x)))
    return dict(registers=registers, paths=paths, reference=reference, model=model)


def _register_outputs(register_exports):
    import tensorflow as tf

    served = tf.saved_model.load(register_exports["paths"]["saved_model"])
    onnx = export.OnnxFeatureExtractor(register_exports["paths"]["onnx"])
    litert = export.LiteRTFeatureExtractor(register_exports["paths"]["litert"])
    got = {}
    for size, ref in register_exports["reference"].items():
        images = ref["pixels"]
        out = served.signatures["serving_default"](images=tf.constant(images))
        got["saved_model", size] = {k: v.numpy() for k, v in out.items()}
        got["onnx", size] = onnx(images)
        if size == (224, 224):
            got["litert", size] = litert(images)
    return got


@pytest.mark.tf_only
def test_register_tokens_export_to_every_format_at_two_sizes(register_exports, capsys):
    """SavedModel and ONNX (any size) and LiteRT (224) give the Keras model's embedding,
    patch tokens (registers left out), attention maps over the patch grid and the linear
    probe's logits (its average over the patches only)."""
    registers = register_exports["registers"]
    reference = register_exports["reference"]
    worst = {}
    for (fmt, size), out in _register_outputs(register_exports).items():
        ref = reference[size]
        grid = (size[0] // 16, size[1] // 16)
        assert sorted(out) == ["cls_attention", "cls_embedding", "logits", "patch_tokens"]
        assert out["patch_tokens"].shape == (2, grid[0] * grid[1], 48), (fmt, size)
        assert out["cls_attention"].shape == (2, 3, *grid), (fmt, size)
        for name in out:
            err = _err(out[name], ref[name])
            worst[f"{fmt} {size[0]}x{size[1]} {name}"] = err
            assert err < 1e-5 * max(1.0, float(np.abs(ref[name]).max())), (fmt, size, name, err)
    with capsys.disabled():  # the differences, for the record
        print(f"\nregisters={registers}: max |export - keras| per format, size and output:")
        for key, err in worst.items():
            print(f"  {key}: {err:.2e}")
    meta = export.load_metadata(register_exports["paths"]["onnx"])
    assert meta["model"]["num_register_tokens"] == registers
    assert meta["classifier"]["avgpool_patchtokens"] is True
    assert meta["preprocessing"]["eval_config"]["size"] == 224


@pytest.mark.tf_only
def test_one_options_object_and_format_only_keywords(tmp_path):
    model = _small_vit(0)
    with pytest.raises(TypeError, match="float16 applies to the onnx and litert"):
        export.export_saved_model(model, tmp_path, float16=True)
    with pytest.raises(TypeError, match="unknown export option 'imagesize'"):
        export.export_onnx(model, tmp_path, imagesize=96)
    with pytest.raises(TypeError, match="options must be an ExportOptions"):
        export.export_onnx(model, tmp_path, "name")
    options = export.ExportOptions(float16=True, resize_size=300)  # read by some formats only
    assert options.eval_config.resize_size == 300
    with pytest.raises(ValueError, match="resize_size 200 is smaller"):
        export.ExportOptions(resize_size=200)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tf_only
def test_onnx_conversion_retries_a_failing_optimizer_pass_with_tf2onnxs_safety_net(
        monkeypatch):
    """The conversion runs tf2onnx's optimizer without its graph copies; a pass that
    raises makes it convert again with them (tf2onnx then skips the pass), and the
    environment is left as it was: a TF2ONNX_CATCH_ERRORS of the user's own is obeyed."""
    import onnxruntime
    import tensorflow as tf
    from tf2onnx import optimizer
    from tf2onnx.optimizer.optimizer_base import GraphOptimizerBase

    from keras_dino.export import onnx as onnx_export

    seen = []

    class Failing(GraphOptimizerBase):
        def _optimize(self, graph):
            seen.append(os.environ.get("TF2ONNX_CATCH_ERRORS"))
            raise RuntimeError("a failing optimizer pass")

    monkeypatch.setitem(optimizer._get_optimizers(), "failing_test_pass", Failing)
    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    function = tf.function(lambda x: 2.0 * x + 1.0,
                           input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    proto = onnx_export.convert(function)
    # Without the net (it raised at once), then with it (skipped at every round of passes).
    assert seen[0] == "FALSE" and len(seen) > 1 and set(seen[1:]) == {None}, seen
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(None, {session.get_inputs()[0].name: x})[0],
                                  2 * x + 1)
    # The user's own setting (here: no net) is used as it is, once.
    monkeypatch.setenv("TF2ONNX_CATCH_ERRORS", "FALSE")
    seen.clear()
    with pytest.raises(RuntimeError, match="a failing optimizer pass"):
        onnx_export.convert(function)
    assert seen == ["FALSE"] and os.environ["TF2ONNX_CATCH_ERRORS"] == "FALSE"


def test_export_modules_import_each_other_without_a_cycle():
    """Inside keras_dino.export, no module reaches itself through its imports, lazy
    (inside functions) imports included."""
    import ast

    folder = REPO / "keras_dino" / "export"
    imports = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "keras_dino.export":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "keras_dino.export."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names
                          if a.name.startswith("keras_dino.export.")}
        imports[path.stem] = found - {path.stem}
    assert {"inference", "options", "metadata", "single_file"} <= set(imports)

    def reaches(start, target, seen):
        for module in imports.get(start, ()):
            if module == target or (module not in seen and reaches(module, target,
                                                                   seen | {module})):
                return True
        return False

    cycles = sorted(m for m in imports if reaches(m, m, set()))
    assert not cycles, f"import cycles through {cycles}: {imports}"
