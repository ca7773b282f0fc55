#!/usr/bin/env bash
# The prepared GPU check (issue "members at the competition's real size"), under 10 minutes on a
# GPU machine with JAX and Keras installed (no TensorFlow needed): InceptionV3 at 299 px, bf16,
# JAX backend, synthetic JPEGs on local disk. Prints and writes gpu_check.json (to $OUT if set).
#   bash benchmarks/gpu_check.sh            # the real check
#   bash benchmarks/gpu_check.sh --quick    # the same code on a CPU, tiny model (smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# let XLA take GPU memory as it needs it, not 75% up front (the reader's processes share the host)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec timeout 570 python -m benchmarks.gpu_check --out "${OUT:-.}/gpu_check.json" "$@"
