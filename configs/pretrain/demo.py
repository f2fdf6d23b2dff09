r"""The `make demo` run: ModernBERT-tiny on the stdlib docstrings, a few minutes on 2 CPU cores.

  python -m bert_jax.demo --workdir=runs/demo   # vocab, prepare, this config, plot, fill-mask
  python -m bert_jax.pretrain --config=configs/pretrain/demo.py --workdir=runs/demo2 \
      --config.data.prepared_dir=runs/demo/prepared_train \
      --config.eval_data.prepared_dir=runs/demo/prepared_heldout
  # the BERT-tiny recipe the demo ran before (MLM + NSP, post-norm):
  python -m bert_jax.pretrain --config=configs/pretrain/demo.py:arch=bert ...

ModernBERT-tiny (configs/pretrain/modernbert.py: 3 layers, hidden 128, GeGLU
192, pre-norm, rotary, MLM only at 30%, packed rows, AdamW + warmup-stable-
decay) with what a run of a few CPU minutes needs. Chosen by measurement
(bench/bench_demo_recipes.py; README "What the demo shows" has the tables):
on one core, 1,200 steps of 32 x 64 tokens, ModernBERT-tiny ended at held-out
MLM accuracy 0.305 where the best BERT-tiny recipe (`arch=bert`) was at 0.150
(0.159 after 1,600 steps), for 1.0-1.3x the time per step, and 10 of its 16
fill-mask answers fit their sentences where BERT-tiny's were 2 of 16 (the
rest "the" / "a" / "if"). lr 2e-3 and 4e-3 ended within 0.002 of each other.
- sequences of 64 tokens, batches of 32: a step costs in proportion to its
  tokens on CPU, and small batches give more updates for the same tokens;
  a docstring sentence is ~20 tokens, so a row packs up to 4 whole sequences;
- 200 warmup steps, constant, the last 20% decaying as 1-sqrt (WSD);
- 1,200 steps (1,600 reached 0.315: +0.01 for a third more time, which a
  5-minute demo cannot spare on a slow machine), evaluated four times (16
  held-out batches), checkpointed twice.

`arch=bert` is the BERT-tiny recipe (L2/H128, MLM + NSP, 30% masking, lr 2e-3
with 200 warmup steps, no dropout), kept so its rows in the README stay
reproducible.
"""

import math

from bert_jax.cli.config_args import parse_arg
from configs.pretrain import bert_tiny, modernbert

SEQ = 64


def get_config(arg: str | None = None):
    args = parse_arg(arg, steps=1200, arch="modernbert")
    if args["arch"] == "modernbert":
        c = modernbert.get_config("size=tiny")
        c.data.max_seq_length = SEQ
        c.data.packing = 4
        c.data.max_predictions_per_seq = math.ceil(c.data.masked_lm_prob * (SEQ - 2)) + 1
        c.optim.lr = 2e-3
        c.optim.decay_steps, c.optim.decay_ratio = 0, 0.2   # follows num_train_steps
    elif args["arch"] == "bert":
        c = bert_tiny.get_config()
        c.data.max_seq_length = SEQ
        c.data.masked_lm_prob = 0.3
        c.data.max_predictions_per_seq = 20
        c.model.hidden_dropout_prob = 0.0
        c.model.attention_probs_dropout_prob = 0.0
        c.optim.lr = 2e-3
    else:
        raise ValueError(f"config arg arch={args['arch']}: expected modernbert or bert")
    c.global_batch_size = 32
    c.optim.warmup_steps = 200
    set_steps(c, args["steps"])
    c.log_every = 25
    c.eval_batches = 16
    return c


def set_steps(c, steps: int) -> None:
    """`steps` training steps, evaluated four times, checkpointed twice."""
    c.num_train_steps = steps
    c.eval_every = max(steps // 4, 1)
    c.checkpoint.every = max(steps // 2, 1)
