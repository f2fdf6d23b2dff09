"""CoNLL-2003 NER: column files / TFDS, first-subword features, windows, conlleval metrics.

Data: the shared task's column files (`WORD POS CHUNK NER`, blank line between
sentences, `-DOCSTART- -X- O O` between documents; the English files are IOB1)
or TFDS `conll2003` (which drops the document boundaries). Tags are converted
to IOB2 for training (every entity opens with `B-`), and the label set is read
from the training data: 'O', then `B-T` and `I-T` for every type T, sorted.

Features (first-subword labels, word-boundary windows, the max-context read-back,
`doc_context`) are built in `conll_features`; files and tags are read in
`conll_sentences`.

Evaluation writes conlleval's input (`WORD GOLD PRED`, gold converted to IOB2,
so that token accuracy compares like with like; entity scores are the same for
IOB1 and IOB2 gold) and scores it with `conlleval.py`, which reproduces the
Perl script's numbers.

The sentences and their tags are read in `conll_sentences`, the windows and
features built (and predictions read back per word) in `conll_features`;
this module holds the task and the tagging of raw text.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bert_jax.finetune import batching, conlleval
from bert_jax.finetune.conll_features import (
    Features,
    build_features,
    context_score,
    merge_predictions,
    windows,
)
from bert_jax.finetune.conll_sentences import (
    Sentence,
    check_entity_types,
    iob1_to_iob2,
    label_names_from,
    read_conll_file,
    read_tfds,
)
from bert_jax.finetune.task import Batch, FinetuneTask, PredictRequest, register

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

    def train_rows_per_step(self, examples_per_step: int, packed_rows: int = 0) -> int:
        """batching.rows_per_step over the training examples' lengths."""
        return batching.rows_per_step([len(f["input_ids"]) for f in self.features("train").examples],
                                      examples_per_step, self._buckets, self._packing, packed_rows)

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
