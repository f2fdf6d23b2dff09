"""The config vocabulary pretraining and fine-tuning share: the `optim`,
`checkpoint` and `mesh` sub-configs, built by one function each, and the
fine-tuning names they replaced (an old name is a one-line error naming the
new one). JAX-free: config files import it, and the checks run before JAX is
imported.
"""

from __future__ import annotations

import math

from ml_collections import config_dict

from bert_jax.cli.renamed_fields import RENAMED


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
    # linear: warmup then linear decay to 0 (BERT). wsd: warmup, constant, then
    # a decay over the last decay_steps (or decay_ratio of all steps; 0 = none)
    # of decay_shape linear | sqrt (1-sqrt) to end_lr_ratio * lr (ModernBERT).
    c.schedule = "linear"
    c.decay_steps = 0
    c.decay_ratio = 0.0
    c.decay_shape = "sqrt"
    c.end_lr_ratio = 0.0
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
    sched = o.get("schedule", "linear")
    need(sched in ("linear", "wsd"), "schedule", sched, "linear or wsd")
    if sched == "wsd":
        need(isinstance(o.decay_steps, int) and o.decay_steps >= 0, "decay_steps",
             o.decay_steps, "an integer >= 0")
        need(number(o.decay_ratio) and 0 <= o.decay_ratio <= 1, "decay_ratio", o.decay_ratio,
             "a fraction in [0, 1]")
        if o.decay_steps and o.decay_ratio:
            raise ValueError(f"config.optim.decay_steps={o.decay_steps} and "
                             f"config.optim.decay_ratio={o.decay_ratio}: set one of them (the "
                             "other 0)")
        need(o.decay_shape in ("linear", "sqrt"), "decay_shape", o.decay_shape, "linear or sqrt")
        need(number(o.end_lr_ratio) and 0 <= o.end_lr_ratio <= 1, "end_lr_ratio",
             o.end_lr_ratio, "a fraction in [0, 1]")


def finetune_fields(c: config_dict.ConfigDict, *, lr: float, num_epochs: int,
                    global_batch_size: int = 32, eval_batch_size: int = 64) -> None:
    """The fields every fine-tuning config has, named as in pretraining."""
    c.init_checkpoint = ""
    # The vocabulary for a checkpoint that ships none (e.g. a HF dir without
    # vocab.txt); one that contradicts the checkpoint's own is an error unless
    # allow_vocab_mismatch (same rule as pretraining's init_from).
    c.vocab = ""
    c.allow_vocab_mismatch = False
    c.global_batch_size = global_batch_size   # examples per step, all processes (packed:
    # on average; the rows per step follow, see the task's train_rows_per_step)
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
