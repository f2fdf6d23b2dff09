"""bert_jax.predict against Hugging Face transformers on the same weights.

Random tiny task models (with decisive random heads) are saved as bert_jax
model dirs, converted with bert_jax.convert, and loaded into transformers'
PyTorch classes. The reference for each head is what transformers computes:
softmax class probabilities (BertTokenizer, longest-first truncation), Google
run_squad's n-best span choice over the QA logits, and the token-classification
pipeline with aggregation_strategy="first" for NER.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_finetune_common
from conftest import data_path
from test_finetune_common import run_module, save_tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

env = test_finetune_common.env  # module fixture: CLI environment

MNLI_LABELS = ["entailment", "neutral", "contradiction"]
CONLL_LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


def task_meta(kind: str, config) -> dict:
    return {"kind": kind, "config": json.loads(config.to_json_best_effort())}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{head: (bert_jax model dir, HF dir)} for classification, span, tagging."""
    from bert_jax.convert import formats as convert
    from configs.finetune import conll2003, glue, squad

    root = tmp_path_factory.mktemp("predict_models")
    glue_cfg = glue.get_config("task=mnli")
    glue_cfg.max_seq_length = 48  # RTE pairs below are longer: truncation is exercised
    squad_cfg = squad.get_config("version=1.1")
    squad_cfg.max_seq_length, squad_cfg.doc_stride, squad_cfg.length_buckets = 128, 64, (128,)
    specs = {
        # A larger encoder std: BERT's 0.02 gives a nearly input-independent [CLS].
        "classification": dict(num_labels=3, label_names=MNLI_LABELS, std=0.5,
                               task=task_meta("glue", glue_cfg)),
        "span": dict(task=task_meta("squad", squad_cfg)),
        "tagging": dict(num_labels=len(CONLL_LABELS), label_names=CONLL_LABELS,
                        task=task_meta("conll", conll2003.get_config())),
    }
    out = {}
    for seed, (head, kw) in enumerate(specs.items()):
        ours = save_tiny_model(root / head, head=head, seed=seed, head_std=1.0, **kw)
        hf = root / f"{head}_hf"
        convert.convert(ours, hf, to="hf")
        out[head] = (ours, hf)
    return out


def hf_model(cls, path):
    return getattr(transformers, cls).from_pretrained(path).eval()


def test_classify_matches_transformers(models):
    from bert_jax.predict import Predictor

    ours, hf = models["classification"]
    rows = test_finetune_common.read_tsv(data_path("glue", "RTE", "dev.tsv"))[1:9]
    texts, pairs = [r[1] for r in rows], [r[2] for r in rows]
    pred = Predictor(ours)
    assert pred.head == "classification" and pred.label_names == MNLI_LABELS
    results = pred.classify(texts, pairs)

    tok = transformers.BertTokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    enc = tok(texts, pairs, truncation="longest_first", max_length=48, padding=True,
              return_tensors="pt")
    assert enc["input_ids"].shape[1] == 48  # at least one pair was truncated
    with torch.no_grad():
        want = torch.softmax(hf_model("BertForSequenceClassification", hf)(**enc).logits,
                             -1).numpy()
    got = np.array([[r["probabilities"][n] for n in MNLI_LABELS] for r in results])
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert [r["label"] for r in results] == [MNLI_LABELS[i] for i in want.argmax(-1)]
    assert len(set(r["label"] for r in results)) > 1  # a decisive, input-dependent head


def google_best_span(start, end, sequence_ids, n_best=20, max_answer_length=30):
    """run_squad's choice: the best start+end score among the top-n start and
    top-n end positions that lie in the context with start <= end and at most
    max_answer_length tokens."""
    def top(logits):
        return sorted(range(len(logits)), key=lambda i: -logits[i])[:n_best]
    cands = [(start[s] + end[e], s, e) for s in top(start) for e in top(end)
             if sequence_ids[s] == 1 and sequence_ids[e] == 1 and s <= e
             and e - s + 1 <= max_answer_length]
    return max(cands, key=lambda c: c[0])


def test_answer_matches_transformers(models):
    from bert_jax.predict import Predictor

    ours, hf = models["span"]
    pred = Predictor(ours)
    data = json.loads(data_path("squad", "dev-v1.1.json").read_text())["data"]
    paragraphs = [p for p in data[0]["paragraphs"] if len(p["context"]) < 400][:3]
    assert len(paragraphs) == 3
    tok = transformers.BertTokenizerFast(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    model = hf_model("BertForQuestionAnswering", hf)
    for p in paragraphs:
        question, context = p["qas"][0]["question"], p["context"]
        enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
        assert enc["input_ids"].shape[1] <= 128  # one window
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            out = model(**enc)
        score, s, e = google_best_span(out.start_logits[0].tolist(), out.end_logits[0].tolist(),
                                       enc.sequence_ids(0))
        got = pred.answer(question, context)
        assert (got["start"], got["end"]) == (offsets[s][0], offsets[e][1])
        assert got["answer"] == context[got["start"]:got["end"]]
        assert got["score"] == pytest.approx(score, abs=1e-4)


def test_entities_match_transformers_pipeline(models):
    from bert_jax.predict import Predictor

    ours, hf = models["tagging"]
    pred = Predictor(ours)
    tok = transformers.BertTokenizerFast(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    ner = transformers.pipeline("token-classification", model=hf_model(
        "BertForTokenClassification", hf), tokenizer=tok, aggregation_strategy="first",
        device=-1)
    texts = ["Peter Blackburn said the European Commission in Brussels disagreed strongly.",
             "BRUSSELS 1996-08-22 Germany's representative to the EU's veterinary committee",
             "Rare hendra virus outbreaks were reported by Australian officials on Thursday."]
    n_entities = 0
    for text in texts:
        got = pred.entities(text)
        want = ner(text)
        assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"]) for e in want]
        for g, w in zip(got, want):
            assert g["score"] == pytest.approx(float(w["score"]), abs=1e-4)
            assert g["word"] == text[g["start"]:g["end"]]
            assert g["word"].lower() == w["word"].replace(" ", "").lower() or " " in g["word"]
        n_entities += len(got)
    assert n_entities >= 5  # the random head tags plenty: grouping is exercised


def test_predictor_errors(tmp_path):
    from bert_jax.predict import Predictor

    pretrain = save_tiny_model(tmp_path / "pretrain")
    with pytest.raises(ValueError, match="a pretraining checkpoint has no task head"):
        Predictor(pretrain)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Predictor(tmp_path / "missing")


def test_predict_cli_input_errors(models, env, tmp_path):
    """Missing input fails with one line, before the model is loaded."""
    ours, _ = models["classification"]
    r = run_module("bert_jax.predict", f"--checkpoint={ours}", env=env)
    assert r.returncode == 1
    assert test_finetune_common.error_lines(r) == [
        "error: no input: pass --input=FILE ('-' = stdin), text arguments, or --question "
        "and --context"]
    missing = tmp_path / "no_such_input.txt"
    r = run_module("bert_jax.predict", f"--checkpoint={ours}", f"--input={missing}", env=env)
    assert r.returncode == 1
    assert test_finetune_common.error_lines(r) == [f"error: {missing}: no such input file"]
    assert "Traceback" not in r.stderr
