"""A new fine-tuning task is one class (plus its config): `DigitTask` below,
registered by this test alone, goes through training, an interrupted run's
exact resume, evaluation, `predict` and `aot` with no other change to the
package. Also: an unknown task is one line listing the registered ones."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from test_finetune_common import read_jsonl, save_tiny_model

from bert_jax.finetune import batching
from bert_jax.finetune.task import FinetuneTask, get, names, register, unregister

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("cat", "river", "blue", "runs", "under", "the", "green", "house", "quietly", "stone")


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """(text, label) with label 1 when the text holds a digit."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
        label = int(rng.integers(2))
        if label:
            words.insert(int(rng.integers(len(words) + 1)), str(int(rng.integers(0, 100))))
        out.append((" ".join(words), label))
    return out


class DigitTask(FinetuneTask):
    """Does the sentence contain a digit? Generated text, 2 classes."""

    kind = "has_digit_test"
    names = ("has_digit",)
    heads = ("classification",)
    head = "classification"
    num_labels = 2
    label_names = ["no_digit", "digit"]
    main_metric = "accuracy"

    def __init__(self, config, tokenizer):
        self.name = "has_digit"
        self._buckets = tuple(config.length_buckets)
        self._pad = {"input_ids": tokenizer.pad_id}
        self.data = {"train": sentences(config.num_train, 0), "dev": sentences(24, 1)}
        self._features = {}
        self._tok = tokenizer
        self._len = config.max_seq_length

    @classmethod
    def build(cls, config, tokenizer):
        return cls(config, tokenizer)

    def features(self, split):
        if split not in self._features:
            encs = self._tok.encode_batch([t for t, _ in self.data[split]], None,
                                          max_length=self._len)
            self._features[split] = [
                {"input_ids": np.asarray(e.ids, np.int32),
                 "token_type_ids": np.asarray(e.type_ids, np.int32), "labels": np.int32(y)}
                for e, (_, y) in zip(encs, self.data[split])]
        return self._features[split]

    def num_train_examples(self):
        return len(self.data["train"])

    def train_batches(self, batch_size, seed, epoch):
        return batching.iterate_batches(self.features("train"), batch_size, self._buckets,
                                        shuffle=True, seed=seed, epoch=epoch,
                                        pad_values=self._pad)

    def eval_batches(self, split, batch_size):
        return batching.iterate_batches(self.features(split), batch_size, self._buckets,
                                        shuffle=False, pad_values=self._pad)

    def evaluate(self, split, outputs, out_dir=None):
        logits = np.concatenate([o["logits"][o["example_weights"] > 0] for o in outputs])
        gold = np.asarray([y for _, y in self.data[split]])
        return {"accuracy": float(np.mean(logits.argmax(-1) == gold))}


def digit_config(init, **overrides):
    """The task's config: the common fine-tuning fields and its own."""
    from ml_collections import config_dict

    from bert_jax.train import train_config
    c = config_dict.ConfigDict()
    c.task = "has_digit"
    train_config.finetune_fields(c, lr=3e-3, num_epochs=2, global_batch_size=8,
                                 eval_batch_size=16)
    c.max_seq_length = 16
    c.length_buckets = (16,)   # one shape: one compilation of each program
    c.num_train = 32           # DigitTask's own field: generated training sentences
    c.init_checkpoint = str(init)
    c.log_every = 1
    c.checkpoint.every = 2
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture
def digit_task():
    register(DigitTask)
    yield DigitTask
    unregister(DigitTask)


def test_registry_lists_builtin_tasks():
    assert {"cola", "sst2", "stsb", "mnli", "squad", "conll2003"} <= set(names())
    with pytest.raises(ValueError, match=r"^config\.task='nosuch': unknown task; registered: "
                       r".*conll2003.*squad.*sst2"):
        get("nosuch")


def test_misspelled_and_unknown_tasks_are_one_line_listing_the_registered(tmp_path):
    for config in ("configs/finetune/glue.py:task=sst3",
                   "configs/finetune/glue.py:task=sst2 --config.task=nosuch"):
        args = config.split()
        proc = subprocess.run([sys.executable, "-m", "bert_jax.finetune", f"--config={args[0]}",
                               *args[1:], f"--workdir={tmp_path / 'w'}"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        errors = [x for x in proc.stderr.splitlines() if "unknown task" in x]
        assert len(errors) == 1, proc.stderr[-2000:]
        assert "registered: cola, conll, conll2003, mnli" in errors[0]
        assert not (tmp_path / "w").exists()


def test_a_task_added_by_one_class_trains_resumes_evaluates_predicts(digit_task, tmp_path,
                                                                     monkeypatch):
    from bert_jax.convert import model_dir
    from bert_jax.finetune import trainer
    from bert_jax.finetune.task import PredictRequest
    from bert_jax.predict import Predictor
    from bert_jax.train.step import PreemptionFlag

    init = save_tiny_model(tmp_path / "init", std=0.5)
    straight = trainer.finetune(digit_config(init), tmp_path / "straight")
    assert straight["task"] == "has_digit" and straight["steps"] == 8
    assert straight["main_metric"] == "dev/accuracy"

    # Interrupted after step 3 (as on SIGTERM), rerun: it resumes from there and
    # ends with the uninterrupted run's losses and parameters.
    workdir = tmp_path / "run"
    monkeypatch.setattr(PreemptionFlag, "reached", lambda self, step: step == 3)
    stopped = trainer.finetune(digit_config(init), workdir)
    monkeypatch.undo()
    assert stopped["preempted_at"] == 3
    resumed = trainer.finetune(digit_config(init), workdir)
    assert resumed["start_step"] == 3 and resumed["steps"] == 8

    def losses(d):
        return [(r["step"], r["loss"]) for r in read_jsonl(d / "metrics.jsonl") if "loss" in r]
    assert losses(workdir) == losses(tmp_path / "straight")
    a = model_dir.load_params(workdir / "model" / "params")
    b = model_dir.load_params(tmp_path / "straight" / "model" / "params")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    meta = json.loads((workdir / "model" / "bert_jax.json").read_text())
    assert meta["task"]["kind"] == "has_digit_test" and meta["label_names"] == [
        "no_digit", "digit"]

    # predict: the model dir names its task; raw lines are classified with the
    # label names, and its dev accuracy is the hand count of those predictions.
    pred = Predictor(workdir)
    assert pred.task is DigitTask
    dev = sentences(24, 1)
    records = pred.task.predict(pred, PredictRequest([t for t, _ in dev]))
    assert [line for _, line in records] == [t for t, _ in dev]
    hand = np.mean([(r["label"] == "digit") == bool(y) for (r, _), (_, y) in zip(records, dev)])
    best = resumed["model"]
    assert best["dev"]["accuracy"] == pytest.approx(hand)
    assert pred.head_obj.format(records[0][0], dev[0][0]).endswith("\t" + dev[0][0])

    # aot plans the task's head from the registry (a 2-label classifier).
    assert DigitTask.plan(digit_config(init)) == ("classification", 2)


def test_aot_compiles_the_registered_task(digit_task, tmp_path):
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu absent: pip install -e '.[tpu]'")
    import ml_collections

    from bert_jax import aot
    init = save_tiny_model(tmp_path / "init")
    c = digit_config(init, global_batch_size=16)
    with c.unlocked():
        c.mesh = ml_collections.ConfigDict({"shape": (16, 1, 1)})
    r = aot.report(c, "v5e:4x4", model_size="tiny")
    assert r["fits"] and "has_digit head" in r["model"]
