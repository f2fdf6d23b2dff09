"""SQuAD windowed features, as Google's `run_squad.py` builds them (see
`squad.py` for the semantics): `[CLS] question [SEP] window [SEP]` rows, the
answer's token span per window, and the maximum-context mask decoding uses."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune.squad_examples import SquadExample

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
