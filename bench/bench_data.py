"""Pretraining data throughput: corpus preparation and online pairing + masking.

    .venv/bin/python bench/bench_data.py [--workers=2] [--steps=40] [--batch=256]

Prepares the ELTeC corpus (../shared/data/corpus/eltec-eng, 57 MB) from scratch
with `--workers` processes (goal: < 60 s with 2), then draws batches at
max_seq_length 128 on one thread (goal: >= 5,000 sequences/s per core) in the
default NSP mode, with whole-word masking and in MLM-only mode. Per-core rates
divide by this process's CPU time, so other load on the machine does not
lower them; wall-clock rates are printed beside them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

from bert_jax.data.pipeline import PretrainingPipeline, default_data_config
from bert_jax.data.prepare import prepare_corpus, summary
from bert_jax.storage.shared_data import shared_data_path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_prepare(corpus: str, vocab: str, out: str, workers: int) -> dict:
    cpu0, t0 = _children_cpu() + time.process_time(), time.perf_counter()
    manifest = prepare_corpus(corpus, vocab, out, num_workers=workers)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() + time.process_time() - cpu0
    mb = manifest["totals"]["bytes"] / 1e6
    print(summary(manifest), file=sys.stderr)
    return {"what": f"prepare {mb:.1f} MB, {workers} workers", "wall_s": wall,
            "rate": f"{mb / wall:.2f} MB/s wall, {mb / cpu:.2f} MB/s per CPU-second",
            "note": f"{manifest['totals']['tokens'] / 1e6:.1f} M tokens; cpu {cpu:.1f} s"}


def bench_pipeline(prepared: str, batch: int, steps: int, **overrides) -> dict:
    cfg = default_data_config()
    cfg.prepared_dir = prepared
    for k, v in overrides.items():
        setattr(cfg, k, v)
    pipe = PretrainingPipeline.from_config(cfg, global_batch_size=batch)
    t0 = time.perf_counter()
    pipe.locate(0)
    plan_s = time.perf_counter() - t0
    pipe.batch(0)  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    for step in range(1, steps + 1):
        pipe.batch(step)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    n = batch * steps
    name = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "nsp (default)"
    return {"what": f"pair+mask seq128 {name}", "wall_s": wall,
            "rate": f"{n / cpu:,.0f} seq/s per core ({n / wall:,.0f} wall)",
            "note": f"epoch plan {plan_s:.2f} s for {pipe.epoch_range(0)[1]:,} instances"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="", help="prepared dir (default: a fresh temp dir)")
    args = ap.parse_args()
    corpus = str(shared_data_path("corpus", "eltec-eng"))
    vocab = str(shared_data_path("vocab", "bert-base-uncased", "vocab.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or f"{tmp}/prepared"
        rows = [bench_prepare(corpus, vocab, out, args.workers)]
        rows.append(bench_pipeline(out, args.batch, args.steps))
        rows.append(bench_pipeline(out, args.batch, args.steps, whole_word_masking=True))
        rows.append(bench_pipeline(out, args.batch, args.steps, nsp=False))
    print(f"\n| {'benchmark':<44} | {'wall s':>7} | {'rate':<46} | note")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 48}|------")
    for r in rows:
        print(f"| {r['what']:<44} | {r['wall_s']:7.2f} | {r['rate']:<46} | {r['note']}")


if __name__ == "__main__":
    main()
