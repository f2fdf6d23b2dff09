r"""BERT-large with the paper's recipe; `:phase=2` for the seq-512 phase.

  python -m bert_jax.pretrain --config=configs/pretrain/bert_large.py:phase=1 \
      --workdir=WORKDIR --config.data.prepared_dir=PREPARED
"""

from configs.pretrain import bert


def get_config(arg: str | None = None):
    return bert.get_config(f"size=large,{arg}" if arg else "size=large")
