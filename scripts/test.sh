#!/usr/bin/env bash
# The project's test command (README, docs/contributing.md): lint, then one pytest process per
# Keras backend. Backend-agnostic tests run under TensorFlow, JAX and torch; tests that
# need TensorFlow itself (tf_only) run in the TensorFlow process only, and `slow` tests
# in one process only (tests/conftest.py).
#
# The JAX process is the longest (XLA compiles every step function on the CPU, mostly on
# one core): it runs beside the TensorFlow and torch processes, its output printed when
# it ends. KERAS_DINO_TEST_SERIAL=1 runs the three one after the other instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

ruff check keras_dino tests examples bench

run() {
  local backend="$1"
  shift
  KERAS_BACKEND="${backend}" python -m pytest -q -p no:cacheprovider --durations=15 "$@"
}

status=0
if [[ "${KERAS_DINO_TEST_SERIAL:-0}" == 1 ]]; then
  for backend in tensorflow jax torch; do
    echo "=== pytest, KERAS_BACKEND=${backend}"
    run "${backend}" "$@" || status=$?
  done
  exit "${status}"
fi

jax_log="$(mktemp -t keras_dino_jax_tests.XXXXXX)"
trap 'rm -f "${jax_log}"' EXIT
run jax "$@" > "${jax_log}" 2>&1 &
jax_pid=$!
for backend in tensorflow torch; do
  echo "=== pytest, KERAS_BACKEND=${backend}"
  run "${backend}" "$@" || status=$?
done
jax_status=0
wait "${jax_pid}" || jax_status=$?
echo "=== pytest, KERAS_BACKEND=jax (ran beside the others)"
cat "${jax_log}"
[[ "${jax_status}" == 0 ]] || status="${jax_status}"
exit "${status}"
