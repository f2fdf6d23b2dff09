#!/usr/bin/env bash
# One command on a machine with a GPU (or a TPU VM): the pretraining throughput
# and MFU table of BERT-base and BERT-large at seq 128 and 512, bf16, fused
# (cudnn on GPU, splash on TPU) and reference attention, best batch of a few,
# in under 8 minutes (bench/bench_accelerator.py stops taking rows at 7).
#
#   bash bench/accelerator.sh [extra bench_accelerator.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  make install
fi
PY=.venv/bin/python
if command -v nvidia-smi >/dev/null 2>&1; then
  # The CPU jax of `make install` cannot see the GPU: add jax's CUDA 12 plugin
  # (wheels bundle CUDA and cuDNN; needs an NVIDIA driver >= 525).
  if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    .venv/bin/pip install -q "jax[cuda12]==$("$PY" -c 'import jax; print(jax.__version__)')"
  fi
  IMPLS=cudnn,reference
elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ]; then
  if ! "$PY" -c "import libtpu" 2>/dev/null; then
    .venv/bin/pip install -q -e ".[tpu]"
  fi
  IMPLS=splash,reference
else
  echo "error: no GPU (nvidia-smi) or TPU (/dev/accel0) here; this benchmark needs one" >&2
  exit 2
fi
exec "$PY" bench/bench_accelerator.py --impls="$IMPLS" --budget-s=420 "$@"
