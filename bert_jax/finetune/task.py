"""What a fine-tuning task hands to the shared training loop.

The loop (mesh, optimizer, orbax, metrics) is the same for GLUE, SQuAD and
CoNLL-2003; a task differs only in data, head, loss and metrics. A task is one
module holding one `FinetuneTask` subclass, decorated with `@register`: the
trainer, `aot`, `predict`, the sweep and the input checks find it by
`config.task` through `get(name)` (an unknown name is a one-line error listing
`names()`). Everything a task may declare is a member of `FinetuneTask` with a
default; nothing is probed by name.

Batches are dicts of numpy arrays with a static batch size. Every batch carries
`example_weights` (float32 [B]): 0 marks padding rows added to fill the last
batch, so evaluation counts every real example exactly once. Sequence length is
the smallest entry of `config.length_buckets` that fits the longest example in
the batch, so short tasks (SST-2 averages ~13 tokens) are not padded to 128,
and the number of distinct shapes (= compilations) stays small.

Common keys: input_ids, token_type_ids, attention_mask (int32 [B, L]),
example_weights. Per head:
  classification / regression: labels (int32 [B] / float32 [B])
  span:    start_positions, end_positions (int32 [B]); eval batches also
           `feature_index` (int32 [B]) to map logits back to windows
  tagging: label_ids (int32 [B, L], -100 where no loss: special tokens, non-first
           word pieces, context-only tokens); eval batches also `feature_index`

Packed training batches (GLUE and CoNLL `config.packing`) hold several whole
examples per row: segment_ids / position_ids (int32 [B, L]) keep them apart,
example_weights becomes [B, K] (one slot per example, 0 when empty),
classification labels [B, K] with cls_positions (each example's [CLS] offset);
tagging label_ids stay per token.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

Batch = dict[str, np.ndarray]
PredictFn = Callable[[Batch], Mapping[str, Any]]


class PredictRequest:
    """What `predict` was given: text lines (a tab separates a pair), or a
    question and its context, or an input file."""

    def __init__(self, lines: Sequence[str] = (), question: str | None = None,
                 context: str | None = None, input_path: str | None = None):
        self.lines, self.question = list(lines), question
        self.context, self.input_path = context, input_path


class FinetuneTask:
    """The contract between a task and everything that runs it.

    Class members (read without any data, e.g. by `aot` and `predict`):
      kind       recorded in model dirs (meta task.kind); `predict` finds the
                 task by it
      names      the config.task values that select this task
      heads      the heads it can have (`bert_jax.model.heads.HEADS`)
      accepts_question  `predict --question/--context` is for it
    Instance members after `build`: name, head, num_labels, label_names,
    main_metric (the dev metric, higher is better, that picks the best model),
    eval_splits (scored; the first picks the best model), test_splits
    (predicted when their files exist).
    """

    kind: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    heads: ClassVar[tuple[str, ...]] = ("classification",)
    accepts_question: ClassVar[bool] = False

    name: str = ""
    head: str = "classification"
    num_labels: int = 2
    label_names: list[str] = []
    main_metric: str = "f1"
    eval_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ()

    # ---- declared per class ------------------------------------------------------

    @classmethod
    def build(cls, config, tokenizer) -> FinetuneTask:
        """The task of `config` (its readers and featurizer), data not yet read."""
        raise NotImplementedError(f"{cls.__name__}.build")

    @classmethod
    def plan(cls, config) -> tuple[str, int]:
        """(head, num_labels) of `config` without reading any data (`aot`)."""
        return cls.heads[0], cls.num_labels

    @classmethod
    def train_file(cls, config) -> str | None:
        """The file the training examples come from, as the task reads it (a
        workdir remembers its hash: bert_jax.train.run_identity)."""
        return config.get("train_file") or None

    @classmethod
    def unread_files(cls, config, tfds: bool) -> dict[str, str]:
        """{config field: why} of the file fields this config would not read
        (the input checks refuse a set one); `tfds`: config.tfds is on."""
        return {}

    @classmethod
    def predict(cls, predictor, request: PredictRequest) -> list[tuple[dict, str]]:
        """Raw-text prediction: (record, input line) per input. By default one
        sequence (or a tab-separated pair) per line, classified."""
        if not request.lines:
            raise ValueError("no input: the input has only empty lines")
        texts, pairs = [], []
        for line in request.lines:
            a, sep, b = line.partition("\t")
            texts.append(a)
            pairs.append(b if sep else None)
        results = predictor.classify(texts, pairs if any(p is not None for p in pairs) else None)
        return [({"text": line, **r}, line) for line, r in zip(request.lines, results)]

    # ---- data, read on first use --------------------------------------------------

    def features(self, split: str) -> None:
        """Read and featurize `split` now (the input checks call it for every
        split before training, so a bad line stops the run before any compile)."""

    def input_report(self, split: str) -> dict | None:
        """{'examples', 'skipped', 'reasons': {reason: count}} of a split read."""
        return None

    def num_train_examples(self) -> int:
        """Rows the trainer counts for epochs and the LR schedule."""
        raise NotImplementedError

    def train_steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch."""
        return math.ceil(self.num_train_examples() / batch_size)

    def train_rows_per_step(self, examples_per_step: int, packed_rows: int = 0) -> int:
        """Rows of a training batch (the `batch_size` of train_batches) for
        `config.global_batch_size` = examples_per_step. One example per row
        here; a task that packs rows derives them (`packed_rows` > 0 fixes them)."""
        return examples_per_step

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """One shuffled epoch; a pure function of (seed, epoch)."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every example of `split` once, in a fixed order."""
        raise NotImplementedError

    # ---- metrics and predictions ----------------------------------------------------

    def evaluate(self, split: str, outputs: list[Mapping[str, np.ndarray]],
                 out_dir: str | None = None) -> dict[str, float]:
        """Metrics from the model outputs of `eval_batches(split)` (one dict per
        batch with the head's outputs), writing prediction files under out_dir
        when given."""
        raise NotImplementedError

    def write_test_predictions(self, split: str, outputs: Sequence[Mapping[str, np.ndarray]],
                               out_dir: str) -> None:
        """Predictions of a test split (no labels) into out_dir."""


# ---- the registry ------------------------------------------------------------------

# Imported on first lookup by name (not at import time: each imports this module).
_BUILTIN = ("bert_jax.finetune.glue", "bert_jax.finetune.conll", "bert_jax.finetune.squad")
_BY_NAME: dict[str, type[FinetuneTask]] = {}
_BY_KIND: dict[str, type[FinetuneTask]] = {}


def register(cls: type[FinetuneTask]) -> type[FinetuneTask]:
    """Class decorator: `cls` answers to its `names` (config.task) and `kind`."""
    if not (cls.kind and cls.names):
        raise ValueError(f"{cls.__name__}: a task declares its kind and names")
    for n in cls.names:
        other = _BY_NAME.get(n.lower())
        if other is not None and other is not cls:
            raise ValueError(f"task name {n!r} is taken by {other.__name__}")
    for n in cls.names:
        _BY_NAME[n.lower()] = cls
    _BY_KIND[cls.kind] = cls
    return cls


def unregister(cls: type[FinetuneTask]) -> None:
    for n in cls.names:
        if _BY_NAME.get(n.lower()) is cls:
            del _BY_NAME[n.lower()]
    if _BY_KIND.get(cls.kind) is cls:
        del _BY_KIND[cls.kind]


def _load_builtin() -> None:
    for m in _BUILTIN:
        importlib.import_module(m)


def names() -> list[str]:
    """Every registered config.task value, sorted."""
    _load_builtin()
    return sorted(_BY_NAME)


def get(name: str, field: str = "config.task") -> type[FinetuneTask]:
    """The task class `name` selects; an unknown one is a ValueError naming
    `field` and listing the registered tasks."""
    _load_builtin()
    cls = _BY_NAME.get(str(name).lower())
    if cls is None:
        raise ValueError(f"{field}={name!r}: unknown task; registered: {', '.join(names())}")
    return cls


def of_kind(kind: str | None, head: str) -> type[FinetuneTask]:
    """The task a model dir records (meta task.kind), else the first
    registered task with its head (HF / TF1 checkpoints carry no task)."""
    _load_builtin()
    if kind in _BY_KIND:
        return _BY_KIND[kind]
    for cls in _BY_KIND.values():
        if head in cls.heads:
            return cls
    raise ValueError(f"no registered task has the {head!r} head")
