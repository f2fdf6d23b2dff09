"""Length-bucketed, static-shape batches for every fine-tuning task.

Each example is a dict of per-example features: 1-D sequences of the example's
own length (`input_ids`, `token_type_ids`, tagging `label_ids`, ...) and scalars
(`labels`, `feature_index`, ...). A batch pads its sequences to the smallest
entry of `length_buckets` that holds its longest example, so SST-2 (~13 tokens
on average) is not padded to 128, while the number of distinct shapes, and so
of XLA compilations, stays at len(length_buckets).

Training order: a permutation drawn from (seed, epoch), stably grouped by
bucket so that examples of similar length share a batch while their order
inside a bucket stays random, cut into batches, and the batch order shuffled
again. Evaluation keeps the examples in their given order. Either way the last
batch is filled up with rows whose `example_weights` is 0 (all features at
their pad value, attention_mask 0, as Google BERT's `PaddingInputExample`), so
every real example is seen exactly once and every batch has the same size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bert_jax.data.packing import best_fit_decreasing
from bert_jax.finetune.task import Batch

# Pad value per feature; anything not listed pads with 0. -100 is the "no loss"
# label of the tagging head (see task.py).
DEFAULT_PAD_VALUES = {"label_ids": -100}


def bucket_length(length: int, length_buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; ValueError when none is."""
    for b in sorted(length_buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"length_buckets={tuple(length_buckets)}: an example of {length} "
                     f"tokens fits no bucket (truncate to max_seq_length first)")


def plan_batches(lengths: Sequence[int], batch_size: int, length_buckets: Sequence[int], *,
                 shuffle: bool, seed: int = 0, epoch: int = 0) -> list[np.ndarray]:
    """Which examples go in which batch, in the order the batches are yielded.

    Args:
      lengths: int [N], token count of each example.
      batch_size: rows per batch; only the last planned batch may hold fewer.
      length_buckets: allowed padded lengths.
      shuffle: False keeps the given order (evaluation); True shuffles within
        buckets and then the batches, a pure function of (seed, epoch).

    Returns:
      A list of int64 index arrays, each of length <= batch_size; together they
      hold every index in range(N) exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    buckets = np.asarray(sorted(length_buckets))
    if lengths.size and lengths.max() > buckets[-1]:
        bucket_length(int(lengths.max()), length_buckets)  # raises with the message
    if not shuffle:
        order = np.arange(lengths.size)
        return [order[i:i + batch_size] for i in range(0, lengths.size, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(lengths.size)
    # Stable sort keeps the random order inside each bucket; a batch that spans
    # two buckets is padded to the larger one. The lone partial batch is the
    # last chunk, and it moves with the others in the batch shuffle.
    perm = perm[np.argsort(np.searchsorted(buckets, lengths[perm]), kind="stable")]
    chunks = [perm[i:i + batch_size] for i in range(0, perm.size, batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]


def collate(examples: Sequence[Mapping[str, object]], indices: np.ndarray, batch_size: int,
            length_buckets: Sequence[int], pad_values: Mapping[str, int] | None = None) -> Batch:
    """One static-shape batch of `examples[indices]`.

    Sequence features become [batch_size, L] (int32, or float32 if the feature
    is float) with L = bucket of the longest example; scalars become
    [batch_size]. Adds `attention_mask` (1 on real tokens) when the examples
    do not carry one, and `example_weights` (float32 [batch_size], 0 on filler
    rows).
    """
    pads = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    rows = [examples[int(i)] for i in indices]
    if not rows:
        raise ValueError("collate: no examples in this batch")
    if len(rows) > batch_size:
        raise ValueError(f"collate: {len(rows)} examples exceed batch_size={batch_size}")
    n_tokens = [len(r["input_ids"]) for r in rows]
    seq_len = bucket_length(max(n_tokens), length_buckets)
    batch: Batch = {}
    for key, first in rows[0].items():
        first = np.asarray(first)
        dtype = np.float32 if np.issubdtype(first.dtype, np.floating) else np.int32
        if first.ndim == 0:
            out = np.full((batch_size,), pads.get(key, 0), dtype)
            out[:len(rows)] = [r[key] for r in rows]
        elif first.ndim == 1:
            out = np.full((batch_size, seq_len), pads.get(key, 0), dtype)
            for j, r in enumerate(rows):
                out[j, :len(r[key])] = r[key]
        else:
            raise ValueError(f"collate: feature {key!r} has {first.ndim} dims; "
                             f"expected a scalar or a 1-D sequence")
        batch[key] = out
    if "attention_mask" not in batch:
        batch["attention_mask"] = (np.arange(seq_len)[None, :]
                                   < np.asarray(n_tokens + [0] * (batch_size - len(rows)))[:, None]
                                   ).astype(np.int32)
    weights = np.zeros((batch_size,), np.float32)
    weights[:len(rows)] = 1.0
    batch["example_weights"] = weights
    return batch


def iterate_batches(examples: Sequence[Mapping[str, object]], batch_size: int,
                    length_buckets: Sequence[int], *, shuffle: bool, seed: int = 0,
                    epoch: int = 0, pad_values: Mapping[str, int] | None = None
                    ) -> Iterator[Batch]:
    """`collate` over `plan_batches`: one epoch of static-shape batches."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    for idx in plan_batches(lengths, batch_size, length_buckets, shuffle=shuffle, seed=seed,
                            epoch=epoch):
        yield collate(examples, idx, batch_size, length_buckets, pad_values)


# ------------------------------------------------------------------ packing


def plan_packed_rows(lengths: Sequence[int], capacity: int, max_per_row: int, seed: int,
                     epoch: int) -> list[np.ndarray]:
    """Training rows of up to `max_per_row` whole examples each (best-fit
    decreasing into `capacity` tokens), in a random order. Which examples share
    a row changes with (seed, epoch) among examples of equal length; the row
    count depends only on the lengths, so it is the same every epoch."""
    lengths = np.asarray(lengths, np.int64)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(lengths.size)
    rows = best_fit_decreasing(lengths[perm], capacity, max_per_row)
    return [perm[np.asarray(rows[i], np.int64)] for i in rng.permutation(len(rows))]


def collate_packed(examples: Sequence[Mapping[str, object]], rows: Sequence[np.ndarray],
                   batch_size: int, length_buckets: Sequence[int], max_per_row: int,
                   pad_values: Mapping[str, int] | None = None) -> Batch:
    """Packed rows [batch_size, L] of sequence-classification examples.

    Sequence features are concatenated per row; `segment_ids` (1.. per example,
    0 on padding) keep examples from attending to each other and
    `position_ids` restart at 0 for each. Scalar features (labels) become
    [batch_size, max_per_row] slots, with `cls_positions` (each example's
    [CLS] offset) and `example_weights` (0 on empty slots)."""
    pads = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    if not rows or len(rows) > batch_size:
        raise ValueError(f"collate_packed: {len(rows)} rows for batch_size={batch_size}")
    totals = [sum(len(examples[int(i)]["input_ids"]) for i in r) for r in rows]
    seq_len = bucket_length(max(totals), length_buckets)
    first = examples[int(rows[0][0])]
    B, K = batch_size, max_per_row
    batch: Batch = {}
    for key, value in first.items():
        value = np.asarray(value)
        dtype = np.float32 if np.issubdtype(value.dtype, np.floating) else np.int32
        if value.ndim > 1:
            raise ValueError(f"collate_packed: feature {key!r} has {value.ndim} dims")
        shape = (B, K) if value.ndim == 0 else (B, seq_len)
        batch[key] = np.full(shape, pads.get(key, 0), dtype)
    extra = {name: np.zeros((B, seq_len), np.int32)
             for name in ("attention_mask", "segment_ids", "position_ids")}
    cls_positions = np.zeros((B, K), np.int32)
    weights = np.zeros((B, K), np.float32)
    for r, members in enumerate(rows):
        if len(members) > K:
            raise ValueError(f"collate_packed: row {r} holds {len(members)} > {K} examples")
        at = 0
        for j, i in enumerate(members):
            ex = examples[int(i)]
            n = len(ex["input_ids"])
            for key in batch:
                v = np.asarray(ex[key])
                if v.ndim == 0:
                    batch[key][r, j] = v
                else:
                    batch[key][r, at:at + n] = v
            extra["attention_mask"][r, at:at + n] = 1
            extra["segment_ids"][r, at:at + n] = j + 1
            extra["position_ids"][r, at:at + n] = np.arange(n)
            cls_positions[r, j] = at
            weights[r, j] = 1.0
            at += n
    batch.update(extra)
    batch["cls_positions"] = cls_positions
    batch["example_weights"] = weights
    return batch


def iterate_packed_batches(examples: Sequence[Mapping[str, object]], batch_size: int,
                           length_buckets: Sequence[int], max_per_row: int, *, seed: int,
                           epoch: int, pad_values: Mapping[str, int] | None = None
                           ) -> Iterator[Batch]:
    """One training epoch of packed batches (`batch_size` rows each)."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    rows = plan_packed_rows(lengths, max(length_buckets), max_per_row, seed, epoch)
    for s in range(0, len(rows), batch_size):
        yield collate_packed(examples, rows[s:s + batch_size], batch_size, length_buckets,
                             max_per_row, pad_values)


def num_packed_rows(lengths: Sequence[int], capacity: int, max_per_row: int) -> int:
    return len(best_fit_decreasing(np.asarray(lengths, np.int64), capacity, max_per_row))


def packed_rows_per_step(lengths: Sequence[int], examples_per_step: int, capacity: int,
                         max_per_row: int) -> int:
    """Rows per packed batch that carry `examples_per_step` examples on average:
    round(examples_per_step x rows / examples) for this epoch's packing, at
    least 1. The row count depends only on the lengths (plan_packed_rows), so
    the answer is the same every epoch and on a resumed run."""
    if examples_per_step < 1:
        raise ValueError(f"examples_per_step={examples_per_step}: must be >= 1")
    n = len(lengths)
    if n == 0:
        return 1
    rows = num_packed_rows(lengths, capacity, max_per_row)
    return max(1, round(examples_per_step * rows / n))


def rows_per_step(lengths: Sequence[int], examples_per_step: int,
                  length_buckets: Sequence[int], packing: int, packed_rows: int = 0) -> int:
    """A task's training rows per step for `global_batch_size` = examples_per_step:
    unpacked, one example a row; packed, `packed_rows` when > 0, else the rows
    of max(length_buckets) tokens that carry that many on average."""
    if not packing:
        return examples_per_step
    if packed_rows:
        return packed_rows
    return packed_rows_per_step(lengths, examples_per_step, max(length_buckets), packing)


def examples_per_row(packing: int) -> int:
    """A task's `config.packing` as the most examples per training row, 0 when
    rows are not packed (0 or 1)."""
    if packing < 0:
        raise ValueError(f"packing={packing}: must be >= 0")
    return packing if packing > 1 else 0


def steps_per_epoch(lengths: Sequence[int], batch_size: int, length_buckets: Sequence[int],
                    packing: int) -> int:
    """Training batches in one epoch of examples with these token counts: one
    example per row, or (packing = `examples_per_row(...)` > 0) the packed rows
    that `iterate_packed_batches` makes."""
    rows = (num_packed_rows(lengths, max(length_buckets), packing) if packing
            else len(lengths))
    return -(-rows // batch_size)
