#!/usr/bin/env bash
# The project's test command (README "Run the tests"): lint, then one pytest process per
# Keras backend. Backend-agnostic tests run under TensorFlow, JAX and torch; tests that
# need TensorFlow itself (tf_only) run in the TensorFlow process only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

ruff check keras_dino tests examples bench

status=0
for backend in tensorflow jax torch; do
  echo "=== pytest, KERAS_BACKEND=${backend}"
  KERAS_BACKEND="${backend}" python -m pytest -q -p no:cacheprovider "$@" || status=$?
done
exit "${status}"
