"""The one training loop (bert_jax/train/loop.py) as fine-tuning runs it, in process
on a tiny random BERT (RTE, 32 training examples, 4 steps an epoch):

- a run that crashes after a checkpoint, is rerun, is then preempted and rerun
  again ends with eval/ files byte-identical to an uninterrupted run's, the
  same exported parameters bit for bit and every step logged once with the
  same numbers;
- with eval_every, model/ holds the best evaluation's parameters: scoring
  model/ again (loaded from disk, forward pass outside the trainer) gives the
  best dev score metrics.jsonl holds, and the predictions of that evaluation;
- a sweep rerun skips the finished run and resumes the stopped one;
- an old config name set in Python is a one-line error naming the new one.

(bench/resume_check.py does the same through the CLI with SIGKILL / SIGTERM
on all-MiniLM-L6-v2 for CoNLL-2003 and SQuAD.)
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from conftest import data_path
from test_finetune_common import read_jsonl, read_tsv, save_tiny_model

from bert_jax.train.step import PreemptionFlag

TIMING = {"step_time", "steps_per_sec", "examples_per_sec", "padded_tokens_per_sec", "mfu",
          "includes_compile"}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles(tmp_path_factory):
    """XLA at -O0 and a persistent compilation cache: the runs of this module
    compile the same programs (same shapes), and compiling is most of a tiny run."""
    import jax
    keys = ("jax_disable_most_optimizations", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")
    before = {k: jax.config.values[k] for k in keys}
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> pathlib.Path:
    # Larger random weights than BERT's 0.02: the dev score moves between evaluations.
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "init", std=0.5)


def rte_config(init, **overrides):
    from configs.finetune import glue
    c = glue.get_config("task=rte,runlocal")
    c.init_checkpoint = str(init)
    c.data_dir = str(data_path("glue"))
    c.max_train_examples = 32
    c.global_batch_size = 8
    c.eval_batch_size = 64
    c.length_buckets = (64,)   # one shape: one compilation of each program
    c.num_epochs = 2
    c.optim.lr = 3e-3
    c.log_every = 1
    c.eval_every = 3           # evaluations after steps 3, 4 (epoch 1), 6, 8 (epoch 2)
    c.checkpoint.every = 2
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def straight(init, tmp_path_factory):
    from bert_jax.finetune import trainer
    workdir = tmp_path_factory.mktemp("straight") / "run"
    return workdir, trainer.finetune(rte_config(init), workdir)


def numbers(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


def params_of(model_path):
    from bert_jax.convert import model_dir
    return model_dir.load_params(pathlib.Path(model_path) / "params")


def test_crashed_then_preempted_run_resumes_exactly(init, straight, tmp_path, monkeypatch,
                                                    capsys):
    from bert_jax.finetune import trainer
    reference, _ = straight
    workdir = tmp_path / "run"
    batches = trainer.FinetuneJob.batches

    def crash_at_step_5(self, start_step):  # after the checkpoint of step 4
        for step, item in enumerate(batches(self, start_step), start_step):
            if step == 5:
                raise RuntimeError("simulated crash")
            yield item
    monkeypatch.setattr(trainer.FinetuneJob, "batches", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.finetune(rte_config(init), workdir)
    monkeypatch.undo()
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r][-1] == 5
    assert not (workdir / "model").exists()

    # The rerun resumes from step 4 and is preempted after step 6 (as on SIGTERM).
    monkeypatch.setattr(PreemptionFlag, "reached", lambda self, step: step == 6)
    summary = trainer.finetune(rte_config(init), workdir)
    monkeypatch.undo()
    assert summary["preempted_at"] == 6 and summary["start_step"] == 4
    assert not (workdir / "model").exists()
    assert "resumed from" in capsys.readouterr().out

    summary = trainer.finetune(rte_config(init), workdir)
    assert summary["start_step"] == 6 and summary["steps"] == 8

    assert_same_run(workdir, reference)


def assert_same_run(workdir, reference):
    """eval/ files byte for byte, model/ files and parameters bitwise, and
    every step's loss logged once with the uninterrupted run's numbers."""
    got, want = read_jsonl(workdir / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in got if "loss" in r] == list(range(1, 9))
    assert [numbers(r) for r in got] == [numbers(r) for r in want]
    files = sorted(p.relative_to(reference) for p in (reference / "eval").rglob("*")
                   if p.is_file())
    assert len(files) == 4 * 2  # eval_results.json + predictions.tsv per evaluation
    assert files == sorted(p.relative_to(workdir) for p in (workdir / "eval").rglob("*")
                           if p.is_file())
    for f in files:
        assert (workdir / f).read_bytes() == (reference / f).read_bytes(), f
    for f in ("bert_jax.json", "vocab.txt"):
        assert (workdir / "model" / f).read_bytes() == (reference / "model" / f).read_bytes()
    a, b = params_of(workdir / "model"), params_of(reference / "model")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not (workdir / "best").exists()


def test_ctrl_c_saves_that_step_then_resumes_exactly(init, straight, tmp_path, monkeypatch,
                                                     capsys):
    """A real SIGINT (Ctrl-C) to this process while step 7's batch is being
    prepared: the handler asks for a stop, the loop finishes step 7, saves a
    checkpoint of it (checkpoint.every=2 would not) and returns preempted (the
    CLI exits 75); the rerun resumes at 7 and ends equal to the uninterrupted
    run."""
    import os
    import signal

    from bert_jax.finetune import trainer
    reference, _ = straight
    workdir = tmp_path / "run"
    batches = trainer.FinetuneJob.batches

    def ctrl_c_at_step_7(self, start_step):
        for index, item in enumerate(batches(self, start_step), start_step):
            if index == 6:  # 0-based: the batch of step 7
                os.kill(os.getpid(), signal.SIGINT)
            yield item
    monkeypatch.setattr(trainer.FinetuneJob, "batches", ctrl_c_at_step_7)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a pytest-xdist worker
    summary = trainer.finetune(rte_config(init), workdir)
    monkeypatch.undo()
    assert "interrupted: saving a checkpoint after this step" in capsys.readouterr().err
    assert summary["preempted_at"] == 7
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir()
               if p.name.isdigit()) == 7
    assert not (workdir / "model").exists()
    assert signal.getsignal(signal.SIGINT) == before  # the run's handler is gone

    summary = trainer.finetune(rte_config(init), workdir)
    assert summary["start_step"] == 7 and summary["steps"] == 8
    assert_same_run(workdir, reference)


def test_model_is_the_best_evaluation(straight):
    """model/ scored again from disk gives the highest eval_dev_score of
    metrics.jsonl, and the predictions that evaluation wrote."""
    import jax

    from bert_jax.convert import formats as convert
    from bert_jax.convert import model_dir
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import glue
    workdir, summary = straight
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if "eval_dev_score" in r]
    assert [r["step"] for r in rows] == [3, 4, 6, 8]
    best = max(rows, key=lambda r: r["eval_dev_score"])  # the first of equal scores
    assert summary["model"]["export"] == "best" and summary["model"]["step"] == best["step"]
    assert summary["model"]["score"] == pytest.approx(best["eval_dev_score"])
    meta = json.loads((workdir / "model" / "bert_jax.json").read_text())
    assert meta["task"]["step"] == best["step"]

    # (load_model moves to bert_jax.convert on main.)
    load_model = getattr(convert, "load_model", None) or model_dir.load_model
    model, meta, missing = load_model(workdir / "model")
    assert not missing
    c = rte_config(workdir)  # only the data fields are read
    task = glue.build_task(c, load_tokenizer(str(workdir / "model" / "vocab.txt")))
    forward = jax.jit(lambda ids, tt, mask: model(ids, tt, mask)["logits"])
    outputs = [{"logits": np.asarray(forward(b["input_ids"], b["token_type_ids"],
                                             b["attention_mask"])),
                "example_weights": b["example_weights"]}
               for b in task.eval_batches("dev", 64)]
    assert task.evaluate("dev", outputs)["score"] == pytest.approx(best["eval_dev_score"])
    label = f"epoch_{best['step'] // 4}" if best["step"] % 4 == 0 else f"step_{best['step']}"
    written = [r[1] for r in read_tsv(workdir / "eval" / label / "dev" / "predictions.tsv")[1:]]
    assert [task.label_names[p] for p in task.predictions("dev", outputs)] == written


def test_sweep_rerun_skips_finished_and_resumes_stopped(init, tmp_path, monkeypatch, capsys):
    """Also export=last: model/ holds the last step's parameters."""
    from bert_jax.finetune import sweep, trainer
    from bert_jax.train import checkpointing
    c = rte_config(init, num_epochs=1, eval_every=0, export="last")
    c.sweep.lrs = (1e-3, 3e-3)
    c.sweep.seeds = (0,)
    first, second = tmp_path / "lr0.001_seed0", tmp_path / "lr0.003_seed0"
    finetune = trainer.finetune

    def stop_second_run_at_step_2(config, workdir):
        if pathlib.Path(workdir) == second:
            monkeypatch.setattr(PreemptionFlag, "reached",
                                lambda self, step: step == 2)
        return finetune(config, workdir)
    monkeypatch.setattr(trainer, "finetune", stop_second_run_at_step_2)
    stopped = sweep.run_sweep(c, tmp_path)
    assert stopped["preempted_at"] == str(second) and len(stopped["runs"]) == 1
    monkeypatch.undo()
    assert (first / "model").is_dir() and not (second / "model").exists()
    first_summary = (first / "summary.json").read_bytes()
    capsys.readouterr()

    result = sweep.run_sweep(c, tmp_path)
    out = capsys.readouterr().out
    assert f"nothing to do: {first} finished at step 4" in out
    assert f"resumed from {second} at step 2" in out
    assert (first / "summary.json").read_bytes() == first_summary
    assert [r["step"] for r in read_jsonl(second / "metrics.jsonl") if "loss" in r] == [1, 2, 3,
                                                                                       4]
    assert [r["lr"] for r in result["runs"]] == [1e-3, 3e-3]
    assert all("dev/accuracy" in r["metrics"] for r in result["runs"])

    for run in (first, second):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["model"]["export"] == "last" and summary["model"]["step"] == 4
        assert json.loads((run / "model" / "bert_jax.json").read_text())["task"]["step"] == 4
        last = checkpointing.load_latest_params(run)
        exported = params_of(run / "model")
        assert exported.keys() == last.keys()
        assert all(np.array_equal(exported[k], last[k]) for k in exported)


def test_old_config_name_in_python_is_an_error(init, tmp_path):
    from bert_jax.finetune import trainer
    c = rte_config(init)
    with c.unlocked():
        c.learning_rate = 2e-5
    with pytest.raises(ValueError, match=r"^config\.learning_rate: renamed to config\.optim\.lr$"):
        trainer.finetune(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _crash_after_step_6(monkeypatch):
    """The run dies while the batch of step 7 is prepared (after the
    checkpoint of step 6)."""
    from bert_jax.finetune import trainer
    batches = trainer.FinetuneJob.batches

    def crash(self, start_step):
        for step, item in enumerate(batches(self, start_step), start_step):
            if step == 6:
                raise RuntimeError("simulated crash")
            yield item
    monkeypatch.setattr(trainer.FinetuneJob, "batches", crash)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# A failed restore can leave a tensorstore callback on orbax's closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_error_stops_and_damaged_checkpoint_falls_back(init, straight, tmp_path,
                                                               monkeypatch, capsys):
    """A run crashed after its step-6 checkpoint. A restore error that may pass
    (the storage unreachable): one line, the run stops, every file as it was.
    The b-tree files of both steps cut in half: one line, every file as it
    was. Then step 6's alone (real damage): the rerun warns,
    sets step 6 aside, resumes from step 4 and ends equal to the uninterrupted
    run (as pretraining does)."""
    import orbax.checkpoint as ocp

    from bert_jax.finetune import trainer
    from bert_jax.storage import paths
    from bert_jax.train import checkpointing
    reference, _ = straight
    workdir = tmp_path / "run"
    _crash_after_step_6(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.finetune(rte_config(init), workdir)
    monkeypatch.undo()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]

    before = _files(workdir)

    def unreachable(self, step, args=None):
        raise ValueError(f'UNAVAILABLE: Error reading "{workdir}/checkpoints/{step}": '
                         "Connection refused")
    monkeypatch.setattr(ocp.CheckpointManager, "restore", unreachable)
    with pytest.raises(paths.StorageError) as e:
        trainer.finetune(rte_config(init), workdir)
    monkeypatch.undo()
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{workdir}/checkpoints: reading checkpoint step 6 failed "
                                   "(ValueError: UNAVAILABLE")
    assert "nothing was moved" in str(e.value)
    assert _files(workdir) == before
    assert "unreadable" not in capsys.readouterr().err

    # Both steps damaged: nothing to fall back to; one line, nothing moved.
    victims = {}
    for step in (4, 6):
        [victims[step]] = (workdir / "checkpoints" / str(step)).glob("state/d/*")
    intact = victims[4].read_bytes()
    for victim in victims.values():
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    before = _files(workdir)
    with pytest.raises(checkpointing.NoReadableCheckpoint) as e:
        trainer.finetune(rte_config(init), workdir)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{workdir}/checkpoints: no checkpoint restores (steps "
                                   "[4, 6]; newest: ")
    assert _files(workdir) == before
    capsys.readouterr()

    # Step 4 mended, step 6 still cut: the fallback.
    victims[4].write_bytes(intact)
    summary = trainer.finetune(rte_config(init), workdir)
    captured = capsys.readouterr()
    assert "warning: checkpoint step 6 is unreadable" in captured.err
    assert f"resumed from {workdir} at step 4" in captured.out
    assert summary["start_step"] == 4 and summary["steps"] == 8
    [aside] = (workdir / "checkpoints_unreadable").iterdir()
    assert aside.name.startswith("6-") and (aside / "state").is_dir()
    assert_same_run(workdir, reference)
