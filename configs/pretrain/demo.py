r"""The `make demo` run: BERT-tiny (L2/H128) on the stdlib docstrings, a few minutes on 2 CPU cores.

  python -m bert_jax.demo --workdir=runs/demo   # vocab, prepare, this config, plot, fill-mask
  python -m bert_jax.pretrain --config=configs/pretrain/demo.py --workdir=runs/demo2 \
      --config.data.prepared_dir=runs/demo/prepared_train \
      --config.eval_data.prepared_dir=runs/demo/prepared_heldout

bert_tiny.py with what a run of a few CPU minutes needs (README "What the demo
shows" has the measured times and held-out accuracy):
- sequences of 64 tokens (10 predictions each, 15% of 64) in batches of 32:
  a step costs in proportion to its tokens on CPU, and a docstring sentence
  is ~20 tokens, so a 64-token pair still holds two or three of them; small
  batches give more updates for the same tokens, which is what a short run
  lacks;
- no dropout and 50 warmup steps: a run this short underfits (train and
  held-out MLM accuracy 0.125 and 0.115 at the end), and dropout's random
  bits cost CPU time (held-out accuracy was the same at 800 steps with
  dropout 0.1; lr 3e-3 was worse than 1e-3 at 200 steps, so lr stays);
- two checkpoints, four evaluations of 16 batches.
"""

from bert_jax.cli.config_args import parse_arg
from configs.pretrain import bert_tiny


def get_config(arg: str | None = None):
    args = parse_arg(arg, steps=800)
    c = bert_tiny.get_config()
    c.global_batch_size = 32
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 10
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.optim.warmup_steps = 50
    set_steps(c, args["steps"])
    c.log_every = 25
    c.eval_batches = 16
    return c


def set_steps(c, steps: int) -> None:
    """`steps` training steps, evaluated four times, checkpointed twice."""
    c.num_train_steps = steps
    c.eval_every = max(steps // 4, 1)
    c.checkpoint.every = max(steps // 2, 1)
