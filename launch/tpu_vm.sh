#!/usr/bin/env bash
# Runs a bert_jax job on a Cloud TPU VM, one host or a whole pod slice: creates
# the VM (or reuses it), installs the project on every worker, runs
# `python -m bert_jax.<job>` on all workers at once and streams their output.
#
#   launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE [OPTIONS] JOB [ARGS...]
#
# On TPU VMs jax.distributed.initialize() finds its peers by itself, so no
# coordinator flags are passed. Data and workdir go in ARGS: the workdir on a
# GCS bucket mounted with gcsfuse at the same path on every worker (docs/launch.md).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE [OPTIONS] JOB [ARGS...]
       launch/tpu_vm.sh --name NAME --zone ZONE --delete        (only delete the VM)

Creates the TPU VM NAME unless it exists, puts the project on every worker,
then runs `python -m bert_jax.JOB ARGS...` on all workers (--worker=all).

Options (before JOB):
  --name NAME              TPU VM name; reused when it already exists
  --zone ZONE              e.g. us-central2-b
  --accelerator-type TYPE  e.g. v4-8 (one host), v4-32 (pod slice of 4 hosts),
                           v5litepod-16; needed only to create the VM
  --version RUNTIME        TPU software version to create with
                           (default tpu-ubuntu2204-base; v6e: v2-alpha-tpuv6e)
  --project PROJECT        GCP project (default: gcloud's configured one)
  --spot                   create a Spot VM (cheaper, can be preempted)
  --repo SOURCE            how the project gets onto the workers:
                             a git URL (https://, ssh://, git@...): cloned on each
                             a .tar.gz/.tgz file: copied with scp and unpacked
                             a local git checkout: its HEAD packed with git archive
                           (default: the checkout this script is in)
  --ref REF                branch, tag or commit to check out of a git URL
  --skip-install           keep what an earlier run installed on the workers
  --delete                 delete the VM after the job, also when it fails
  --dry-run                print the commands and run nothing
  -h, --help               show this help

Every worker gets the code in ~/bert_jax (updated in place on a reused VM:
files you keep there, e.g. a relative --workdir, stay) and a Python 3.12 venv (made by uv,
since TPU images ship Python 3.10) in ~/bert_jax_venv with the project and
jax[tpu]; the job runs from ~/bert_jax.

Example (a v4-32 pod slice, 4 hosts):
  launch/tpu_vm.sh --name bert --zone us-central2-b --accelerator-type v4-32 \
    --delete pretrain --config=configs/pretrain/bert.py \
    --workdir=/gcs/runs/bert_base
USAGE
}

LAUNCHER=tpu_vm.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# jax>=0.8 needs Python >= 3.11; uv fetches a standalone build of it.
readonly REMOTE_PYTHON_VERSION=3.12

parse_launch_args "spot delete skip-install" \
  "name zone accelerator-type version project repo ref" "$@"
name=${OPT_name:-}
zone=${OPT_zone:-}
[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"

tpu=(gcloud compute tpus tpu-vm)
# Flags every gcloud call gets: where the VM is.
where=("--zone=$zone")
if [[ -n ${OPT_project:-} ]]; then where+=("--project=${OPT_project}"); fi

delete_vm() {
  run_cmd "${tpu[@]}" delete "$name" "${where[@]}" --quiet
}

# Reuses the VM when `describe` finds it, else creates it. The dry run prints
# that logic as the one shell line that does the same.
ensure_vm() {
  local describe=("${tpu[@]}" describe "$name" "${where[@]}" '--format=value(state)')
  local create=("${tpu[@]}" create "$name" "${where[@]}"
    "--accelerator-type=${OPT_accelerator_type}"
    "--version=${OPT_version:-tpu-ubuntu2204-base}")
  if [[ ${OPT_spot:-0} == 1 ]]; then create+=(--spot); fi
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(quote_cmd "${describe[@]}") || $(quote_cmd "${create[@]}")"
    return
  fi
  local state
  if state=$("${describe[@]}" 2>/dev/null); then
    echo "${LAUNCHER}: reusing TPU VM $name (state $state)" >&2
    [[ $state == READY ]] || die "TPU VM $name is $state, not READY; delete it (--delete) or pick another --name"
  else
    run_cmd "${create[@]}"
  fi
}

# What --repo is: git (a URL), dir (a local checkout) or tarball.
repo_kind() {
  local repo=$1
  if [[ $repo =~ ^(https?|ssh|git|file)://|^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+: ]]; then
    echo git
    return
  fi
  [[ -z ${OPT_ref:-} ]] || die "--ref only applies to a git URL --repo, not '$repo'"
  if [[ -d $repo ]]; then
    git -C "$repo" rev-parse --verify -q HEAD >/dev/null 2>&1 \
      || die "--repo $repo is a directory but not a git checkout with a commit; pass a .tar.gz of it"
    echo dir
  elif [[ ($repo == *.tar.gz || $repo == *.tgz) && -f $repo ]]; then
    echo tarball
  else
    die "--repo '$repo' is neither a git URL, a .tar.gz/.tgz file nor a directory"
  fi
}

# Ships the code when it is a local tarball or checkout, and sets fetch_shell
# to the worker-side shell that puts it in ~/bert_jax. ~/bert_jax is where the
# job runs, so it may hold the user's data (a relative --workdir): it is
# updated in place, never removed. A git checkout is fetched and checked out
# (untracked files stay; local edits stop the checkout with git's message); a
# tarball is unpacked over the old code after deleting only the files the
# previous tarball shipped (listed in ~/bert_jax/.bert_jax_files) that the
# new one lacks.
ship_code() {
  local repo=$1 kind=$2 tarball=$1 url
  if [[ $kind == git ]]; then
    url=$(quote_word "$repo")
    local ref=${OPT_ref:+ $(quote_word "$OPT_ref")}
    fetch_shell="if [ -d ~/bert_jax/.git ]; then git -C ~/bert_jax fetch -q $url$ref"
    fetch_shell+=" && git -C ~/bert_jax checkout -q --detach FETCH_HEAD;"
    fetch_shell+=" elif [ -e ~/bert_jax ]; then echo \"${LAUNCHER}: ~/bert_jax exists and is"
    fetch_shell+=" not a git checkout; move it aside or pass --repo a .tar.gz\" >&2; false;"
    fetch_shell+=" else git clone -q $url ~/bert_jax"
    if [[ -n ${OPT_ref:-} ]]; then
      fetch_shell+=" && git -C ~/bert_jax checkout -q$ref"
    fi
    fetch_shell+="; fi"
    return
  fi
  if [[ $kind == dir ]]; then
    tarball=${TMPDIR:-/tmp}/bert_jax-$name.tar.gz
    if [[ $DRY_RUN != 1 && -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
      echo "${LAUNCHER}: warning: uncommitted changes in $repo are not shipped (git archive HEAD)" >&2
    fi
    run_cmd git -C "$repo" archive --format=tar.gz "--output=$tarball" HEAD
  fi
  run_cmd "${tpu[@]}" scp "$tarball" "$name:bert_jax.tar.gz" --worker=all "${where[@]}"
  fetch_shell="(mkdir -p ~/bert_jax && cd ~/bert_jax"
  fetch_shell+=" && tar -tzf ~/bert_jax.tar.gz | grep -v '/\$' | sort > .bert_jax_files.new"
  fetch_shell+=" && if [ -f .bert_jax_files ]; then comm -23 .bert_jax_files .bert_jax_files.new"
  fetch_shell+=" | xargs -r -d '\\n' rm -f --; fi"
  fetch_shell+=" && tar -xzf ~/bert_jax.tar.gz && mv .bert_jax_files.new .bert_jax_files)"
}

# Code, then a venv with the project and the jax[tpu] matching this jax, on
# every worker at once.
install_project() {
  local fetch_shell
  ship_code "$repo" "$repo_kind"
  # Expanded by the worker's shell, not here.
  # shellcheck disable=SC2088
  local uv='~/.local/bin/uv'
  run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$fetch_shell \
&& python3 -m pip install -q --user -U uv \
&& $uv venv -q --allow-existing --python $REMOTE_PYTHON_VERSION ~/bert_jax_venv \
&& $uv pip install -q --python ~/bert_jax_venv/bin/python -e ~/bert_jax \"jax[tpu]\""
}

# The job on all workers; their output streams back through ssh.
# PYTHONUNBUFFERED so log lines arrive as they are written, not in 4 KB blocks.
run_job() {
  local args='' word
  for word in "${JOB_ARGS[@]}"; do args+=" $(quote_word "$word")"; done
  run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
    "--command=cd ~/bert_jax && PYTHONUNBUFFERED=1 ~/bert_jax_venv/bin/python -m bert_jax.$JOB$args"
}

if [[ -z $JOB && ${OPT_delete:-0} == 1 ]]; then
  delete_vm
  exit 0
fi
check_job "$JOB"
[[ -n ${OPT_accelerator_type:-} ]] || die "--accelerator-type is required (e.g. v4-8)"
repo=${OPT_repo:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [[ ${OPT_skip_install:-0} != 1 ]]; then repo_kind=$(repo_kind "$repo"); fi

ensure_vm
if [[ ${OPT_delete:-0} == 1 && $DRY_RUN != 1 ]]; then
  # Delete on any exit, failed job or Ctrl-C included; the exit status stays
  # the job's.
  trap delete_vm EXIT
fi
if [[ ${OPT_skip_install:-0} != 1 ]]; then install_project; fi
run_job
if [[ ${OPT_delete:-0} == 1 && $DRY_RUN == 1 ]]; then delete_vm; fi
