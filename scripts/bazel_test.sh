#!/usr/bin/env bash
# Bazel check: `bazel build //...` (library, examples, benchmarks, tests) and
# `bazel test` of //tests:runfiles (the fast tests whose targets declare files beyond the
# library, where BUILD can fall behind the code), with Debian's bazel-bootstrap
# (Bazel 4.2), offline, on the installed Python environment. Installs nothing: CI runs
#   apt-get install -y bazel-bootstrap
# first. Extra arguments go to `bazel test` (e.g. //tests:fast, //tests:all_tests, or
# //tests:test_layers).
#
# Env: PYTHON (default python3): the interpreter whose site-packages hold keras,
#      tensorflow, jax, torch, pytest; KERAS_DINO_SHARED (default ../shared);
#      BAZEL_OUTPUT_USER_ROOT (default /tmp/bazel_keras_dino_$USER).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "${REPO}"
command -v bazel >/dev/null || { echo "bazel not found: apt-get install -y bazel-bootstrap" >&2; exit 1; }

# The real interpreter behind python3 (pyenv shims resolve it per directory; Bazel runs
# tests from its own tree, so pass the absolute path of the one that has the packages).
PYTHON_BIN="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
SHARED="${KERAS_DINO_SHARED:-${REPO}/../shared}"
SHARED="$(cd "${SHARED}" && pwd)"
OUTPUT_USER_ROOT="${BAZEL_OUTPUT_USER_ROOT:-/tmp/bazel_keras_dino_$(id -un)}"
STARTUP=(--output_user_root="${OUTPUT_USER_ROOT}" --host_jvm_args=-Xmx1g)
# The same flags for build and test, so the test reuses the build's analysis.
FLAGS=(--python_path="${PYTHON_BIN}" --local_cpu_resources=2 --jobs=2 --local_test_jobs=2
       --test_env=KERAS_DINO_SHARED="${SHARED}")

echo "=== bazel-bootstrap $(dpkg-query -W -f '${Version}' bazel-bootstrap 2>/dev/null || echo '?'), python ${PYTHON_BIN}"
status=0
# //... skips `manual` targets: the slow tests are built (not run) through all_tests.
echo "=== bazel build //... //tests:all_tests"
bazel "${STARTUP[@]}" build "${FLAGS[@]}" //... //tests:all_tests || status=$?
if [[ "${status}" == 0 ]]; then
  targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=(//tests:runfiles)
  echo "=== bazel test ${targets[*]}"
  # Never a cached PASS: the Python packages and the fixtures are outside Bazel's view.
  bazel "${STARTUP[@]}" test "${FLAGS[@]}" --cache_test_results=no "${targets[@]}" \
    || status=$?
fi
bazel "${STARTUP[@]}" shutdown || true
exit "${status}"
