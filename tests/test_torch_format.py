"""Tests for the torch-free checkpoint I/O (`keras_dino.checkpoints.torch_format`).

torch is only the reference here: the module under test never imports it.
"""

import argparse
import collections
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from keras_dino.checkpoints import (
    CheckpointArgs,
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_checkpoint,
    read_npz_checkpoint,
    read_torch_checkpoint,
    torch_format,
    torch_writer,
    write_torch_checkpoint,
)

# Runs in one backend's process (tests/conftest.py): files read and written with numpy.
pytestmark = pytest.mark.once

PTH_FIXTURES = [
    "backbone_vit_mini16.pth",
    "backbone_vit_mini8.pth",
    "golden/checkpoint.pth",
    "golden/init_checkpoint.pth",
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def assert_same(a, b, where="obj", seq_loose=False, scalar_loose=False):
    """Deep equality: arrays bit-exact with the same dtype and shape, containers in order.

    `seq_loose` lets a tuple equal a list (JSON has no tuples); `scalar_loose` lets a numpy
    scalar equal the Python scalar of the same value.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype, (where, a.dtype, b.dtype)
        assert a.shape == b.shape, (where, a.shape, b.shape)
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), (where, type(b))
        if not seq_loose:
            assert type(a) is type(b), (where, type(a), type(b))
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]", seq_loose, scalar_loose)
    elif isinstance(a, list | tuple):
        if seq_loose:
            assert isinstance(b, list | tuple), (where, type(b))
        else:
            assert type(a) is type(b), (where, type(a), type(b))
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]", seq_loose, scalar_loose)
    else:
        if not scalar_loose:
            assert type(a) is type(b), (where, type(a), type(b))
        assert a == b, (where, a, b)


def torch_to_numpy(obj):
    """A torch.load result in the form read_torch_checkpoint returns."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.bfloat16:
            return obj.view(torch.int16).numpy().view(torch_format._bfloat16())
        return obj.detach().numpy()
    if isinstance(obj, argparse.Namespace):
        return CheckpointArgs({k: torch_to_numpy(v) for k, v in vars(obj).items()})
    if isinstance(obj, dict):
        out = type(obj)((k, torch_to_numpy(v)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):
            out.__dict__.update(obj.__dict__)  # e.g. a state dict's `_metadata`
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(torch_to_numpy(v) for v in obj)
    return obj


def global_call_pickle(module, name, args, protocol=2):
    """A pickle that calls `module.name(*args)` when loaded by `pickle.loads`."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the tuple, without PROTO and STOP
    if protocol == 2:
        ref = f"c{module}\n{name}\n".encode()
    else:  # STACK_GLOBAL
        ref = b"".join(b"\x8c" + bytes([len(s)]) + s.encode() for s in (module, name)) + b"\x93"
    return bytes([0x80, protocol]) + ref + body + b"R."


class _Reduce:
    """Pickles as a call of `fn(*args)`, the way a malicious checkpoint is made."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def write_zip(path, records):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            zf.writestr(name, data)


def torch_zip_with_pickle(path, pickled):
    """A zip laid out like torch.save's, with a storage record, around `pickled`."""
    write_zip(
        path,
        [
            ("archive/data.pkl", pickled),
            ("archive/.format_version", b"1"),
            ("archive/.storage_alignment", b"64"),
            ("archive/byteorder", b"little"),
            ("archive/data/0", np.arange(4, dtype=np.float32).tobytes()),
            ("archive/version", b"3\n"),
        ],
    )


# --------------------------------------------------------------------------------------------
# Reading the official fixtures
# --------------------------------------------------------------------------------------------


def test_fixtures_read_without_importing_torch(fixtures_dir):
    paths = [str(fixtures_dir / name) for name in PTH_FIXTURES]
    # The checkpoint modules need only the standard library and numpy; Keras' numpy
    # backend keeps the package's own import free of torch too.
    code = textwrap.dedent(
        f"""
        import sys
        import keras_dino.checkpoints.torch_reader as module
        for path in {paths!r}:
            obj = module.read_torch_checkpoint(path)
            assert obj, path
        ckpt = module.read_torch_checkpoint({paths[2]!r})
        assert ckpt["args"].arch == "vit_mini"
        assert "torch" not in sys.modules, "torch was imported"
        print("read", len({paths!r}), "checkpoints without torch")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "KERAS_BACKEND": "numpy"},
    )
    assert result.returncode == 0, result.stderr
    assert "without torch" in result.stdout


@pytest.mark.parametrize("name", PTH_FIXTURES)
def test_fixture_equals_npz_twin(fixtures_dir, name):
    pth = read_torch_checkpoint(fixtures_dir / name)
    npz = read_npz_checkpoint(fixtures_dir / name.replace(".pth", ".npz"))
    # JSON (npz) has lists and floats where the pickle has tuples and numpy floats.
    assert_same(pth, npz, seq_loose=True, scalar_loose=True)


def test_backbone_structure(fixtures_dir):
    state = read_torch_checkpoint(fixtures_dir / "backbone_vit_mini16.pth")
    assert isinstance(state, collections.OrderedDict)
    assert state["cls_token"].shape == (1, 1, 48)
    assert state["pos_embed"].shape == (1, 197, 48)
    assert state["patch_embed.proj.weight"].shape == (48, 3, 16, 16)
    assert all(v.dtype == np.float32 for v in state.values())
    assert all(v.flags.c_contiguous and v.flags.writeable for v in state.values())
    assert not any(k.startswith("head.") for k in state)


def test_full_checkpoint_structure(fixtures_dir):
    ckpt = read_torch_checkpoint(fixtures_dir / "golden" / "checkpoint.pth")
    assert list(ckpt) == ["student", "teacher", "optimizer", "epoch", "args", "dino_loss"]
    assert ckpt["epoch"] == 2 and type(ckpt["epoch"]) is int
    args = ckpt["args"]
    assert type(args) is CheckpointArgs
    assert args.arch == "vit_mini" and args["out_dim"] == 1024
    assert args.global_crops_scale == (0.4, 1.0)
    assert args.vit_kwargs == {"embed_dim": 48, "depth": 2, "num_heads": 3}
    state = ckpt["optimizer"]["state"]
    assert sorted(state) == list(range(37))
    # last_layer.weight_v (index 14) was frozen in epoch 0, so AdamW created its state last.
    assert list(state)[-1] == 14 and state[14]["step"] == 3
    step = state[0]["step"]
    assert step.shape == () and step.dtype == np.float32 and step == 6
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt["optimizer"]["param_groups"][1]["weight_decay"] == 0.0
    assert ckpt["dino_loss"]["center"].shape == (1, 1024)
    assert "module.backbone.cls_token" in ckpt["student"]
    assert "backbone.cls_token" in ckpt["teacher"]


def test_npz_structure(fixtures_dir):
    init = read_npz_checkpoint(fixtures_dir / "golden" / "init_checkpoint.npz")
    assert init["optimizer"]["state"] == {}
    assert init["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert init["epoch"] == 0 and type(init["epoch"]) is int
    assert type(init["args"]) is CheckpointArgs
    backbone = read_npz_checkpoint(fixtures_dir / "backbone_vit_mini16.npz")
    assert isinstance(backbone, collections.OrderedDict)
    assert backbone["cls_token"].shape == (1, 1, 48)


@pytest.mark.parametrize("name", ["golden/checkpoint.pth", "golden/init_checkpoint.pth"])
def test_full_checkpoint_matches_torch_load(fixtures_dir, name):
    ours = read_torch_checkpoint(fixtures_dir / name)
    reference = torch_to_numpy(torch.load(fixtures_dir / name, weights_only=False))
    assert_same(ours, reference)
    assert ours["student"]._metadata == reference["student"]._metadata


def test_read_checkpoint_dispatches_on_content(fixtures_dir, tmp_path):
    npz_as_pth = tmp_path / "twin.pth"
    npz_as_pth.write_bytes((fixtures_dir / "backbone_vit_mini16.npz").read_bytes())
    pth_as_npz = tmp_path / "ckpt.npz"
    pth_as_npz.write_bytes((fixtures_dir / "backbone_vit_mini16.pth").read_bytes())
    expected = read_torch_checkpoint(fixtures_dir / "backbone_vit_mini16.pth")
    assert_same(read_checkpoint(npz_as_pth), expected)
    assert_same(read_checkpoint(pth_as_npz), expected)
    with pytest.raises(CheckpointFormatError, match="use read_npz_checkpoint"):
        read_torch_checkpoint(npz_as_pth)
    with pytest.raises(CheckpointFormatError, match="use read_torch_checkpoint"):
        read_npz_checkpoint(pth_as_npz)


def test_reads_views_and_dtypes_saved_by_torch(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),
        "sliced": base[1:, ::2],
        "row": base[2],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "half": torch.randn(3, 2).half(),
        "bf16": torch.randn(5).bfloat16(),
        "double": torch.randn(2, dtype=torch.float64),
        "long": torch.tensor([1, -2, 3]),
        "int": torch.tensor([7], dtype=torch.int32),
        "short": torch.tensor([-7], dtype=torch.int16),
        "char": torch.tensor([-1, 1], dtype=torch.int8),
        "byte": torch.tensor([255, 0], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "complex": torch.tensor([1 + 2j], dtype=torch.complex64),
    }
    payload = {"tensors": tensors, "extra": {"set": {1, 2}, "bytes": b"\x00\xff", "empty": b""}}
    path = tmp_path / "views.pth"
    torch.save(payload, path)
    ours = read_torch_checkpoint(path)
    assert_same(ours, torch_to_numpy(payload))


# --------------------------------------------------------------------------------------------
# Refusing code
# --------------------------------------------------------------------------------------------


def _attacks(marker):
    m = str(marker)
    return {
        "posix.system": ("posix", "system", (f"touch {m}",)),
        "os.system": ("os", "system", (f"touch {m}",)),
        "builtins.exec": ("builtins", "exec", (f"open({m!r}, 'w').close()",)),
        "builtins.eval": ("__builtin__", "eval", (f"open({m!r}, 'w').close()",)),
        "builtins.open": ("builtins", "open", (m, "w")),
        "subprocess.Popen": ("subprocess", "Popen", (["touch", m],)),
    }


def test_attack_payloads_are_live(tmp_path):
    """Control: the payloads really run under plain pickle, so the tests below mean something."""
    marker = tmp_path / "pwned"
    module, name, args = _attacks(marker)["builtins.open"]
    pickle.loads(global_call_pickle(module, name, args)).close()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("container", ["torch_zip", "bare_pickle"])
@pytest.mark.parametrize(
    "refused",
    ["posix.system", "os.system", "builtins.exec", "builtins.eval", "builtins.open",
     "subprocess.Popen"],
)  # fmt: skip
def test_refuses_code(tmp_path, refused, container, protocol):
    marker = tmp_path / "pwned"
    module, name, args = _attacks(marker)[refused]
    payload = global_call_pickle(module, name, args, protocol)
    path = tmp_path / "evil.pth"
    if container == "torch_zip":
        torch_zip_with_pickle(path, payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load '{refused}' from"):
        read_torch_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_refuses_code_in_a_real_torch_save(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = {
        "weight": torch.ones(3),
        "evil": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
    }
    path = tmp_path / "evil.pth"
    torch.save(evil, path, pickle_protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match="'subprocess.Popen'") as info:
        read_torch_checkpoint(path)
    assert str(path) in str(info.value)
    assert "only tensors, containers and plain data are allowed" in str(info.value)
    assert not marker.exists()

    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="'posix.system'|'nt.system'"):
        read_torch_checkpoint(bare)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, match",
    [
        # An attribute chain behind an allowed name (protocol 4 resolves dotted names).
        (global_call_pickle("collections", "OrderedDict.__init__", (), 4), "OrderedDict.__init__"),
        # BUILD on an allowed function, trying to change its defaults.
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b.",
         "modify 'torch._utils._rebuild_tensor_v2'"),
        (global_call_pickle("_codecs", "encode", ("print(1)", "rot13")), "_codecs.encode"),
        (global_call_pickle("numpy", "dtype", ("O", False, True)), "numpy dtype 'O'"),
        (global_call_pickle("copyreg", "_reconstructor", ()), "copyreg._reconstructor"),
        (global_call_pickle("torch", "load", ("x",)), "torch.load"),
    ],
)  # fmt: skip
def test_refuses_tricks(tmp_path, payload, match):
    path = tmp_path / "trick.pth"
    torch_zip_with_pickle(path, payload)
    with pytest.raises(UnsafeCheckpointError, match=match):
        read_torch_checkpoint(path)


def test_npz_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, ok=np.zeros(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeCheckpointError, match="'bad'.*pickled object array"):
        read_npz_checkpoint(path)


def test_plain_numpy_arrays_and_scalars_in_pickles(tmp_path):
    values = {
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f4"),
        "scalar": np.float32(1.5),
        "flag": np.bool_(True),
    }
    path = tmp_path / "numpy.pth"
    torch.save(values, path)
    ours = read_torch_checkpoint(path)
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(ours[key], value)
            assert ours[key].shape == value.shape and ours[key].dtype == value.dtype
        else:
            assert type(ours[key]) is type(value) and ours[key] == value


# --------------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------------


def _torch_state(tmp_path):
    path = tmp_path / "good.pth"
    torch.save({f"w{i}": torch.full((16,), float(i)) for i in range(4)}, path)
    return path


def test_text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointFormatError, match=r"notes\.pth.*not a PyTorch checkpoint"):
        read_torch_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        read_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="not an .npz archive"):
        read_npz_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    for reader in (read_torch_checkpoint, read_npz_checkpoint, read_checkpoint):
        with pytest.raises(CheckpointFormatError, match=r"empty\.pth: the file is empty"):
            reader(path)


def test_truncated_zip(tmp_path, fixtures_dir):
    data = (fixtures_dir / "backbone_vit_mini16.pth").read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=r"half\.pth.*truncated"):
        read_torch_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "random.pth"
    write_zip(path, [("readme.txt", b"hello"), ("folder/x.bin", b"\x00")])
    with pytest.raises(CheckpointFormatError, match=r"random\.pth.*no '<archive>/data\.pkl'"):
        read_torch_checkpoint(path)


def test_missing_storage_record(tmp_path):
    good = _torch_state(tmp_path)
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(good) as src:
        records = [(n, src.read(n)) for n in src.namelist() if not n.endswith("/data/2")]
    write_zip(path, records)
    with pytest.raises(CheckpointFormatError, match=r"missing\.pth.*'good/data/2' is missing"):
        read_torch_checkpoint(path)


def test_short_storage_record(tmp_path):
    good = _torch_state(tmp_path)
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(good) as src:
        records = [(n, src.read(n)) for n in src.namelist()]
    records = [(n, d[:8] if n.endswith("/data/1") else d) for n, d in records]
    write_zip(path, records)
    with pytest.raises(CheckpointFormatError, match="holds 8 bytes, expected 64"):
        read_torch_checkpoint(path)


def test_corrupt_pickle_and_crc(tmp_path):
    good = _torch_state(tmp_path)
    with zipfile.ZipFile(good) as src:
        records = [(n, src.read(n)) for n in src.namelist()]
    path = tmp_path / "cut.pth"
    write_zip(path, [(n, d[: len(d) // 2] if n.endswith("data.pkl") else d) for n, d in records])
    with pytest.raises(CheckpointFormatError, match=r"cut\.pth: its pickle is corrupt"):
        read_torch_checkpoint(path)

    # Flip a byte inside a storage: the zip CRC catches it.
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as src:
        info = src.getinfo("good/data/3")
    start = info.header_offset + 30 + len(info.filename)
    start += struct.unpack("<H", raw[info.header_offset + 28 : info.header_offset + 30])[0]
    raw[start] ^= 0xFF
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match=r"'good/data/3' cannot be read.*CRC"):
        read_torch_checkpoint(flipped)


def test_legacy_format(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy.*re-save.*npz twin"):
        read_torch_checkpoint(path)


def test_bare_pickle_of_plain_data(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="bare pickle"):
        read_torch_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return read_torch_checkpoint(fixtures_dir / "golden" / "checkpoint.pth")


def test_round_trip_full_checkpoint(golden, tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_torch_checkpoint(golden, path)
    again = read_torch_checkpoint(path)
    # Numpy scalars (the scheduled lr and wd) are written as Python floats.
    assert_same(again, golden, scalar_loose=True)
    assert again["student"]._metadata == golden["student"]._metadata
    assert type(again["optimizer"]["param_groups"][0]["lr"]) is float


def test_written_checkpoint_loads_in_torch(golden, tmp_path):
    path = tmp_path / "checkpoint.pth"
    write_torch_checkpoint(golden, path)
    loaded = torch.load(path, weights_only=False)
    assert list(loaded) == list(golden)
    assert isinstance(loaded["args"], argparse.Namespace)
    assert vars(loaded["args"]) == dict(golden["args"])
    assert loaded["args"].arch == "vit_mini"
    assert isinstance(loaded["student"], collections.OrderedDict)
    for name in ("student", "teacher", "dino_loss"):
        for key, value in golden[name].items():
            tensor = loaded[name][key]
            assert tensor.dtype == torch.float32 and tensor.is_contiguous()
            assert tensor.numpy().tobytes() == value.tobytes() and tensor.shape == value.shape
    steps = {i: float(s["step"]) for i, s in loaded["optimizer"]["state"].items()}
    assert steps == {i: float(s["step"]) for i, s in golden["optimizer"]["state"].items()}
    assert loaded["optimizer"]["state"][0]["step"].shape == ()
    assert loaded["optimizer"]["state"][0]["step"].dtype == torch.float32
    assert sorted(set(steps.values())) == [3.0, 6.0]
    assert_same(torch_to_numpy(loaded), golden, scalar_loose=True)
    # Without the Namespace, the file passes torch's own safe loader.
    no_args = {k: v for k, v in golden.items() if k != "args"}
    write_torch_checkpoint(no_args, path)
    safe = torch.load(path, weights_only=True)
    assert_same(torch_to_numpy(safe), no_args, scalar_loose=True)


def test_optimizer_state_restores_into_torch_adamw(golden, tmp_path):
    # The official resume path: optimizer.load_state_dict(checkpoint["optimizer"]).
    path = tmp_path / "checkpoint.pth"
    write_torch_checkpoint(golden, path)
    loaded = torch.load(path, weights_only=False)
    groups = loaded["optimizer"]["param_groups"]
    params = [
        torch.nn.Parameter(torch.from_numpy(loaded["optimizer"]["state"][i]["exp_avg"].numpy()))
        for group in groups
        for i in group["params"]
    ]
    split = len(groups[0]["params"])
    optimizer = torch.optim.AdamW([{"params": params[:split]}, {"params": params[split:]}])
    optimizer.load_state_dict(loaded["optimizer"])
    assert float(optimizer.state[params[0]]["step"]) == 6.0


def test_state_dict_loads_into_torch_module(tmp_path):
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.LayerNorm(4)
    )
    rng = np.random.default_rng(0)
    state = collections.OrderedDict()
    for key, value in module.state_dict().items():
        if value.dtype == torch.int64:  # BatchNorm's num_batches_tracked, a 0-d int64
            state[key] = np.array(7, dtype=np.int64)
        else:
            state[key] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    state["1.running_var"] = np.abs(state["1.running_var"])
    path = tmp_path / "module.pth"
    write_torch_checkpoint(state, path)

    fresh = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.LayerNorm(4)
    )
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[key])
    assert fresh.state_dict()["1.num_batches_tracked"].shape == ()


def test_write_dtypes_and_layouts(tmp_path):
    bf16 = torch_format._bfloat16()
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    shared = np.linspace(0, 1, 5, dtype=np.float32)
    values = {
        "f32": base,
        "f64": base.astype(np.float64),
        "f16": base.astype(np.float16),
        "bf16": base.astype(bf16),
        "i64": np.array([-(2**40), 2**40]),
        "i32": np.array([-5, 5], np.int32),
        "i16": np.array([-5, 5], np.int16),
        "i8": np.array([-5, 5], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "c128": np.array([1 - 2j], np.complex128),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f4"),
        "zero_d": np.array(6.0, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "shared_a": shared,
        "shared_b": shared,
    }
    extra = {
        "ints": [0, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**70, -(2**70)],
        "floats": (0.1, float("inf"), -0.0),
        "text": "naïve ✓",
        "bytes": b"\x00\x80\xff",
        "no_bytes": b"",
        "none": None,
        "flags": [True, False],
        "numpy_scalars": [np.float64(1e-3), np.int64(3), np.bool_(True)],
        "long_list": list(range(2500)),
        "many_keys": {str(i): i for i in range(1200)},
    }
    payload = {"values": values, "extra": extra}
    path = tmp_path / "dtypes.pth"
    write_torch_checkpoint(payload, path)

    loaded = torch.load(path, weights_only=True)
    ours = read_torch_checkpoint(path)
    for key, value in values.items():
        expected = np.array(value, order="C").astype(value.dtype.newbyteorder("="))
        for got in (torch_to_numpy(loaded["values"][key]), ours["values"][key]):
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert got.tobytes() == expected.tobytes(), key
        assert loaded["values"][key].is_contiguous()
    assert loaded["values"]["zero_d"].shape == ()
    scalars = [1e-3, 3, True]
    for got in (loaded["extra"], ours["extra"]):
        assert_same(got["numpy_scalars"], scalars)
        assert_same({k: v for k, v in got.items() if k != "numpy_scalars"},
                    {k: v for k, v in extra.items() if k != "numpy_scalars"})  # fmt: skip
    with zipfile.ZipFile(path) as zf:  # the shared array is stored once
        assert sum("/data/" in n for n in zf.namelist()) == len(values) - 1


def test_layout_matches_torch_save(tmp_path):
    state = {"a": np.ones((3, 5), np.float32), "b": np.arange(7, dtype=np.int64)}
    ours_path, theirs_path = tmp_path / "ours.pth", tmp_path / "theirs.pth"
    write_torch_checkpoint(state, ours_path)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, theirs_path)
    with zipfile.ZipFile(ours_path) as ours, zipfile.ZipFile(theirs_path) as theirs:
        assert ours.testzip() is None
        assert [n.replace("ours/", "") for n in ours.namelist()] == [
            n.replace("theirs/", "") for n in theirs.namelist()
        ]
        for name in (".format_version", ".storage_alignment", "byteorder", "version"):
            assert ours.read(f"ours/{name}") == theirs.read(f"theirs/{name}"), name
        sid = ours.read("ours/.data/serialization_id")
        assert len(sid) == 40 and sid.isdigit()
        raw = ours_path.read_bytes()
        for info in ours.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            extra_len = struct.unpack("<H", raw[info.header_offset + 28 : info.header_offset + 30])
            data_start = info.header_offset + 30 + len(info.filename) + extra_len[0]
            assert data_start % 64 == 0, info.filename
    # mmap=True requires the 64-byte alignment.
    mapped = torch.load(ours_path, weights_only=True, mmap=True)
    np.testing.assert_array_equal(mapped["b"].numpy(), state["b"])


def test_zip64(tmp_path):
    state = {"w": np.arange(10, dtype=np.float32), "args": CheckpointArgs(arch="vit_small")}
    path = tmp_path / "zip64.pth"
    write_torch_checkpoint(state, path, _force_zip64=True)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    assert_same(read_torch_checkpoint(path), state)
    loaded = torch.load(path, weights_only=False)
    np.testing.assert_array_equal(loaded["w"].numpy(), state["w"])
    assert loaded["args"].arch == "vit_small"


def test_args_marking(tmp_path):
    path = tmp_path / "args.pth"
    namespace = argparse.Namespace(arch="vit_small", patch_size=8, scale=(0.4, 1.0))
    checkpoint = {
        "args": CheckpointArgs(vars(namespace)),
        "real_namespace": namespace,
        "plain": {"arch": "vit_small"},
    }
    write_torch_checkpoint(checkpoint, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["args"] == namespace and loaded["real_namespace"] == namespace
    assert type(loaded["plain"]) is dict
    ours = read_torch_checkpoint(path)
    assert type(ours["args"]) is CheckpointArgs and type(ours["real_namespace"]) is CheckpointArgs
    assert ours["args"].patch_size == 8 and ours["args"].to_namespace() == namespace
    with pytest.raises(pickle.UnpicklingError):  # torch's safe loader refuses Namespace too
        torch.load(path, weights_only=True)


def test_checkpoint_args_behaves_like_a_namespace():
    args = CheckpointArgs(arch="vit_small")
    args.patch_size = 16
    assert args == {"arch": "vit_small", "patch_size": 16}
    assert "patch_size" in dir(args)
    del args.patch_size
    with pytest.raises(AttributeError):
        _ = args.patch_size
    assert repr(args) == "CheckpointArgs(arch='vit_small')"
    assert pickle.loads(pickle.dumps(args)) == args


def test_write_errors_leave_no_partial_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    write_torch_checkpoint({"w": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"builtins\.object at obj\['bad'\]\[1\]"):
        write_torch_checkpoint({"w": np.zeros(3, np.float32), "bad": [1, object()]}, path)
    with pytest.raises(TypeError, match="uint32"):
        write_torch_checkpoint({"w": np.zeros(3, np.uint32)}, path)
    cycle = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="self-referencing"):
        write_torch_checkpoint({"c": cycle}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    write_torch_checkpoint({"w": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    def crash(f, records, force_zip64=False):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_writer, "_write_zip", crash)
    with pytest.raises(KeyboardInterrupt):
        write_torch_checkpoint({"w": np.zeros(3, np.float32)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
