#!/usr/bin/env bash
# The project's test command (README, docs/contributing.md): lint, then one pytest process per
# Keras backend. Backend-agnostic tests run under TensorFlow, JAX and torch; tests that
# need TensorFlow itself (tf_only) run in the TensorFlow process only, and `slow` tests
# in one process only (tests/conftest.py).
#
# Backend-independent tests (`once`: docs, docstring examples, import structure, flags)
# run in the torch process only. The three processes run side by side (TensorFlow's and
# JAX's compile their step functions, mostly on one core each), the JAX and torch output
# printed when they end. KERAS_DINO_TEST_SERIAL=1 runs them one after the other instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# `once` tests (backend-independent) run in the torch process only (tests/conftest.py).
export KERAS_DINO_ONCE_BACKEND=torch

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

# JAX and torch run beside TensorFlow, their output printed when they end.
# Three processes share the cores: each computes on one thread (TensorFlow's and XLA's
# Eigen pools, torch's and numpy's OpenMP), so no process spins waiting for a core that
# another holds. Measured on 2 cores: 14:40 instead of 17:13 for the three processes,
# 14% less CPU time. A variable already set is kept.
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [[ "${XLA_FLAGS:-}" != *xla_cpu_multi_thread_eigen* ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"
fi
# XLA (JAX, and TensorFlow's jit_compile tests) compiles without LLVM's optimisations:
# the tests' small programs spend more time compiling than running (tests/test_distillation.py
# under JAX: 27 s instead of 45 s). XLA's own passes (fusion, layout) still run; the
# level sets LLVM's optimisation of the machine code, which can change the last bit of a
# float32 result (a ViT's output: 1e-6 of 2.4), well inside the tolerances the tests
# derive from float32 rounding.
if [[ "${XLA_FLAGS}" != *xla_backend_optimization_level* ]]; then
  export XLA_FLAGS="${XLA_FLAGS} --xla_backend_optimization_level=0"
fi
# XLA's CPU compiler (JAX, TensorFlow's jit_compile) emits fused kernels with its older LLVM
# emitter instead of its MLIR fusion emitters, which take longer to compile the tests' many
# small programs. Measured under JAX (CPU time, one process each): test_dino_training.py
# and test_distillation.py 113 s instead of 219 s, test_xcit.py and test_resnet.py 100 s
# instead of 138 s. Both emitters compute the same float32 operations; the last bit of a
# result can differ, as with the optimisation level above. An XLA that does not know a flag
# stops the process that reads it, so the flag is set only if a small program compiles
# with it under JAX and under TensorFlow.
xla_probe='
import importlib.util
if importlib.util.find_spec("jax"):
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()
import tensorflow as tf
tf.function(lambda x: x + 1, jit_compile=True)(tf.zeros(1))
'
if [[ "${XLA_FLAGS}" != *xla_cpu_use_fusion_emitters* ]]; then
  if XLA_FLAGS="${XLA_FLAGS} --xla_cpu_use_fusion_emitters=false" \
      python -c "${xla_probe}" > /dev/null 2>&1; then
    export XLA_FLAGS="${XLA_FLAGS} --xla_cpu_use_fusion_emitters=false"
  else
    echo "(a program did not compile with --xla_cpu_use_fusion_emitters=false: XLA keeps its default emitter)"
  fi
fi
logs="$(mktemp -d -t keras_dino_tests.XXXXXX)"
trap 'rm -rf "${logs}"' EXIT
# One XLA compilation cache for the run, shared by the processes (tests/conftest.py).
export JAX_COMPILATION_CACHE_DIR="${logs}/jax_cache"
declare -A pids
for backend in jax torch; do
  run "${backend}" "$@" > "${logs}/${backend}.log" 2>&1 &
  pids[${backend}]=$!
done
echo "=== pytest, KERAS_BACKEND=tensorflow"
run tensorflow "$@" || status=$?
for backend in torch jax; do
  backend_status=0
  wait "${pids[${backend}]}" || backend_status=$?
  echo "=== pytest, KERAS_BACKEND=${backend} (ran beside TensorFlow)"
  cat "${logs}/${backend}.log"
  [[ "${backend_status}" == 0 ]] || status="${backend_status}"
done
exit "${status}"
