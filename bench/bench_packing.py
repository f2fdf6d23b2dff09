r"""Packing vs padding for pretraining: tokens processed per epoch and wall time.

    .venv/bin/python bench/bench_packing.py [--packing=2,3,4] [--short-seq-prob=0.1]
        [--size=mini] [--batch=32] [--rounds=5]

Data: the training novels of bench_pretrain_peer.py (ELTeC-eng minus the held-out
ones, its 8192-token vocabulary and prepared cache under runs/pretrain_peer,
built there on first use), paired into NSP instances with Google's semantics at
seq 128 and --short-seq-prob.

1. Per epoch (epoch 0's plan; no tokens are read for the counts): instances,
   rows after packing (best-fit decreasing, up to k instances per row),
   positions the model processes (rows x 128), real tokens, fill.
2. Wall time: the same jitted train step (BERT --size, fp32, batch --batch,
   gathered MLM head, dropout 0.1) on padded batches and on packed batches,
   timed alternately (median of --rounds); an epoch costs rows / batch steps,
   so epoch time = steps x median step time. The packed step additionally
   builds the block-diagonal attention mask and pools one [CLS] per instance.

tests/test_packing.py checks that a packed row computes the same per-instance
MLM/NSP outputs and loss sums as the padded instances.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_pretrain_peer import build_data  # noqa: E402
from common import alternate, load_average, markdown_table, median  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from bert_jax.data import packing  # noqa: E402
from bert_jax.data.pipeline import PretrainingPipeline, default_data_config  # noqa: E402
from bert_jax.model import sharding  # noqa: E402
from bert_jax.model.config import BertConfig  # noqa: E402
from bert_jax.model.heads import build_model  # noqa: E402
from bert_jax.train.optim import build_optimizer  # noqa: E402
from bert_jax.train.pretrain_job import pretraining_objective  # noqa: E402
from bert_jax.train.step import global_batch, init_state, jit_train_step, state_spec  # noqa: E402

T = 128


def open_pipe(prepared: str, k: int, batch: int, short_seq_prob: float) -> PretrainingPipeline:
    cfg = default_data_config()
    cfg.prepared_dir = prepared
    cfg.max_seq_length = T
    cfg.short_seq_prob = short_seq_prob
    cfg.packing = k
    return PretrainingPipeline.from_config(cfg, global_batch_size=batch)


def epoch_counts(pipe: PretrainingPipeline, ks: list[int]) -> tuple[list[list], dict]:
    plan = pipe._plan(0)
    lengths = packing.instance_lengths(pipe.corpus, plan, pipe.pairing)
    n, real = len(lengths), int(lengths.sum())
    rows = [["padded (1 per row)", f"{n:,}", f"{n * T:,}", f"{real:,}",
             f"{100 * real / (n * T):.1f}%", "1.000"]]
    n_rows = {1: n}
    for k in ks:
        r = len(packing.best_fit_decreasing(lengths, T, k))
        n_rows[k] = r
        rows.append([f"packed, <= {k} per row", f"{r:,}", f"{r * T:,}", f"{real:,}",
                     f"{100 * real / (r * T):.1f}%", f"{r / n:.3f}"])
    short = float(np.mean(lengths < T))
    return rows, {"instances": n, "rows": n_rows, "real_tokens": real,
                  "short_fraction": short}


def step_times(prepared: str, k: int, size: str, batch: int, rounds: int,
               short_seq_prob: float, vocab_size: int) -> dict[str, float]:
    cfg = BertConfig.named(size, vocab_size=vocab_size, max_position_embeddings=T)
    optimizer, schedule = build_optimizer(ConfigDict({"name": "adamw", "lr": 1e-4,
                                                      "warmup_steps": 10}), 1000)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    objective = pretraining_objective(nsp=True, gathered=True)
    pipes = {"padded": open_pipe(prepared, 0, batch, short_seq_prob),
             f"packed k={k}": open_pipe(prepared, k, batch, short_seq_prob)}
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        def model_fn(key):
            return build_model(cfg, "pretraining", seed=key)
        spec = state_spec(model_fn, optimizer, mesh)
        fns = {}
        for name, pipe in pipes.items():
            batches = [global_batch(pipe.batch(s), mesh) for s in range(4)]
            step = jit_train_step(spec, mesh, objective, optimizer, schedule)
            box = {"state": init_state(spec, model_fn, optimizer, 0), "i": 0}

            def run(box=box, batches=batches, step=step):
                box["state"], m = step(box["state"], batches[box["i"] % 4],
                                       jax.random.key(1))
                box["i"] += 1
                jax.block_until_ready(m)
            fns[name] = run
        times = alternate(fns, rounds, min_block_s=2.0, desc="step timing")
    return {name: median(ts) for name, ts in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packing", default="2,3,4", help="max instances per row to count")
    ap.add_argument("--time-packing", type=int, default=3, help="k whose step is timed")
    ap.add_argument("--short-seq-prob", type=float, default=0.1)
    ap.add_argument("--size", default="mini")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default="runs/pretrain_peer")
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args(argv)
    print(f"load average at start: {load_average()}", flush=True)
    data = build_data(pathlib.Path(args.workdir), args.vocab_size, workers=1)
    ks = [int(k) for k in args.packing.split(",")]
    pipe = open_pipe(data["train"], 0, args.batch, args.short_seq_prob)
    rows, counts = epoch_counts(pipe, ks)
    print(f"\nPretraining corpus, epoch 0, seq {T}, short_seq_prob {args.short_seq_prob} "
          f"({100 * counts['short_fraction']:.1f}% of instances shorter than {T}):\n")
    print(markdown_table(["layout", "rows / epoch", "positions processed", "real tokens",
                          "fill", "rows vs padded"], rows))
    k = args.time_packing
    t = step_times(data["train"], k, args.size, args.batch, args.rounds, args.short_seq_prob,
                   pipe.tokenizer.vocab_size)
    steps = {"padded": counts["instances"] / args.batch,
             f"packed k={k}": counts["rows"][k] / args.batch}
    table = [[name, f"{t[name]:.3f}", f"{steps[name]:,.0f}", f"{steps[name] * t[name]:,.0f}"]
             for name in t]
    pad, pk = (steps[n] * t[n] for n in t)
    print(f"\nWall time, bert_{args.size} train step, batch {args.batch}, one epoch "
          f"(load average {load_average()}):\n")
    print(markdown_table(["layout", "s / step (median)", "steps / epoch", "epoch s"], table))
    print(f"\npacked / padded epoch wall time: {pk / pad:.3f} "
          f"(step time ratio {t[f'packed k={k}'] / t['padded']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
