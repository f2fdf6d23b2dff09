#!/usr/bin/env bash
# Runs a bert_jax job as one process that drives all GPUs of this node.
#
#   launch/gpu.sh [--dry-run] JOB [ARGS...]
#
# JAX sees every GPU in CUDA_VISIBLE_DEVICES (all of them unless you restrict
# it) as one local device; the job's mesh spreads the batch over them. For
# several nodes use launch/slurm.sbatch.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/gpu.sh [OPTIONS] JOB [ARGS...]

Runs `python -m bert_jax.JOB ARGS...` on all GPUs of this node, after setting:
  JAX_PLATFORMS=cuda                    fail instead of falling back to the CPU
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.9    JAX's default 0.75 wastes memory on big models
  XLA_FLAGS+=--xla_gpu_enable_latency_hiding_scheduler=true
                                        overlap gradient all-reduce with compute
Each is left alone when you exported your own value.

Options (before JOB):
  --dry-run     print the commands (export lines, then python) and run nothing
  -h, --help    show this help
  --            end of options

Environment: PYTHON (default python3) is the interpreter; restrict the GPUs
with CUDA_VISIBLE_DEVICES.

Example:
  launch/gpu.sh pretrain --config=configs/pretrain/bert.py --workdir=runs/bert_base
USAGE
}

LAUNCHER=gpu.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_launch_args "" "" "$@"
check_job "$JOB"

gpu_env
exec_cmd "${PYTHON:-python3}" -m "bert_jax.$JOB" "${JOB_ARGS[@]}"
