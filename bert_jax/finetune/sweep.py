"""Learning-rate x seed sweeps, reported as best and mean per metric (the way
the HF Flax GLUE table reports its runs)."""

from __future__ import annotations

import math
import statistics

from bert_jax.finetune import trainer
from bert_jax.storage import paths


def _final_metrics(summary: dict) -> dict[str, float]:
    """The metrics of the model the run exported (its best or last evaluation)."""
    out = {}
    for split, res in summary.get("model", summary.get("final", {})).items():
        if isinstance(res, dict):
            for k, v in res.items():
                # NaN (undefined, e.g. Pearson of constant predictions) is left
                # out, so sweep_results.json stays strict JSON.
                if isinstance(v, (int, float)) and math.isfinite(v):
                    out[f"{split}/{k}"] = float(v)
    return out


def aggregate(runs: list[dict]) -> dict:
    """runs: [{'lr', 'seed', 'metrics': {name: value}}] -> per lr: mean/std/n per
    metric; overall best (single run) and best mean over seeds.

    A NaN metric (e.g. Pearson of a run that predicts a constant, as a too
    large learning rate can cause) counts as missing: `n` is the number of
    runs with a finite value, and a NaN never hides the best run."""
    def finite(ms: list[dict], name: str) -> list[float]:
        return [m[name] for m in ms if name in m and math.isfinite(m[name])]

    by_lr: dict[float, list[dict]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r["metrics"])
    names = sorted(set().union(*(r["metrics"] for r in runs))) if runs else []
    table = {}
    for lr, ms in by_lr.items():
        table[str(lr)] = {}
        for n in names:
            vals = finite(ms, n)
            if vals:
                table[str(lr)][n] = {"mean": statistics.fmean(vals),
                                     "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                     "n": len(vals)}
    all_metrics = [r["metrics"] for r in runs]
    best = {n: max(finite(all_metrics, n)) for n in names if finite(all_metrics, n)}
    best_mean = {n: max(v[n]["mean"] for v in table.values() if n in v) for n in best}
    return {"runs": runs, "by_lr": table, "best": best, "best_mean_over_seeds": best_mean}


def run_sweep(config, workdir) -> dict:
    """Every lr x seed run in turn into workdir/lr<lr>_seed<seed>/. A rerun
    skips the runs that finished and resumes the one that was stopped; a run
    stopped by a signal stops the sweep ({'preempted_at': its dir})."""
    runs = []
    for lr in config.sweep.lrs:
        for seed in config.sweep.seeds:
            c = config.copy_and_resolve_references()
            with c.unlocked():
                c.optim.lr = float(lr)
                c.seed = int(seed)
            run_dir = paths.join(workdir, f"lr{lr}_seed{seed}")
            summary = trainer.finetune(c, run_dir)
            if "preempted_at" in summary:
                return {"preempted_at": run_dir, "runs": runs}
            runs.append({"lr": float(lr), "seed": int(seed), "metrics": _final_metrics(summary)})
    return aggregate(runs)


def format_table(result: dict) -> str:
    lines = ["lr\tmetric\tmean\tstd\tn"]
    for lr, metrics in result["by_lr"].items():
        for name, v in metrics.items():
            lines.append(f"{lr}\t{name}\t{v['mean']:.4f}\t{v['std']:.4f}\t{v['n']}")
    lines.append("best single run: " + ", ".join(f"{k}={v:.4f}" for k, v in
                                                 result["best"].items()))
    return "\n".join(lines)
