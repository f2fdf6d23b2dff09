"""Padding-aware batching on SST-2: tokens processed and dev accuracy, bucketed vs
padded to 128, from the real all-MiniLM-L6-v2 weights.

    .venv/bin/python bench/bench_sst2_bucketing.py [--train=4000] [--seeds=0,1,2] [--epochs=1]

Both arms train on the same fixed random subset of SST-2 train (glue's
subsample_indices) with the same hyperparameters and seeds; they differ only in
`length_buckets`: (32, 64, 96, 128) vs (128,). Prints tokens processed per
epoch, the ratio, dev accuracy (mean +- std over seeds) and wall times.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=4000, help="SST-2 train subset size")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_sst2_bucketing"))
    args = ap.parse_args()

    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from common import minilm_dir

    from bert_jax.finetune import trainer
    from bert_jax.shared_data import shared_data_path
    from configs.finetune import glue as glue_config

    work = pathlib.Path(args.workdir)
    arms = {"bucketed (32,64,96,128)": (32, 64, 96, 128), "padded to 128": (128,)}
    results: dict[str, list[dict]] = {k: [] for k in arms}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, buckets in arms.items():
            c = glue_config.get_config("task=sst2")
            c.data_dir = str(shared_data_path("glue"))
            c.init_checkpoint = str(minilm_dir())
            c.length_buckets = buckets
            c.max_train_examples = args.train
            c.num_epochs = args.epochs
            c.learning_rate = args.lr
            c.seed = seed
            t0 = time.perf_counter()
            summary = trainer.finetune(c, work / f"{'bucketed' if len(buckets) > 1 else 'padded'}"
                                          f"_seed{seed}")
            results[name].append({
                "seed": seed, "wall_s": time.perf_counter() - t0,
                "train_s": summary["train_time_sec"],
                "tokens": summary["train_tokens_processed"] / args.epochs,
                "accuracy": summary["final"]["dev"]["accuracy"]})
            print(json.dumps({name: results[name][-1]}), flush=True)

    rows = []
    for name, runs in results.items():
        acc = [r["accuracy"] * 100 for r in runs]
        rows.append((name, statistics.fmean(r["tokens"] for r in runs),
                     statistics.fmean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     len(acc), statistics.fmean(r["train_s"] for r in runs)))
    print(f"\nSST-2, {args.train} training examples, {args.epochs} epoch(s), lr {args.lr}")
    print("| batching | tokens / epoch | dev acc (mean +- std, n) | train time / run |")
    print("| --- | --- | --- | --- |")
    for name, tok, m, sd, n, t in rows:
        print(f"| {name} | {tok:,.0f} | {m:.2f} +- {sd:.2f} (n={n}) | {t:.0f} s |")
    print(f"tokens ratio padded/bucketed: {rows[1][1] / rows[0][1]:.2f}x; "
          f"accuracy difference: {rows[0][2] - rows[1][2]:+.2f} pt; "
          f"wall-time ratio: {rows[1][5] / rows[0][5]:.2f}x")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
