"""SQuAD EM / F1 against the official evaluate-v1.1.py and evaluate-v2.0.py.

The EXPECTED_* numbers below were produced by running the official scripts
(evaluate-v1.1.py md5 afb04912d18ff20696f7f88eed49bea9 logic, evaluate-v2.0.py
md5 ff23213bed5516ea4a6d9edb6cd7d627 logic), outside this repository, on the
hand-built V1_DATA / V2_DATA files and predictions defined here. The live
checks compare with transformers' port of evaluate-v2.0 (squad_metrics) on
real dev-v1.1 questions.
"""

import json

import numpy as np
import pytest
from conftest import data_path

from bert_jax.finetune import squad_metrics as sm


def _article(qas):
    return [{"title": "T", "paragraphs": [{"context": "unused by the scorer", "qas": qas}]}]


def _qa(qid, answers, **extra):
    return {"id": qid, "question": "?", "answers": [{"text": a, "answer_start": 0}
                                                    for a in answers], **extra}


# --- Hand-built v1.1 cases (one question each) -------------------------------
V1_DATA = _article([
    _qa("articles_punct", ["Denver Broncos", "Denver Broncos", "Denver Broncos"]),
    _qa("partial", ["Saint Bernadette Soubirous"]),
    _qa("multi_gold", ["a copper statue of Christ", "Christ", "statue of Christ"]),
    _qa("missing", ["anything"]),
    _qa("gold_only_articles", ["The", "a"]),
    _qa("unicode", ["Café Müller\u20141990"]),
    _qa("inner_punct", ["gold-colored"]),
    _qa("repeated", ["cat cat cat dog"]),
    _qa("article_prefix", ["theater"]),
    _qa("whitespace", ["New\nYork  City"]),
    _qa("too_long", ["1990"]),
    _qa("curly_quotes", ["\u201cquoted\u201d"]),
])
V1_PREDS = {
    "articles_punct": "the Denver Broncos!",
    "partial": "Bernadette Soubirous",
    "multi_gold": "copper statue",
    "gold_only_articles": "",
    "unicode": "café müller\u20141990",
    "inner_punct": "gold colored",
    "repeated": "cat cat bird",
    "article_prefix": "the theater",
    "whitespace": " new york city ",
    "too_long": "in 1990 and 1991",
    "curly_quotes": "quoted",
}
# From the official evaluate-v1.1.py on V1_DATA / V1_PREDS.
EXPECTED_V1 = {"exact_match": 41.666666666666664, "f1": 53.65079365079365}

# --- Hand-built v2.0 cases -----------------------------------------------------
V2_DATA = _article([
    _qa("has_right", ["Denver Broncos"], is_impossible=False),
    _qa("has_partial", ["Saint Bernadette Soubirous"], is_impossible=False),
    _qa("no_empty", [], is_impossible=True),
    _qa("no_wrong", [], is_impossible=True),
    _qa("has_empty", ["1990"], is_impossible=False),
    _qa("has_gold_articles", ["the"], is_impossible=False),
    _qa("no_empty_tie", [], is_impossible=True),
    _qa("has_multi_tie", ["copper statue", "statue of Christ"], is_impossible=False),
    _qa("has_wrong_high", ["Paris"], is_impossible=False),
    _qa("no_wrong_high", [], is_impossible=True),
])
V2_PREDS = {
    "has_right": "denver broncos",
    "has_partial": "Bernadette Soubirous",
    "no_empty": "",
    "no_wrong": "something",
    "has_empty": "",
    "has_gold_articles": "",
    "no_empty_tie": "",
    "has_multi_tie": "the statue of christ.",
    "has_wrong_high": "London",
    "no_wrong_high": "x",
}
V2_NA = {
    "has_right": 0.1, "has_partial": -2.0, "no_empty": 3.5, "no_wrong": 0.5,
    "has_empty": 2.0, "has_gold_articles": -1.0, "no_empty_tie": 0.5,
    "has_multi_tie": 0.5, "has_wrong_high": 1.5, "no_wrong_high": 1.2,
}
# From the official evaluate-v2.0.py: no --na-prob-file.
EXPECTED_V2_PLAIN = {
    "exact": 50.0, "f1": 58.0, "total": 10,
    "HasAns_exact": 50.0, "HasAns_f1": 63.333333333333336, "HasAns_total": 6,
    "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 4,
}
# From the official evaluate-v2.0.py: --na-prob-file (V2_NA), default threshold 1.0.
EXPECTED_V2_NA = {
    "exact": 60.0, "f1": 68.0, "total": 10,
    "HasAns_exact": 50.0, "HasAns_f1": 63.333333333333336, "HasAns_total": 6,
    "NoAns_exact": 75.0, "NoAns_f1": 75.0, "NoAns_total": 4,
    "best_exact": 60.0, "best_exact_thresh": 0.1,
    "best_f1": 68.0, "best_f1_thresh": 0.1,
}
# From the official evaluate-v2.0.py: --na-prob-file (V2_NA) --na-prob-thresh 0.0.
EXPECTED_V2_NA_T0 = {
    "exact": 50.0, "f1": 58.0, "total": 10,
    "HasAns_exact": 16.666666666666668, "HasAns_f1": 30.0, "HasAns_total": 6,
    "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 4,
    "best_exact": 60.0, "best_exact_thresh": 0.1,
    "best_f1": 68.0, "best_f1_thresh": 0.1,
}


def test_normalization_hand_checked():
    assert sm.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert sm.normalize_answer("an apple, a pear") == "apple pear"
    assert sm.normalize_answer("theater") == "theater"          # articles only as words
    assert sm.normalize_answer("the-end") == "theend"           # punctuation goes first
    assert sm.normalize_answer("Café\u2014Müller") == "café\u2014müller"  # non-ASCII kept
    assert sm.normalize_answer("\u201cquoted\u201d") == "\u201cquoted\u201d"
    assert sm.normalize_answer(" New\nYork\t") == "new york"
    assert sm.normalize_answer("A") == ""


def test_single_scores_hand_checked():
    assert sm.exact_match("the Denver Broncos.", "Denver Broncos") == 1
    assert sm.f1_v1("Bernadette Soubirous", "Saint Bernadette Soubirous") == pytest.approx(0.8)
    # Bag of tokens: two of three predicted cats match, two of four gold tokens.
    assert sm.f1_v1("cat cat bird", "cat cat cat dog") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # Empty vs empty: v1.1 says 0 (no common token), v2.0 says 1.
    assert sm.f1_v1("", "the") == 0.0
    assert sm.f1_v2("", "the") == 1.0
    assert sm.f1_v2("Paris", "") == 0.0


def test_v1_matches_official_script():
    gold = sm.gold_answers(V1_DATA)
    assert sm.evaluate_v1(gold, V1_PREDS) == EXPECTED_V1


def test_v1_needs_a_gold_answer_per_question():
    with pytest.raises(ValueError, match="'x' has no gold answer"):
        sm.evaluate_v1({"x": []}, {"x": ""})


def test_v2_matches_official_script():
    gold = sm.gold_answers(V2_DATA)
    assert sm.evaluate_v2(gold, V2_PREDS) == EXPECTED_V2_PLAIN
    assert sm.evaluate_v2(gold, V2_PREDS, V2_NA) == EXPECTED_V2_NA
    assert sm.evaluate_v2(gold, V2_PREDS, V2_NA, na_prob_thresh=0.0) == EXPECTED_V2_NA_T0
    # Key order as the script prints it.
    assert list(sm.evaluate_v2(gold, V2_PREDS, V2_NA)) == list(EXPECTED_V2_NA)


def test_v2_missing_prediction_is_a_clear_error():
    gold = sm.gold_answers(V2_DATA)
    preds = dict(V2_PREDS)
    del preds["has_right"]
    with pytest.raises(ValueError, match="has_right"):
        sm.evaluate_v2(gold, preds)


def test_best_threshold_ties_follow_odds_order():
    # Two questions share odds 0.5; the official walk updates the best score
    # question by question, so their order in na_probs decides the outcome.
    # Walked by hand: start at 1 (one unanswerable question, answer nothing);
    # answering "a" adds 1, answering "b" (wrongly non-empty) takes 1 away.
    from transformers.data.metrics import squad_metrics as hf

    has = {"a": True, "b": False}
    scores = {"a": 1.0, "b": 0.0}
    preds = {"a": "x", "b": "y"}
    for na, want in (({"a": 0.5, "b": 0.5}, (100.0, 0.5)),   # 1 -> 2 (best) -> 1
                     ({"b": 0.5, "a": 0.5}, (50.0, 0.0)),    # 1 -> 0 -> 1: never above 1
                     ({"a": 0.2, "b": 0.5}, (100.0, 0.2))):
        assert sm.find_best_threshold(preds, scores, na, has) == want
        assert hf.find_best_thresh(preds, scores, na, has) == want


@pytest.fixture(scope="module")
def dev_gold():
    with open(data_path("squad", "dev-v1.1.json"), encoding="utf-8") as f:
        return sm.gold_answers(json.load(f)["data"])


def _perturbed_predictions(gold, seed):
    """Realistic mistakes: exact, cut words, extra words, case/punctuation, empty."""
    rng = np.random.default_rng(seed)
    preds = {}
    for qid, answers in gold.items():
        words = (answers[rng.integers(len(answers))] if answers else "a b c").split()
        kind = rng.integers(6)
        if kind == 1:
            words = words[1:]
        elif kind == 2:
            words = words + ["the", "extra."]
        elif kind == 3:
            words = [w.upper() + "," for w in words]
        elif kind == 4:
            words = []
        elif kind == 5:
            words = words[: max(1, len(words) // 2)] + words
        preds[qid] = " ".join(words)
    return preds


def test_v2_matches_transformers_port_on_dev(dev_gold):
    """transformers' squad_metrics is a line-by-line port of evaluate-v2.0."""
    from transformers.data.metrics import squad_metrics as hf

    rng = np.random.default_rng(1)
    # Make a third of the questions unanswerable to exercise NoAns paths.
    gold = {q: ([] if rng.random() < 1 / 3 else a) for q, a in dev_gold.items()}
    preds = _perturbed_predictions(gold, seed=2)
    na = {q: float(np.round(rng.normal(), 1)) for q in gold}  # rounded: many ties

    class Ex:
        def __init__(self, qid, answers):
            self.qas_id = qid
            self.answers = [{"text": a} for a in answers]

    ref = hf.squad_evaluate([Ex(q, a) for q, a in gold.items()], preds, na, 0.3)
    ours = sm.evaluate_v2(gold, preds, na, na_prob_thresh=0.3)
    assert ours == {k: ref[k] for k in ours}
    exact, f1 = sm.raw_scores_v2(gold, preds)
    hf_exact, hf_f1 = hf.get_raw_scores([Ex(q, a) for q, a in gold.items()], preds)
    assert exact == hf_exact and f1 == hf_f1


def test_v1_per_question_matches_v2_where_they_agree(dev_gold):
    """On answerable questions with non-empty answers the two scripts share
    EM and F1; the v1 total divides by every question (missing ones score 0)."""
    from transformers.data.metrics import squad_metrics as hf

    preds = _perturbed_predictions(dev_gold, seed=3)
    preds = {q: p for q, p in preds.items() if sm.normalize_answer(p)}
    ours = sm.evaluate_v1(dev_gold, preds)
    em = sum(max(hf.compute_exact(a, preds[q]) for a in ans)
             for q, ans in dev_gold.items() if q in preds)
    f1 = sum(max(hf.compute_f1(a, preds[q]) for a in ans)
             for q, ans in dev_gold.items() if q in preds)
    assert ours["exact_match"] == pytest.approx(100.0 * em / len(dev_gold), abs=1e-9)
    assert ours["f1"] == pytest.approx(100.0 * f1 / len(dev_gold), abs=1e-9)
    assert 0 < len(preds) < len(dev_gold)
