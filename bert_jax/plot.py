"""Training curves from a workdir's metrics.jsonl, as one PNG.

    python -m bert_jax.plot WORKDIR [--out=WORKDIR/curves.png]

Four panels over the step: losses (train and held-out `eval_*`), accuracies
(train and held-out), throughput (sequences/s; windows that include
compilation are left out) and the learning rate. Works for pretraining
(MLM/NSP) and fine-tuning workdirs alike: every metric whose name ends in
`loss` or contains `accuracy` is drawn. The PNG is written to a temp file and
renamed into place (uploaded once for a gs:// workdir).
"""

from __future__ import annotations

import json
import math
import os

from absl import app, flags

from bert_jax.storage import outputs, paths

PANELS = ("loss", "accuracy", "throughput", "learning rate")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl. A cut last line (a run still writing, or
    killed mid-line) is skipped; any other bad line is an error naming it."""
    lines = paths.read_text(path).splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ValueError(f"{path}:{i + 1}: expected an object with an integer 'step'")
        out.append(rec)
    return out


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, finite numbers only ("nan" is logged as a string)."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            if key == "sequences_per_sec" and r.get("includes_compile"):
                continue
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def panel_keys(records: list[dict]) -> dict[str, list[str]]:
    """Which metrics go into which panel (in first-seen order)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    return {
        "loss": [k for k in keys if k.endswith("loss")],
        "accuracy": [k for k in keys if "accuracy" in k],
        "throughput": [k for k in keys if k == "sequences_per_sec"],
        "learning rate": [k for k in keys if k == "lr"],
    }


def plot_curves(records: list[dict], out: str | os.PathLike, title: str = "") -> dict:
    """Draw the panels into `out` (PNG); returns {panel: [metric names drawn]}."""
    # slow to import; only plotting needs it
    import matplotlib
    matplotlib.use("Agg")
    # slow to import; only plotting needs it
    import matplotlib.pyplot as plt

    drawn: dict[str, list[str]] = {}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (panel, keys) in zip(axes.flat, panel_keys(records).items()):
        drawn[panel] = []
        for key in keys:
            x, y = series(records, key)
            if x:
                # Markers for held-out points and for short series: a line
                # through one point draws nothing, a short run's few steps
                # should show where they are.
                marked = key.startswith("eval_") or len(x) <= 50
                ax.plot(x, y, "o-" if marked else "-", label=key, markersize=3)
                drawn[panel].append(key)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn[panel]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    outputs.write_file_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return drawn


def is_our_plot(path) -> bool:
    """A PNG that matplotlib wrote (its tEXt chunk names it): an earlier plot."""
    head = paths.read_bytes(path)[:512]
    return head.startswith(b"\x89PNG") and b"Matplotlib" in head


FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "PNG to write (default WORKDIR/curves.png).")
if "overwrite" not in FLAGS:  # convert, imported into the same process, has one too
    flags.DEFINE_bool("overwrite", False, "Replace an --out file that is not an earlier plot.")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m bert_jax.plot WORKDIR [--out=FILE.png]")
    workdir = argv[1]
    metrics = paths.join(workdir, "metrics.jsonl")
    out = FLAGS.out or paths.join(workdir, "curves.png")
    if not paths.isfile(metrics):
        raise FileNotFoundError(f"{metrics}: no such file (is {workdir} a training workdir?)")
    outputs.check_destination(out, kind="file", overwrite=FLAGS.overwrite, is_own=is_our_plot,
                              what="--out file", sources=[metrics])
    records = read_metrics(metrics)
    if not records:
        raise ValueError(f"{metrics}: no records yet")
    drawn = plot_curves(records, out, title=str(workdir))
    print(f"wrote {out} ({', '.join(k for keys in drawn.values() for k in keys)})")
    return 0


if __name__ == "__main__":
    from bert_jax import cli
    cli.run(main)
