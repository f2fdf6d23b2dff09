"""Compile time of the pretraining train step, with and without scan over layers.

    .venv/bin/python bench/bench_compile.py [--size=large] [--batch=32] [--seq=128]
        [--variants=scan,unrolled] [--remat=none]

Builds the real step through the abstract path of `bert_jax.aot` (pretraining.build:
gathered MLM head, AdamW with clipping) and times `lower()` (tracing to
StableHLO) and `compile()` (XLA) on abstract inputs: nothing is initialized
or run, so BERT-large costs no memory beyond the compiler's. CPU seconds are
reported beside wall seconds because other load on a shared machine stretches
the wall clock. The compiled executable's memory analysis gives the step's
device memory (arguments + outputs + temporaries, donated state aliased).
Goal (issue 9): BERT-large with scan compiles in <= 60 s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from common import load_average, markdown_table  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bert_jax import aot  # noqa: E402
from bert_jax.model import sharding  # noqa: E402

MASKED = 20


def pretrain_config(size: str, batch: int, seq: int, masked: int = MASKED, scan: bool = True,
                    remat: str = "none", dtype: str = "float32"):
    """configs/pretrain/bert.py at this shape: the step `bert_jax.pretrain` runs
    (gathered MLM head, AdamW with clipping)."""
    from configs.pretrain import bert
    c = bert.get_config(f"size={size}")
    c.model.scan_layers, c.model.remat_policy, c.model.dtype = scan, remat, dtype
    c.data.max_seq_length, c.data.max_predictions_per_seq = seq, masked
    c.global_batch_size = batch
    c.mesh.shape = (1, 1, 1)
    return c


def compile_step(size: str, batch: int, seq: int, masked: int = MASKED, scan: bool = True,
                 remat: str = "none", dtype: str = "float32") -> dict:
    """The abstract compile path of `bert_jax.aot`, on this machine's first device."""
    config = pretrain_config(size, batch, seq, masked, scan, remat, dtype)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    r = aot.compile_program(aot._program(config, mesh, 1, size), mesh)
    peak = None if r["oom"] else r["bytes_per_device"]["peak"] / 2.0 ** 30
    return {"lower_s": r["lower_seconds"], "compile_s": r.get("xla_compile_seconds", 0.0),
            "compile_cpu_s": r.get("xla_compile_cpu_seconds", 0.0),
            "lower_cpu_s": r["lower_cpu_seconds"], "step_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="large")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--variants", default="scan,unrolled")
    ap.add_argument("--remat", default="none", help="remat_policy of every variant")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in ("scan", "unrolled"):
            ap.error(f"--variants: unknown {v!r}; expected scan and/or unrolled")
    load_before = load_average()
    rows = []
    for v in tqdm(variants, desc="compiling", leave=False):
        r = compile_step(args.size, args.batch, args.seq, scan=(v == "scan"), remat=args.remat)
        rows.append([f"bert_{args.size}", v, args.remat, f"{r['lower_s']:.1f}",
                     f"{r['compile_s']:.1f}", f"{r['compile_cpu_s']:.1f}",
                     f"{r['lower_s'] + r['compile_s']:.1f}",
                     f"{r['lower_cpu_s'] + r['compile_cpu_s']:.1f}",
                     "n/a" if r["step_gib"] is None else f"{r['step_gib']:.2f}"])
    print()
    print(markdown_table(["model", "layers", "remat", "lower s", "compile s", "compile CPU s",
                          "total s", "total CPU s", "step memory GiB"], rows))
    print(f"\ntrain step at batch {args.batch}, seq {args.seq}, fp32, gathered MLM head "
          f"({MASKED}), AdamW; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before: {load_before}, after: {load_average()}")


if __name__ == "__main__":
    main()
