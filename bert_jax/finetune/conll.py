"""CoNLL-2003 NER: column files / TFDS, first-subword features, windows, conlleval metrics.

Data: the shared task's column files (`WORD POS CHUNK NER`, blank line between
sentences, `-DOCSTART- -X- O O` between documents; the English files are IOB1)
or TFDS `conll2003` (which drops the document boundaries). Tags are converted
to IOB2 for training (every entity opens with `B-`), and the label set is read
from the training data: 'O', then `B-T` and `I-T` for every type T, sorted.

Features follow the BERT paper's NER setup: each word is labeled on its first
word piece; other pieces, special tokens and context tokens carry -100 (no
loss). A sentence longer than the window is cut into overlapping windows that
start on word boundaries, and at evaluation each word is read from the window
where it has the most context (Google BERT's `_check_is_max_context`). With
`doc_context`, a short sentence is surrounded by the neighbouring sentences of
its document, whole words only, to fill the window as unlabeled context
(the paper's "maximal document context").

Evaluation writes conlleval's input (`WORD GOLD PRED`, gold converted to IOB2,
so that token accuracy compares like with like; entity scores are the same for
IOB1 and IOB2 gold) and scores it with `conlleval.py`, which reproduces the
Perl script's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune import batching, conlleval
from bert_jax.finetune.task import Batch, FinetuneTask, PredictRequest, register
from bert_jax.storage import paths

IGNORE = -100
DOCSTART = "-DOCSTART-"
TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}
_FIELD_SEP = re.compile(r"[ \t]+")
_IOB_TAG = re.compile(r"^(O|[BI]-.+)$")


# ------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence. `line` is the 1-based line of its first word in `source`
    (word i sits on line + i); `doc` numbers documents from 0 within the
    source, -1 where documents are unknown (TFDS)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    doc: int
    source: str
    line: int


def read_conll_file(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of a CoNLL column file: WORD first, NER tag last, any columns between.

    Raises:
      ValueError `path:line: ...` for a line whose column count differs from
      the first token line's, a line of one column, a tag that is neither O
      nor B-/I-TYPE, text that is not UTF-8, or a file without sentences.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    doc, first_line, n_cols, n_cols_line = 0, 0, None, 0
    lineno = 0

    def flush():
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), doc, str(path), first_line))
        words, tags = [], []

    with open(paths.local_copy(path), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
            fields = _FIELD_SEP.split(line.strip(" \t"))
            if fields == [""]:
                flush()
                continue
            if fields[0] == DOCSTART:
                flush()
                if sentences and sentences[-1].doc == doc:
                    doc += 1
                continue
            if n_cols is None:
                n_cols, n_cols_line = len(fields), lineno
                if n_cols < 2:
                    raise ValueError(f"{path}:{lineno}: 1 column; expected WORD ... TAG "
                                     f"(CoNLL-2003: WORD POS CHUNK NER)")
            elif len(fields) != n_cols:
                raise ValueError(f"{path}:{lineno}: {len(fields)} columns where line "
                                 f"{n_cols_line} has {n_cols} (WORD POS CHUNK NER)")
            if not _IOB_TAG.match(fields[-1]):
                raise ValueError(f"{path}:{lineno}: tag {fields[-1]!r} is not O, B-TYPE or "
                                 f"I-TYPE")
            if not words:
                first_line = lineno
            words.append(fields[0])
            tags.append(fields[-1])
    flush()
    if not sentences:
        raise ValueError(f"{path}:{max(lineno, 1)}: no sentences (empty file or only "
                         f"{DOCSTART} lines)")
    return sentences


def read_tfds(split: str, name: str = "conll2003", data_dir: str | None = None
              ) -> list[Sentence]:
    """Sentences of TFDS `name` (features tokens / ner); TFDS keeps no documents."""
    # optional (the `tf` extra): only TFDS / TF1 paths need TensorFlow
    import tensorflow_datasets as tfds

    ds, info = tfds.load(name, split=TFDS_SPLITS.get(split, split), data_dir=data_dir or None,
                         with_info=True, shuffle_files=False)
    names = info.features["ner"].feature.names
    source = f"tfds:{name}/{split}"
    out = []
    for i, ex in enumerate(tfds.as_numpy(ds)):
        words = tuple(w.decode("utf-8") for w in ex["tokens"])
        tags = tuple(names[int(t)] for t in ex["ner"])
        if len(words) != len(tags):
            raise ValueError(f"{source}#{i}: {len(words)} tokens but {len(tags)} ner tags")
        if words:
            out.append(Sentence(words, tags, -1, f"{source}#{i}", 1))
    if not out:
        raise ValueError(f"{source}: no sentences")
    return out


# ---------------------------------------------------------------------- tags


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags: an `I-T` that opens an entity (after O or another type)
    becomes `B-T`. IOB2 input comes back unchanged."""
    out = []
    prev = "O"
    for t in tags:
        if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def label_names_from(sentences: Sequence[Sentence]) -> list[str]:
    """'O' followed by sorted B-/I- tags of every entity type in `sentences`."""
    types = {t[2:] for s in sentences for t in s.tags if t != "O"}
    return ["O"] + sorted(f"{p}-{t}" for t in types for p in "BI")


def check_entity_types(sentences: Sequence[Sentence], allowed: Sequence[str]) -> None:
    """Every tag's entity type must be a known one: a typo ('B-PRE') would
    otherwise become a class of its own."""
    allowed_set = set(allowed)
    for s in sentences:
        for i, t in enumerate(s.tags):
            if t != "O" and t[2:] not in allowed_set:
                raise ValueError(f"{s.source}:{s.line + i}: tag {t!r} has entity type "
                                 f"{t[2:]!r}, not one of config.entity_types "
                                 f"({', '.join(allowed)}); add it there to learn a new type")


def tag_ids(sentence: Sentence, label_index: Mapping[str, int]) -> np.ndarray:
    """int32 [words]: label ids of the IOB2 form of the sentence's tags.

    Raises:
      ValueError `source:line: ...` for a tag outside the label set.
    """
    iob2 = iob1_to_iob2(sentence.tags)
    ids = np.empty(len(iob2), np.int32)
    for i, t in enumerate(iob2):
        if t not in label_index:
            raise ValueError(f"{sentence.source}:{sentence.line + i}: tag {sentence.tags[i]!r} "
                             f"is not in the label set learned from the training data "
                             f"({', '.join(label_index)})")
        ids[i] = label_index[t]
    return ids


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


# ---------------------------------------------------------------------- task


@register
class ConllTask(FinetuneTask):
    """CoNLL NER as a `FinetuneTask` (head 'tagging'). Splits are read and
    featurized on first use."""

    kind = "conll"
    names = ("conll2003", "conll")
    heads = ("tagging",)
    name = "conll2003"
    head = "tagging"
    main_metric = "f1"
    # O and B-/I- of PER, ORG, LOC, MISC: what `aot` plans for without the data.
    num_labels = 9

    @classmethod
    def build(cls, config, tokenizer) -> ConllTask:
        return build_task(config, tokenizer)

    @classmethod
    def predict(cls, predictor, request: PredictRequest) -> list[tuple[dict, str]]:
        """Entities of each raw-text line."""
        if not request.lines:
            raise ValueError("no input: the input has only empty lines")
        c = predictor.task_config
        out = []
        for line in request.lines:
            ents = tag_text(line, predictor.predict_fn, predictor.tokenizer,
                            predictor.label_names,
                            max_seq_length=int(c.get("max_seq_length", 128)),
                            window_stride=int(c.get("window_stride", 64)),
                            length_buckets=tuple(c.get("length_buckets", (32, 64, 128))))
            out.append(({"text": line, "entities": ents}, line))
        return out

    def __init__(self, load_split: Callable[[str], list[Sentence]], tokenizer,
                 max_seq_length: int = 128, window_stride: int = 64, doc_context: bool = False,
                 length_buckets: Sequence[int] = (32, 64, 128),
                 label_names: Sequence[str] | None = None, packing: int = 0,
                 entity_types: Sequence[str] | None = None,
                 eval_splits: Sequence[str] = ("dev",)):
        if max_seq_length > max(length_buckets):
            raise ValueError(f"max_seq_length={max_seq_length} exceeds the largest of "
                             f"length_buckets={tuple(length_buckets)}")
        # Training rows of up to `packing` whole windows (segment-aware
        # attention); evaluation stays one window per row.
        self._packing = batching.examples_per_row(packing)
        self._load_split = load_split
        # Evaluated (metrics + predictions.txt under eval/<label>/<split>/) at
        # every evaluation; the best model is picked on the first (dev).
        self.eval_splits = tuple(eval_splits)
        self._tokenizer = tokenizer
        self._kw = dict(max_seq_length=max_seq_length, window_stride=window_stride,
                        doc_context=doc_context)
        self._buckets = tuple(length_buckets)
        self._pad = {"input_ids": tokenizer.pad_id}
        self._sentences: dict[str, list[Sentence]] = {}
        self._features: dict[str, Features] = {}
        # Restored from a checkpoint when given, so ids keep their meaning.
        if label_names is None and entity_types:
            check_entity_types(self.sentences("train"), entity_types)
        self.label_names = (list(label_names) if label_names is not None
                            else label_names_from(self.sentences("train")))
        self.num_labels = len(self.label_names)

    def sentences(self, split: str) -> list[Sentence]:
        if split not in self._sentences:
            self._sentences[split] = self._load_split(split)
        return self._sentences[split]

    def features(self, split: str) -> Features:
        if split not in self._features:
            self._features[split] = build_features(
                self.sentences(split), self._tokenizer, self.label_names, **self._kw,
                desc=f"conll2003/{split}")
        return self._features[split]

    def num_train_examples(self) -> int:
        return len(self.features("train").examples)

    def input_report(self, split: str) -> dict | None:
        if split not in self._sentences:
            return None
        return {"examples": len(self._sentences[split]), "skipped": 0, "reasons": {}}

    def train_steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch (packed: batches of `batch_size` rows)."""
        return batching.steps_per_epoch(
            [len(ex["input_ids"]) for ex in self.features("train").examples], batch_size,
            self._buckets, self._packing)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        examples = [{k: v for k, v in ex.items() if k != "feature_index"}
                    for ex in self.features("train").examples]
        if self._packing:
            return (_tagging_rows(b) for b in batching.iterate_packed_batches(
                examples, batch_size, self._buckets, self._packing, seed=seed, epoch=epoch,
                pad_values=self._pad))
        return batching.iterate_batches(examples, batch_size, self._buckets, shuffle=True,
                                        seed=seed, epoch=epoch, pad_values=self._pad)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every window of `split` once, in order; filler rows have feature_index -1."""
        return batching.iterate_batches(self.features(split).examples, batch_size, self._buckets,
                                        shuffle=False,
                                        pad_values={**self._pad, "feature_index": -1})

    def predicted_tags(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]]
                       ) -> list[list[str]]:
        """Per sentence of `split`, the predicted IOB2 tag of every word."""
        feats = self.features(split)
        pred = merge_predictions(feats, outputs, split)
        off = feats.sentence_offsets
        return [[self.label_names[p] for p in pred[off[i]:off[i + 1]]]
                for i in range(len(off) - 1)]

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """conlleval metrics (percent); with out_dir writes
        `<out_dir>/<split>/predictions.txt` (WORD GOLD PRED) and `eval_results.json`."""
        sents = self.sentences(split)
        pred = self.predicted_tags(split, outputs)
        gold = [iob1_to_iob2(s.tags) for s in sents]
        metrics = conlleval.metrics(conlleval.count_sentences(gold, pred))
        if out_dir is not None:
            split_dir = pathlib.Path(out_dir) / split
            split_dir.mkdir(parents=True, exist_ok=True)
            conlleval.write_file(split_dir / "predictions.txt", [s.words for s in sents], gold,
                                 pred)
            summary = {"task": self.name, "split": split, "num_sentences": len(sents),
                       "label_names": self.label_names, **metrics}
            conlleval.write_text_atomic(split_dir / "eval_results.json",
                                        json.dumps(summary, indent=2) + "\n")
        logging.info("conll2003/%s: F1 %.2f (P %.2f, R %.2f), accuracy %.2f", split,
                     metrics["f1"], metrics["precision"], metrics["recall"],
                     metrics["accuracy"])
        return metrics


def _tagging_rows(batch: Batch) -> Batch:
    """A packed batch for the tagging head: labels are already per token
    (concatenated label_ids, -100 between windows), so the per-example [CLS]
    offsets are dropped; example_weights [B, K] keep counting windows."""
    batch.pop("cls_positions")
    return batch


def build_task(config, tokenizer, label_names: Sequence[str] | None = None) -> ConllTask:
    """A `ConllTask` from `configs/finetune/conll2003.py`'s fields: column files
    (train_file / dev_file / test_file), or TFDS when `config.tfds` is set."""
    tfds_name = config.get("tfds")
    limits = {"train": config.get("max_train_sentences", 0) or 0}
    if tfds_name:
        if config.doc_context:
            raise ValueError("config.doc_context=True needs document boundaries (-DOCSTART- "
                             "lines); TFDS conll2003 drops them: use the column files")
        name = "conll2003" if tfds_name is True else str(tfds_name)

        def read(split):
            return read_tfds(split, name, config.get("tfds_data_dir") or None)
    else:
        files = {"train": config.train_file, "dev": config.dev_file,
                 "test": config.get("test_file", "")}

        def read(split):
            if not files.get(split):
                raise ValueError(f"config.{split}_file is not set")
            return read_conll_file(files[split])

    def load(split):
        sents = read(split)
        return sents[:limits[split]] if limits.get(split) else sents

    # test_file (labelled, as eng.testb is) is evaluated and predicted like dev,
    # into its own eval/<label>/test/ (checks.check_files refuses it with TFDS).
    eval_splits = ("dev", "test") if not tfds_name and config.get("test_file") else ("dev",)
    return ConllTask(load, tokenizer, max_seq_length=config.max_seq_length,
                     window_stride=config.window_stride, doc_context=config.doc_context,
                     length_buckets=tuple(config.length_buckets), label_names=label_names,
                     packing=config.get("packing", 0),
                     entity_types=tuple(config.get("entity_types") or ()),
                     eval_splits=eval_splits)


# ------------------------------------------------------------------ raw text


def tag_text(text: str, predict_fn: Callable[[Batch], Mapping[str, Any]], tokenizer,
             label_names: Sequence[str], max_seq_length: int = 128, window_stride: int = 64,
             batch_size: int = 8, length_buckets: Sequence[int] | None = None
             ) -> list[dict[str, Any]]:
    """Entities in raw text, grouped like transformers' ner pipeline with
    aggregation_strategy='first'.

    Words are the tokenizer's pre-tokenized words (whitespace and punctuation
    split; HF instead guesses sub-words from piece lengths, which differs only
    around [UNK] pieces); each takes the label and softmax score of its first
    piece, read from the window where it has most context; words whose IOB2
    tags form one chunk (B-T I-T ..., or a stray I-T run) are merged, as HF's
    group_entities merges them.

    Returns:
      [{'entity_group': type, 'score': mean word score, 'word': text[start:end],
        'start': int, 'end': int}] with character offsets into `text`.
    """
    enc = tokenizer.encode(text)
    real = [i for i, w in enumerate(enc.word_ids) if w is not None]
    if not real:
        return []
    ids = np.asarray([enc.ids[i] for i in real], np.int32)
    word_ids = [enc.word_ids[i] for i in real]
    offs = [enc.offsets[i] for i in real]
    is_start = [i == 0 or word_ids[i] != word_ids[i - 1] for i in range(len(real))]
    spans = windows(len(ids), is_start, max_seq_length - 2, window_stride)
    examples = [{"input_ids": np.concatenate([[tokenizer.cls_id], ids[lo:hi],
                                              [tokenizer.sep_id]]).astype(np.int32),
                 "token_type_ids": np.zeros(hi - lo + 2, np.int32)} for lo, hi in spans]
    logits = []
    for batch in batching.iterate_batches(examples, batch_size,
                                          tuple(length_buckets or (max_seq_length,)),
                                          shuffle=False, pad_values={"input_ids": tokenizer.pad_id}):
        out = np.asarray(predict_fn(batch)["logits"], np.float64)
        logits.extend(out[batch["example_weights"] > 0])
    starts = [i for i in range(len(ids)) if is_start[i]]
    ends = starts[1:] + [len(ids)]
    tags, scores = [], []
    for p in starts:
        j = max((j for j, (lo, hi) in enumerate(spans) if lo <= p < hi),
                key=lambda j: (context_score(p, *spans[j]), -j))
        z = logits[j][p - spans[j][0] + 1]
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        tags.append(label_names[int(probs.argmax())])
        scores.append(float(probs.max()))
    return [{"entity_group": t, "score": float(np.mean(scores[a:b])),
             "word": text[offs[starts[a]][0]:offs[ends[b - 1] - 1][1]],
             "start": offs[starts[a]][0], "end": offs[ends[b - 1] - 1][1]}
            for t, a, b in conlleval.chunks(tags)]
