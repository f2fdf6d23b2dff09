"""Compile time of the pretraining train step, with and without scan over layers.

    .venv/bin/python bench/bench_compile.py [--size=large] [--batch=32] [--seq=128]
        [--variants=scan,unrolled] [--remat=none]

Builds the real step (training.jit_train_step + pretraining_objective,
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
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from common import load_average, markdown_table  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bert_jax import sharding, training  # noqa: E402
from bert_jax.bert_config import BertConfig  # noqa: E402
from bert_jax.heads import BertForPreTraining  # noqa: E402
from bert_jax.optim import build_optimizer  # noqa: E402
from bert_jax.pretrain import pretraining_objective  # noqa: E402

MASKED = 20
OPTIM = dict(name="adamw", lr=1e-4, warmup_steps=0, weight_decay=0.01, clip_norm=1.0)


def abstract_batch(batch: int, seq: int, masked: int = MASKED) -> dict[str, jax.ShapeDtypeStruct]:
    s = jax.ShapeDtypeStruct
    return {"input_ids": s((batch, seq), jnp.int32), "token_type_ids": s((batch, seq), jnp.int32),
            "attention_mask": s((batch, seq), jnp.int32),
            "masked_positions": s((batch, masked), jnp.int32),
            "masked_ids": s((batch, masked), jnp.int32),
            "masked_weights": s((batch, masked), jnp.float32),
            "nsp_labels": s((batch,), jnp.int32)}


def compile_step(cfg: BertConfig, batch: int, seq: int, masked: int = MASKED) -> dict:
    optimizer, schedule = build_optimizer(ConfigDict(OPTIM), 10_000)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])

    def model_fn(key):
        return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = training.state_spec(model_fn, optimizer, mesh)
        step = training.jit_train_step(spec, mesh, pretraining_objective(True, True),
                                       optimizer, schedule)
        w0, c0 = time.perf_counter(), time.process_time()
        lowered = step.lower(spec.abstract, abstract_batch(batch, seq, masked),
                             jax.random.key(0))
        w1, c1 = time.perf_counter(), time.process_time()
        compiled = lowered.compile()
        w2, c2 = time.perf_counter(), time.process_time()
    mem = compiled.memory_analysis()
    gib = 2.0 ** 30
    peak = None
    if mem is not None:
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / gib
    return {"lower_s": w1 - w0, "compile_s": w2 - w1, "compile_cpu_s": c2 - c1,
            "lower_cpu_s": c1 - c0, "hlo_kchars": len(lowered.as_text()) / 1e3,
            "step_gib": peak}


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
        cfg = BertConfig.named(args.size, scan_layers=(v == "scan"), remat_policy=args.remat)
        r = compile_step(cfg, args.batch, args.seq)
        rows.append([f"bert_{args.size}", v, args.remat, f"{r['lower_s']:.1f}",
                     f"{r['compile_s']:.1f}", f"{r['compile_cpu_s']:.1f}",
                     f"{r['lower_s'] + r['compile_s']:.1f}",
                     f"{r['lower_cpu_s'] + r['compile_cpu_s']:.1f}",
                     "n/a" if r["step_gib"] is None else f"{r['step_gib']:.2f}",
                     f"{r['hlo_kchars']:.0f}"])
    print()
    print(markdown_table(["model", "layers", "remat", "lower s", "compile s", "compile CPU s",
                          "total s", "total CPU s", "step memory GiB", "StableHLO kchars"], rows))
    print(f"\ntrain step at batch {args.batch}, seq {args.seq}, fp32, gathered MLM head "
          f"({MASKED}), AdamW; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before: {load_before}, after: {load_average()}")


if __name__ == "__main__":
    main()
