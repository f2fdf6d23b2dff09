"""Train-step memory per config and the largest batch that fits a memory budget.

    .venv/bin/python bench/bench_memory.py [--sizes=base,large] [--seqs=128,512]
        [--remat=none,full] [--dtype=bfloat16] [--budget-gib=80]

For each (size, seq, remat policy) the real pretraining step (scan over layers,
gathered MLM head with Google's max_predictions_per_seq: 20 at seq 128, 80 at
512, AdamW, clipping) is compiled on abstract inputs, nothing allocated, and
the compiled executable's memory analysis gives the step's peak device memory
(parameters + optimizer state + batch + XLA temporaries, donated state
aliased). Memory grows linearly with the batch, so two compiles (batch 8 and
32) fix the line; the largest multiple of 8 predicted to fit --budget-gib
(default: the device's own limit where JAX reports one, e.g. an H100's 80 GB)
is then compiled to confirm it and refined from the measured points (a few
compiles; the result is exact to a multiple of 8 unless stated otherwise).

On CPU this is XLA:CPU's buffer assignment: the same program's needs, but
not a GPU's (other fusion and scheduling); run the same command on the GPU
for the GPU's figure.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from bench_compile import compile_step  # noqa: E402
from common import load_average, markdown_table  # noqa: E402
from tqdm import tqdm  # noqa: E402

GOOGLE_MASKED = {128: 20, 512: 80}


def step_gib(size: str, seq: int, remat: str, dtype: str, batch: int) -> float:
    gib = compile_step(size, batch, seq, GOOGLE_MASKED.get(seq, round(0.15 * seq)), scan=True,
                       remat=remat, dtype=dtype)["step_gib"]
    if gib is None:
        raise SystemExit(f"{jax.devices()[0].platform}: no memory analysis for compiled steps")
    return gib


def largest_batch(size, seq, remat, dtype, budget, m8, m32,
                  max_compiles: int = 5) -> tuple[int, float]:
    """Largest multiple of 8 whose step fits `budget`: predicted from the line
    through the two nearest measured points, confirmed by compiling, then
    bisected between the largest batch known to fit and the smallest known not
    to (at most `max_compiles` more compiles)."""
    known = {8: m8, 32: m32}
    fits = max((b for b, m in known.items() if m <= budget), default=0)
    fails = min((b for b, m in known.items() if m > budget), default=None)
    for _ in range(max_compiles):
        if fails is not None and fails - fits <= 8:
            break
        lo = max(b for b in known if b <= max(fits, 8))
        hi = min((b for b in known if b > lo), default=None) or max(known)
        if hi == lo:
            lo = min(known)
        per_row = (known[hi] - known[lo]) / (hi - lo)
        guess = int(lo + (budget - known[lo]) / per_row) // 8 * 8
        if fails is not None:
            guess = min(guess, fails - 8)
        guess = max(guess, fits + 8)
        if guess in known:
            break
        known[guess] = step_gib(size, seq, remat, dtype, guess)
        if known[guess] <= budget:
            fits = max(fits, guess)
        else:
            fails = guess if fails is None else min(fails, guess)
    return fits, known.get(fits, float("nan"))


def device_budget_gib() -> float | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return stats["bytes_limit"] / 2.0 ** 30
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="base,large")
    ap.add_argument("--seqs", default="128,512")
    ap.add_argument("--remat", default="none,full")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay fp32)")
    ap.add_argument("--budget-gib", type=float, default=None)
    args = ap.parse_args()
    budget = args.budget_gib or device_budget_gib()
    if budget is None:
        ap.error("--budget-gib: this device reports no memory limit; give one (e.g. 80)")
    combos = [(z, int(q), r) for z in args.sizes.split(",") for q in args.seqs.split(",")
              for r in args.remat.split(",")]
    rows = []
    for size, seq, remat in tqdm(combos, desc="compiling", leave=False):
        m8 = step_gib(size, seq, remat, args.dtype, 8)
        m32 = step_gib(size, seq, remat, args.dtype, 32)
        b, mb = largest_batch(size, seq, remat, args.dtype, budget, m8, m32)
        rows.append([f"bert_{size}", seq, remat, f"{m8:.2f}", f"{m32:.2f}",
                     f"{(m32 - m8) / 24 * 1024:.0f}", b or "< 8", f"{mb:.2f}"])
    print()
    print(markdown_table(["model", "seq", "remat", "GiB @ batch 8", "GiB @ batch 32",
                          "MiB per sequence", f"largest batch <= {budget:.0f} GiB",
                          "its GiB"], rows))
    print(f"\n{args.dtype} compute, fp32 params + AdamW state, scan over layers; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; "
          f"load average {load_average()}")


if __name__ == "__main__":
    main()
