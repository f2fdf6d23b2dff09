"""SQuAD v1.1 and v2.0 end to end through `python -m bert_jax.finetune`
(runlocal: 64 training questions of the first 38 dev-v1.1 articles, 32
evaluated from the last 10), then `python -m bert_jax.predict` on one question.

The scores in eval_results.json are recomputed here from predictions.json with
the official scripts' rules (evaluate-v1.1 / evaluate-v2.0), written out
independently of bert_jax.finetune.squad_metrics.
"""

from __future__ import annotations

import collections
import json
import re
import string

import pytest
import test_finetune_common
from conftest import data_path
from test_finetune_common import check_ok, run_module

# The shared module-scoped fixtures (this module gets its own instances).
env = test_finetune_common.env
tiny_init = test_finetune_common.tiny_init

N_EVAL = 32  # runlocal's max_eval_examples


def normalize_answer(s: str) -> str:
    """evaluate-v1.1 / v2.0: lower case, drop punctuation and articles, fix spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # evaluate-v2.0; v1.1 golds are never empty
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


@pytest.fixture(scope="module")
def dev_file():
    return data_path("squad", "dev-v1.1.json")


@pytest.fixture(scope="module")
def dev(dev_file):
    """qid -> (context, gold answers, article index) of the official file."""
    data = json.loads(dev_file.read_text())["data"]
    out = {}
    for ai, article in enumerate(data):
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                out[qa["id"]] = (p["context"], [a["text"] for a in qa["answers"]], ai)
    return data, out


def finetune(version: str, workdir, tiny_init, dev_file, env, *extra):
    r = run_module("bert_jax.finetune",
                   f"--config=configs/finetune/squad.py:version={version},runlocal",
                   f"--workdir={workdir}", f"--config.init_checkpoint={tiny_init}",
                   f"--config.dev_file={dev_file}", "--config.length_buckets=(128,)",
                   "--config.optim.lr=1e-3", *extra, env=env)
    check_ok(r)
    return workdir / "eval" / "epoch_1" / "dev"


@pytest.fixture(scope="module")
def v1(tmp_path_factory, tiny_init, dev_file, env):
    workdir = tmp_path_factory.mktemp("squad_v1") / "run"
    # A test file: the first paragraph of the first article (a SQuAD JSON).
    data = json.loads(dev_file.read_text())["data"]
    first = dict(data[0], paragraphs=data[0]["paragraphs"][:1])
    test_file = workdir.parent / "test.json"
    test_file.write_text(json.dumps({"version": "1.1", "data": [first]}))
    return workdir, finetune("1.1", workdir, tiny_init, dev_file, env,
                             f"--config.test_file={test_file}")


def test_squad_test_file_evaluated_and_predicted_like_dev(v1, dev):
    """config.test_file gets its own eval/<label>/test/: a prediction for each
    of its questions, scored by the official EM / F1 (recomputed here)."""
    _, gold = dev
    workdir, _ = v1
    out = workdir / "eval" / "epoch_1" / "test"
    test = json.loads((workdir.parent / "test.json").read_text())["data"][0]
    qids = [qa["id"] for qa in test["paragraphs"][0]["qas"]]
    preds = json.loads((out / "predictions.json").read_text())
    res = json.loads((out / "eval_results.json").read_text())
    assert sorted(preds) == sorted(qids) and len(qids) > 3
    f1 = sum(max(f1_score(preds[q], g) for g in gold[q][1]) for q in qids)
    assert res["f1"] == pytest.approx(100 * f1 / len(qids))


def check_nbest(preds: dict, nbest: dict, contexts: dict[str, str]) -> None:
    """run_squad's n-best lists: sorted by start + end logit, probabilities a
    softmax over the list, answers cut from the original context."""
    assert set(nbest) == set(preds)
    for qid, entries in nbest.items():
        assert 1 <= len(entries) <= 20
        assert all(set(e) == {"text", "probability", "start_logit", "end_logit"}
                   for e in entries)
        scores = [e["start_logit"] + e["end_logit"] for e in entries]
        assert scores == sorted(scores, reverse=True)
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0, abs=1e-5)
        for e in entries:
            assert e["text"] in contexts[qid]
        if preds[qid]:
            assert preds[qid] in contexts[qid]


def test_squad_v1_outputs(v1, dev):
    data, gold = dev
    _, out = v1
    preds = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    res = json.loads((out / "eval_results.json").read_text())
    assert not (out / "null_odds.json").exists()
    assert len(preds) == N_EVAL and set(res) == {"exact_match", "f1"}
    # Evaluated questions come from the last 10 articles only (none trained on).
    assert all(gold[q][2] >= len(data) - 10 for q in preds)
    check_nbest(preds, nbest, {q: gold[q][0] for q in preds})
    for qid, entries in nbest.items():
        assert entries[0]["text"] == preds[qid]

    em = sum(max(exact(preds[q], g) for g in gold[q][1]) for q in preds)
    f1 = sum(max(f1_score(preds[q], g) for g in gold[q][1]) for q in preds)
    assert res["exact_match"] == pytest.approx(100 * em / N_EVAL)
    assert res["f1"] == pytest.approx(100 * f1 / N_EVAL)
    assert 0 <= res["exact_match"] <= res["f1"] <= 100
    # What was read (and skipped, by reason) is in summary.json: runlocal keeps
    # 64 training and N_EVAL evaluated questions.
    inp = json.loads((v1[0] / "summary.json").read_text())["input"]
    assert inp["train"]["examples"] == 64 and inp["dev"]["examples"] == N_EVAL
    assert 0 <= inp["train"]["skipped"] <= 64 and inp["dev"]["skipped"] == 0
    assert set(inp["train"]["reasons"]) <= {"non_ascii", "empty_context", "question_too_long",
                                            "missing_answer", "answer_start_mismatch",
                                            "answer_covers_no_token"}


def test_squad_v2_outputs(tmp_path, tiny_init, dev_file, dev, env):
    """v2.0 from dev-v1.1 with unanswerable questions paired in: null_odds.json,
    the HasAns / NoAns breakdown and the headline scores as evaluate-v2.0
    computes them with the null-odds file and threshold 0."""
    data, gold = dev
    out = finetune("2.0", tmp_path / "run", tiny_init, dev_file, env)
    preds = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    odds = json.loads((out / "null_odds.json").read_text())
    res = json.loads((out / "eval_results.json").read_text())
    assert len(preds) == N_EVAL and set(odds) == set(preds)

    answers, contexts = {}, {}
    for qid in preds:
        m = re.fullmatch(r"(.+)_unanswerable_(\d+)_(\d+)", qid)
        if m:  # a question of another article asked of eval article ai, paragraph pi
            ai, pi = int(m.group(2)), int(m.group(3))
            contexts[qid] = data[len(data) - 10 + ai]["paragraphs"][pi]["context"]
            answers[qid] = [""]
            # Drawn from another eval article: no question crosses the split.
            assert len(data) - 10 <= gold[m.group(1)][2] != len(data) - 10 + ai
        else:
            contexts[qid], answers[qid], ai = gold[qid]
            assert ai >= len(data) - 10
    check_nbest(preds, nbest, contexts)
    has_ans = {q: answers[q] != [""] for q in preds}
    assert 0 < sum(has_ans.values()) < N_EVAL

    def score(metric):
        # evaluate-v2.0's apply_no_ans_threshold with --na-prob-thresh 0.
        return {q: (float(not has_ans[q]) if odds[q] > 0.0 else
                    max(metric(preds[q], g) for g in answers[q])) for q in preds}

    em, f1 = score(exact), score(f1_score)
    assert res["exact"] == pytest.approx(100 * sum(em.values()) / N_EVAL)
    assert res["f1"] == pytest.approx(100 * sum(f1.values()) / N_EVAL)
    assert res["total"] == N_EVAL
    for name, want in (("HasAns", True), ("NoAns", False)):
        qs = [q for q in preds if has_ans[q] == want]
        assert res[f"{name}_total"] == len(qs)
        assert res[f"{name}_exact"] == pytest.approx(100 * sum(em[q] for q in qs) / len(qs))
        assert res[f"{name}_f1"] == pytest.approx(100 * sum(f1[q] for q in qs) / len(qs))
    assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(res)
    assert res["best_f1"] >= res["f1"] - 1e-9


def test_squad_predict_cli(v1, dev, env):
    """predict --question --context answers with a span of the context, the
    same answer the evaluation wrote for that question."""
    _, gold = dev
    workdir, out = v1
    preds = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    qid = sorted(preds)[0]
    data = json.loads(data_path("squad", "dev-v1.1.json").read_text())["data"]
    question = next(qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]
                    if qa["id"] == qid)
    context = gold[qid][0]
    r = run_module("bert_jax.predict", f"--checkpoint={workdir}", f"--question={question}",
                   f"--context={context}", env=env)
    check_ok(r)
    line, = r.stdout.splitlines()
    name, answer, score, span = line.split("\t")
    start, end = (int(x) for x in re.fullmatch(r"\[(\d+), (\d+)\)", span).groups())
    assert name == "q"
    assert answer == context[start:end] == preds[qid]
    best = nbest[qid][0]
    assert float(score) == pytest.approx(best["start_logit"] + best["end_logit"], abs=2e-3)

    r = run_module("bert_jax.predict", f"--checkpoint={workdir}", f"--question={question}",
                   env=env)
    assert r.returncode == 1
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [
        "error: --question needs a non-empty --context"]
