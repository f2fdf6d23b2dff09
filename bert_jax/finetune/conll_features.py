"""CoNLL features: first-subword labels in windows of word pieces, and
predictions read back per word.

Features follow the BERT paper's NER setup: each word is labeled on its first
word piece; other pieces, special tokens and context tokens carry -100 (no
loss). A sentence longer than the window is cut into overlapping windows that
start on word boundaries, and at evaluation each word is read from the window
where it has the most context (Google BERT's `_check_is_max_context`). With
`doc_context`, a short sentence is surrounded by the neighbouring sentences of
its document, whole words only, to fill the window as unlabeled context
(the paper's "maximal document context").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune.conll_sentences import Sentence, tag_ids

IGNORE = -100


# ------------------------------------------------------------------ windows


def windows(n: int, is_start: Sequence[bool], budget: int, stride: int) -> list[tuple[int, int]]:
    """Piece ranges [start, end) covering range(n), at most `budget` long.

    Consecutive windows start <= `stride` pieces apart, on the last word start
    within that step (so no window opens mid-word unless a single word is
    longer than the step).
    """
    if not 1 <= stride <= budget:
        raise ValueError(f"window_stride={stride}: must be in [1, {budget}] "
                         f"(max_seq_length - 2)")
    if n <= budget:
        return [(0, n)]
    out = []
    start = 0
    while True:
        end = min(start + budget, n)
        out.append((start, end))
        if end == n:
            return out
        nxt = start + stride
        k = nxt
        while k > start and not is_start[k]:
            k -= 1
        start = k if k > start else nxt


def context_score(pos, start: int, end: int):
    """Google BERT's max-context score of piece(s) `pos` (int or int array) in
    window [start, end): min(left, right context) + 0.01 * window length."""
    return np.minimum(pos - start, end - 1 - pos) + 0.01 * (end - start)


def _context_window(a: int, b: int, n: int, is_start: np.ndarray, budget: int
                    ) -> tuple[int, int]:
    """[start, end) around the sentence [a, b) of a document of n pieces,
    filled with whole words of its neighbours, about as much left as right."""
    room = budget - (b - a)
    left = min(a, room // 2)
    right = min(n - b, room - left)
    left = min(a, room - right)
    start, end = a - left, b + right
    while start < a and not is_start[start]:
        start += 1
    while b < end < n and not is_start[end]:
        end -= 1
    return start, end


# ----------------------------------------------------------------- features


@dataclasses.dataclass
class Features:
    """Model inputs of one split plus the map from outputs back to words.

    examples: per window, input_ids / token_type_ids / label_ids (int32 [len])
      and feature_index (its position in this list), for `batching`.
    positions, word_index: per window, the token positions (int32 [k]) whose
      prediction is used and the flat index of the word each one labels; every
      word of the split appears in exactly one window.
    sentence_offsets: int64 [S+1], flat index of each sentence's first word.
    """

    examples: list[dict[str, Any]]
    positions: list[np.ndarray]
    word_index: list[np.ndarray]
    sentence_offsets: np.ndarray


def word_pieces(words: Sequence[str], tokenizer) -> dict[str, list[int]]:
    """Word -> its piece ids, each distinct word tokenized once on its own (as
    transformers' `is_split_into_words`). A word with no pieces (only
    characters the normalizer drops) becomes [UNK] so it still gets a label."""
    uniq = sorted(set(words))
    out = {}
    for w, (ids, _) in zip(uniq, tokenizer.ids_and_word_starts(uniq)):
        out[w] = list(ids) if ids else [tokenizer.unk_id]
    return out


def _documents(sentences: Sequence[Sentence], doc_context: bool) -> list[list[int]]:
    """Sentence indices grouped into the units that share context."""
    if not doc_context:
        return [[i] for i in range(len(sentences))]
    if any(s.doc < 0 for s in sentences):
        raise ValueError("doc_context=True needs document boundaries (-DOCSTART- lines); "
                         "TFDS conll2003 drops them: use the column files")
    docs: list[list[int]] = []
    for i, s in enumerate(sentences):
        if i and s.doc == sentences[i - 1].doc and s.source == sentences[i - 1].source:
            docs[-1].append(i)
        else:
            docs.append([i])
    return docs


def build_features(sentences: Sequence[Sentence], tokenizer, label_names: Sequence[str],
                   max_seq_length: int = 128, window_stride: int = 64,
                   doc_context: bool = False, desc: str = "conll features") -> Features:
    """Windows `[CLS] pieces [SEP]` of every sentence with first-piece labels.

    Args:
      sentences: from `read_conll_file` / `read_tfds`.
      tokenizer: bert_jax.data.tokenizer.Tokenizer.
      label_names: IOB2 label set; tags are converted with `iob1_to_iob2`.
      max_seq_length: window length including [CLS] and [SEP].
      window_stride: most pieces between the starts of consecutive windows of
        one long sentence.
      doc_context: fill short sentences' windows with neighbouring sentences.
    """
    budget = max_seq_length - 2
    if budget < 1:
        raise ValueError(f"max_seq_length={max_seq_length}: must be >= 3")
    windows(0, [], budget, window_stride)  # validates the stride
    label_index = {n: i for i, n in enumerate(label_names)}
    pieces = word_pieces([w for s in sentences for w in s.words], tokenizer)
    offsets = np.zeros(len(sentences) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s.words) for s in sentences])
    feats = Features([], [], [], offsets)
    for doc in tqdm(_documents(sentences, doc_context), desc=desc, unit="doc",
                    disable=len(sentences) < 2000):
        _doc_features(feats, [sentences[i] for i in doc], doc, pieces, label_index, tokenizer,
                      budget, window_stride, doc_context)
    return feats


def _doc_features(feats: Features, doc: list[Sentence], sent_ids: list[int],
                  pieces: Mapping[str, list[int]], label_index: Mapping[str, int], tokenizer,
                  budget: int, stride: int, doc_context: bool) -> None:
    ids, is_start, first, sent_start = [], [], [], []
    for s in doc:
        sent_start.append(len(ids))
        firsts = []
        for w in s.words:
            firsts.append(len(ids))
            ids.extend(pieces[w])
            is_start.extend([True] + [False] * (len(pieces[w]) - 1))
        first.append(np.asarray(firsts, np.int64))
    sent_start.append(len(ids))
    ids_arr = np.asarray(ids, np.int32)
    starts = np.asarray(is_start, bool)
    for k, s in enumerate(doc):
        a, b = sent_start[k], sent_start[k + 1]
        labels = tag_ids(s, label_index)
        if b - a <= budget and doc_context:
            spans = [_context_window(a, b, len(ids), starts, budget)]
        else:
            spans = [(a + lo, a + hi) for lo, hi in windows(b - a, starts[a:b], budget, stride)]
        # Each word is read from the window where its first piece has most context.
        best = np.full(len(s.words), -1.0)
        owner = np.zeros(len(s.words), np.int64)
        for j, (lo, hi) in enumerate(spans):
            inside = (first[k] >= lo) & (first[k] < hi)
            score = np.where(inside, context_score(first[k], lo, hi), -1.0)
            better = score > best
            best[better], owner[better] = score[better], j
        for j, (lo, hi) in enumerate(spans):
            inside = np.nonzero((first[k] >= lo) & (first[k] < hi))[0]
            label_ids = np.full(hi - lo + 2, IGNORE, np.int32)
            label_ids[first[k][inside] - lo + 1] = labels[inside]
            mine = inside[owner[inside] == j]
            feats.positions.append((first[k][mine] - lo + 1).astype(np.int32))
            feats.word_index.append(feats.sentence_offsets[sent_ids[k]] + mine)
            input_ids = np.concatenate([[tokenizer.cls_id], ids_arr[lo:hi], [tokenizer.sep_id]])
            feats.examples.append({
                "input_ids": input_ids.astype(np.int32),
                "token_type_ids": np.zeros(hi - lo + 2, np.int32),
                "label_ids": label_ids,
                "feature_index": np.int32(len(feats.examples)),
            })


def merge_predictions(feats: Features, outputs: Sequence[Mapping[str, np.ndarray]],
                      split: str = "") -> np.ndarray:
    """int64 [words]: predicted label id per word of the split (flat order).

    Args:
      feats: the split's features.
      outputs: per batch of `eval_batches`, in order, `logits` float [B, L, C];
        rows are matched to windows by the batch's `feature_index` when the
        outputs carry it, else by order (padding rows come last).
    """
    pred = np.full(int(feats.sentence_offsets[-1]), -1, np.int64)
    row0 = 0
    for out in outputs:
        logits = np.asarray(out["logits"])
        if "feature_index" in out:
            index = np.asarray(out["feature_index"])
            keep = index >= 0  # padding rows carry -1 (see eval_batches)
            if "example_weights" in out:
                keep &= np.asarray(out["example_weights"]) > 0
        else:
            index = np.arange(row0, row0 + logits.shape[0])
            keep = index < len(feats.examples)
        row0 += logits.shape[0]
        for r in np.nonzero(keep)[0]:
            f = int(index[r])
            pred[feats.word_index[f]] = logits[r, feats.positions[f]].argmax(-1)
    missing = int((pred < 0).sum())
    if missing:
        raise ValueError(f"split={split!r}: outputs cover {len(pred) - missing} of {len(pred)} "
                         f"words; pass one output per eval_batches({split!r}) batch, in order")
    return pred
