"""`keras_dino.export_saved_model`: SavedModels for plain TensorFlow and TF Serving.

The exports are checked where keras_dino cannot be imported (a fresh `python -I` process
that blocks `keras_dino`), with `saved_model_cli`, with TF Serving's REST
request formats (the bodies of `examples/serving_client.py`, converted as TF Serving
documents, and sent over HTTP to a stand-in server), and with bad inputs fed both through
the loaded signatures and through a TF1 session (TF Serving's C++ path, which does not
check shapes). TensorFlow-backend exports run in the TensorFlow process (`tf_only`), the
JAX export (jax2tf) in the JAX process; the torch process checks the error.
"""

import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino import export
from keras_dino.checkpoints.pretrained import load_pretrained
from keras_dino.preprocessing import normalize_images, preprocess_images
from keras_dino.testing.parity import resnet_bound, vit_bound
from keras_dino.testing.tolerance import LIBRARY_FUNCTION, assert_within

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_DINO_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_dino"
IMAGES = SHARED / "images"
# The exports against the Keras model they were made from: two float32 programs (the
# SavedModel's graph, fused or compiled differently, and the Keras model; the same
# weights), bounded by the rounding of the reductions each output depends on and of the
# export's own uint8 normalisation (`vit_bound(..., normalizes=True, official=False)`,
# keras_dino/testing/parity.py; derivation in keras_dino/testing/tolerance.py).
CHECKPOINT = FIXTURES / "backbone_vit_mini16.pth"  # official vit_mini16: 48 wide, depth 5
NUM_HEADS = 3
PHOTOS = sorted(IMAGES.glob("*.jpg"))
SIGNATURES = ("serving_default", "serve_bytes", "attention")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _serving_client():
    from keras_dino.tools import serving_client

    return serving_client


def _pixels():
    """The official fixture images (uint8, 2 x 224 x 224 x 3)."""
    return np.load(FIXTURES / "inputs.npz")["224x224/uint8_nhwc"]


def _photo_bytes():
    return [p.read_bytes() for p in PHOTOS]


def _tf_crops(photos, size=224, resize_size=256):
    """`preprocess_images` of the TensorFlow backend, written with tf.image directly.

    The JAX backend's `preprocess_images` resizes with jax.image, which rounds a few pixels
    to the next gray level; `serve_bytes` resizes with TensorFlow on every backend.
    """
    import tensorflow as tf

    crops = []
    for data in photos:
        image = tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE")  # as PIL, as the export
        h, w = image.shape[:2]
        new = (
            (resize_size, int(resize_size * w / h))
            if h <= w
            else (int(resize_size * h / w), resize_size)
        )
        x = tf.image.resize(tf.cast(image, tf.float32), new, "bicubic", antialias=True)
        x = tf.clip_by_value(tf.round(x), 0.0, 255.0).numpy()
        top, left = round((new[0] - size) / 2.0), round((new[1] - size) / 2.0)
        crops.append(x[top : top + size, left : left + size])
    return normalize_images(np.stack(crops))


def _reference(model, pixels, photos, image_size=224, l2=False, crops=None):
    """The Keras model's outputs for each signature (what the export must reproduce)."""
    import tensorflow as tf  # the same JPEG decoder as the export (and PIL)

    def decode(data):
        return tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE").numpy()

    grid = image_size // model.patch_size
    tokens = _np(model.forward_features(normalize_images(pixels)))
    attn = _np(model.get_last_selfattention(normalize_images(pixels)))
    if crops is None:
        crops = np.stack(
            [_np(preprocess_images(decode(p), size=image_size)) for p in photos]
        )
    photo_tokens = _np(model.forward_features(crops))
    embedding = (lambda x: _l2(x)) if l2 else (lambda x: x)
    return {
        "serving_default": {"cls": embedding(tokens[:, 0]), "patch_tokens": tokens[:, 1:]},
        "serve_bytes": {"cls": embedding(photo_tokens[:, 0]), "patch_tokens": photo_tokens[:, 1:]},
        "attention": {
            "cls_attention": attn[:, :, 0, 1:].reshape(len(pixels), -1, grid, grid),
        },
        "forward_features": {"tokens": tokens},  # the restored function, not a signature
    }


def _bound(model, reference, name, value):
    """The float32 bound of one output `name` of the export of `model` (an L2-normalised
    embedding also sums 48 squares and takes an rsqrt); the grid is the reference's."""
    grid = int(round(np.sqrt(reference["serving_default"]["patch_tokens"].shape[1])))
    quantity = {"cls_embedding": "cls", "cls_embedding_l2norm": "cls", "cls": "cls",
                "patch_tokens": "intermediate", "cls_attention": "attn",
                "tokens": "intermediate"}[name]
    then = [model.embed_dim, LIBRARY_FUNCTION] if name.endswith("l2norm") else []
    return vit_bound(model, (grid, grid), quantity, value, then=then, normalizes=True,
                     official=False)


def _compare(outputs, reference, embedding_key, patch_tokens, model):
    """Each signature's outputs (exactly the expected names) against the Keras model's."""
    for signature, got in outputs.items():
        expected = dict(reference[signature])
        if signature in ("serving_default", "serve_bytes"):
            expected = {embedding_key: reference[signature]["cls"]}
            if patch_tokens:
                expected["patch_tokens"] = reference[signature]["patch_tokens"]
        assert sorted(got) == sorted(expected), signature
        for name, value in expected.items():
            assert got[name].shape == value.shape, (signature, name)
            bound = _bound(model, reference, name, value)
            assert_within(got[name], value, bound, f"{signature}/{name}")


# A fresh interpreter where keras_dino cannot be imported (`import tensorflow` itself
# imports keras, so keras is not blocked).
_PLAIN_TF_SCRIPT = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_dino":
            raise ImportError(f"{name} is blocked: the export must load with TensorFlow only")

sys.meta_path.insert(0, Block())
try:
    import keras_dino  # noqa: F401
    sys.exit("keras_dino was importable")
except ImportError:
    pass

import numpy as np
import tensorflow as tf

export_dir, inputs_path, out_path = sys.argv[1:4]
inputs = np.load(inputs_path, allow_pickle=True)
loaded = tf.saved_model.load(export_dir)
feeds = {
    "serving_default": {"images": tf.constant(inputs["images"])},
    "attention": {"images": tf.constant(inputs["images"])},
    "serve_bytes": {"image_bytes": tf.constant(list(inputs["image_bytes"]))},
}
result = {}
for signature, feed in feeds.items():
    for key, value in loaded.signatures[signature](**feed).items():
        result[f"{signature}/{key}"] = value.numpy()
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
normalised = ((inputs["images"] / 255.0 - mean) / std).astype("float32")
result["forward_features/tokens"] = loaded.forward_features(tf.constant(normalised)).numpy()
np.savez(out_path, **result)
print(json.dumps({"signatures": sorted(loaded.signatures),
                  "keras_dino_loaded": any(m.startswith("keras_dino") for m in sys.modules)}))
"""


def _run_plain_tf(export_dir, pixels, photos, tmp_path):
    script = tmp_path / "plain_tf.py"
    script.write_text(_PLAIN_TF_SCRIPT)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=pixels, image_bytes=np.array(photos, dtype=object))
    out = tmp_path / "outputs.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(export_dir), str(inputs), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(SIGNATURES) <= set(info["signatures"])
    assert info["keras_dino_loaded"] is False
    outputs = {}
    with np.load(out) as data:
        for name in data.files:
            signature, key = name.split("/")
            outputs.setdefault(signature, {})[key] = data[name]
    return outputs


# --------------------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def tf_export(tmp_path_factory):
    """The official vit_mini16 checkpoint exported from its file, L2-normalised, with
    patch tokens, and the Keras model's reference outputs."""
    base = tmp_path_factory.mktemp("exports")
    path = export.export_saved_model(
        CHECKPOINT,
        base,
        l2_normalize=True,
        include_patch_tokens=True,
        load_kwargs={"num_heads": NUM_HEADS},
    )
    model = load_pretrained(CHECKPOINT, num_heads=NUM_HEADS)
    pixels, photos = _pixels(), _photo_bytes()
    reference = _reference(model, pixels, photos, l2=True)
    return dict(
        base=base,
        path=pathlib.Path(path),
        model=model,
        pixels=pixels,
        photos=photos,
        reference=reference,
    )


@pytest.fixture(scope="module")
def loaded(tf_export):
    import tensorflow as tf

    return tf.saved_model.load(str(tf_export["path"]))


@pytest.mark.tf_only
def test_layout_models_config_and_metadata(tf_export, capsys):
    base, path = tf_export["base"], tf_export["path"]
    assert path == base / "dino" / "1"
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables" / "variables.index").is_file()
    assert (path / "assets" / export.METADATA_FILE).is_file()
    assert sorted(p.name for p in (base / "dino").iterdir()) == ["1"]  # no staging left
    config = (base / "models.config").read_text()
    assert re.search(r'name:\s*"dino"', config)
    assert re.search(r'base_path:\s*"/models/dino"', config)
    assert 'model_platform: "tensorflow"' in config

    meta = export.load_metadata(base / "dino")
    assert meta["format"] == export.FORMAT
    # A path that is not there is named as such, whatever kind of export it meant.
    with pytest.raises(FileNotFoundError, match=r"missing.onnx does not exist: give an export"):
        export.load_metadata(base / "missing.onnx")
    assert meta["model"]["patch_size"] == 16 and meta["model"]["embed_dim"] == 48
    assert meta["model"]["depth"] == 5 and meta["model"]["num_heads"] == NUM_HEADS
    assert str(CHECKPOINT.resolve()) in meta["model"]["weights_source"]
    assert "sha256" in meta["model"]["weights_source"]
    assert meta["exported_with"]["keras_backend"] == "tensorflow"
    assert meta["preprocessing"]["resize_size"] == 256
    assert meta["signatures"]["serving_default"]["inputs"] == {
        "images": {"dtype": "uint8", "shape": [None, 224, 224, 3]}
    }

    info = export.describe(path)
    printed = capsys.readouterr().out
    for name in SIGNATURES:
        assert f"signature '{name}'" in printed
    assert "input  images: uint8 [batch, 224, 224, 3]" in printed
    assert "output cls_embedding_l2norm: float32 [batch, 48]" in printed
    assert "output cls_attention: float32 [batch, 3, 14, 14]" in printed
    assert "input  image_bytes: string [batch]" in printed
    assert "patch size 16" in printed and "sha256" in printed
    assert info["signatures"]["serve_bytes"]["outputs"]["patch_tokens"] == {
        "dtype": "float32",
        "shape": [None, 196, 48],
    }


@pytest.mark.tf_only
def test_refuses_to_overwrite_and_bad_arguments(tf_export):
    model = tf_export["model"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_saved_model(model, tf_export["base"])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        export.export_saved_model(model, tf_export["base"], version=7, image_size=100)
    with pytest.raises(ValueError, match="version"):
        export.export_saved_model(model, tf_export["base"], version=-1)
    with pytest.raises(ValueError, match="input_dtype"):
        export.export_saved_model(model, tf_export["base"], version=7, input_dtype="int32")
    with pytest.raises(TypeError, match="VisionTransformer"):
        export.export_saved_model(keras.layers.Dense(2), tf_export["base"], version=7)
    assert sorted(p.name for p in (tf_export["base"] / "dino").iterdir()) == ["1"]


@pytest.mark.tf_only
def test_plain_tensorflow_process_reproduces_keras(tf_export, tmp_path):
    outputs = _run_plain_tf(tf_export["path"], tf_export["pixels"], tf_export["photos"], tmp_path)
    assert sorted(outputs) == sorted([*SIGNATURES, "forward_features"])
    _compare(outputs, tf_export["reference"], "cls_embedding_l2norm", patch_tokens=True,
             model=tf_export["model"])
    np.testing.assert_allclose(
        np.linalg.norm(outputs["serve_bytes"]["cls_embedding_l2norm"], axis=-1), 1.0, atol=1e-6
    )


def _saved_model_cli():
    import shutil

    exe = shutil.which("saved_model_cli")
    if exe:
        return [exe]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.mark.tf_only
def test_saved_model_cli_show_and_run(tf_export, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    path = str(tf_export["path"])
    np.save(tmp_path / "images.npy", tf_export["pixels"])
    outdir = tmp_path / "cli_out"
    commands = {
        "show": ["show", "--dir", path, "--all"],
        "run": [
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'images.npy'}",
            "--outdir",
            str(outdir),
        ],
    }
    procs = {  # both at once: each spends most of its time importing TensorFlow
        name: subprocess.Popen(
            [*_saved_model_cli(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in commands.items()
    }
    results = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, results[name][1][-2000:]

    text = results["show"][0]
    blocks = {}
    for match in re.finditer(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", text, re.S):
        blocks[match.group(1)] = match.group(2)
    assert set(SIGNATURES) <= set(blocks)

    def spec(block, kind, key):
        part = block.split("output(s):")[0 if kind == "input" else 1]
        found = re.search(rf"\['{key}'\] tensor_info:\s*dtype: (\w+)\s*shape: \(([^)]*)\)", part)
        assert found, (kind, key, block)
        return found.group(1), found.group(2).replace(" ", "")

    assert spec(blocks["serving_default"], "input", "images") == ("DT_UINT8", "-1,224,224,3")
    assert spec(blocks["serving_default"], "output", "cls_embedding_l2norm") == (
        "DT_FLOAT",
        "-1,48",
    )
    assert spec(blocks["serving_default"], "output", "patch_tokens") == ("DT_FLOAT", "-1,196,48")
    assert spec(blocks["serve_bytes"], "input", "image_bytes") == ("DT_STRING", "-1")
    assert spec(blocks["serve_bytes"], "output", "cls_embedding_l2norm") == ("DT_FLOAT", "-1,48")
    assert spec(blocks["attention"], "input", "images") == ("DT_UINT8", "-1,224,224,3")
    assert spec(blocks["attention"], "output", "cls_attention") == ("DT_FLOAT", "-1,3,14,14")

    got = np.load(outdir / "cls_embedding_l2norm.npy")
    expected = tf_export["reference"]["serving_default"]["cls"]
    bound = _bound(tf_export["model"], tf_export["reference"], "cls_embedding_l2norm", expected)
    assert_within(got, expected, bound, "saved_model_cli")


def _run_rest(body, loaded):
    """A REST body the way TF Serving handles it: JSON, tensors, signature, response."""
    body = json.loads(json.dumps(body))
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    name, inputs = export.rest_request_to_tensors(body, signature)
    outputs = {k: v.numpy() for k, v in signature(**inputs).items()}
    return json.loads(json.dumps(export.rest_response(outputs, row_format="instances" in body)))


@pytest.mark.tf_only
def test_rest_request_formats(tf_export, loaded):
    client = _serving_client()
    # One image per body (JSON pixel lists are slow to build and parse).
    pixels, photos = tf_export["pixels"][:1], tf_export["photos"][:2]
    reference = {
        name: {
            key: value[: len(photos if name == "serve_bytes" else pixels)]
            for key, value in outputs.items()
        }
        for name, outputs in tf_export["reference"].items()
    }
    cases = [
        ("serving_default", dict(images=pixels)),
        ("attention", dict(images=pixels)),
        ("serve_bytes", dict(image_bytes=photos)),
    ]
    for signature, inputs in cases:
        for row_format in (True, False):
            body = client.rest_body(signature, row_format=row_format, **inputs)
            assert ("instances" if row_format else "inputs") in body
            response = _run_rest(body, loaded)
            assert ("predictions" if row_format else "outputs") in response
            names = sorted(loaded.signatures[signature].structured_outputs)
            outputs = client.rest_outputs(response, single_output_name=names[0])
            _compare({signature: outputs}, reference, "cls_embedding_l2norm", patch_tokens=True,
                     model=tf_export["model"])

    # b64 objects and named instances, as written by hand.
    b64 = base64.b64encode(photos[1]).decode()
    for body in (
        {"signature_name": "serve_bytes", "instances": [{"image_bytes": {"b64": b64}}]},
        {"signature_name": "serve_bytes", "inputs": {"image_bytes": [{"b64": b64}]}},
        {"signature_name": "serve_bytes", "inputs": [{"b64": b64}]},
    ):
        got = client.rest_outputs(_run_rest(body, loaded))["cls_embedding_l2norm"]
        expected = reference["serve_bytes"]["cls"][1]
        bound = _bound(tf_export["model"], reference, "cls_embedding_l2norm", expected)
        assert_within(got[0], expected, bound, "b64")
    # Requests TF Serving rejects.
    signature = loaded.signatures["serving_default"]
    for bad in (
        {"instances": pixels.tolist(), "inputs": pixels.tolist()},
        {"instances": [pixels[0].tolist(), pixels[0, :100].tolist()]},  # ragged
        {"instances": (pixels[:1] + 0.5).tolist()},  # not uint8
        {"instances": [{"pixels": pixels[0].tolist()}]},  # wrong input name
    ):
        with pytest.raises(ValueError, match="instances|inputs|images|ragged"):
            export.rest_request_to_tensors(bad, signature)


@pytest.mark.tf_only
def test_serving_client_over_http(tf_export, loaded):
    """The client's REST code against a stand-in for TF Serving's REST server."""
    client = _serving_client()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            match = re.fullmatch(r"/v1/models/(\w+)(?:/versions/(\d+))?:predict", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                assert match and match.group(1) == "dino", self.path
                reply, code = _run_rest(body, loaded), 200
            except Exception as error:  # TF Serving answers errors as {"error": ...}
                reply, code = {"error": str(error)}, 400
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = client.rest_url("127.0.0.1", port, "dino", version=1)
        body = client.rest_body("serve_bytes", image_bytes=tf_export["photos"][:2])
        got = client.rest_outputs(client.rest_predict(url, body))["cls_embedding_l2norm"]
        expected = tf_export["reference"]["serve_bytes"]["cls"][:2]
        bound = _bound(tf_export["model"], tf_export["reference"], "cls_embedding_l2norm",
                       expected)
        assert_within(got, expected, bound, "http")
        bad = client.rest_body("serve_bytes", image_bytes=[b"not an image"])
        with pytest.raises(RuntimeError, match="image_bytes"):
            client.rest_predict(client.rest_url("127.0.0.1", port, "dino"), bad)
    finally:
        server.shutdown()
        server.server_close()


class _Session:
    """Runs signatures the way TF Serving's C++ server does: a TF1 session over the
    MetaGraph, fed through the C API without Python's shape checks."""

    def __init__(self, export_dir):
        import tensorflow as tf

        self.graph = tf.Graph()
        with self.graph.as_default():
            self.sess = tf.compat.v1.Session(graph=self.graph)
            self.meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(export_dir))

    def run(self, signature, value):
        sig = self.meta.signature_def[signature]
        (info,) = sig.inputs.values()
        feed = self.graph.get_tensor_by_name(info.name)._as_tf_output()
        fetches = [
            self.graph.get_tensor_by_name(o.name)._as_tf_output() for o in sig.outputs.values()
        ]
        return self.sess._call_tf_sessionrun(None, {feed: value}, fetches, [], None)


@pytest.mark.tf_only
def test_bad_inputs_fail_with_named_input(tf_export, loaded):
    import tensorflow as tf

    pixels, photo = tf_export["pixels"], tf_export["photos"][0]
    session = _Session(tf_export["path"])
    # (eager errors escape the quotes)
    images_error = r"input \\?'images\\?': uint8 RGB images of shape \[batch, 224, 224, 3\]"
    bytes_error = r"input \\?'image_bytes\\?': a batch \[batch\] of encoded JPEG or PNG images"
    bad_images = [
        pixels[..., :2],  # 2 channels
        np.concatenate([pixels, pixels[..., :1]], -1),  # 4 channels
        pixels[0],  # no batch axis
        pixels[:, None],  # rank 5
        pixels.transpose(0, 3, 1, 2),  # NCHW
        pixels[:, :96, :96],  # another resolution
    ]
    for value in bad_images:
        for signature in ("serving_default", "attention"):
            with pytest.raises(tf.errors.InvalidArgumentError, match=images_error):
                loaded.signatures[signature](images=tf.constant(value))
        with pytest.raises(tf.errors.InvalidArgumentError, match=images_error):
            session.run("serving_default", value)
    bad_bytes = [
        np.array([b"not an image"], object),
        np.array([photo[:64]], object),  # a truncated JPEG
        np.array([photo, b"", photo[:300]], object),
        np.array([[photo]], object),  # rank 2
        np.array(photo, object),  # a scalar
    ]
    for value in bad_bytes:
        with pytest.raises(tf.errors.InvalidArgumentError, match=bytes_error):
            loaded.signatures["serve_bytes"](image_bytes=tf.constant(value))
        with pytest.raises(tf.errors.InvalidArgumentError, match=bytes_error):
            session.run("serve_bytes", value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"could not be decoded.*\[1 2\]"):
        loaded.signatures["serve_bytes"](
            image_bytes=tf.constant([photo, b"\xff\xd8\xffgarbage", b"GIF89a"])
        )
    # Wrong dtype: TensorFlow rejects it before the graph runs, naming the expected dtype
    # (and, through the restored tf.function, the input).
    float_pixels = tf.constant(pixels.astype("float32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        loaded.signatures["serving_default"](images=float_pixels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        session.run("serving_default", pixels.astype("float32"))
    with pytest.raises(TypeError, match=r"name='images'.*uint8|uint8.*name='images'"):
        loaded.serving_default(float_pixels)
    with pytest.raises(TypeError, match="images"):
        loaded.signatures["serving_default"](pixels=tf.constant(pixels))
    # The process is fine: good requests (and an empty batch) still work.
    out = loaded.signatures["serving_default"](images=tf.constant(pixels))
    expected = tf_export["reference"]["serving_default"]["cls"]
    bound = _bound(tf_export["model"], tf_export["reference"], "cls_embedding_l2norm", expected)
    assert_within(out["cls_embedding_l2norm"].numpy(), expected, bound, "after bad inputs")
    empty = loaded.signatures["serve_bytes"](image_bytes=tf.constant([], tf.string))
    assert empty["patch_tokens"].shape == (0, 196, 48)
    (embedding, _) = session.run("serving_default", pixels[:0])
    assert embedding.shape[0] == 0
    session.sess.close()


def _tiny_dino():
    """The shared tiny DINO, made wider and deeper for the export at 96 pixels."""
    from test_dino_training import tiny_dino

    dino = tiny_dino(arch="vit_tiny", patch_size=16, out_dim=64,
                     vit_kwargs=dict(embed_dim=48, depth=2, num_heads=3),
                     head_kwargs=dict(hidden_dim=32, bottleneck_dim=16),
                     epochs=1, warmup_epochs=0)
    # Make the teacher differ from the student, as after training.
    for v in dino.teacher.backbone.weights:
        v.assign(v + np.random.default_rng(0).normal(0, 0.02, v.shape).astype("float32"))
    return dino


@pytest.mark.tf_only
def test_dino_teacher_at_96_float32_and_overwrite(tf_export):
    import tensorflow as tf

    dino, base = _tiny_dino(), tf_export["base"]
    path = export.export_saved_model(
        dino, base, model_name="dino96", image_size=96, input_dtype="float32"
    )
    meta = export.load_metadata(path)
    assert "teacher" in meta["model"]["weights_source"]
    assert meta["preprocessing"]["resize_size"] == 110 and meta["patch_grid"] == [6, 6]
    config = (base / "models.config").read_text()
    assert len(export._config_blocks(config)) == 2  # the first export's entry is kept
    assert '"/models/dino96"' in config and '"/models/dino"' in config

    served = tf.saved_model.load(path)
    pixels = np.load(FIXTURES / "inputs.npz")["96x96/uint8_nhwc"].astype("float32")
    photos = _photo_bytes()[:2]
    reference = _reference(dino.backbone, pixels, photos, image_size=96)
    outputs = {
        name: {k: v.numpy() for k, v in served.signatures[name](**feed).items()}
        for name, feed in (
            ("serving_default", {"images": tf.constant(pixels)}),
            ("attention", {"images": tf.constant(pixels)}),
            ("serve_bytes", {"image_bytes": tf.constant(photos)}),
        )
    }
    assert outputs["attention"]["cls_attention"].shape == (2, 3, 6, 6)
    _compare(outputs, reference, "cls_embedding", patch_tokens=False, model=dino.backbone)
    student = _np(dino.student.backbone(normalize_images(pixels)))
    assert np.max(np.abs(outputs["serving_default"]["cls_embedding"] - student)) > 1e-3

    again = export.export_saved_model(
        dino.backbone,
        base,
        model_name="dino96",
        image_size=96,
        overwrite=True,
        l2_normalize=True,
        weights_source="my run, epoch 100",
    )
    assert again == path
    assert export.load_metadata(path)["model"]["weights_source"] == "my run, epoch 100"
    assert sorted(p.name for p in (base / "dino96").iterdir()) == ["1"]
    served = tf.saved_model.load(path)
    out = served.signatures["serving_default"](images=tf.constant(pixels.astype("uint8")))
    assert sorted(out) == ["cls_embedding_l2norm"]


@pytest.mark.tf_only
def test_models_config_keeps_other_models(tmp_path):
    (tmp_path / "models.config").write_text(
        "model_config_list {\n  config {\n    name: 'other'\n    base_path: '/models/other'\n"
        "    model_platform: 'tensorflow'\n    model_version_policy { all {} }\n  }\n"
        '  config { name: "dino" base_path: "/old" model_platform: "tensorflow" }\n}\n'
    )
    export.write_models_config(tmp_path, "dino", "/srv/models/dino")
    text = (tmp_path / "models.config").read_text()
    blocks = export._config_blocks(text)
    assert len(blocks) == 2
    assert "model_version_policy { all {} }" in blocks[0]
    assert "/srv/models/dino" in blocks[1] and "/old" not in text


@pytest.mark.backends("tensorflow", "jax")
def test_resnet_export_serves_pooled_features(tmp_path):
    """A ResNet exports like a ViT, without the ViT-only attention signature."""
    import tensorflow as tf

    from keras_dino.checkpoints import official
    from keras_dino.models import ResNet
    from keras_dino.models.official_names import resnet_map

    zoo = SHARED / "fixtures" / "official_dino_zoo"
    model = ResNet("bottleneck", (1, 1, 1, 1), width_per_group=8, expansion=1)
    official.load_state_dict(resnet_map(model), dict(np.load(zoo / "backbone_resnet_mini.npz")))
    path = export.export(model, tmp_path / "exports", format="saved_model", image_size=64)
    meta = export.load_metadata(path)
    assert meta["model"]["class"] == "ResNet" and meta["model"]["arch"] == "custom"
    assert meta["model"]["embed_dim"] == 512 and "patch_grid" not in meta
    assert sorted(meta["signatures"]) == ["serve_bytes", "serving_default"]
    served = tf.saved_model.load(path)
    assert sorted(served.signatures) == ["serve_bytes", "serving_default"]
    pixels = np.load(zoo / "inputs.npz")["64x64/uint8_nhwc"]
    out = served.signatures["serving_default"](images=tf.constant(pixels))["embedding"].numpy()
    # The official torchvision features of these pixels (eval mode, running statistics).
    expected = np.load(zoo / "outputs_resnet_mini.npz")["64x64/pooled"]
    # two float32 programs: the network's reductions (`resnet_bound`, 2 x 2 average pool)
    # plus the export's uint8 normalisation (one library-function term); it was 1e-4 of
    # max |expected|, from the fixture README
    bound = resnet_bound(model, expected, pool=4, then=[LIBRARY_FUNCTION])
    assert_within(out, expected, bound, "pooled")
    with pytest.raises(ValueError, match="patch tokens"):
        export.export_saved_model(model, tmp_path / "again", include_patch_tokens=True)
    with pytest.raises(ValueError, match=r"unknown export format 'tflite' \(TensorFlow Lite "
                       r"is LiteRT now: format='litert'\)"):
        export.export(model, tmp_path / "x", format="tflite")
    with pytest.raises(ValueError, match=r"'savedmodel' \(did you mean format='saved_model'"):
        export.export(model, tmp_path / "x", format="savedmodel")
    lines = []
    export.describe(path, print_fn=lines.append)
    assert "bottleneck blocks [1, 1, 1, 1], 512 features" in lines[0]


# --------------------------------------------------------------------------- JAX (jax2tf)


@pytest.mark.backends("jax")
def test_jax_export_loads_in_plain_tensorflow(tmp_path):
    model = load_pretrained(CHECKPOINT, num_heads=NUM_HEADS)
    path = export.export_saved_model(
        model, tmp_path / "exports", include_patch_tokens=True, weights_source="fixture"
    )
    meta = export.load_metadata(path)
    assert meta["exported_with"]["keras_backend"] == "jax"
    assert meta["model"]["weights_source"] == "fixture"
    pixels, photos = _pixels(), _photo_bytes()
    outputs = _run_plain_tf(path, pixels, photos, tmp_path)
    assert sorted(outputs) == sorted([*SIGNATURES, "forward_features"])
    reference = _reference(model, pixels, photos, crops=_tf_crops(photos))
    _compare(outputs, reference, "cls_embedding", patch_tokens=True, model=model)

    # TF Serving's path (a session over the MetaGraph) runs the XlaCallModule too, and the
    # input checks (plain TF ops) work the same.
    import tensorflow as tf

    session = _Session(path)
    sig = session.meta.signature_def["serving_default"]
    got = dict(zip(sig.outputs, session.run("serving_default", pixels)))
    expected = reference["serving_default"]["cls"]
    assert_within(got["cls_embedding"], expected,
                  _bound(model, reference, "cls_embedding", expected), "session")
    with pytest.raises(tf.errors.InvalidArgumentError, match="expects input .*images"):
        session.run("serving_default", pixels[..., :2])
    session.sess.close()


# --------------------------------------------------------------------------- torch


@pytest.mark.backends("torch")
def test_torch_backend_explains_how_to_export(tmp_path):
    from keras_dino.models import vit_tiny

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export.export_saved_model(vit_tiny(depth=1), tmp_path)
    assert not (tmp_path / "dino").exists()
