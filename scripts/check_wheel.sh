#!/usr/bin/env bash
# Packaging check: `python -m build` makes an sdist and a wheel; the wheel,
# installed into a fresh virtual environment that cannot see this checkout, imports, ships
# the embedded data set, loads the fixture checkpoint with numbers equal to the official
# ones, keeps TensorFlow out of `import keras_dino` under JAX and torch, and runs the
# examples and the `keras-dino` command. The sdist carries the tests, examples, Bazel files
# and the license.
#
# The venv reuses the heavy dependencies of the current Python (--system-site-packages:
# tensorflow, keras, jax, torch) and installs the wheel itself with --no-deps, so the check
# is fast and needs no network once the build backend is available; the dependency ranges
# of the wheel's metadata are checked against the versions installed here instead.
#
# Env: PYTHON (default python3), KERAS_DINO_SHARED (default ../shared next to the repo),
#      CHECK_WHEEL_NO_ISOLATION=1 to build with the installed setuptools (offline),
#      KEEP_TMP=1 to keep the temporary folder.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SHARED="${KERAS_DINO_SHARED:-${REPO}/../shared}"
SHARED="$(cd "${SHARED}" && pwd)"
CHECKPOINT="${SHARED}/fixtures/official_dino/backbone_vit_mini16.pth"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH

TMP="$(mktemp -d /tmp/keras_dino_wheel.XXXXXX)"
cleanup() { if [[ "${KEEP_TMP:-0}" != 1 ]]; then rm -rf "${TMP}"; else echo "kept ${TMP}"; fi; }
trap cleanup EXIT
step() { echo "=== check_wheel [${SECONDS}s]: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

step "python -m build (sdist and wheel) -> ${TMP}/dist"
build_args=(--outdir "${TMP}/dist")
[[ "${CHECK_WHEEL_NO_ISOLATION:-0}" == 1 ]] && build_args+=(--no-isolation)
# Built from the checkout: setuptools writes only keras_dino.egg-info there (ignored by
# git); the wheel is built from the unpacked sdist, so the sdist must be complete.
# The files the build must pick up, listed before it (others may be editing the checkout).
(cd "${REPO}" && find keras_dino tests examples bench -name '*.py' -not -path '*/__pycache__/*' \
  && find keras_dino/datasets/cifar10_mini -name '*.jpg') | sort > "${TMP}/expected.txt"
"${PYTHON}" -m build "${build_args[@]}" "${REPO}" > "${TMP}/build.log" 2>&1 \
  || { tail -40 "${TMP}/build.log"; fail "python -m build"; }
SDIST="$(ls "${TMP}"/dist/*.tar.gz)"
WHEEL="$(ls "${TMP}"/dist/*.whl)"
echo "$(basename "${SDIST}") $(du -h "${SDIST}" | cut -f1), $(basename "${WHEEL}") $(du -h "${WHEEL}" | cut -f1)"

step "contents of the sdist and the wheel"
"${PYTHON}" - "${SDIST}" "${WHEEL}" "${REPO}" "${TMP}/expected.txt" <<'EOF'
import pathlib
import sys
import tarfile
import zipfile

sdist, wheel, repo = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
expected = pathlib.Path(sys.argv[4]).read_text().split()
with tarfile.open(sdist) as tar:
    snames = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
with zipfile.ZipFile(wheel) as zf:
    wnames = set(zf.namelist())
    metadata = zf.read(next(n for n in wnames if n.endswith(".dist-info/METADATA"))).decode()

jpgs = [n for n in expected if n.endswith(".jpg")]
assert len(jpgs) >= 4000, f"only {len(jpgs)} JPEGs in the checkout"
missing_w = [j for j in jpgs if j not in wnames]
missing_s = [j for j in jpgs if j not in snames]
assert not missing_w, f"{len(missing_w)} JPEGs missing from the wheel, e.g. {missing_w[:3]}"
assert not missing_s, f"{len(missing_s)} JPEGs missing from the sdist, e.g. {missing_s[:3]}"
assert "keras_dino/datasets/cifar10_mini/README.md" in wnames
assert "keras_dino/py.typed" in wnames, "the wheel lacks keras_dino/py.typed (PEP 561)"

need_s = ["LICENSE", "CHANGELOG.md", "README.md", "CITATION.cff", "keras_dino/py.typed",
          "pyproject.toml", "MANIFEST.in", "BUILD",
          "WORKSPACE", ".bazelrc", "tests/conftest.py", "tests/BUILD",
          "tests/bazel_pytest_main.py", "examples/BUILD", "scripts/test.sh",
          "scripts/check_wheel.sh", "scripts/bazel_test.sh", "mkdocs.yml", "docs/index.md",
          "docs/api/keras_dino.md", "scripts/cli_docs.py", "scripts/griffe_doctest_fences.py"]
need_s += [n for n in expected if n.endswith(".py")]  # package, tests, examples, bench
missing = [n for n in need_s if (repo / n).exists() and n not in snames]
assert not missing, f"missing from the sdist: {missing}"
assert any(n.startswith("tests/test_") for n in snames), "no tests in the sdist"
assert any(n.startswith("examples/") for n in snames), "no examples in the sdist"

py = [n for n in expected if n.startswith("keras_dino/") and n.endswith(".py")]
missing = [n for n in py if n not in wnames and (repo / n).exists()]
assert not missing, f"modules missing from the wheel: {missing}"
stray = [n for n in wnames if n.split("/")[0] in ("tests", "examples", "bench", "scripts")]
assert not stray, f"the wheel should hold the package only: {stray[:5]}"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wnames), "no LICENSE in wheel"
for field in ("License-Expression: Apache-2.0", "Requires-Dist: keras", "Provides-Extra: jax",
              "Provides-Extra: torch", "Provides-Extra: serving", "Provides-Extra: examples",
              "Provides-Extra: test", "Classifier: Programming Language :: Python :: 3",
              "Project-URL: Source, "):
    assert field in metadata, f"METADATA lacks {field!r}"
print(f"sdist: {len(snames)} entries; wheel: {len(wnames)} entries, {len(jpgs)} JPEGs in both")
EOF

step "fresh venv (--system-site-packages), pip install --no-deps the wheel"
"${PYTHON}" -m venv --system-site-packages "${TMP}/venv"
VPY="${TMP}/venv/bin/python"
"${VPY}" -m pip install -q --no-deps --no-index --force-reinstall "${WHEEL}"
if [[ -n "${CHECK_WHEEL_PIP_INSTALL:-}" ]]; then  # e.g. "matplotlib" where it is missing
  # shellcheck disable=SC2086
  "${VPY}" -m pip install -q ${CHECK_WHEEL_PIP_INSTALL}
fi
RUN="${TMP}/run"  # every check runs from here: the checkout is not on sys.path
mkdir -p "${RUN}"
cd "${RUN}"

step "import, data set, dependency ranges, fixture checkpoint (TensorFlow backend)"
KERAS_BACKEND=tensorflow "${VPY}" - "${TMP}/venv" "${CHECKPOINT}" "${SHARED}" <<'EOF'
import importlib.metadata as md
import pathlib
import sys

import numpy as np
from packaging.requirements import Requirement

venv, checkpoint, shared = map(pathlib.Path, sys.argv[1:4])
import keras_dino  # noqa: E402
from keras_dino.datasets import cifar10_mini  # noqa: E402

where = pathlib.Path(keras_dino.__file__).resolve()
assert venv.resolve() in where.parents, f"keras_dino imported from {where}, not the venv"
assert md.version("keras-dino") == keras_dino.__version__, (md.version("keras-dino"),
                                                             keras_dino.__version__)
print("keras_dino", keras_dino.__version__, "from", where.parent)

for split, expected in (("train", 3000), ("test", 1000)):
    path = cifar10_mini(split)
    assert venv.resolve() in pathlib.Path(path).resolve().parents, path
    n = sum(1 for _ in pathlib.Path(path).rglob("*.jpg"))
    assert n == expected, f"cifar10_mini({split!r}) has {n} JPEGs, expected {expected}"
    print(f"cifar10_mini({split!r}): {n} JPEGs")

# The wheel's dependency ranges hold for the versions this check (and CI) runs with.
extras_here = {"jax", "torch", "serving"}
for text in md.requires("keras-dino") or []:
    req = Requirement(text)
    if req.marker is not None and not any(
        req.marker.evaluate({"extra": e}) for e in extras_here
    ):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        if req.marker is None:
            raise SystemExit(f"dependency {req} is not installed") from None
        print(f"  {req}: not installed (extra)")
        continue
    assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} not in {req}"
    print(f"  {req}: {version} ok")

model = keras_dino.load_pretrained(str(checkpoint), num_heads=3)
fixtures = checkpoint.parent
u8 = np.load(fixtures / "inputs.npz")["224x224/uint8_nhwc"]
mean = np.array([0.485, 0.456, 0.406], np.float32)
std = np.array([0.229, 0.224, 0.225], np.float32)
x = ((u8.astype(np.float32) / np.float32(255) - mean) / std).astype(np.float32)
cls = np.asarray(model(x))
ref = np.load(fixtures / "outputs_vit_mini16.npz")["224x224/cls"]
err = float(np.max(np.abs(cls - ref)))
assert err < 1e-4, f"load_pretrained: max |cls - official| = {err}"
print(f"load_pretrained({checkpoint.name}, num_heads=3): {type(model).__name__}, "
      f"max |cls - official| = {err:.2e}")
EOF

for backend in jax torch; do
  step "KERAS_BACKEND=${backend}: import keras_dino (and load_pretrained) without TensorFlow"
  KERAS_BACKEND="${backend}" "${VPY}" -c "import keras_dino, sys; assert 'tensorflow' not in sys.modules"
  KERAS_BACKEND="${backend}" "${VPY}" - "${CHECKPOINT}" <<'EOF'
import sys

import keras
import numpy as np

import keras_dino

model = keras_dino.load_pretrained(sys.argv[1], num_heads=3)
out = keras.ops.convert_to_numpy(model(np.zeros((1, 32, 32, 3), "float32")))
assert out.shape == (1, 48), out.shape
leaked = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
assert not leaked, f"TensorFlow imported by load_pretrained: {leaked[:5]}"
print(f"{keras.backend.backend()}: load_pretrained ok, TensorFlow not imported")
EOF
done

step "examples from the installed package (a copy of examples/ without the checkout)"
EX="${TMP}/ex"  # the examples put their parent folder on sys.path: it holds no keras_dino
mkdir -p "${EX}"
cp -r "${REPO}/examples" "${EX}/examples"
find "${EX}" -name __pycache__ -prune -exec rm -rf {} +
[[ ! -e "${EX}/keras_dino" ]] || fail "keras_dino next to the examples copy"
for script in "${EX}"/examples/*.py; do
  name="$(basename "${script}")"
  grep -q "__main__" "${script}" || continue
  rc=0
  "${VPY}" "${script}" --help > "${TMP}/help.txt" 2>&1 || rc=$?
  # absl prints the flags after --help and exits 0 or 1 depending on its version.
  if [[ "${rc}" -gt 1 ]] || ! grep -qiE "usage|flags:" "${TMP}/help.txt"; then
    tail -30 "${TMP}/help.txt"; fail "${name} --help (exit ${rc})"
  fi
  echo "${name} --help: ok"
done
KERAS_BACKEND=tensorflow "${VPY}" "${EX}/examples/export_saved_model.py" \
  --pretrained_weights="${CHECKPOINT}" --num_heads=3 --image_size=32 \
  --output_dir="${TMP}/exports" --model_name=mini > "${TMP}/export.log" 2>&1 \
  || { tail -30 "${TMP}/export.log"; fail "export_saved_model.py"; }
tail -3 "${TMP}/export.log"
KERAS_BACKEND=tensorflow "${VPY}" "${EX}/examples/export_saved_model.py" \
  --describe="${TMP}/exports/mini" > "${TMP}/describe.log" 2>&1 \
  || { tail -30 "${TMP}/describe.log"; fail "export_saved_model.py --describe"; }
echo "export_saved_model.py ${CHECKPOINT##*/} -> $(ls -d "${TMP}"/exports/mini/*): ok"
# The quickstart (README), shortened to 2 steps without k-NN: the embedded data set from
# the wheel, attention maps and training curves (matplotlib: the `examples` extra).
if "${VPY}" -c "import matplotlib" 2>/dev/null; then
  KERAS_BACKEND=tensorflow "${VPY}" "${EX}/examples/train_dino.py" \
    --flagfile="${EX}/examples/flags/quickstart.flags" --output_dir="${TMP}/quickstart" \
    --epochs=1 --warmup_epochs=0 --steps_per_epoch=2 --export=false --verbose=0 \
    --knn_train_path= --knn_test_path= \
    > "${TMP}/train.log" 2>&1 || { tail -30 "${TMP}/train.log"; fail "train_dino.py"; }
  grep -v "^[WIE][0-9]\{4\}\|^WARNING" "${TMP}/train.log" | tail -4
  [[ -s "${TMP}/quickstart/log.txt" ]] || fail "train_dino.py wrote no log.txt"
  echo "train_dino.py --flagfile=quickstart.flags (1 epoch of 2 steps): ok"
else
  echo "train_dino.py run: SKIPPED (matplotlib is not installed: pip install 'keras-dino[examples]')"
fi
step "the keras-dino command of the wheel (pyproject's console script)"
"${TMP}/venv/bin/keras-dino" --help > "${TMP}/cli.txt" 2>&1 \
  || { cat "${TMP}/cli.txt"; fail "keras-dino --help"; }
grep -q "^  eval-knn " "${TMP}/cli.txt" || { cat "${TMP}/cli.txt"; fail "keras-dino --help lists no eval-knn"; }
rc=0
"${TMP}/venv/bin/keras-dino" eval-knn --help > "${TMP}/cli.txt" 2>&1 || rc=$?
if [[ "${rc}" -gt 1 ]] || ! grep -q -- "--pretrained_weights:" "${TMP}/cli.txt"; then
  tail -30 "${TMP}/cli.txt"; fail "keras-dino eval-knn --help (exit ${rc})"
fi
echo "keras-dino --help, keras-dino eval-knn --help: ok"
step "all packaging checks passed"
