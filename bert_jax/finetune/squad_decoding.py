"""SQuAD n-best span decoding over all windows of an example (`postprocess`,
run_squad's semantics; see `squad.py`), the official metrics of its
predictions and the prediction files run_squad writes."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune import squad_metrics
from bert_jax.finetune.squad_examples import SquadExample, gold_answers
from bert_jax.finetune.squad_features import SquadFeatures, Window

# Null odds written for an example without any non-null span (e.g. an empty
# context): larger than any real logit difference, and finite for JSON.
NO_SPAN_ODDS = 1e6


# ----------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NbestEntry:
    text: str
    start_logit: float
    end_logit: float
    probability: float = 0.0
    char_start: int = -1  # span in the original context; -1 for the null answer
    char_end: int = -1

    def as_json(self) -> dict[str, Any]:
        """The four fields of run_squad's nbest_predictions.json."""
        return {"text": self.text, "probability": self.probability,
                "start_logit": self.start_logit, "end_logit": self.end_logit}


@dataclasses.dataclass
class SquadPredictions:
    """Per question id: the answer, its n-best list and (v2.0) the null odds
    (null score minus best non-null score) and the best non-null answer."""

    predictions: dict[str, str]
    nbest: dict[str, list[NbestEntry]]
    null_odds: dict[str, float]
    best_non_null: dict[str, NbestEntry | None]


def _best_indexes(logits: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n largest logits, ties by position (Google's sort)."""
    return np.argsort(-logits, kind="stable")[:n]


def _window_candidates(w: Window, start: np.ndarray, end: np.ndarray, n_best: int,
                       max_answer_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid (start, end) positions among the top starts x top ends, in Google's
    loop order (start rank, then end rank). Returns int [K], int [K]."""
    s = _best_indexes(start, n_best)[:, None]
    e = _best_indexes(end, n_best)[None, :]
    lo, hi = w.context_offset, w.context_offset + w.doc_length - 1
    in_ctx_s = (s >= lo) & (s <= hi)
    ok = in_ctx_s & (e >= lo) & (e <= hi) & (e >= s) & (e - s + 1 <= max_answer_length)
    ok &= np.where(in_ctx_s, w.max_context[np.clip(s - lo, 0, w.doc_length - 1)], False)
    ss, ee = np.broadcast_to(s, ok.shape)[ok], np.broadcast_to(e, ok.shape)[ok]
    return ss, ee


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(x - top) for x in scores]
    total = sum(exps)
    return [x / total for x in exps]


def decode_example(ex: SquadExample, windows: Sequence[Window], offsets: np.ndarray,
                   start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                   n_best_size: int = 20, max_answer_length: int = 30,
                   version_2: bool = False) -> tuple[list[NbestEntry], float | None]:
    """The n-best answers of one example over all its windows.

    Args:
      windows: the example's windows; start_logits / end_logits: one float
        array per window, at least as long as its input_ids.

    Returns:
      (n-best entries, best first, with softmax probabilities; the null score
      (min over windows of start[0] + end[0]) for v2.0, else None).
    """
    # Candidate columns, in Google's loop order: window, start rank, end rank.
    parts: list[tuple[np.ndarray, ...]] = []
    null = None
    for wi, (w, sl, el) in enumerate(zip(windows, start_logits, end_logits)):
        n = len(w.input_ids)
        sl = np.asarray(sl[:n], np.float64)
        el = np.asarray(el[:n], np.float64)
        if version_2 and (null is None or sl[0] + el[0] < null[0]):
            null = (float(sl[0] + el[0]), float(sl[0]), float(el[0]))
        ss, ee = _window_candidates(w, sl, el, n_best_size, max_answer_length)
        parts.append((sl[ss], el[ee], np.full(len(ss), wi), ss, ee))
    if null is not None:
        parts.append(tuple(np.array([x]) for x in (null[1], null[2], -1, 0, 0)))
    if parts:
        s_logit, e_logit, win, ss, ee = (np.concatenate(c) for c in zip(*parts))
    else:
        s_logit = e_logit = win = ss = ee = np.zeros(0)
    # Stable sort of the negated scores: equal scores keep the loop order.
    order = np.argsort(-(s_logit + e_logit), kind="stable")
    picked, seen = [], set()
    for k in order.tolist():
        if len(picked) >= n_best_size:
            break
        wi = int(win[k])
        if wi < 0:
            text, cs, ce = "", -1, -1
        else:
            w = windows[wi]
            cs = int(offsets[w.doc_start + int(ss[k]) - w.context_offset, 0])
            ce = int(offsets[w.doc_start + int(ee[k]) - w.context_offset, 1])
            text = ex.context[cs:ce]
            if text in seen:
                continue
        seen.add(text)
        picked.append((text, float(s_logit[k]), float(e_logit[k]), cs, ce))
    if null is not None and "" not in seen:
        picked.append(("", null[1], null[2], -1, -1))
    if not picked:  # no window, or no valid span in v1.1: a nonce answer as Google's "empty"
        picked.append(("", 0.0, 0.0, -1, -1))
    probs = _softmax([p[1] + p[2] for p in picked])
    nbest = [NbestEntry(t, sl_, el_, prob, cs, ce)
             for (t, sl_, el_, cs, ce), prob in zip(picked, probs)]
    return nbest, None if null is None else null[0]


def postprocess(features: SquadFeatures, start_logits: Sequence[np.ndarray],
                end_logits: Sequence[np.ndarray], n_best_size: int = 20,
                max_answer_length: int = 30, version_2: bool = False,
                null_score_diff_threshold: float = 0.0) -> SquadPredictions:
    """Answers for every example of `features` from per-window logits.

    Args:
      start_logits / end_logits: one float array per window of
        `features.windows` (index = feature index), length >= the window's
        input_ids; positions beyond it (padding) are ignored.
    """
    if len(start_logits) != len(features.windows) or len(end_logits) != len(features.windows):
        raise ValueError(f"postprocess: {len(start_logits)} start / {len(end_logits)} end "
                         f"logit rows for {len(features.windows)} windows")
    by_example = collections.defaultdict(list)
    for i, w in enumerate(features.windows):
        by_example[w.example_index].append(i)
    out = SquadPredictions({}, {}, {}, {})
    for ei, ex in enumerate(tqdm(features.examples, desc="squad decode", unit="q", leave=False,
                                 disable=len(features.examples) < 1000)):
        idx = by_example.get(ei, [])
        nbest, null = decode_example(
            ex, [features.windows[i] for i in idx], features.char_offsets[ei],
            [start_logits[i] for i in idx], [end_logits[i] for i in idx],
            n_best_size, max_answer_length, version_2)
        out.nbest[ex.qas_id] = nbest
        if not version_2:
            out.predictions[ex.qas_id] = nbest[0].text
            continue
        best = next((x for x in nbest if x.text), None)
        out.best_non_null[ex.qas_id] = best
        if best is None or null is None:
            diff = NO_SPAN_ODDS
        else:
            diff = null - best.start_logit - best.end_logit
        out.null_odds[ex.qas_id] = diff
        out.predictions[ex.qas_id] = "" if diff > null_score_diff_threshold else best.text
    return out


# ----------------------------------------------------------------------------
# Metrics and prediction files
# ----------------------------------------------------------------------------

def score_predictions(examples: Sequence[SquadExample], preds: SquadPredictions,
                      version_2: bool, null_score_diff_threshold: float = 0.0
                      ) -> dict[str, float]:
    """Official-script metrics of the predictions.

    v1.1: evaluate-v1.1 on predictions.json. v2.0: evaluate-v2.0 on
    predictions.json with `--na-prob-file null_odds.json --na-prob-thresh
    <null_score_diff_threshold>` (the threshold already applied, so the
    headline numbers score predictions.json as written), including
    best_exact / best_f1 and their thresholds. Because those are bounded by
    the answers left in predictions.json, v2.0 also reports full_best_* : the
    same search over the best non-null answers (= the official best_* of
    predictions written with an infinite threshold).
    """
    gold = gold_answers(examples)
    if not version_2:
        return squad_metrics.evaluate_v1(gold, preds.predictions)
    out = squad_metrics.evaluate_v2(gold, preds.predictions, preds.null_odds,
                                    null_score_diff_threshold)
    non_null = {q: (b.text if b is not None else "") for q, b in preds.best_non_null.items()}
    exact, f1 = squad_metrics.raw_scores_v2(gold, non_null)
    has_answer = {q: bool(a) for q, a in gold.items()}
    out["full_best_exact"], out["full_best_exact_thresh"] = squad_metrics.find_best_threshold(
        non_null, exact, preds.null_odds, has_answer)
    out["full_best_f1"], out["full_best_f1_thresh"] = squad_metrics.find_best_threshold(
        non_null, f1, preds.null_odds, has_answer)
    return out


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """json.dump to a temporary file beside `path`, then os.replace."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_prediction_files(out_dir: str | os.PathLike, preds: SquadPredictions,
                           metrics: Mapping[str, float] | None, version_2: bool) -> None:
    """predictions.json, nbest_predictions.json, null_odds.json (v2.0) and
    eval_results.json, in run_squad's / the official scripts' formats."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "predictions.json"), preds.predictions)
    write_json(os.path.join(out_dir, "nbest_predictions.json"),
               {q: [x.as_json() for x in v] for q, v in preds.nbest.items()})
    if version_2:
        write_json(os.path.join(out_dir, "null_odds.json"), preds.null_odds)
    if metrics is not None:
        write_json(os.path.join(out_dir, "eval_results.json"), dict(metrics))
