"""Shared pieces of the fine-tuning end-to-end tests, and tests of the trainer's
own logic: multi-process row slicing, STS-B (regression) in-process on the
8-device test mesh, bad input (CLI and in-process) and sweep aggregation.

The other test_finetune_*.py files import the helpers below. Every run starts
from a tiny random BERT (hidden 32, 1 layer) with the real bert-base-uncased
vocabulary, so tokenization is the real one while training stays cheap.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import forked_cli
import jax
import ml_collections
import numpy as np
import pytest
import scipy.stats
from conftest import JAX_CACHE_DIR, data_path

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny architecture: compile time, not arithmetic, dominates these tests.
TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128)


def random_params(cfg, head: str, num_labels: int = 0, seed: int = 0, std: float = 0.02,
                  head_std: float = 0.02) -> dict[str, np.ndarray]:
    """BERT-style random parameters (normal(0, std) weights, zero biases, unit
    LayerNorm scales) under our canonical names, made with numpy from the
    model's abstract shapes: no XLA compilation needed. `head_std` is the std of
    the weights outside the encoder (a larger one gives a random task head
    decisive logits); a larger `std` makes the random encoder's outputs depend
    more on the input (BERT's 0.02 gives a nearly constant [CLS] vector)."""
    from flax import nnx

    from bert_jax.model.heads import build_model
    from bert_jax.model.params import pure_to_flat

    abstract = nnx.eval_shape(lambda: build_model(cfg, head, num_labels))
    shapes = pure_to_flat(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    rng = np.random.default_rng(seed)
    out = {}
    for name, a in sorted(shapes.items()):
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "scale":
            out[name] = np.ones(a.shape, np.float32)
        elif leaf == "bias" or name == "output_bias":
            out[name] = np.zeros(a.shape, np.float32)
        else:
            scale = std if name.startswith("bert/") else head_std
            out[name] = (scale * rng.standard_normal(a.shape)).astype(np.float32)
    return out


def save_tiny_model(path, head: str = "pretraining", num_labels: int = 0,
                    label_names: list[str] | None = None, task: dict | None = None,
                    seed: int = 0, std: float = 0.02, head_std: float = 0.02,
                    **cfg_overrides) -> pathlib.Path:
    """A bert_jax model dir of a tiny random model with the bert-base-uncased vocab."""
    from bert_jax.convert.model_dir import save_model_dir
    from bert_jax.model.config import BertConfig

    vocab = data_path("vocab", "bert-base-uncased", "vocab.txt")
    cfg = BertConfig(**{**TINY, **cfg_overrides})
    save_model_dir(path, cfg, random_params(cfg, head, num_labels, seed, std, head_std), head,
                   num_labels, label_names, task, vocab)
    return pathlib.Path(path)


def cli_env(cache_dir) -> dict[str, str]:
    """Environment of a CLI subprocess: one CPU device, LLVM at -O0 (halves XLA's
    compile time, which is most of a tiny run) and a persistent compilation
    cache shared by the runs, so programs that repeat
    (same head and shapes) compile once."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="3",
               TOKENIZERS_PARALLELISM="false")
    return env


def run_module(module: str, *args: str, env: dict[str, str], timeout: int = 600,
               stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root (where configs/ lives),
    forked from a server that imported JAX (tests/forked_cli.py) unless it reads stdin."""
    if stdin is None:
        return forked_cli.run_argv(["-m", module, *args], env, str(REPO), timeout)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def check_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-4000:]}"


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    """The `error: ...` lines of a failed CLI run (progress bars aside)."""
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def read_tsv(path) -> list[list[str]]:
    """Rows of a GLUE TSV, split on tabs only (GLUE text has quote characters)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


# Module-scoped fixtures that the other fine-tuning test modules import: each
# module gets its own tiny init checkpoint; the compilation cache is the
# suite's (conftest.py), so a program one module compiled is not compiled again
# by the next (the same tiny encoder and heads run in glue, squad, conll,
# predict and gcs).
@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> pathlib.Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "init")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return cli_env(JAX_CACHE_DIR)


# ------------------------------------------------------------------ _local_rows


def test_local_rows_single_process_is_identity():
    from bert_jax.finetune import trainer

    batch = {"input_ids": np.arange(12).reshape(6, 2)}
    assert trainer._local_rows(batch) is batch


def test_local_rows_slices_contiguous_blocks(monkeypatch):
    """Every process builds the same global batch; process p must feed rows
    [p*k, (p+1)*k), so together they feed each row exactly once, in order."""
    from bert_jax.finetune import trainer

    batch = {"input_ids": np.arange(24).reshape(8, 3), "labels": np.arange(8) * 10,
             "example_weights": np.ones(8, np.float32)}
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    parts = []
    for p in range(4):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        local = trainer._local_rows(batch)
        assert set(local) == set(batch)
        assert all(v.shape[0] == 2 for v in local.values())
        parts.append(local)
    for key, value in batch.items():
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value)
    # The rows of one process stay aligned across keys.
    np.testing.assert_array_equal(parts[2]["labels"], [40, 50])
    np.testing.assert_array_equal(parts[2]["input_ids"][:, 0], [12, 15])


def test_local_rows_rejects_indivisible_batch(monkeypatch):
    from bert_jax.finetune import trainer

    monkeypatch.setattr(jax, "process_count", lambda: 3)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.raises(ValueError, match="batch size 8 is not a multiple of 3 processes"):
        trainer._local_rows({"input_ids": np.zeros((8, 4), np.int32)})


# ---------------------------------------------------------- STS-B in-process


def test_stsb_regression_in_process(tmp_path, monkeypatch):
    """STS-B through `trainer.finetune` on the 8-device test mesh (batch rows
    over data x fsdp, parameters over fsdp): Pearson / Spearman in eval_results.json equal scipy's
    on the model's dev outputs against the gold scores read from dev.tsv."""
    from bert_jax.finetune import glue as glue_task
    from bert_jax.finetune import trainer
    from configs.finetune import glue as glue_config

    assert jax.device_count() == 8
    # Larger random weights than BERT's 0.02, so that a barely trained model's
    # scores vary with the input enough to correlate (or not) with the gold.
    init = save_tiny_model(tmp_path / "init", std=0.5)
    outputs = {}
    evaluate = glue_task.GlueTask.evaluate

    def spy(self, split, outs, out_dir=None):
        outputs[split] = outs
        return evaluate(self, split, outs, out_dir)

    monkeypatch.setattr(glue_task.GlueTask, "evaluate", spy)
    glue = data_path("glue")
    c = glue_config.get_config("task=stsb,runlocal")
    c.init_checkpoint = str(init)
    c.data_dir = str(glue)
    c.max_train_examples = 64
    c.global_batch_size = 16          # 2 rows per device
    c.eval_batch_size = 64
    c.length_buckets = (64,)   # one shape: one compilation of each program
    c.optim.lr = 1e-3
    with c.unlocked():  # rows over data x fsdp, parameters sharded 4 ways over fsdp
        c.mesh = ml_collections.ConfigDict({"shape": (2, 4, 1)})
    workdir = tmp_path / "run"
    summary = trainer.finetune(c, workdir)

    assert summary["steps"] == 4
    strict = json.loads((workdir / "summary.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert strict["final"]["dev"]["pearson"] == summary["final"]["dev"]["pearson"]
    res = json.loads((workdir / "eval" / "epoch_1" / "dev" / "eval_results.json").read_text())
    assert res["num_examples"] == 1500
    assert summary["final"]["dev"]["pearson"] == pytest.approx(res["pearson"])

    gold_rows = read_tsv(glue / "STS-B" / "dev.tsv")
    gold = np.array([float(row[-1]) for row in gold_rows[1:]])
    pred = np.concatenate([o["logits"][o["example_weights"] > 0, 0] for o in outputs["dev"]])
    assert pred.shape == (1500,) and pred.std() > 1e-3
    assert res["pearson"] == pytest.approx(scipy.stats.pearsonr(pred, gold)[0], abs=1e-6)
    assert res["spearman"] == pytest.approx(scipy.stats.spearmanr(pred, gold)[0], abs=1e-6)
    pred_rows = read_tsv(workdir / "eval" / "epoch_1" / "dev" / "predictions.tsv")
    assert pred_rows[0] == ["index", "prediction", "label"]
    assert [r[0] for r in pred_rows[1:]] == [r[0] for r in gold_rows[1:]]
    assert [r[1] for r in pred_rows[1:]] == [f"{p:.3f}" for p in pred]

    # Regression submission: a score per test row.
    sub = read_tsv(workdir / "test_predictions" / "STS-B.tsv")
    assert sub[0] == ["index", "prediction"] and len(sub) == 1 + 1379
    assert all(math.isfinite(float(r[1])) for r in sub[1:])
    meta = json.loads((workdir / "model" / "bert_jax.json").read_text())
    assert meta["head"] == "regression" and meta["num_labels"] == 1

    # metrics.jsonl: one train record at the last step with a finite loss and a
    # throughput that excludes the compiling first step.
    records = read_jsonl(workdir / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [4]
    assert math.isfinite(train[0]["loss"]) and train[0]["steps_per_sec"] > 0
    assert any(r.get("eval_dev_pearson") == pytest.approx(res["pearson"]) for r in records)


# ------------------------------------------------------------------ bad input


def test_cli_missing_init_checkpoint(env, tmp_path):
    r = run_module("bert_jax.finetune", "--config=configs/finetune/glue.py:task=rte,runlocal",
                   f"--workdir={tmp_path / 'w'}", env=env)
    assert r.returncode == 1
    assert error_lines(r) == ["error: config.init_checkpoint is required: a bert_jax model dir "
                              "or workdir, a HF dir or a TF1 dir"]
    assert "Traceback" not in r.stderr


def test_cli_missing_data_file(env, tiny_init, tmp_path):
    """A GLUE dir without RTE/train.tsv: one line naming the file."""
    empty = tmp_path / "glue"
    (empty / "RTE").mkdir(parents=True)
    r = run_module("bert_jax.finetune", "--config=configs/finetune/glue.py:task=rte,runlocal",
                   f"--workdir={tmp_path / 'w'}", f"--config.init_checkpoint={tiny_init}",
                   f"--config.data_dir={empty}", env=env)
    assert r.returncode == 1
    assert error_lines(r) == [f"error: {empty / 'RTE' / 'train.tsv'}: missing GLUE RTE train file"]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("missing_file", ["init_checkpoint", "squad", "conll2003"])
def test_missing_file_in_process(missing_file, tiny_init, tmp_path):
    """A missing checkpoint or data file stops the run before any training,
    with an error naming the path."""
    from bert_jax.finetune import trainer
    from configs.finetune import conll2003 as conll_config
    from configs.finetune import squad as squad_config

    missing = tmp_path / "no_such_file.txt"
    if missing_file == "squad":
        c = squad_config.get_config("version=1.1,runlocal")
        c.dev_file = str(missing)
    else:
        c = conll_config.get_config("runlocal")
        c.train_file = str(missing)
    c.init_checkpoint = str(missing if missing_file == "init_checkpoint" else tiny_init)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        trainer.finetune(c, tmp_path / "w")
    assert not (tmp_path / "w" / "model").exists()


# ------------------------------------------------------------------- sweeps


def test_sweep_aggregate_best_and_mean():
    """Per learning rate: mean / sample std / n over seeds; best single run and
    best mean; a NaN (a diverged or constant-output run) counts as missing."""
    from bert_jax.finetune import sweep

    runs = [{"lr": 2e-5, "seed": 0, "metrics": {"dev/accuracy": 0.60, "dev/f1": 0.50}},
            {"lr": 2e-5, "seed": 1, "metrics": {"dev/accuracy": 0.70, "dev/f1": 0.52}},
            {"lr": 2e-5, "seed": 2, "metrics": {"dev/accuracy": 0.65, "dev/f1": float("nan")}},
            {"lr": 5e-5, "seed": 0, "metrics": {"dev/accuracy": float("nan"), "dev/f1": 0.40}},
            {"lr": 5e-5, "seed": 1, "metrics": {"dev/accuracy": 0.68}}]
    res = sweep.aggregate(runs)
    acc = res["by_lr"]["2e-05"]["dev/accuracy"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.65)
    assert acc["std"] == pytest.approx(np.std([0.60, 0.70, 0.65], ddof=1))
    assert res["by_lr"]["2e-05"]["dev/f1"] == {"mean": pytest.approx(0.51),
                                               "std": pytest.approx(np.std([0.5, 0.52], ddof=1)),
                                               "n": 2}
    assert res["by_lr"]["5e-05"]["dev/accuracy"] == {"mean": 0.68, "std": 0.0, "n": 1}
    assert res["best"] == {"dev/accuracy": 0.70, "dev/f1": 0.52}
    assert res["best_mean_over_seeds"] == {"dev/accuracy": pytest.approx(0.68),
                                           "dev/f1": pytest.approx(0.51)}
    assert json.loads(json.dumps(res["by_lr"])) == res["by_lr"]  # no NaN left in the table
    assert "best single run: dev/accuracy=0.7000, dev/f1=0.5200" in sweep.format_table(res)
