"""Padding-aware batching on SST-2: padded vs length-bucketed vs packed.

    .venv/bin/python bench/bench_sst2_batching.py [--train=2000] [--seeds=0,1,2] [--lr=1e-4]

From the real all-MiniLM-L6-v2 weights, every arm trains one epoch (--epochs)
on the same fixed random subset of SST-2 train (glue.subsample_indices) with
the same hyperparameters and seeds, and is scored on the full dev set:

  padded    every example padded to 128, batch 32
  bucketed  length_buckets (32, 64, 96, 128), batch 32
  packed    rows of 64 tokens holding up to 8 whole examples (config.packing;
            segment-aware attention, one [CLS] per example), batch_size in
            rows chosen so a step sees ~32 examples like the other arms
            (rounded 32 / mean examples per row)

Prints, per arm: positions processed per epoch (what the model computes),
optimizer steps, dev accuracy (mean +- std over seeds), train time per run,
and the ratios to padded. One process trains the arms in turn, seed by seed.
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

PACK_LEN, PACK_K = 64, 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000, help="SST-2 train subset size")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--arms", default="padded,bucketed,packed")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_sst2_batching"))
    args = ap.parse_args()

    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from common import markdown_table, minilm_dir

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import batching, glue, trainer
    from bert_jax.shared_data import shared_data_path
    from configs.finetune import glue as glue_config

    def config(seed: int):
        c = glue_config.get_config("task=sst2")
        c.data_dir = str(shared_data_path("glue"))
        c.init_checkpoint = str(minilm_dir())
        c.max_train_examples = args.train
        c.num_epochs = args.epochs
        c.learning_rate = args.lr
        c.seed = seed
        return c

    # Rows per packed batch: ~32 examples per step, as the other arms.
    probe = config(0)
    task = glue.build_task(probe, load_tokenizer(str(minilm_dir() / "vocab.txt")))
    lengths = [len(f["input_ids"]) for f in task.features("train")]
    if max(lengths) > PACK_LEN:
        raise SystemExit(f"an example has {max(lengths)} tokens > {PACK_LEN}: the packed arm "
                         "would truncate it and train on other text than the others")
    rows = batching.num_packed_rows(lengths, PACK_LEN, PACK_K)
    pack_batch = max(1, round(32 * rows / len(lengths)))
    arms = {
        "padded": dict(length_buckets=(128,)),
        "bucketed": dict(length_buckets=(32, 64, 96, 128)),
        "packed": dict(length_buckets=(PACK_LEN,), max_seq_length=PACK_LEN, packing=PACK_K,
                       batch_size=pack_batch),
    }
    arms = {k: arms[k] for k in args.arms.split(",")}
    work = pathlib.Path(args.workdir)
    results: dict[str, list[dict]] = {k: [] for k in arms}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, overrides in arms.items():
            c = config(seed)
            for k, v in overrides.items():
                c[k] = v
            t0 = time.perf_counter()
            summary = trainer.finetune(c, work / f"{name}_seed{seed}")
            results[name].append({
                "seed": seed, "wall_s": time.perf_counter() - t0,
                "train_s": summary["train_time_sec"], "steps": summary["steps"],
                "tokens": summary["train_tokens_processed"] / args.epochs,
                "accuracy": summary["final"]["dev"]["accuracy"]})
            print(json.dumps({name: results[name][-1]}), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))

    base = results.get("padded")
    table = []
    for name, runs in results.items():
        acc = [r["accuracy"] * 100 for r in runs]
        tok = statistics.fmean(r["tokens"] for r in runs)
        t = statistics.fmean(r["train_s"] for r in runs)
        ratio = (f"{statistics.fmean(r['tokens'] for r in base) / tok:.2f}x / "
                 f"{statistics.fmean(r['train_s'] for r in base) / t:.2f}x" if base else "-")
        label = (f"packed ({PACK_LEN}-token rows, <= {PACK_K} per row, {pack_batch} rows/batch)"
                 if name == "packed" else name)
        table.append([label, f"{tok:,.0f}", runs[0]["steps"],
                      f"{statistics.fmean(acc):.2f} +- "
                      f"{statistics.stdev(acc) if len(acc) > 1 else 0.0:.2f} (n={len(acc)})",
                      f"{t:.0f} s", ratio])
    print(f"\nSST-2, {args.train} training examples ({sum(lengths):,} real tokens), "
          f"{args.epochs} epoch(s), lr {args.lr}, full dev set")
    print(markdown_table(["batching", "positions / epoch", "steps", "dev acc (mean +- std)",
                          "train time / run", "fewer positions / faster vs padded"], table))


if __name__ == "__main__":
    main()
