"""GLUE: the nine tasks' data, batches, metrics and prediction files.

Data comes from a GLUE directory in the official layout of GLUE's
`download_glue_data.py`, or from TFDS `glue/<task>`: the task table and the
readers (TSV and TFDS, with their one-line errors and QQP's skipped rows) are
in `glue_data`.

`build_task(config, tokenizer)` returns a `GlueTask` (bert_jax.finetune.task's
protocol): length-bucketed batches, GLUE's metrics on the dev splits, and
test-set predictions in the GLUE submission format (`<TASK>.tsv` with header
`index\tprediction`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bert_jax.finetune import batching, glue_metrics
from bert_jax.finetune.glue_data import (
    TASKS,
    GlueExample,
    SplitData,
    TaskSpec,
    read_split,
    read_tfds_split,
    task_spec,
    tfds_dataset_name,
)
from bert_jax.finetune.task import Batch, FinetuneTask, register
from bert_jax.storage import paths

# --------------------------------------------------------------- features


def featurize(examples: Sequence[GlueExample], spec: TaskSpec, tokenizer,
              max_seq_length: int, desc: str = "") -> list[dict[str, Any]]:
    """`[CLS] a [SEP] (b [SEP])` ids truncated longest-first to max_seq_length
    (BERT's `_truncate_seq_pair`), token types, and `labels` (class id, or
    float score for STS-B) when the examples carry labels."""
    features = []
    chunk = 4096
    with tqdm(total=len(examples), desc=f"tokenize {desc}", unit="ex", leave=False) as bar:
        for start in range(0, len(examples), chunk):
            part = examples[start:start + chunk]
            pairs = None if part[0].text_b is None else [e.text_b for e in part]
            encs = tokenizer.encode_batch([e.text_a for e in part], pairs,
                                          max_length=max_seq_length)
            for ex, enc in zip(part, encs):
                feat = {"input_ids": np.asarray(enc.ids, np.int32),
                        "token_type_ids": np.asarray(enc.type_ids, np.int32)}
                if ex.label is not None:
                    feat["labels"] = (np.float32(ex.label) if spec.is_regression
                                      else np.int32(spec.label_names.index(ex.label)))
                features.append(feat)
            bar.update(len(part))
    return features


# ------------------------------------------------------------------- task


@register
class GlueTask(FinetuneTask):
    """One GLUE task as a `FinetuneTask`. Splits are read and tokenized on
    first use and cached."""

    kind = "glue"
    names = tuple(TASKS)
    heads = ("classification", "regression")
    main_metric = "score"  # the task's headline metric (the mean of two for MRPC, STS-B, QQP)

    def __init__(self, spec: TaskSpec, load_split: Callable[[str], SplitData], tokenizer,
                 max_seq_length: int = 128, length_buckets: Sequence[int] = (32, 64, 96, 128),
                 max_train_examples: int = 0, packing: int = 0):
        if max_seq_length > max(length_buckets):
            raise ValueError(f"max_seq_length={max_seq_length} exceeds the largest of "
                             f"length_buckets={tuple(length_buckets)}")
        self.spec = spec
        self.name = spec.name
        self.head = "regression" if spec.is_regression else "classification"
        self.num_labels = 1 if spec.is_regression else len(spec.label_names)
        self.label_names = list(spec.label_names)
        self.eval_splits = spec.eval_splits
        self.test_splits = tuple(spec.submission)
        self._load_split = load_split
        self._tokenizer = tokenizer
        self._max_seq_length = max_seq_length
        self._buckets = tuple(length_buckets)
        self._max_train = max_train_examples
        self._packing = batching.examples_per_row(packing)
        self._pad = {"input_ids": tokenizer.pad_id}
        self._data: dict[str, SplitData] = {}
        self._features: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    def build(cls, config, tokenizer) -> GlueTask:
        return build_task(config, tokenizer)

    @classmethod
    def train_file(cls, config) -> str | None:
        spec = task_spec(config.task)
        root = str(config.data_dir).rstrip("/")
        if paths.name(root) == spec.dir_name:
            root = paths.parent(root)
        return paths.join(root, spec.files["train"].path)

    @classmethod
    def plan(cls, config) -> tuple[str, int]:
        spec = task_spec(config.task)
        return (("regression", 1) if spec.is_regression
                else ("classification", len(spec.label_names)))

    def split_data(self, split: str) -> SplitData:
        if split not in self._data:
            data = self._load_split(split)
            if split == "train" and 0 < self._max_train < len(data.examples):
                keep = subsample_indices(len(data.examples), self._max_train)
                data = dataclasses.replace(data, examples=[data.examples[i] for i in keep])
            self._data[split] = data
        return self._data[split]

    def features(self, split: str) -> list[dict[str, Any]]:
        if split not in self._features:
            self._features[split] = featurize(self.split_data(split).examples, self.spec,
                                              self._tokenizer, self._max_seq_length,
                                              f"{self.name}/{split}")
        return self._features[split]

    def num_train_examples(self) -> int:
        return len(self.split_data("train").examples)

    def input_report(self, split: str) -> dict | None:
        """Rows read and malformed rows skipped (QQP's known defects)."""
        if split not in self._data:
            return None
        d = self._data[split]
        return {"examples": len(d.examples), "skipped": d.skipped,
                "reasons": {"malformed_row": d.skipped} if d.skipped else {}}

    def train_steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch (packed: batches of `batch_size` rows)."""
        return batching.steps_per_epoch([len(f["input_ids"]) for f in self.features("train")],
                                        batch_size, self._buckets, self._packing)

    def train_rows_per_step(self, examples_per_step: int, packed_rows: int = 0) -> int:
        """batching.rows_per_step over the training examples' lengths."""
        return batching.rows_per_step([len(f["input_ids"]) for f in self.features("train")],
                                      examples_per_step, self._buckets, self._packing, packed_rows)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        if self._packing:
            return batching.iterate_packed_batches(
                self.features("train"), batch_size, self._buckets, self._packing, seed=seed,
                epoch=epoch, pad_values=self._pad)
        return batching.iterate_batches(self.features("train"), batch_size, self._buckets,
                                        shuffle=True, seed=seed, epoch=epoch,
                                        pad_values=self._pad)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Batches of a dev or test split in file order (test batches have no labels)."""
        return batching.iterate_batches(self.features(split), batch_size, self._buckets,
                                        shuffle=False, pad_values=self._pad)

    def predictions(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]]
                    ) -> np.ndarray:
        """Per example of `split`, in file order: class ids (int [N]) or scores
        (float [N]) from the per-batch `logits` of `eval_batches(split)`."""
        logits = _real_rows(outputs, len(self.split_data(split).examples), split)
        return logits[:, 0] if self.spec.is_regression else logits.argmax(-1)

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """GLUE metrics of a dev split; with out_dir, writes
        `<out_dir>/<split>/eval_results.json` and `<out_dir>/<split>/predictions.tsv`
        (index, prediction, label, and class probabilities)."""
        if split not in self.eval_splits:
            raise ValueError(f"split={split!r}: {self.name} is scored on "
                             f"{', '.join(self.eval_splits)}; test splits have no labels")
        data = self.split_data(split)
        logits = _real_rows(outputs, len(data.examples), split)
        preds = self.predictions(split, outputs)
        labels = np.asarray([self._label_value(e.label) for e in data.examples])
        metrics = glue_metrics.task_metrics(self.name, labels, preds)
        if out_dir is not None:
            split_dir = pathlib.Path(out_dir) / split
            summary = {"task": self.name, "split": split, "num_examples": len(labels),
                       **{k: (None if math.isnan(v) else v) for k, v in metrics.items()}}
            write_text_atomic(split_dir / "eval_results.json", json.dumps(summary, indent=2))
            write_text_atomic(split_dir / "predictions.tsv",
                              self._dev_predictions_tsv(data.examples, logits, preds))
        return metrics

    def write_test_predictions(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]],
                               out_dir: str | os.PathLike) -> pathlib.Path:
        """`<out_dir>/<TASK>.tsv` in the GLUE submission format for a test split
        ('test'; MNLI: 'test_matched', 'test_mismatched', 'diagnostic' -> AX.tsv)."""
        if split not in self.spec.submission:
            raise ValueError(f"split={split!r}: {self.name} submits "
                             f"{', '.join(self.spec.submission)}")
        preds = self.predictions(split, outputs)
        path = pathlib.Path(out_dir) / self.spec.submission[split]
        write_submission(path, [e.index for e in self.split_data(split).examples],
                         [self._label_text(p) for p in preds])
        return path

    def _label_value(self, label) -> float | int:
        return float(label) if self.spec.is_regression else self.spec.label_names.index(label)

    def _label_text(self, pred) -> str:
        return f"{float(pred):.3f}" if self.spec.is_regression else self.spec.label_names[int(pred)]

    def _dev_predictions_tsv(self, examples, logits, preds) -> str:
        head = ["index", "prediction", "label"]
        if self.spec.is_regression:
            probs = np.zeros((len(examples), 0))
        else:
            head += [f"prob_{n}" for n in self.label_names]
            z = logits - logits.max(-1, keepdims=True)
            probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        lines = ["\t".join(head)]
        for ex, p, pr in zip(examples, preds, probs):
            gold = self._label_text(self._label_value(ex.label))
            lines.append("\t".join([ex.index, self._label_text(p), gold]
                                   + [f"{v:.6f}" for v in pr]))
        return "\n".join(lines) + "\n"


def _real_rows(outputs: Sequence[Mapping[str, np.ndarray]], n: int, split: str) -> np.ndarray:
    """float [n, C] logits of the real examples. Eval batches keep file order
    and pad only the last batch, so the real rows are the first n, unless the
    outputs carry `example_weights`, which then decide."""
    if not outputs:
        raise ValueError(f"split={split!r}: no model outputs")
    logits = np.concatenate([np.asarray(o["logits"], np.float64) for o in outputs])
    if logits.ndim == 1:
        logits = logits[:, None]
    if all("example_weights" in o for o in outputs):
        weights = np.concatenate([np.asarray(o["example_weights"]) for o in outputs])
        logits = logits[weights > 0]
    elif not n <= logits.shape[0] < n + len(outputs[-1]["logits"]):
        # Padding may only fill up the last batch.
        logits = logits[:0]
    if logits.shape[0] < n or logits.shape[0] > n and "example_weights" in outputs[0]:
        raise ValueError(f"split={split!r}: outputs do not match the {n} examples "
                         f"of eval_batches({split!r}) ({logits.shape[0]} rows)")
    return logits[:n]


# ---------------------------------------------------------------- writing


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write through a temp file in the same folder, then os.replace, so a
    reader never sees half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_submission(path: str | os.PathLike, indices: Sequence[str],
                     predictions: Sequence[str]) -> None:
    """A GLUE leaderboard file: header `index\\tprediction`, one row per example."""
    if len(indices) != len(predictions):
        raise ValueError(f"{path}: {len(indices)} indices but {len(predictions)} predictions")
    rows = ["index\tprediction"] + [f"{i}\t{p}" for i, p in zip(indices, predictions)]
    write_text_atomic(path, "\n".join(rows) + "\n")


# ------------------------------------------------------------------ build


def build_task(config, tokenizer) -> GlueTask:
    """The GLUE task `config.task` from `config.data_dir` (GLUE TSV layout) or,
    when `config.tfds` is set, from TFDS (`config.data_dir` is then TFDS's
    data_dir)."""
    spec = task_spec(config.task)
    tfds_name = tfds_dataset_name(config.get("tfds"), spec.name)
    data_dir = config.get("data_dir")
    if tfds_name is not None:
        load = lambda split: read_tfds_split(spec.name, split, tfds_name, data_dir)
    elif not data_dir:
        raise ValueError("config.data_dir: set it to a GLUE directory (holding "
                         f"{spec.dir_name}/), or set config.tfds=True")
    else:
        load = lambda split: read_split(spec.name, split, data_dir)
    return GlueTask(spec, load, tokenizer, config.max_seq_length, tuple(config.length_buckets),
                    config.get("max_train_examples", 0), config.get("packing", 0))


def subsample_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of range(n_total) of size n, in increasing order, so
    that another framework can train on exactly the same examples."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])
