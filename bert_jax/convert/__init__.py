"""Checkpoint formats and conversion between them: `model_dir` (ours),
`hf_format`, `tf1_format`, `bounds` (size checks before reading), `formats`
(read any of them, build a model, convert) and `command` (`python -m
bert_jax.convert`, whose usage `__main__` shows)."""
