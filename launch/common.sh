# shellcheck shell=bash
# Shared helpers for the launch scripts; sourced, never run. The scripts only
# prepare an environment and forward their arguments to `python -m bert_jax.<job>`:
# no hyperparameters live here (style guide, section 1).
#
# Every command goes through run_cmd/exec_cmd/set_env so that --dry-run prints
# exactly what a real run would execute, one shell-quoted line per command.

DRY_RUN=${DRY_RUN:-0}
# Name used in messages; each script sets it before sourcing.
LAUNCHER=${LAUNCHER:-launch}

die() {
  echo "${LAUNCHER}: error: $*" >&2
  exit 2
}

# Prints one word so that a POSIX shell reads it back unchanged: safe words as
# they are, everything else in single quotes (readable, unlike printf %q).
quote_word() {
  local word=$1
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Prints a whole command as one shell line.
quote_cmd() {
  local out='' word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s\n' "$out"
}

# Runs a command, or only prints it under --dry-run. Real runs echo it to
# stderr first so logs show what was launched.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
    return 0
  fi
  echo "${LAUNCHER}: $(quote_cmd "$@")" >&2
  "$@"
}

# Like run_cmd, but replaces the shell: signals (SLURM's SIGTERM before a time
# limit, Ctrl-C) go straight to python, which can then save a checkpoint.
exec_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
    exit 0
  fi
  echo "${LAUNCHER}: $(quote_cmd "$@")" >&2
  exec "$@"
}

# Exports NAME=VALUE (and prints `export NAME=VALUE` under --dry-run).
set_env() {
  local name=$1 value=$2
  export "$name=$value"
  if [[ $DRY_RUN == 1 ]]; then
    printf 'export %s=%s\n' "$name" "$(quote_word "$value")"
  fi
}

# XLA_FLAGS without any --NAME or --NAME=... entry.
xla_flags_without() {
  local name=$1 flag kept='' words
  # read -a splits on whitespace without glob-expanding values such as '.*'.
  read -ra words <<<"${XLA_FLAGS:-}"
  for flag in "${words[@]}"; do
    if [[ $flag != "--$name" && $flag != "--$name="* ]]; then
      kept+="${kept:+ }$flag"
    fi
  done
  printf '%s' "$kept"
}

# Sets --NAME=VALUE in XLA_FLAGS, replacing a value the user already had.
xla_flag_set() {
  local name=$1 value=$2 kept
  kept=$(xla_flags_without "$name")
  set_env XLA_FLAGS "${kept:+$kept }--$name=$value"
}

# Adds --NAME=VALUE to XLA_FLAGS unless the user already chose a value.
xla_flag_default() {
  local name=$1 value=$2
  if [[ ! " ${XLA_FLAGS:-} " =~ [[:space:]]--${name}[=[:space:]] ]]; then
    set_env XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--$name=$value"
  fi
}

# Environment for JAX on NVIDIA GPUs (gpu.sh and every SLURM task). Values the
# user exported beforehand win.
gpu_env() {
  # Fail loudly when the CUDA jaxlib plugin is missing, instead of JAX's
  # default of warning and silently training on the CPU.
  set_env JAX_PLATFORMS "${JAX_PLATFORMS:-cuda}"
  # JAX preallocates 75% of GPU memory by default; BERT-large at long sequence
  # lengths wants more. 0.9 still leaves room for cuDNN/NCCL workspaces that
  # are allocated outside JAX's pool.
  set_env XLA_PYTHON_CLIENT_MEM_FRACTION "${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  # Lets XLA overlap the data-parallel gradient all-reduce / FSDP all-gathers
  # with compute (maxtext and levanter turn it on for GPU training too).
  xla_flag_default xla_gpu_enable_latency_hiding_scheduler true
}

# Parses `[OPTIONS] [--] JOB [ARGS...]`. FLAGS and VALUED are space-separated
# option names without dashes; --name sets OPT_name=1 for a flag, --name V or
# --name=V sets OPT_name=V (dashes in names become underscores). --help calls
# the script's usage(), --dry-run is always known. The first word that is not
# an option is JOB (may be empty); everything after it goes to JOB_ARGS
# untouched, options of the job included.
parse_launch_args() {
  local flags=" dry-run $1 " valued=" $2 " name
  shift 2
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --) shift; break ;;
      --*=*)
        name=${1%%=*}
        name=${name#--}
        [[ $valued == *" $name "* ]] || die "unknown option '${1%%=*}'; see --help"
        set_opt "$name" "${1#*=}"
        ;;
      --*)
        name=${1#--}
        if [[ $flags == *" $name "* ]]; then
          set_opt "$name" 1
        elif [[ $valued == *" $name "* ]]; then
          (($# > 1)) || die "$1 needs a value"
          set_opt "$name" "$2"
          shift
        else
          die "unknown option '$1' (options of the job go after JOB); see --help"
        fi
        ;;
      -*) die "unknown option '$1' (options of the job go after JOB); see --help" ;;
      *) break ;;
    esac
    shift
  done
  # shellcheck disable=SC2034 # JOB and JOB_ARGS are read by the sourcing script.
  JOB=${1:-} JOB_ARGS=("${@:2}")
  if [[ ${OPT_dry_run:-0} == 1 ]]; then DRY_RUN=1; fi
}

set_opt() {
  printf -v "OPT_${1//-/_}" '%s' "$2"
}

# Checks that JOB names a module under bert_jax (pretrain, finetune, convert,
# finetune.glue, ...); anything else would be spliced into a command line.
check_job() {
  local job=$1
  [[ -n $job ]] || die "missing JOB (pretrain, finetune, convert, ...); see --help"
  [[ $job =~ ^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$ ]] \
    || die "JOB '$job' is not a module name under bert_jax (e.g. pretrain, finetune)"
}
