"""SQuAD exact match and F1 with the semantics of the official scripts.

Two scorers, because the official v1.1 and v2.0 scripts differ in small ways
that change numbers:

- v1.1 (`evaluate-v1.1.py`): every question of the dataset counts; a missing
  prediction scores 0; F1 is 0 whenever prediction and gold share no token,
  even when both normalize to the empty string.
- v2.0 (`evaluate-v2.0.py`): gold answers that normalize to "" are dropped and
  a question left without any is scored against "" (the only right answer to an
  unanswerable question); F1 is 1 when both sides are empty; optional no-answer
  odds turn predictions into "" above a threshold; HasAns / NoAns breakdowns;
  and, given the odds, the best threshold for EM and for F1 (`find_best_thresh`).

Sums run in dataset order with Python floats, as the scripts do, so results are
bit-identical to theirs, not just close.

Gold answers come as an ordered mapping `question id -> [answer text, ...]`
(`gold_answers` builds it from the official JSON's `data` list), so the same
scorer serves the JSON files and TFDS.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

Gold = Mapping[str, Sequence[str]]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, and
    collapse whitespace (in that order, which matters: "the-end" -> "theend")."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> int:
    """1 if both normalize to the same string, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def f1_v1(prediction: str, gold: str) -> float:
    """Token-bag F1 of evaluate-v1.1: 0 without a common token (empty vs empty too)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def f1_v2(prediction: str, gold: str) -> float:
    """Token-bag F1 of evaluate-v2.0: when either side is empty, 1 if both are."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _token_f1(pred_tokens, gold_tokens)


def gold_answers(data: Sequence[Mapping]) -> dict[str, list[str]]:
    """`question id -> answer texts` from the official JSON's `data` list, in
    file order (unanswerable v2.0 questions map to [])."""
    return {qa["id"]: [a["text"] for a in qa["answers"]]
            for article in data for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]}


def evaluate_v1(gold: Gold, predictions: Mapping[str, str]) -> dict[str, float]:
    """evaluate-v1.1: {'exact_match', 'f1'} in percent over every gold question.

    Args:
      gold: question id -> gold answer texts (at least one each).
      predictions: question id -> predicted text; a missing id scores 0.
    """
    em = f1 = 0.0
    for qid, answers in gold.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no gold answer: v1.1 scoring needs one "
                             f"(score unanswerable questions with evaluate_v2)")
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em += max(exact_match(pred, a) for a in answers)
        f1 += max(f1_v1(pred, a) for a in answers)
    total = len(gold)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def raw_scores_v2(gold: Gold, predictions: Mapping[str, str]
                  ) -> tuple[dict[str, int], dict[str, float]]:
    """Per-question EM and F1 of evaluate-v2.0 before any no-answer threshold."""
    exact, f1 = {}, {}
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        # Gold answers that normalize to nothing cannot be matched; a question
        # left with none is unanswerable and only "" is right.
        kept = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions[qid]
        exact[qid] = max(exact_match(pred, a) for a in kept)
        f1[qid] = max(f1_v2(pred, a) for a in kept)
    return exact, f1


def apply_no_answer_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float],
                              has_answer: Mapping[str, bool], threshold: float
                              ) -> dict[str, float]:
    """A question whose no-answer odds exceed `threshold` is predicted "": it
    scores 1 if it is unanswerable, else 0."""
    return {qid: float(not has_answer[qid]) if na_probs[qid] > threshold else s
            for qid, s in scores.items()}


def find_best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                        na_probs: Mapping[str, float], has_answer: Mapping[str, bool]
                        ) -> tuple[float, float]:
    """The no-answer threshold that maximizes the total score, and that score.

    Walks the questions by increasing odds (a stable sort, so ties keep the
    order of `na_probs`), answering each one in turn: an answerable question
    adds its score, an unanswerable one loses its point if its prediction is
    not empty. Starts from "answer nothing" (every unanswerable question right,
    threshold 0.0), as evaluate-v2.0's `find_best_thresh`.

    Returns:
      (best score in percent of len(scores), threshold).
    """
    cur = best = sum(1 for v in has_answer.values() if not v)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            cur += scores[qid]
        elif predictions[qid]:
            cur -= 1
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def _summary(exact: Mapping[str, float], f1: Mapping[str, float],
             qids: Sequence[str] | None = None) -> dict[str, float]:
    qids = list(exact) if qids is None else qids
    total = len(qids)
    return {"exact": 100.0 * sum(exact[k] for k in qids) / total,
            "f1": 100.0 * sum(f1[k] for k in qids) / total,
            "total": total}


def evaluate_v2(gold: Gold, predictions: Mapping[str, str],
                na_probs: Mapping[str, float] | None = None,
                na_prob_thresh: float = 1.0) -> dict[str, float]:
    """evaluate-v2.0: exact/f1/total, HasAns_* and NoAns_* breakdowns, and with
    `na_probs` (e.g. null_odds.json) best_exact(_thresh) and best_f1(_thresh).

    Args:
      gold: question id -> gold answer texts ([] for unanswerable).
      predictions: question id -> predicted text ("" = no answer); every gold
        question needs one (the official script fails on a missing answerable
        one, we say which).
      na_probs: question id -> no-answer odds; None means all 0.
      na_prob_thresh: odds above this turn a prediction into "".
    """
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"predictions: {len(missing)} of {len(gold)} questions have no "
                         f"prediction (first: {missing[0]})")
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    probs = {qid: 0.0 for qid in predictions} if na_probs is None else na_probs
    exact_raw, f1_raw = raw_scores_v2(gold, predictions)
    exact = apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)
    out = _summary(exact, f1)
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_answer.items() if v == want]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_threshold(
            predictions, exact_raw, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = find_best_threshold(
            predictions, f1_raw, na_probs, has_answer)
    return out
