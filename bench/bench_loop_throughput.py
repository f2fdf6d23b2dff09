"""Fine-tuning steps/s of two checkouts, alternated in one session: the
pre-issue-15 trainer (its own loop: `jax.device_get` of the metrics after every
step) against this one (bert_jax/train/loop.py: metrics read one step late).

    git archive e44d01d | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    .venv/bin/python bench/bench_loop_throughput.py --old=/tmp/old [--rounds=3] [--train=2000]

Same data and settings on both sides, as bench/bench_batching.py's packed
SST-2 arm: all-MiniLM-L6-v2, a fixed random subset of --train SST-2 training
examples, 64-token rows of up to 8 whole sentences, 7 rows a step, one epoch,
lr 1e-4, seed 0, a metrics window every 10 steps. Each run is a fresh
subprocess (its own compile) with PYTHONPATH at its checkout; the old and new
runs alternate (old, new, old, new, ...) so that load on the shared CPU hits
both. Reported per side: the median over runs of the median steps/s of the
metric windows after the first (the first holds the compile), and of the
training loop's wall time (compile included, evaluation not).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

# Runs inside the checkout under test; sets the fields by whichever names it has.
RUN = r"""
import json, pathlib, statistics, sys
from absl import logging
logging.set_verbosity(logging.WARNING)
sys.path.insert(0, {bench!r})
from common import minilm_dir
from bert_jax.finetune import trainer
from bert_jax.storage.shared_data import shared_data_path
from configs.finetune import glue
c = glue.get_config("task=sst2")
c.data_dir = str(shared_data_path("glue"))
c.max_train_examples = {train}
c.init_checkpoint = str(minilm_dir())
c.num_epochs = 1
c.seed = 0
c.log_every = 10
c.packing, c.max_seq_length, c.length_buckets = 8, 64, (64,)
if "optim" in c:
    c.optim.lr, c.global_batch_size = 1e-4, 7
if "packed_rows_per_step" in c:   # since issue 30 global_batch_size counts examples
    c.packed_rows_per_step = 7
else:
    c.learning_rate, c.batch_size = 1e-4, 7
work = pathlib.Path({work!r})
summary = trainer.finetune(c, work)
rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
rates = [r["steps_per_sec"] for r in rows if "loss" in r][1:]
print("RESULT " + json.dumps({{"steps": summary["steps"], "steps_per_sec": statistics.median(rates),
                              "windows": len(rates), "loop_s": summary["train_loop_sec"],
                              "acc": summary["final"]["dev"]["accuracy"]}}))
"""


def run_once(checkout: pathlib.Path, work: pathlib.Path, train: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    code = RUN.format(bench=str(REPO / "bench"), train=train, work=str(work))
    r = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env,
                       capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        sys.exit(f"{checkout}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return json.loads(line[0].removeprefix("RESULT "))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="a checkout of the old trainer (e44d01d)")
    ap.add_argument("--new", default=str(REPO))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=2000)
    args = ap.parse_args()
    sides = {"old": pathlib.Path(args.old), "new": pathlib.Path(args.new)}
    results: dict[str, list[dict]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory(prefix="loop_tput_") as tmp:
        for i in range(args.rounds):
            for name, checkout in sides.items():
                r = run_once(checkout, pathlib.Path(tmp) / f"{name}{i}", args.train)
                results[name].append(r)
                print(f"round {i + 1} {name}: {json.dumps(r)}  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
    for name, rs in results.items():
        print(f"{name}: median steps/s {statistics.median(r['steps_per_sec'] for r in rs):.3f}"
              f" over {len(rs)} runs, median loop {statistics.median(r['loop_s'] for r in rs):.1f}"
              f" s, {rs[0]['steps']} steps, dev acc {[round(r['acc'], 4) for r in rs]}")
    old, new = (statistics.median(r["steps_per_sec"] for r in results[k]) for k in ("old", "new"))
    print(f"new / old steps/s: {new / old:.3f}")


if __name__ == "__main__":
    main()
