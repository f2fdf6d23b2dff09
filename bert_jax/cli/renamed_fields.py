"""Config fields that were renamed: on the command line an old name is a
one-line error naming the new one (`cli.parse_flags`), in a config built in
Python too (`train.train_config.check_renamed`). Here, below both, so that the
command-line layer needs nothing from the training layer."""

from __future__ import annotations

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


def renamed_error(field: str, flag: str = "config") -> str | None:
    """'--config.learning_rate: renamed to --config.optim.lr' for an old name."""
    new = RENAMED.get(field)
    return None if new is None else f"--{flag}.{field}: renamed to --{flag}.{new}"
