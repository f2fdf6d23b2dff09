"""GLUE end to end through the CLIs: `python -m bert_jax.finetune` (single run
and --sweep), `python -m bert_jax.predict` on the result, and a learning test
on real SST-2 text.

All classification runs here share head, batch and sequence shapes, so with
the suite's compilation cache their model init and evaluation programs
compile once (see test_finetune_common.cli_env).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import test_finetune_common
from conftest import data_path
from test_finetune_common import check_ok, read_jsonl, read_tsv, run_module

# The shared module-scoped fixtures (this module gets its own instances).
env = test_finetune_common.env
tiny_init = test_finetune_common.tiny_init

RTE_LABELS = ["entailment", "not_entailment"]
# Shapes shared by every run of this module (batch rows, one length bucket).
SHAPES = ("--config.global_batch_size=32", "--config.eval_batch_size=64",
          "--config.max_seq_length=64", "--config.length_buckets=(64,)")


@pytest.fixture(scope="module")
def glue_dir():
    return data_path("glue")


def finetune_cli(task: str, workdir, tiny_init, glue_dir, env, *overrides: str, sweep=False):
    r = run_module("bert_jax.finetune", f"--config=configs/finetune/glue.py:task={task},runlocal",
                   f"--workdir={workdir}", f"--config.init_checkpoint={tiny_init}",
                   f"--config.data_dir={glue_dir}", *SHAPES, *overrides,
                   *(["--sweep"] if sweep else []), env=env)
    check_ok(r)
    return r


@pytest.fixture(scope="module")
def rte(tmp_path_factory, tiny_init, glue_dir, env):
    workdir = tmp_path_factory.mktemp("rte") / "run"
    finetune_cli("rte", workdir, tiny_init, glue_dir, env, "--config.max_train_examples=64",
                 "--config.num_epochs=1")
    return workdir


def test_rte_outputs(rte, glue_dir):
    """eval_results.json agrees with the dev predictions scored against the
    labels of the official dev.tsv; the submission file covers every test row."""
    dev_dir = rte / "eval" / "epoch_1" / "dev"
    res = json.loads((dev_dir / "eval_results.json").read_text())
    assert res["task"] == "rte" and res["num_examples"] == 277
    assert 0.0 <= res["accuracy"] <= 1.0

    gold_rows = read_tsv(glue_dir / "RTE" / "dev.tsv")
    assert gold_rows[0] == ["index", "sentence1", "sentence2", "label"]
    gold = {row[0]: row[3] for row in gold_rows[1:]}
    rows = read_tsv(dev_dir / "predictions.tsv")
    assert rows[0] == ["index", "prediction", "label", "prob_entailment", "prob_not_entailment"]
    assert [r[0] for r in rows[1:]] == list(gold)
    assert [r[2] for r in rows[1:]] == list(gold.values())
    for r in rows[1:]:
        p = [float(r[3]), float(r[4])]
        assert sum(p) == pytest.approx(1.0, abs=2e-6)
        assert r[1] == RTE_LABELS[int(np.argmax(p))]
    accuracy = np.mean([r[1] == gold[r[0]] for r in rows[1:]])
    assert res["accuracy"] == pytest.approx(accuracy)

    test_rows = read_tsv(glue_dir / "RTE" / "test.tsv")
    sub = read_tsv(rte / "test_predictions" / "RTE.tsv")
    assert len(sub) == 3001 and sub[0] == ["index", "prediction"]
    assert [r[0] for r in sub[1:]] == [r[0] for r in test_rows[1:]]
    assert {r[1] for r in sub[1:]} <= set(RTE_LABELS)

    meta = json.loads((rte / "model" / "bert_jax.json").read_text())
    assert meta["head"] == "classification" and meta["label_names"] == RTE_LABELS
    assert (rte / "model" / "vocab.txt").is_file() and (rte / "model" / "params").is_dir()

    records = read_jsonl(rte / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2]  # 64 examples / batch 32, one epoch
    assert math.isfinite(train[0]["loss"]) and 0 <= train[0]["accuracy"] <= 1
    assert any(r.get("eval_dev_accuracy") == pytest.approx(res["accuracy"]) for r in records)
    summary = json.loads((rte / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final"]["dev"]["accuracy"] == res["accuracy"]


def test_rte_predict_cli(rte, glue_dir, env, tmp_path):
    """predict on dev pairs (a tab separates the pair) gives the label and the
    class probabilities the evaluation wrote for the same examples: the saved
    model and the predict path reproduce the trained one."""
    gold_rows = read_tsv(glue_dir / "RTE" / "dev.tsv")[1:6]
    lines = [f"{r[1]}\t{r[2]}" for r in gold_rows]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    evaluated = read_tsv(rte / "eval" / "epoch_1" / "dev" / "predictions.tsv")[1:6]

    r = run_module("bert_jax.predict", f"--checkpoint={rte}", f"--input={tmp_path / 'pairs.txt'}",
                   env=env)
    check_ok(r)
    out = r.stdout.splitlines()
    assert len(out) == 5
    for line, text, ev in zip(out, lines, evaluated):
        label, score, rest = line.split("\t", 2)
        assert label == ev[1] and rest == text
        assert float(score) == pytest.approx(max(float(ev[3]), float(ev[4])), abs=2e-4)

    r = run_module("bert_jax.predict", f"--checkpoint={rte / 'model'}", "--json", "--input=-",
                   env=env, stdin="\n".join(lines[:2]) + "\n\n")
    check_ok(r)
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["text"] for o in out] == lines[:2]
    for o, ev in zip(out, evaluated):
        assert set(o) == {"text", "label", "score", "probabilities"}
        assert list(o["probabilities"]) == RTE_LABELS
        assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert o["label"] == ev[1] and o["score"] == max(o["probabilities"].values())
        assert o["probabilities"]["entailment"] == pytest.approx(float(ev[3]), abs=2e-5)


def test_rte_sweep_cli(rte, tmp_path, tiny_init, glue_dir, env):
    """--sweep over 2 learning rates x 1 seed: one run dir per point, and
    sweep_results.json's best and mean agree with the runs' own eval files.
    The 2e-5 point is the same run as the single one above, so it must
    reproduce its accuracy exactly (determinism)."""
    workdir = tmp_path / "sweep"
    r = finetune_cli("rte", workdir, tiny_init, glue_dir, env, "--config.max_train_examples=64",
                     "--config.num_epochs=1", "--config.sweep.lrs=(2e-5,5e-4)",
                     "--config.sweep.seeds=(0,)", sweep=True)
    result = json.loads((workdir / "sweep_results.json").read_text())
    assert set(result) == {"runs", "by_lr", "best", "best_mean_over_seeds"}
    assert [(run["lr"], run["seed"]) for run in result["runs"]] == [(2e-5, 0), (5e-4, 0)]
    acc = {}
    for run in result["runs"]:
        run_dir = workdir / f"lr{run['lr']}_seed{run['seed']}"
        res = json.loads((run_dir / "eval" / "epoch_1" / "dev" / "eval_results.json").read_text())
        acc[run["lr"]] = res["accuracy"]
        assert run["metrics"]["dev/accuracy"] == pytest.approx(res["accuracy"])
        assert (run_dir / "model" / "bert_jax.json").is_file()
        assert result["by_lr"][str(run["lr"])]["dev/accuracy"] == {
            "mean": pytest.approx(res["accuracy"]), "std": 0.0, "n": 1}
    assert result["best"]["dev/accuracy"] == pytest.approx(max(acc.values()))
    assert result["best_mean_over_seeds"]["dev/accuracy"] == pytest.approx(max(acc.values()))
    rte_acc = json.loads((rte / "eval" / "epoch_1" / "dev" / "eval_results.json").read_text())
    assert acc[2e-5] == rte_acc["accuracy"]
    assert "best single run: " in r.stdout


def test_sst2_learns(tmp_path, tiny_init, glue_dir, env):
    """The loop learns: from a random tiny BERT, 1,000 real SST-2 sentences x 4
    epochs reach a dev accuracy well above the majority class (0.509), and
    the training loss falls."""
    gold = [r[1] for r in read_tsv(glue_dir / "SST-2" / "dev.tsv")[1:]]
    majority = max(gold.count("0"), gold.count("1")) / len(gold)
    workdir = tmp_path / "sst2"
    finetune_cli("sst2", workdir, tiny_init, glue_dir, env, "--config.max_train_examples=1000",
                 "--config.num_epochs=4", "--config.optim.lr=3e-3")
    res = json.loads((workdir / "eval" / "epoch_4" / "dev" / "eval_results.json").read_text())
    assert res["num_examples"] == 872
    assert res["accuracy"] >= max(0.60, majority + 0.08), res
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    # Logged every 50 steps and at the last (128 steps in all).
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1, losses


def test_sst2_packed_learns(tmp_path, tiny_init, glue_dir, env):
    """config.packing: 64-token rows of up to 4 sentences, 8 rows a step (~32
    sentences, as test_sst2_learns' batches). Every sentence is trained once per
    epoch in fewer steps, and the packed model learns SST-2 as well."""
    gold = [r[1] for r in read_tsv(glue_dir / "SST-2" / "dev.tsv")[1:]]
    majority = max(gold.count("0"), gold.count("1")) / len(gold)
    workdir = tmp_path / "sst2_packed"
    finetune_cli("sst2", workdir, tiny_init, glue_dir, env, "--config.max_train_examples=1000",
                 "--config.num_epochs=4", "--config.optim.lr=3e-3",
                 "--config.packing=4", "--config.packed_rows_per_step=8")
    res = json.loads((workdir / "eval" / "epoch_4" / "dev" / "eval_results.json").read_text())
    assert res["num_examples"] == 872
    assert res["accuracy"] >= max(0.60, majority + 0.08), res
    summary = json.loads((workdir / "summary.json").read_text())
    # 1,000 sentences need >= 250 rows of <= 4; padded, 1,000 rows of 64.
    steps_per_epoch = summary["steps"] // 4
    assert math.ceil(250 / 8) <= steps_per_epoch < math.ceil(1000 / 8)
    assert summary["train_tokens_processed"] == summary["steps"] * 8 * 64
    last = [r for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r][-1]
    # Throughput counts sentences, not rows: more than 2 per row on average.
    assert last["examples_per_sec"] / last["steps_per_sec"] > 2 * 8
