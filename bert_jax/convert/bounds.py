"""Sizes read from a checkpoint's config are bounded before anything is built.

A config.json / bert_config.json / bert_jax.json is an untrusted file: one
saying hidden_size=10**7 would make `convert` (or any command that loads the
checkpoint) try to allocate terabytes for the parameters it fills in fresh.
Each size must lie in a generous range, and the parameters the config implies
must be about what the checkpoint holds (fresh heads add little: a pooler,
the MLM transform, the NSP / task classifier).
"""

from __future__ import annotations

import math

# Far above every published BERT (large: 1024 hidden, 24 layers, 30k-250k vocab).
LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 17,
    "type_vocab_size": 1024,
}
# Parameters a config may imply beyond those the checkpoint holds (fresh heads).
FRESH_SLACK = 50_000_000
MAX_PARAMS = 20_000_000_000


def check_fields(cfg, source) -> None:
    """Every size of `cfg` in [1, LIMITS[field]] (heads divide hidden_size)."""
    for field, limit in LIMITS.items():
        v = getattr(cfg, field)
        if not 1 <= v <= limit:
            raise ValueError(f"{source}: {field}={v} is out of range; expected 1..{limit}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"{source}: hidden_size={cfg.hidden_size} is not a multiple of "
                         f"num_attention_heads={cfg.num_attention_heads}")


def check_total(target: dict[str, tuple], have: int, source, weights) -> None:
    """The parameters of `target` (name -> shape) are at most what `weights`
    holds (`have` values) plus FRESH_SLACK, and at most MAX_PARAMS."""
    implied = sum(math.prod(s) for s in target.values())
    if implied > MAX_PARAMS or implied > have + FRESH_SLACK:
        raise ValueError(f"{source}: the config implies {implied:,} parameters but {weights} "
                         f"holds {have:,}; refusing to allocate the rest (check its sizes)")
