"""Look at what the model will be fed: decoded examples with the masks visible
and statistics as JSON.

    python -m bert_jax.data.inspect_batches --config=configs/pretrain/bert.py --num_batches=20
    python -m bert_jax.data.inspect_batches --prepared=/tmp/eltec --num_batches=20 --json

In the decoded text a masked position shows as `[MASK](=orig)`, a random
replacement as `~tok~(=orig)` and a kept-but-predicted token as `{tok}`.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from absl import flags

from bert_jax.data.pipeline import PretrainingPipeline, default_data_config


def batch_stats(batches: list[dict[str, np.ndarray]], tokenizer, seconds: float) -> dict:
    """Mask rate (over real non-special tokens), [MASK]/random/kept fractions of
    the predictions, NSP positive fraction, mean real length, padding fraction,
    and sequences/s."""
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    ids, att = cat["input_ids"], cat["attention_mask"].astype(bool)
    special = (ids == tokenizer.cls_id) | (ids == tokenizer.sep_id)
    real = int((att & ~special).sum())
    w = cat["masked_weights"] > 0
    shown = np.take_along_axis(ids, cat["masked_positions"], axis=1)[w]
    orig = cat["masked_ids"][w]
    n = max(int(w.sum()), 1)
    n_mask = int((shown == tokenizer.mask_id).sum())
    n_kept = int((shown == orig).sum())
    stats = {
        "sequences": int(len(ids)),
        "predictions": int(w.sum()),
        "mask_rate": int(w.sum()) / max(real, 1),
        "mask_token_fraction": n_mask / n,
        "random_token_fraction": (n - n_mask - n_kept) / n,
        "kept_fraction": n_kept / n,
        "mean_real_length": float(att.sum(1).mean()),
        "padding_fraction": float(1.0 - att.mean()),
        "sequences_per_s": len(ids) / max(seconds, 1e-9),
    }
    if "nsp_labels" in cat:
        stats["nsp_positive_fraction"] = float((cat["nsp_labels"] == 0).mean())
    return stats


def render(batch: dict[str, np.ndarray], i: int, tokenizer) -> str:
    """Example i of a batch as text with its masks visible."""
    ids = batch["input_ids"][i]
    L = int(batch["attention_mask"][i].sum())
    marks = {int(p): int(o) for p, o, w in zip(batch["masked_positions"][i],
                                               batch["masked_ids"][i],
                                               batch["masked_weights"][i]) if w > 0}
    out = []
    for t in range(L):
        tok = tokenizer.id_to_token(int(ids[t]))
        if t in marks:
            orig = tokenizer.id_to_token(marks[t])
            if ids[t] == tokenizer.mask_id:
                tok = f"[MASK](={orig})"
            elif ids[t] == marks[t]:
                tok = f"{{{tok}}}"
            else:
                tok = f"~{tok}~(={orig})"
        out.append(tok)
    text = " ".join(out).replace(" ##", "")
    if "nsp_labels" in batch:
        text = f"[{'random' if batch['nsp_labels'][i] else 'next'}] {text}"
    return text


def run(pipe, num_batches: int, start_step: int = 0) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    batches = [pipe.batch(s) for s in range(start_step, start_step + num_batches)]
    return batches, batch_stats(batches, pipe.tokenizer, time.perf_counter() - t0)


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    if f.config is not None:
        if "data" not in f.config:
            sys.exit("error: --config has no `data` sub-config")
        data_cfg = f.config.data
        batch_size = f.batch_size or int(f.config.get("global_batch_size",
                                                      f.config.get("batch_size", 32)))
    else:
        if not f.prepared:
            sys.exit("error: give --config=... or --prepared=DIR")
        data_cfg = default_data_config()
        data_cfg.prepared_dir, data_cfg.vocab = f.prepared, f.vocab or ""
        for name in ("max_seq_length", "nsp", "whole_word_masking", "seed"):
            if getattr(f, name) is not None:
                setattr(data_cfg, name, getattr(f, name))
        batch_size = f.batch_size or 32
    try:
        pipe = PretrainingPipeline.from_config(data_cfg, global_batch_size=batch_size)
        pipe.locate(f.start_step * batch_size)  # plan the epoch before timing
        batches, stats = run(pipe, f.num_batches, f.start_step)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if f.json:
        print(json.dumps(stats, indent=1))
        return
    for i in range(min(f.num_examples, len(batches[0]["input_ids"]))):
        print(render(batches[0], i, pipe.tokenizer), end="\n\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "pretraining config with a `data` field")
    flags.DEFINE_string("prepared", None, "prepared dir (instead of --config)")
    flags.DEFINE_string("vocab", None, "vocab (default: the copy in the prepared dir)")
    flags.DEFINE_integer("max_seq_length", None, "override")
    flags.DEFINE_bool("nsp", None, "override: False for MLM-only")
    flags.DEFINE_bool("whole_word_masking", None, "override")
    flags.DEFINE_integer("seed", None, "override")
    flags.DEFINE_integer("batch_size", None, "global batch size (default: config or 32)")
    flags.DEFINE_integer("num_batches", 10, "batches to draw")
    flags.DEFINE_integer("start_step", 0, "first step")
    flags.DEFINE_integer("num_examples", 4, "examples to print")
    flags.DEFINE_bool("json", False, "print only the statistics as JSON")
    from bert_jax import cli
    cli.run(main)
