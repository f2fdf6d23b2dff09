"""CoNLL-2003 NER end to end through `python -m bert_jax.finetune` (1,000
training sentences of eng.train, one epoch, all of eng.testa evaluated), then
`python -m bert_jax.predict` on raw text.

The written predictions are checked against eng.testa read here independently,
and the entity F1 against seqeval's conlleval-compatible default mode.
"""

from __future__ import annotations

import json
import re

import pytest
import seqeval.metrics
import test_finetune_common
from conftest import data_path
from test_finetune_common import check_ok, run_module

from bert_jax.finetune import conlleval

# The shared module-scoped fixtures (this module gets its own instances).
env = test_finetune_common.env
tiny_init = test_finetune_common.tiny_init

TYPES = ("LOC", "MISC", "ORG", "PER")
TEXT = ["Germany beat England in London on Sunday .",
        "Peter Blackburn said the European Commission in Brussels disagreed ."]


def read_column_file(path) -> list[list[tuple[str, str]]]:
    """(word, NER tag) sentences of a CoNLL-2003 file, -DOCSTART- lines dropped."""
    sentences, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if cur:
                sentences.append(cur)
            cur = []
        else:
            cur.append((fields[0], fields[-1]))
    if cur:
        sentences.append(cur)
    return sentences


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """I-X starts an entity (becomes B-X) unless the previous tag is of type X."""
    out = []
    for i, t in enumerate(tags):
        if t.startswith("I-") and (i == 0 or tags[i - 1][2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_init, env):
    workdir = tmp_path_factory.mktemp("conll") / "run"
    # A labelled test file (the last sentences of eng.testa, documents whole).
    test_file = workdir.parent / "test.conll"
    text = data_path("conll2003", "eng.testa").read_text()
    test_file.write_text(text[text.rindex("-DOCSTART-", 0, len(text) - 20000):])
    r = run_module("bert_jax.finetune", "--config=configs/finetune/conll2003.py:runlocal",
                   f"--workdir={workdir}", f"--config.init_checkpoint={tiny_init}",
                   f"--config.train_file={data_path('conll2003', 'eng.train')}",
                   f"--config.dev_file={data_path('conll2003', 'eng.testa')}",
                   "--config.max_train_sentences=1000", "--config.num_epochs=1",
                   "--config.global_batch_size=16", "--config.eval_batch_size=64",
                   "--config.optim.lr=5e-3", "--config.max_seq_length=64",
                   "--config.window_stride=32", "--config.length_buckets=(64,)",
                   f"--config.test_file={test_file}", env=env)
    check_ok(r)
    return workdir


def test_conll_test_file_evaluated_and_predicted_like_dev(run):
    """config.test_file gets its own eval/<label>/test/ with conlleval metrics
    that seqeval reproduces from the file's own words and gold tags."""
    out = run / "eval" / "epoch_1" / "test"
    res = json.loads((out / "eval_results.json").read_text())
    gold_sents = read_column_file(run.parent / "test.conll")
    assert res["split"] == "test" and res["num_sentences"] == len(gold_sents) > 10
    blocks = [b for b in (out / "predictions.txt").read_text().split("\n\n") if b.strip()]
    rows = [[line.split(" ") for line in b.strip("\n").split("\n")] for b in blocks]
    assert [[r[0] for r in b] for b in rows] == [[w for w, _ in s] for s in gold_sents]
    gold = [[r[1] for r in b] for b in rows]
    assert gold == [iob1_to_iob2([t for _, t in s]) for s in gold_sents]
    pred = [[r[2] for r in b] for b in rows]
    assert res["f1"] == pytest.approx(100 * seqeval.metrics.f1_score(gold, pred), abs=1e-9)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["main_metric"].startswith("dev/")  # the best model is picked on dev


def test_conll_outputs(run):
    out = run / "eval" / "epoch_1" / "dev"
    res = json.loads((out / "eval_results.json").read_text())
    labels = ["O"] + [f"{p}-{t}" for p in "BI" for t in TYPES]
    assert sorted(res["label_names"]) == sorted(labels)
    meta = json.loads((run / "model" / "bert_jax.json").read_text())
    assert meta["head"] == "tagging" and meta["label_names"] == res["label_names"]

    # predictions.txt: WORD GOLD PRED, a blank line after each sentence, the
    # words and (IOB2) gold tags of eng.testa in order.
    gold_sents = read_column_file(data_path("conll2003", "eng.testa"))
    assert res["num_sentences"] == len(gold_sents) == 3250
    blocks = (out / "predictions.txt").read_text().split("\n\n")
    blocks = [b for b in blocks if b.strip()]
    assert len(blocks) == len(gold_sents)
    gold, pred = [], []
    for block, sent in zip(blocks, gold_sents):
        rows = [line.split(" ") for line in block.strip("\n").split("\n")]
        assert all(len(r) == 3 for r in rows)
        assert [r[0] for r in rows] == [w for w, _ in sent]
        assert [r[1] for r in rows] == iob1_to_iob2([t for _, t in sent])
        assert {r[2] for r in rows} <= set(labels)
        gold.append([r[1] for r in rows])
        pred.append([r[2] for r in rows])

    # conlleval's numbers, as our reader of the file and as seqeval computes them.
    counted = conlleval.metrics(conlleval.count_file(out / "predictions.txt"))
    for key in ("precision", "recall", "f1", "accuracy"):
        assert counted[key] == pytest.approx(res[key])
    assert res["f1"] == pytest.approx(100 * seqeval.metrics.f1_score(gold, pred), abs=1e-9)
    assert res["precision"] == pytest.approx(
        100 * seqeval.metrics.precision_score(gold, pred), abs=1e-9)
    n_tokens = sum(len(s) for s in gold)
    assert res["accuracy"] == pytest.approx(
        100 * sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)) / n_tokens)
    # It learned something in 63 steps: all-O predictions would score F1 0.
    assert res["f1"] >= 10.0, res


def test_conll_predict_cli(run, env):
    r = run_module("bert_jax.predict", f"--checkpoint={run}", "--json", "--input=-",
                   env=env, stdin="\n".join(TEXT) + "\n")
    check_ok(r)
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["text"] for o in out] == TEXT
    for o in out:
        last_end = 0
        for e in o["entities"]:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert e["entity_group"] in TYPES and 0 < e["score"] <= 1
            assert o["text"][e["start"]:e["end"]] == e["word"]
            assert last_end <= e["start"] < e["end"]
            last_end = e["end"]
    # Frequent training-set countries/cities come out as locations.
    found = {e["word"] for e in out[0]["entities"] if e["entity_group"] == "LOC"}
    assert found & {"Germany", "England", "London"}, out[0]

    r = run_module("bert_jax.predict", f"--checkpoint={run / 'model'}", TEXT[0], env=env)
    check_ok(r)
    lines = r.stdout.splitlines()
    assert lines[0] == TEXT[0]
    ents = [re.fullmatch(r"  (\w+)\t(.+)\t([0-9.]+)\t\[(\d+), (\d+)\)", x) for x in lines[1:]]
    assert all(ents)
    assert [(m[1], m[2], int(m[4]), int(m[5])) for m in ents] == [
        (e["entity_group"], e["word"], e["start"], e["end"]) for e in out[0]["entities"]]


def test_conll_packed_learns(tmp_path, tiny_init, env, run):
    """config.packing: the same 1,000 sentences and hyperparameters as `run`,
    64-token rows of up to 4 sentence windows, 4 rows a step. Every window is
    trained once per epoch over a third of the positions, and the packed model
    learns the task as the unpacked one does."""
    workdir = tmp_path / "packed"
    r = run_module("bert_jax.finetune", "--config=configs/finetune/conll2003.py:runlocal",
                   f"--workdir={workdir}", f"--config.init_checkpoint={tiny_init}",
                   f"--config.train_file={data_path('conll2003', 'eng.train')}",
                   f"--config.dev_file={data_path('conll2003', 'eng.testa')}",
                   "--config.max_train_sentences=1000", "--config.num_epochs=1",
                   "--config.packed_rows_per_step=5", "--config.packing=4", "--config.eval_batch_size=64",
                   "--config.optim.lr=5e-3", "--config.max_seq_length=64",
                   "--config.window_stride=32", "--config.length_buckets=(64,)", env=env)
    check_ok(r)
    packed = json.loads((workdir / "summary.json").read_text())
    plain = json.loads((run / "summary.json").read_text())
    # Unpacked: 1,000+ windows in batches of 16 rows; packed: 5 rows of <= 4
    # windows (~3 on average), so about as many windows per step.
    assert packed["train_tokens_processed"] == packed["steps"] * 5 * 64
    assert plain["train_tokens_processed"] == plain["steps"] * 16 * 64
    assert packed["train_tokens_processed"] < 0.5 * plain["train_tokens_processed"]
    assert 0.75 * plain["steps"] < packed["steps"] < 1.25 * plain["steps"]
    res = json.loads((workdir / "eval" / "epoch_1" / "dev" / "eval_results.json").read_text())
    assert res["num_sentences"] == 3250 and res["f1"] >= 10.0, res
