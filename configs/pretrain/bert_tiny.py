r"""BERT-tiny (L2/H128) pretraining on CPU (`make demo` runs configs/pretrain/demo.py, built on it).

  python -m bert_jax.pretrain --config=configs/pretrain/bert_tiny.py \
      --workdir=runs/tiny --config.data.prepared_dir=runs/demo/prepared

800 steps of batch 64 at seq 128: ~1.1 s a step on one idle core of the
project's CPU (15 min).
"""

from bert_jax.cli.config_args import parse_arg
from configs.pretrain import bert


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = bert.get_config("size=tiny")
    c.model.dtype = "float32"   # bf16 matmuls are emulated (slow) on CPU
    c.global_batch_size = 64
    c.num_train_steps = 800
    c.optim.lr = 1e-3            # small models tolerate (and need) a larger lr
    c.optim.warmup_steps = 100
    c.checkpoint.every = 200
    c.log_every = 20
    c.eval_every = 200
    c.eval_batches = 8
    if args["runlocal"]:
        bert.shrink(c)
    return c
