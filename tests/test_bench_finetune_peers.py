"""The converged plan's bookkeeping in bench/bench_finetune_peers.py: the run
queue's order, resuming (runs already in the results file are skipped, older
records without an `lr` field included) and the report's statistics, checked
against hand-computed values. No training: run_one is replaced."""

import json
import math
import pathlib
import sys
import types

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import bench_finetune_peers as peers  # noqa: E402


def _args(**kw):
    base = dict(tasks="rte,mrpc", seeds="0,1", seeds_for={}, lrs="", order="task",
                frameworks="ours,hf", plan="converged", torch_threads=1, dropout=None,
                same_head_init=False, hf_pad_grad=False, keep_model="", scratch="unused")
    return types.SimpleNamespace(**{**base, **kw})


def test_queue_orders():
    assert peers.queue(_args()) == [("rte", 0, None), ("rte", 1, None),
                                    ("mrpc", 0, None), ("mrpc", 1, None)]
    assert peers.queue(_args(order="seed")) == [("rte", 0, None), ("mrpc", 0, None),
                                                ("rte", 1, None), ("mrpc", 1, None)]
    assert peers.queue(_args(tasks="cola", seeds="0", lrs="2e-5,5e-5")) == [
        ("cola", 0, 2e-5), ("cola", 0, 5e-5)]
    assert peers.queue(_args(tasks="rte,conll", seeds="0,1", seeds_for={"conll": "0"})) == [
        ("rte", 0, None), ("rte", 1, None), ("conll", 0, None)]


def _record(task, fw, seed, value, lr=None, plan="converged"):
    r = {"task": task, "framework": fw, "seed": seed, "plan": plan, "value": value,
         "xcheck": value, "metric": peers.HEADLINE[task], "wall_s": 10.0, "cpu_s": 8.0,
         "config": {"learning_rate": 1e-4}, "metrics": {}, "history": [], "train_s": 9.0,
         "steps": 3, "load_before": 1.0, "load_after": 1.0}
    if lr is not None:
        r["lr"] = lr
    return r


def test_resume_skips_done_runs(tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    # An old-style record (lr only in the plan config) and a new one.
    out.write_text(json.dumps(_record("rte", "ours", 0, 60.0)) + "\n"
                   + json.dumps(_record("rte", "hf", 0, 61.0, lr=1e-4)) + "\n")
    calls = []

    def fake_run_one(task, fw, seed, plan, scratch, threads, dropout, same, pad, lr, keep):
        calls.append((task, fw, seed, lr, keep))
        return _record(task, fw, seed, 50.0, lr=lr or 1e-4)
    monkeypatch.setattr(peers, "run_one", fake_run_one)
    peers.run_all(_args(tasks="rte", keep_model="rte", out=str(out)))
    assert calls == [("rte", "ours", 1, None, True), ("rte", "hf", 1, None, True)]
    assert len(peers.load_results(out)) == 4
    calls.clear()
    peers.run_all(_args(tasks="rte", out=str(out)))  # everything done: nothing runs
    assert calls == []
    peers.run_all(_args(tasks="rte", seeds="0", lrs="5e-5", out=str(out)))  # a new lr runs
    assert calls == [("rte", "ours", 0, 5e-5, False), ("rte", "hf", 0, 5e-5, False)]


def test_report_statistics():
    recs = [_record("mrpc", "ours", 0, 80.0), _record("mrpc", "ours", 1, 82.0),
            _record("mrpc", "hf", 0, 79.0), _record("mrpc", "hf", 1, 80.0),
            _record("mrpc", "ours", 0, 70.0, lr=2e-5), _record("mrpc", "hf", 0, 75.0, lr=2e-5)]
    rows = [line.split(" | ") for line in peers.report(recs, "converged").splitlines()[2:]]
    assert len(rows) == 2  # one row per lr, smallest first
    low, high = rows
    assert low[2:6] == ["2e-05", "70.00 ± nan (1)", "75.00 ± nan (1)", "-5.00"]
    assert "n < 2" in low[7]
    # Hand computation: means 81 and 79.5, sample std sqrt(2) and sqrt(0.5),
    # SE = sqrt(2/2 + 0.5/2) = 1.118; |diff| 1.5 <= 2 SE -> pass.
    assert high[2:6] == ["0.0001", "81.00 ± 1.41 (2)", "79.50 ± 0.71 (2)", "+1.50"]
    assert float(high[6]) == pytest.approx(math.sqrt(1.25), abs=5e-3)
    assert high[7] == "pass"
    assert high[9:12] == ["10 / 10", "8 / 8", "1.00 |"]
