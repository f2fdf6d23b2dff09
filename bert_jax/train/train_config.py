"""The config vocabulary pretraining and fine-tuning share: the `optim`,
`checkpoint` and `mesh` sub-configs, built by one function each, and the
fine-tuning names they replaced (an old name is a one-line error naming the
new one). JAX-free: config files import it, and the checks run before JAX is
imported.
"""

from __future__ import annotations

import math

from ml_collections import config_dict

# Old fine-tuning field -> its name now (same meaning).
RENAMED = {
    "learning_rate": "optim.lr",
    "batch_size": "global_batch_size",
    "warmup_ratio": "optim.warmup_ratio",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "optimizer": "optim.name",
    "adam_eps": "optim.eps",
    "clip_norm": "optim.clip_norm",
}


def optim(lr: float, *, warmup_steps: int = 0, warmup_ratio: float = 0.0,
          name: str = "adamw", weight_decay: float = 0.01) -> config_dict.ConfigDict:
    """`config.optim` (read by `bert_jax.train.optim.build_optimizer`). The warmup is
    linear, then linear decay to 0 at the last step; its length is either
    `warmup_steps` or `warmup_ratio` of all steps (one of them 0)."""
    c = config_dict.ConfigDict()
    c.name = name                 # adamw | lamb (very large batches)
    c.lr = lr
    c.warmup_steps = warmup_steps
    c.warmup_ratio = warmup_ratio
    c.weight_decay = weight_decay  # decoupled, on kernels and embeddings only
    c.b1, c.b2, c.eps = 0.9, 0.999, 1e-6
    c.clip_norm = 1.0             # global-norm clipping; 0 = off
    return c


def checkpoint(every: int, keep: int) -> config_dict.ConfigDict:
    """`config.checkpoint`: orbax checkpoints (state + data position) every
    `every` steps and at the last step, the newest `keep` kept."""
    c = config_dict.ConfigDict()
    c.every = every
    c.keep = keep
    c.keep_every = 0              # also keep every M steps (0 = off)
    c.async_save = True
    return c


def mesh() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.shape = (-1, 1, 1)          # (data, fsdp, tensor); -1 = remaining devices
    return c


def renamed_error(field: str, flag: str = "config") -> str | None:
    """'--config.learning_rate: renamed to --config.optim.lr' for an old name."""
    new = RENAMED.get(field)
    return None if new is None else f"--{flag}.{field}: renamed to --{flag}.{new}"


def check_renamed(config) -> None:
    """A config built in Python (bench scripts, notebooks) that still sets an
    old field: the same one-line error as on the command line."""
    for old, new in RENAMED.items():
        if old in config:
            raise ValueError(f"config.{old}: renamed to config.{new}")


def check_optim(o) -> None:
    """Ranges of `config.optim`, as one-line errors naming the field."""
    def need(ok: bool, field: str, value, allowed: str):
        if not ok:
            raise ValueError(f"config.optim.{field}={value!r}: expected {allowed}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    need(number(o.lr) and o.lr > 0, "lr", o.lr, "a learning rate > 0")
    need(o.name in ("adamw", "lamb"), "name", o.name, "adamw or lamb")
    need(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "warmup_steps",
         o.warmup_steps, "an integer >= 0")
    need(number(o.warmup_ratio) and 0 <= o.warmup_ratio <= 1, "warmup_ratio", o.warmup_ratio,
         "a fraction in [0, 1]")
    if o.warmup_steps and o.warmup_ratio:
        raise ValueError(f"config.optim.warmup_steps={o.warmup_steps} and "
                         f"config.optim.warmup_ratio={o.warmup_ratio}: set one of them (the "
                         "other 0)")
    need(number(o.weight_decay) and o.weight_decay >= 0, "weight_decay", o.weight_decay, ">= 0")


def finetune_fields(c: config_dict.ConfigDict, *, lr: float, num_epochs: int,
                    global_batch_size: int = 32, eval_batch_size: int = 64) -> None:
    """The fields every fine-tuning config has, named as in pretraining."""
    c.init_checkpoint = ""
    # The vocabulary for a checkpoint that ships none (e.g. a HF dir without
    # vocab.txt); one that contradicts the checkpoint's own is an error unless
    # allow_vocab_mismatch (same rule as pretraining's init_from).
    c.vocab = ""
    c.allow_vocab_mismatch = False
    c.global_batch_size = global_batch_size   # examples (packed: rows) per step, all processes
    c.eval_batch_size = eval_batch_size
    c.num_epochs = num_epochs
    c.optim = optim(lr, warmup_ratio=0.1)      # BERT: warmup over the first 10% of steps
    c.seed = 0
    c.rng_impl = "threefry2x32"    # dropout RNG: threefry | rbg (see configs/pretrain/bert.py)
    c.log_every = 50
    # Evaluate every N steps as well as at each epoch end (0: epoch ends only).
    c.eval_every = 0
    # model/ at the end: "best" = the parameters of the best evaluation by the
    # task's main dev metric (GLUE: its score, SQuAD and CoNLL: F1); "last".
    c.export = "best"
    # keep=2: when the newest checkpoint is damaged the run falls back to the
    # one before (with one it would start again from step 0).
    c.checkpoint = checkpoint(every=1000, keep=2)
    c.mesh = mesh()
    # How the checkpoint's architecture runs (None: as it was saved), e.g.
    # --config.model.dtype=bfloat16 or a dropout rate.
    c.model = config_dict.ConfigDict()
    c.model.dtype = config_dict.placeholder(str)
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = config_dict.placeholder(bool)
    c.model.remat_policy = config_dict.placeholder(str)
    c.model.hidden_dropout_prob = config_dict.placeholder(float)
    c.model.attention_probs_dropout_prob = config_dict.placeholder(float)
