"""Padding-aware batching for fine-tuning: padded vs length-bucketed vs packed.

    .venv/bin/python bench/bench_batching.py --task=sst2 [--train=2000] [--seeds=0,1,2] [--lr=1e-4]
    .venv/bin/python bench/bench_batching.py --task=conll [--train=2000] [--seeds=0,1] [--lr=1e-4]

From the real all-MiniLM-L6-v2 weights, every arm trains one epoch (--epochs)
on the same training subset with the same hyperparameters and seeds, and is
scored on the full dev set:

  sst2   SST-2: a fixed random subset of train (glue.subsample_indices);
         dev accuracy (872 sentences).
  conll  CoNLL-2003: the first --train sentences of eng.train; conlleval
         entity F1 on all of eng.testa (3,250 sentences).

  padded    every example padded to 128, batch 32
  bucketed  length_buckets (32, 64, 96, 128) for SST-2, (32, 64, 128) for CoNLL
            (the task configs' defaults), batch 32
  packed    rows holding up to k whole examples (config.packing; segment-aware
            attention, positions restarting per example): 64-token rows and
            k = 8 for SST-2 (no sentence is longer), 128-token rows and k = 8
            for CoNLL (its windows are up to 128 pieces); packed_rows_per_step
            chosen so a step sees ~32 examples like the other arms (rounded
            32 / mean examples per row)

Prints, per arm: positions processed per epoch (what the model computes),
optimizer steps, the dev metric (mean +- std over seeds), training time per
run (the training loop with its compile, without the dev evaluation), and the
ratios to padded. One process trains the arms in turn, seed by seed.
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

PACK_K = 8
TASKS = {
    # name: (config module, pack row length, bucketed arm's buckets, metric, metric label)
    "sst2": ("glue", 64, (32, 64, 96, 128), "accuracy", "dev acc"),
    "conll": ("conll2003", 128, (32, 64, 128), "f1", "testa F1"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2", choices=sorted(TASKS))
    ap.add_argument("--train", type=int, default=2000,
                    help="training examples (SST-2) / sentences (CoNLL)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--arms", default="padded,bucketed,packed")
    ap.add_argument("--pack-batch", type=int, default=0,
                    help="rows per packed batch (default: ~32 examples per step)")
    ap.add_argument("--workdir", default="", help="default runs/bench_batching/<task>")
    ap.add_argument("--merge", default="",
                    help="comma-separated workdirs of earlier runs (e.g. one seed per core): "
                         "train nothing, print their results.json together")
    args = ap.parse_args()
    module, pack_len, buckets, metric, metric_label = TASKS[args.task]

    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from common import markdown_table, minilm_dir

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import batching, conll, glue, trainer
    from bert_jax.storage.shared_data import shared_data_path

    def config(seed: int):
        if args.task == "sst2":
            from configs.finetune import glue as task_config
            c = task_config.get_config("task=sst2")
            c.data_dir = str(shared_data_path("glue"))
            c.max_train_examples = args.train
        else:
            from configs.finetune import conll2003 as task_config
            c = task_config.get_config()
            c.train_file = str(shared_data_path("conll2003", "eng.train"))
            c.dev_file = str(shared_data_path("conll2003", "eng.testa"))
            c.max_train_sentences = args.train
        c.init_checkpoint = str(minilm_dir())
        c.num_epochs = args.epochs
        c.optim.lr = args.lr
        c.global_batch_size = 32
        c.seed = seed
        return c

    # Rows per packed batch: ~32 examples per step, as the other arms.
    tok = load_tokenizer(str(minilm_dir() / "vocab.txt"))
    if args.task == "sst2":
        features = glue.build_task(config(0), tok).features("train")
    else:
        features = conll.build_task(config(0), tok).features("train").examples
    lengths = [len(f["input_ids"]) for f in features]
    if max(lengths) > pack_len:
        raise SystemExit(f"an example has {max(lengths)} tokens > {pack_len}: the packed arm "
                         "would truncate it and train on other text than the others")
    rows = batching.num_packed_rows(lengths, pack_len, PACK_K)
    pack_batch = args.pack_batch or max(1, round(32 * rows / len(lengths)))
    arms = {
        # packing=0 spelled out: the configs pack by default since issue 30.
        "padded": dict(length_buckets=(128,), packing=0),
        "bucketed": dict(length_buckets=buckets, packing=0),
        "packed": dict(length_buckets=(pack_len,), max_seq_length=pack_len, packing=PACK_K,
                       packed_rows_per_step=pack_batch),
    }
    arms = {k: arms[k] for k in args.arms.split(",")}
    work = pathlib.Path(args.workdir or REPO / "runs" / "bench_batching" / args.task)
    results: dict[str, list[dict]] = {k: [] for k in arms}
    seeds = [] if args.merge else [int(s) for s in args.seeds.split(",")]
    for d in filter(None, args.merge.split(",")):
        for name, runs in json.loads((pathlib.Path(d) / "results.json").read_text()).items():
            results.setdefault(name, []).extend(runs)
    for seed in seeds:
        for name, overrides in arms.items():
            c = config(seed)
            for k, v in overrides.items():
                c[k] = v
            t0 = time.perf_counter()
            summary = trainer.finetune(c, work / f"{name}_seed{seed}")
            results[name].append({
                "seed": seed, "wall_s": time.perf_counter() - t0,
                "train_s": summary["train_loop_sec"], "run_s": summary["train_time_sec"],
                "steps": summary["steps"],
                "tokens": summary["train_tokens_processed"] / args.epochs,
                metric: summary["final"]["dev"][metric]})
            print(json.dumps({name: results[name][-1]}), flush=True)
    if seeds:
        work.mkdir(parents=True, exist_ok=True)
        (work / "results.json").write_text(json.dumps(results, indent=2))

    results = {k: v for k, v in results.items() if v}
    base = results.get("padded")
    # GLUE reports accuracy as a fraction, conlleval F1 in percent.
    scale = 100.0 if metric == "accuracy" else 1.0
    table = []
    for name, runs in results.items():
        score = [r[metric] * scale for r in runs]
        tok_n = statistics.fmean(r["tokens"] for r in runs)
        t = statistics.fmean(r["train_s"] for r in runs)
        ratio = (f"{statistics.fmean(r['tokens'] for r in base) / tok_n:.2f}x / "
                 f"{statistics.fmean(r['train_s'] for r in base) / t:.2f}x" if base else "-")
        label = (f"packed ({pack_len}-token rows, <= {PACK_K} per row, {pack_batch} rows/batch)"
                 if name == "packed" else name)
        table.append([label, f"{tok_n:,.0f}", runs[0]["steps"],
                      f"{statistics.fmean(score):.2f} +- "
                      f"{statistics.stdev(score) if len(score) > 1 else 0.0:.2f} (n={len(score)})",
                      f"{t:.0f} s", ratio])
    unit = "examples" if args.task == "sst2" else "sentences"
    print(f"\n{args.task}: {args.train} training {unit} ({len(lengths):,} examples, "
          f"{sum(lengths):,} real tokens), {args.epochs} epoch(s), lr {args.lr}, full dev set")
    print(markdown_table(["batching", "positions / epoch", "steps",
                          f"{metric_label} (mean +- std)", "train loop / run",
                          "fewer positions / faster vs padded"], table))


if __name__ == "__main__":
    main()
