"""SQuAD v1.1 / v2.0: reading, windowed features, n-best span decoding, outputs.

The semantics are Google's `run_squad.py`, with one change of mechanism:
answers are located and cut through the tokenizer's character offsets instead
of whitespace tokens plus `get_final_text`, so a prediction is always a slice
of the original context (never detokenized word pieces).

- Features: `[CLS] question [SEP] window [SEP]`. The question is cut to
  `max_query_length` tokens; windows of up to `max_seq_length - len(q) - 3`
  context tokens start every `doc_stride` tokens (Google's stride is the step,
  not the overlap). Training labels are the answer's first / last token inside
  the window, or [CLS] (0, 0) when the answer is not wholly inside it or the
  question is unanswerable.
- Decoding: for each window the `n_best_size` best start and end positions
  (ties by position), kept when both lie in the window's context, the start
  token has its maximum context in this window (`_check_is_max_context`), and
  the span is at most `max_answer_length` tokens; then all windows of an
  example are ranked together by start + end logit and deduplicated by text.
  v2.0 adds the null answer, scored by the smallest [CLS] start + end over the
  windows, and predicts "" when null minus the best non-null score exceeds
  `null_score_diff_threshold`.

Bad input (an answer_start that does not point at the answer text, an empty
context, a question longer than max_query_length, an answer that covers no
token) is counted in an `InputReport` and skipped in training, never raised.
Non-ASCII text is counted too but kept: the tokenizer handles it (a third of
dev-v1.1's questions have some), and the offsets still point into the original.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune import batching, squad_metrics
from bert_jax.finetune.task import Batch, FinetuneTask, PredictFn, PredictRequest, register
from bert_jax.storage import paths

# Null odds written for an example without any non-null span (e.g. an empty
# context): larger than any real logit difference, and finite for JSON.
NO_SPAN_ODDS = 1e6


# ----------------------------------------------------------------------------
# Examples and reading
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one paragraph. `answers` is empty for unanswerable
    v2.0 questions (whose `plausible_answers` the model never trains on)."""

    qas_id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    is_impossible: bool = False
    title: str = ""
    plausible_answers: tuple[Answer, ...] = ()


def _answers(raw: Any, where: str) -> tuple[Answer, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: answers must be a list")
    out = []
    for i, a in enumerate(raw):
        try:
            out.append(Answer(str(a["text"]), int(a["answer_start"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}.answers[{i}]: needs 'text' and integer "
                             f"'answer_start' ({e!r})") from None
    return tuple(out)


def examples_from_data(data: Sequence[Mapping], source: str = "<data>") -> list[SquadExample]:
    """SquadExamples from the official JSON's `data` list (v1.1 or v2.0).

    Raises:
      ValueError: one line naming `source` and the article/paragraph/question
        when the structure is not SQuAD's, or a question id repeats.
    """
    examples, seen = [], set()
    if not isinstance(data, list):
        raise ValueError(f"{source}: 'data' must be a list of articles")
    for i, article in enumerate(data):
        for j, paragraph in enumerate(_field(article, "paragraphs", f"{source}: data[{i}]")):
            where = f"{source}: data[{i}].paragraphs[{j}]"
            context = str(_field(paragraph, "context", where))
            for k, qa in enumerate(_field(paragraph, "qas", where)):
                qwhere = f"{where}.qas[{k}]"
                qid = str(_field(qa, "id", qwhere))
                if qid in seen:
                    raise ValueError(f"{qwhere}: duplicate question id {qid!r}")
                seen.add(qid)
                examples.append(SquadExample(
                    qas_id=qid, question=str(_field(qa, "question", qwhere)), context=context,
                    answers=_answers(qa.get("answers", []), qwhere),
                    is_impossible=bool(qa.get("is_impossible", False)),
                    title=str(article.get("title", "")),
                    plausible_answers=_answers(qa.get("plausible_answers", []), qwhere)))
    return examples


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ValueError(f"{where}: missing {key!r}")
    return obj[key]


def load_squad_json(path: str | os.PathLike) -> dict:
    """The parsed official JSON file ({"version", "data"}).

    Raises:
      ValueError: one line naming the file when it is not JSON or has no data list.
    """
    try:
        with open(paths.local_copy(path), encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: "
                         f"{e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ValueError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    return obj


def read_squad_json(path: str | os.PathLike) -> list[SquadExample]:
    """Every question of an official SQuAD v1.1 / v2.0 JSON file, in file order."""
    return examples_from_data(load_squad_json(path)["data"], source=str(path))


def read_squad_tfds(name: str, split: str, data_dir: str | None = None) -> list[SquadExample]:
    """Every question of TFDS `squad/v1.1` or `squad/v2.0` (split 'train' or
    'validation'), in the dataset's order."""
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # TF only reads records here; keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)

    def text(x) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    def answers(d) -> tuple[Answer, ...]:
        return tuple(Answer(text(t), int(s)) for t, s in zip(d["text"], d["answer_start"]))

    return [SquadExample(
        qas_id=text(r["id"]), question=text(r["question"]), context=text(r["context"]),
        answers=answers(r["answers"]), is_impossible=bool(r.get("is_impossible", False)),
        title=text(r["title"]),
        plausible_answers=answers(r["plausible_answers"]) if "plausible_answers" in r else ())
        for r in tfds.as_numpy(ds)]


def gold_answers(examples: Sequence[SquadExample]) -> dict[str, list[str]]:
    """question id -> gold answer texts ([] when unanswerable), for squad_metrics."""
    return {ex.qas_id: [] if ex.is_impossible else [a.text for a in ex.answers]
            for ex in examples}


# ----------------------------------------------------------------------------
# Offline data sets: the article split and the v2.0-style set from v1.1
# ----------------------------------------------------------------------------

def split_articles(data: Sequence[Mapping], n_train: int = 38, n_eval: int = 10
                   ) -> tuple[list[Mapping], list[Mapping]]:
    """The first `n_train` articles and the last `n_eval`: a fixed split in which
    no article (so no paragraph or question) is on both sides."""
    if n_train < 1 or n_eval < 1 or n_train + n_eval > len(data):
        raise ValueError(f"split_articles: n_train={n_train} + n_eval={n_eval} must be >= 1 "
                         f"each and fit the {len(data)} articles")
    return list(data[:n_train]), list(data[len(data) - n_eval:])


def build_unanswerable_v2(data: Sequence[Mapping], fraction: float = 0.5, seed: int = 0) -> dict:
    """A SQuAD v2.0-format data set from v1.1 articles, with unanswerable questions.

    Each paragraph keeps its questions (marked is_impossible=False) and gains
    round(fraction * #questions) questions drawn from OTHER articles, with
    is_impossible=True and no answers: a question about another topic is not
    answered by this paragraph. fraction=0.5 gives about a third unanswerable,
    as in train-v2.0. A pure function of (data, fraction, seed).

    Returns:
      {"version": "v2.0", "data": [...]}, ready for json.dump / examples_from_data.
    """
    if len(data) < 2:
        raise ValueError("build_unanswerable_v2: needs at least 2 articles to pair "
                         "questions with paragraphs of other articles")
    rng = np.random.default_rng(seed)
    pool = [[(qa["id"], qa["question"]) for p in a["paragraphs"] for qa in p["qas"]]
            for a in data]
    out = []
    for ai, article in enumerate(data):
        others = [i for i in range(len(data)) if i != ai and pool[i]]
        paragraphs = []
        for pi, paragraph in enumerate(article["paragraphs"]):
            qas = [{**qa, "is_impossible": False} for qa in paragraph["qas"]]
            k = math.floor(len(qas) * fraction + 0.5)
            chosen: set[tuple[str, str]] = set()
            while len(chosen) < k and others:
                src = pool[others[rng.integers(len(others))]]
                chosen.add(src[rng.integers(len(src))])
            for qid, question in sorted(chosen):
                qas.append({"question": question, "id": f"{qid}_unanswerable_{ai}_{pi}",
                            "answers": [], "is_impossible": True})
            paragraphs.append({"context": paragraph["context"], "qas": qas})
        out.append({"title": article.get("title", ""), "paragraphs": paragraphs})
    return {"version": "v2.0", "data": out}


def subsample_examples(examples: Sequence[SquadExample], n: int, seed: int = 0
                       ) -> list[SquadExample]:
    """n examples drawn without replacement (a pure function of seed), in their
    original order; all of them when n <= 0 or n >= len(examples). Benchmarks
    use it to give two frameworks the very same training questions."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[int(i)] for i in keep]


# ----------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class InputReport:
    """Counts of questionable input; `skipped` = examples that got no window
    (in training: every bad one; in evaluation: empty contexts)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: int = 0
    examples: int = 0

    def summary(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"{self.examples} examples, {self.skipped} skipped" + (f" ({parts})" if parts
                                                                       else "")


@dataclasses.dataclass(frozen=True)
class Window:
    """One model input: a window of an example's context.

    input_ids / token_type_ids: int32 [n]. Context token t of the example sits
    at position `context_offset + t - doc_start` for doc_start <= t <
    doc_start + doc_length. max_context: bool [doc_length], True where this
    window gives the token its most context. start/end_position: the labels
    (0 = [CLS] when the answer is not in this window).
    """

    example_index: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    context_offset: int
    doc_start: int
    doc_length: int
    max_context: np.ndarray
    start_position: int = 0
    end_position: int = 0


@dataclasses.dataclass
class SquadFeatures:
    """Windows of a list of examples plus what decoding needs: per example the
    character offsets (int32 [T, 2]) of its context tokens."""

    examples: list[SquadExample]
    windows: list[Window]
    char_offsets: list[np.ndarray]
    report: InputReport

    def feature_dicts(self, with_index: bool) -> list[dict[str, Any]]:
        """Per-window dicts for bert_jax.finetune.batching."""
        out = []
        for i, w in enumerate(self.windows):
            d = {"input_ids": w.input_ids, "token_type_ids": w.token_type_ids,
                 "start_positions": w.start_position, "end_positions": w.end_position}
            if with_index:
                d["feature_index"] = i
            out.append(d)
        return out


def max_context_mask(starts: np.ndarray, lengths: np.ndarray, n_tokens: int) -> np.ndarray:
    """bool [W, T]: token t has its maximum context in window w.

    Google's `_check_is_max_context`: a token's score in a window is
    min(tokens left of it, tokens right of it) + 0.01 * window length, and the
    first window with the highest score wins.
    """
    pos = np.arange(n_tokens)[None, :]
    left = pos - starts[:, None]
    right = (starts + lengths - 1)[:, None] - pos
    score = np.minimum(left, right) + 0.01 * lengths[:, None]
    score = np.where((left >= 0) & (right >= 0), score, -np.inf)
    best = score.argmax(axis=0)
    return best[None, :] == np.arange(len(starts))[:, None]


def doc_windows(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each context window: Google's loop, where a new window
    starts `doc_stride` tokens after the previous one until one reaches the end."""
    spans, start = [], 0
    while start < n_tokens:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length == n_tokens:
            break
        start += min(length, doc_stride)
    return spans


def _token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last context token overlapping [char_start, char_end), or None."""
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1
    return (first, last) if first <= last else None


def _answer_tokens(ex: SquadExample, offsets: np.ndarray, report: InputReport
                   ) -> tuple[tuple[int, int] | None, bool]:
    """(first answer's token span or None, usable). Unanswerable: (None, True);
    a missing or misplaced answer, or one covering no token: (None, False),
    counted in `report`."""
    if ex.is_impossible:
        return None, True
    if not ex.answers:
        report.counts["missing_answer"] += 1
        return None, False
    a = ex.answers[0]
    end = a.start + len(a.text)
    if a.start < 0 or end > len(ex.context) or ex.context[a.start:end] != a.text:
        report.counts["answer_start_mismatch"] += 1
        return None, False
    span = _token_span(offsets, a.start, end)
    if span is None:
        report.counts["answer_covers_no_token"] += 1
    return span, span is not None


def _strip_special(enc) -> tuple[np.ndarray, np.ndarray]:
    """ids (int32 [T]) and offsets (int32 [T, 2]) without [CLS] / [SEP]."""
    ids = np.asarray(enc.ids[1:-1], np.int32)
    offsets = np.asarray(enc.offsets[1:-1], np.int32).reshape(-1, 2)
    return ids, offsets


def build_features(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = 384,
                   doc_stride: int = 128, max_query_length: int = 64, training: bool = False,
                   desc: str = "squad") -> SquadFeatures:
    """Windows for every example (training: only examples with usable labels).

    Each distinct context is tokenized once (a paragraph has ~5 questions).
    Evaluation keeps every example with a non-empty context and cuts long
    questions to max_query_length, as Google does; training skips those, and
    examples whose answer cannot be placed.

    Args:
      tokenizer: bert_jax.data.tokenizer.Tokenizer (its offsets locate answers).
      training: skip examples with bad labels instead of only counting them.
      desc: progress bar label.
    """
    max_tokens = max_seq_length - max_query_length - 3
    if max_tokens < 1 or doc_stride < 1:
        raise ValueError(f"max_seq_length={max_seq_length}, max_query_length={max_query_length}, "
                         f"doc_stride={doc_stride}: leave no room for the context")
    report = InputReport(examples=len(examples))
    contexts = list(dict.fromkeys(ex.context for ex in examples))
    ctx_index = {c: i for i, c in enumerate(contexts)}
    ctx_tok = [_strip_special(e) for e in tokenizer.encode_batch(contexts)]
    q_tok = [_strip_special(e)[0] for e in tokenizer.encode_batch([ex.question for ex in examples])]
    cls, sep = np.int32(tokenizer.cls_id), np.int32(tokenizer.sep_id)
    windows, char_offsets = [], []
    for ei, ex in enumerate(tqdm(examples, desc=f"{desc} windows", unit="q", leave=False,
                                 disable=len(examples) < 1000)):
        ids, offsets = ctx_tok[ctx_index[ex.context]]
        char_offsets.append(offsets)
        if not (ex.question.isascii() and ex.context.isascii()):
            report.counts["non_ascii"] += 1
        if len(ids) == 0:
            report.counts["empty_context"] += 1
            report.skipped += 1
            continue
        q = q_tok[ei]
        usable = len(q) <= max_query_length
        if not usable:
            report.counts["question_too_long"] += 1
            q = q[:max_query_length]
        span, answer_ok = _answer_tokens(ex, offsets, report)
        if training and not (usable and answer_ok):
            report.skipped += 1
            continue
        windows.extend(_windows(ei, q, ids, span, cls, sep, max_seq_length - len(q) - 3,
                                doc_stride))
    return SquadFeatures(list(examples), windows, char_offsets, report)


def _windows(example_index: int, q: np.ndarray, ids: np.ndarray, span: tuple[int, int] | None,
             cls: np.int32, sep: np.int32, max_tokens: int, doc_stride: int) -> list[Window]:
    spans = doc_windows(len(ids), max_tokens, doc_stride)
    starts = np.array([s for s, _ in spans])
    lengths = np.array([n for _, n in spans])
    mask = max_context_mask(starts, lengths, len(ids))
    offset = len(q) + 2
    out = []
    for w, (start, length) in enumerate(spans):
        input_ids = np.concatenate([[cls], q, [sep], ids[start:start + length], [sep]]
                                   ).astype(np.int32)
        type_ids = np.zeros(len(input_ids), np.int32)
        type_ids[offset:] = 1
        s = e = 0
        if span is not None and start <= span[0] and span[1] < start + length:
            s, e = span[0] - start + offset, span[1] - start + offset
        out.append(Window(example_index, input_ids, type_ids, offset, start, length,
                          mask[w, start:start + length], s, e))
    return out


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


# ----------------------------------------------------------------------------
# The fine-tuning task
# ----------------------------------------------------------------------------

@register
class SquadTask(FinetuneTask):
    """FinetuneTask for SQuAD: span head, train/eval windows, official metrics."""

    kind = "squad"
    names = ("squad",)
    heads = ("span",)
    accepts_question = True
    head = "span"
    num_labels = 2
    main_metric = "f1"
    label_names: list[str] = []

    @classmethod
    def build(cls, config, tokenizer) -> SquadTask:
        return build_task(config, tokenizer)

    @classmethod
    def train_file(cls, config) -> str | None:
        # article_split trains on the first articles of dev_file.
        return config.dev_file if config.get("article_split") else config.get("train_file")

    @classmethod
    def unread_files(cls, config, tfds: bool) -> dict[str, str]:
        if tfds:
            return {"train_file": "with config.tfds (TFDS brings its own splits)"}
        if config.get("article_split"):
            return {"train_file": f"with config.article_split={config.article_split!r} (the "
                                  "first articles of dev_file train); set "
                                  "config.article_split='' to train on it"}
        return {}

    @classmethod
    def predict(cls, predictor, request: PredictRequest) -> list[tuple[dict, str]]:
        """Answers to --question/--context, or to every question of a SQuAD JSON file."""
        if request.question is not None:
            items = [("q", request.question, request.context)]
        elif request.input_path:
            examples = read_squad_json(paths.local_copy(request.input_path))
            items = [(e.qas_id, e.question, e.context) for e in examples]
        else:
            raise ValueError("a QA model needs --question and --context, or --input=FILE "
                             "(SQuAD JSON)")
        out = []
        for qid, q, c in items:
            text, score, start, end = answer(q, c, predictor.predict_fn, predictor.tokenizer,
                                             predictor.task_config)
            out.append(({"id": qid, "answer": text, "score": float(score), "start": start,
                         "end": end}, q))
        return out

    def __init__(self, config, tokenizer, train_examples: Sequence[SquadExample],
                 eval_examples: Mapping[str, Sequence[SquadExample]]):
        if max(config.length_buckets) < config.max_seq_length:
            raise ValueError(f"length_buckets={tuple(config.length_buckets)}: the largest must "
                             f"be >= max_seq_length={config.max_seq_length}")
        self.config = config
        self.version_2 = str(config.version).startswith("2")
        self.name = f"squad_v{config.version}"
        self.eval_splits = tuple(eval_examples)
        feat = dict(tokenizer=tokenizer, max_seq_length=config.max_seq_length,
                    doc_stride=config.doc_stride, max_query_length=config.max_query_length)
        self.train = build_features(train_examples, training=True, desc=f"{self.name}/train",
                                    **feat)
        self.evals = {k: build_features(v, training=False, desc=f"{self.name}/{k}", **feat)
                      for k, v in eval_examples.items()}
        self._train_rows = self.train.feature_dicts(with_index=False)
        self._eval_rows = {k: f.feature_dicts(with_index=True) for k, f in self.evals.items()}
        for split, line in self.reports().items():
            logging.info("%s/%s input: %s", self.name, split, line)

    def reports(self) -> dict[str, str]:
        """One line per split on skipped / questionable input."""
        return {"train": self.train.report.summary(),
                **{k: f.report.summary() for k, f in self.evals.items()}}

    def input_report(self, split: str) -> dict:
        """Examples read, skipped (no window: bad label in training, empty
        context) and flagged, by reason (`InputReport.counts`)."""
        r = self.train.report if split == "train" else self._split(split)[0].report
        return {"examples": r.examples, "skipped": r.skipped, "reasons": dict(r.counts)}

    def num_train_examples(self) -> int:
        return len(self._train_rows)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        return batching.iterate_batches(self._train_rows, batch_size, self.config.length_buckets,
                                        shuffle=True, seed=seed, epoch=epoch)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return batching.iterate_batches(self._split(split)[1], batch_size,
                                        self.config.length_buckets, shuffle=False,
                                        pad_values={"feature_index": -1})

    def _split(self, split: str) -> tuple[SquadFeatures, list[dict]]:
        if split not in self.evals:
            raise ValueError(f"split={split!r}: SQuAD has {sorted(self.evals)}")
        return self.evals[split], self._eval_rows[split]

    def collect_logits(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]]
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-window start / end logits from the outputs of eval_batches(split).

        Rows are placed by the batch's `feature_index` when the outputs carry
        it, else by replaying the evaluation batch plan."""
        features, rows = self._split(split)
        n = len(features.windows)
        start: list[np.ndarray | None] = [None] * n
        end: list[np.ndarray | None] = [None] * n
        if outputs and all("feature_index" in o for o in outputs):
            plan = [np.asarray(o["feature_index"]) for o in outputs]
        else:
            size = np.asarray(outputs[0]["start_logits"]).shape[0] if outputs else 1
            plan = batching.plan_batches([len(r["input_ids"]) for r in rows], size,
                                         self.config.length_buckets, shuffle=False)
        if len(plan) != len(outputs):
            raise ValueError(f"evaluate({split!r}): {len(outputs)} output batches, "
                             f"expected {len(plan)}")
        for idx, o in zip(plan, outputs):
            sl, el = np.asarray(o["start_logits"]), np.asarray(o["end_logits"])
            for row, fi in enumerate(np.asarray(idx).tolist()):
                if 0 <= fi < n:
                    start[fi], end[fi] = sl[row], el[row]
        missing = sum(x is None for x in start)
        if missing:
            raise ValueError(f"evaluate({split!r}): no logits for {missing} of {n} windows")
        return start, end

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """Official metrics of the outputs of eval_batches(split); with out_dir
        writes predictions.json, nbest_predictions.json, null_odds.json (v2.0)
        and eval_results.json under `<out_dir>/<split>/`."""
        features = self._split(split)[0]
        start, end = self.collect_logits(split, outputs)
        c = self.config
        preds = postprocess(features, start, end, c.n_best_size, c.max_answer_length,
                            self.version_2, c.null_score_diff_threshold)
        metrics = score_predictions(features.examples, preds, self.version_2,
                                    c.null_score_diff_threshold)
        logging.info("%s/%s: %s", self.name, split,
                     ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if out_dir is not None:
            write_prediction_files(os.path.join(out_dir, split), preds, metrics, self.version_2)
        return metrics


def load_examples(config) -> tuple[list[SquadExample], dict[str, list[SquadExample]]]:
    """(train examples, {'dev': eval examples[, 'test': ...]}) as the config says:
    TFDS (`tfds`: True for squad/v<version>, or a name), the official JSON files, or the offline
    article split of one file (`article_split` 'N/M': its first N articles
    train, its last M evaluate), optionally turned into a v2.0-style set
    (`synthesize_v2`). `max_train_examples` / `max_eval_examples` > 0 keep a
    fixed random subset."""
    if config.tfds:
        name = config.tfds if isinstance(config.tfds, str) else f"squad/v{config.version}"
        data_dir = config.tfds_data_dir or None
        train = read_squad_tfds(name, "train", data_dir)
        dev = read_squad_tfds(name, "validation", data_dir)
    elif config.article_split:
        try:
            n_train, n_eval = (int(x) for x in str(config.article_split).split("/"))
        except ValueError:
            raise ValueError(f"article_split={config.article_split!r}: expected 'N/M', "
                             f"e.g. '38/10'") from None
        data = load_squad_json(config.dev_file)["data"]
        parts = split_articles(data, n_train, n_eval)
        if config.synthesize_v2:  # within each side, so no question crosses the split
            parts = tuple(build_unanswerable_v2(p, config.unanswerable_fraction,
                                                config.seed)["data"] for p in parts)
        train = examples_from_data(parts[0], f"{config.dev_file} (train articles)")
        dev = examples_from_data(parts[1], f"{config.dev_file} (eval articles)")
    else:
        train = read_squad_json(config.train_file) if config.train_file else []
        dev = read_squad_json(config.dev_file)
    train = subsample_examples(train, config.max_train_examples, config.seed)
    dev = subsample_examples(dev, config.max_eval_examples, config.seed)
    evals = {"dev": dev}
    if config.get("test_file"):
        # Evaluated and predicted like dev, into eval/<label>/test/ (whole:
        # max_eval_examples samples dev only). checks.check_files refuses it
        # with TFDS.
        evals["test"] = read_squad_json(config.test_file)
    return train, evals


def build_task(config, tokenizer) -> SquadTask:
    """The SQuAD FinetuneTask of a configs/finetune/squad.py config."""
    train, evals = load_examples(config)
    return SquadTask(config, tokenizer, train, evals)


# ----------------------------------------------------------------------------
# Single-question prediction (bert_jax.predict)
# ----------------------------------------------------------------------------

def answer(question: str, context: str, predict_fn: PredictFn, tokenizer, config
           ) -> tuple[str, float, int, int]:
    """The best answer to one question about one context.

    Args:
      predict_fn: batch -> {'start_logits', 'end_logits'} ([B, L] each).
      config: a squad config (sequence lengths, n-best, threshold, buckets).

    Returns:
      (answer text, start + end logit, char_start, char_end) with
      context[char_start:char_end] == text; for a v2.0 model that prefers no
      answer, ("", null score, -1, -1).
    """
    ex = SquadExample("predict", question, context)
    features = build_features([ex], tokenizer, config.max_seq_length, config.doc_stride,
                              config.max_query_length, training=False)
    start, end = [], []
    if features.windows:
        rows = features.feature_dicts(with_index=False)
        batch_size = len(rows)
        out = predict_fn(batching.collate(rows, np.arange(batch_size), batch_size,
                                          config.length_buckets))
        start = list(np.asarray(out["start_logits"]))
        end = list(np.asarray(out["end_logits"]))
    version_2 = str(config.version).startswith("2")
    preds = postprocess(features, start, end, config.n_best_size, config.max_answer_length,
                        version_2, config.null_score_diff_threshold)
    nbest = preds.nbest["predict"]
    if version_2 and preds.predictions["predict"] == "":
        null = next((x for x in nbest if not x.text), nbest[0])
        return "", null.start_logit + null.end_logit, -1, -1
    best = preds.best_non_null.get("predict") if version_2 else nbest[0]
    return best.text, best.start_logit + best.end_logit, best.char_start, best.char_end
