"""Pretraining throughput and MFU on this machine's accelerators (GPU or TPU).

    .venv/bin/python bench/bench_accelerator.py [--sizes=base,large] [--seqs=128,512]
        [--impls=cudnn,reference] [--batches=auto] [--steps=20] [--budget-s=420]

For each (size, seq, attention impl) the real pretraining step (`train.pretrain_job.build`
from configs/pretrain/bert.py: bf16 compute, fp32 params + AdamW, gathered MLM
head with Google's max_predictions_per_seq, scan over layers, mesh (-1, 1, 1)
over every local device) runs on a synthetic batch of random tokens. Attention
dropout is 0 for every implementation so reference and cudnn/splash run the
same math (cudnn and splash have none; MosaicBERT and NVIDIA's fused-attention
BERT train with 0); hidden dropout stays 0.1. Several per-device batches are
tried (largest first, skipping any that run out of memory); the table gives the
fastest in sequences/s with its step time, tokens/s and MFU (flops.py's count
against the chip's bf16 peak in flops.PEAK_FLOPS). The whole run stops taking
new rows once --budget-s is spent (default fits bench/accelerator.sh's 8 min).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import load_average, markdown_table  # noqa: E402

from bert_jax.data.pipeline import batch_spec  # noqa: E402
from bert_jax.model import (
    flops,  # noqa: E402
    sharding,  # noqa: E402
)
from bert_jax.train.step import dropout_key, global_batch, init_state  # noqa: E402

AUTO_BATCHES = {128: (256, 128, 64), 512: (64, 32, 16)}  # per device


def config_for(size: str, seq: int, impl: str, per_device: int):
    from configs.pretrain import bert
    c = bert.get_config(f"size={size},phase={2 if seq == 512 else 1}")
    c.model.attention_impl = impl
    c.model.attention_probs_dropout_prob = 0.0
    c.model.scan_layers = True
    c.rng_impl = "rbg"
    c.data.max_seq_length = seq
    c.global_batch_size = per_device * jax.device_count()
    return c


def random_batch(config, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = batch_spec(config.data, config.global_batch_size)
    out = {}
    for k, (shape, dtype) in spec.items():
        if k == "attention_mask":
            out[k] = np.ones(shape, dtype)
        elif k == "masked_weights":
            out[k] = np.ones(shape, dtype)
        elif k == "masked_positions":
            out[k] = rng.integers(1, config.data.max_seq_length, shape).astype(dtype)
        elif k in ("token_type_ids", "nsp_labels"):
            out[k] = rng.integers(0, 2, shape).astype(dtype)
        else:
            out[k] = rng.integers(1000, vocab, shape).astype(dtype)
    return out


def measure(config, steps: int) -> dict:
    from bert_jax.train import pretrain_job
    mesh = sharding.make_mesh(config.mesh.shape)
    vocab = 30522
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        built = pretrain_job.build(config, vocab, mesh)
        state = init_state(built.spec, built.model_fn, built.optimizer, 0)
        batch = global_batch(random_batch(config, vocab, np.random.default_rng(0)),
                                      mesh)
        rng = dropout_key(config)
        t0 = time.perf_counter()
        state, m = built.step_fn(state, batch, rng)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            state, m = built.step_fn(state, batch, rng)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = built.step_fn(state, batch, rng)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
    G, T = config.global_batch_size, config.data.max_seq_length
    seq_flops = flops.train_flops_per_sequence(built.cfg, T, config.data.max_predictions_per_seq)
    peak = flops.device_peak_flops(measure_cpu=False)
    return {"step_s": dt, "seq_s": G / dt, "tok_s": G * T / dt, "compile_s": compile_s,
            "mfu": seq_flops * G / dt / (peak * jax.device_count()) if peak else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="base,large")
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--impls", default="cudnn,reference",
                    help="attention implementations (splash on TPU)")
    ap.add_argument("--batches", default="auto", help="per-device batches to try, or auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=420.0)
    args = ap.parse_args()
    t_start = time.perf_counter()
    rows, skipped = [], []
    for size in args.sizes.split(","):
        for seq in (int(s) for s in args.seqs.split(",")):
            batches = (AUTO_BATCHES.get(seq, (32, 16, 8)) if args.batches == "auto"
                       else tuple(int(b) for b in args.batches.split(",")))
            for impl in args.impls.split(","):
                best = None
                for b in batches:
                    if time.perf_counter() - t_start > args.budget_s:
                        skipped.append(f"bert_{size} seq {seq} {impl} batch {b}")
                        continue
                    try:
                        r = measure(config_for(size, seq, impl, b), args.steps)
                    except Exception as e:  # out of memory: try the next, smaller batch
                        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(
                                e).lower():
                            raise
                        continue
                    r["batch"] = b
                    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
                    print(f"bert_{size} seq {seq} {impl} batch {b}/device: "
                          f"{r['seq_s']:.0f} seq/s, MFU {mfu}", flush=True)
                    if best is None or r["seq_s"] > best["seq_s"]:
                        best = r
                if best:
                    rows.append([f"bert_{size}", seq, impl, best["batch"],
                                 f"{best['step_s'] * 1e3:.1f}", f"{best['seq_s']:.0f}",
                                 f"{best['tok_s']:.0f}",
                                 "n/a" if best["mfu"] is None else f"{best['mfu']:.1%}",
                                 f"{best['compile_s']:.0f}"])
    d = jax.devices()[0]
    print()
    print(markdown_table(["model", "seq", "attention", "batch/device", "step ms", "seq/s",
                          "tokens/s", "MFU", "first step s"], rows))
    print(f"\n{jax.device_count()} x {d.device_kind}; bf16 compute, fp32 params + AdamW, "
          f"scan, rbg dropout RNG, attention dropout 0; jax {jax.__version__}; "
          f"load average {load_average()}; {time.perf_counter() - t_start:.0f} s")
    if skipped:
        print(f"not run (budget {args.budget_s:.0f} s spent): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
