#!/usr/bin/env bash
# Runs a bert_jax job on this machine's CPU, optionally with N fake devices so
# sharding configs (data/fsdp/tensor meshes) can be tried without accelerators.
#
#   launch/local.sh [--devices N] [--dry-run] JOB [ARGS...]
#
# JOB is a module under bert_jax (pretrain, finetune, convert, ...); ARGS go to
# it verbatim. Options of this script must come before JOB.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [OPTIONS] JOB [ARGS...]

Runs `python -m bert_jax.JOB ARGS...` on the CPU (JAX_PLATFORMS=cpu).

Options (before JOB):
  --devices N   split the CPU into N XLA devices
                (XLA_FLAGS=--xla_force_host_platform_device_count=N), e.g. 8
                to try a ('data', 'fsdp', 'tensor') mesh of 2x2x2
  --dry-run     print the commands (export lines, then python) and run nothing
  -h, --help    show this help
  --            end of options (use when JOB could look like an option)

Environment: PYTHON (default python3) is the interpreter.

Example:
  launch/local.sh --devices 8 pretrain --config=configs/pretrain/bert.py:runlocal --workdir=runs/local
USAGE
}

LAUNCHER=local.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_launch_args "" "devices" "$@"
check_job "$JOB"
devices=${OPT_devices:-}
[[ -z $devices || $devices =~ ^[1-9][0-9]*$ ]] \
  || die "--devices must be a positive integer, got '$devices'"

set_env JAX_PLATFORMS cpu
if [[ -n $devices ]]; then
  xla_flag_set xla_force_host_platform_device_count "$devices"
fi
exec_cmd "${PYTHON:-python3}" -m "bert_jax.$JOB" "${JOB_ARGS[@]}"
