"""Sequence packing for pretraining: several short instances share one row.

Google's pairing makes ~10% of instances short on purpose (short_seq_prob)
and a document's last chunk is short too; padded, those rows are mostly
[PAD]. Packed, a row holds up to `max_per_row` whole instances back to back,
and the model keeps them apart (Krell et al. 2021, "Efficient Sequence
Packing without Cross-contamination"):

- attention only within an instance (segment_ids -> block-diagonal mask),
- position ids restart at 0 for every instance,
- MLM positions are offset into the row, and NSP runs on each instance's
  [CLS] (nsp_positions), weighted so empty slots count for nothing.

An instance's tokens, truncation and masking draws are keyed by its global
index exactly as without packing, so each packed instance computes the same
losses as it would alone (tests/test_packing.py checks this on the model).

Rows are formed per epoch by best-fit decreasing over the instance lengths
(computed from the plan, no tokens are read), then shuffled with
(seed, epoch); step s covers packed rows [s * G, (s + 1) * G) of that stream.
"""

from __future__ import annotations

import math

import numpy as np

from bert_jax.data import instances

_PACK_SALT = 0x5041434B  # "PACK"


def instance_lengths(corpus, plan: instances.Plan, cfg: instances.PairingConfig) -> np.ndarray:
    """Token count of every plan row after truncation ([CLS] and [SEP]s included),
    the `length` that `instances.materialize` will give it."""
    *_, na, nb = instances.segment_spans(corpus, plan, slice(None), cfg)
    return (2 + na + nb + (nb > 0)).astype(np.int64)


def best_fit_decreasing(lengths: np.ndarray, capacity: int, max_per_row: int) -> list[list[int]]:
    """Rows of item indices: longest items first, each into the open row it
    leaves the least room in (a new row when none fits); a row closes at
    `max_per_row` items. Deterministic (ties by index)."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"item lengths must be in [1, {capacity}], got "
                         f"[{lengths.min()}, {lengths.max()}]")
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    # open[f]: rows with exactly f free slots that can still take an item.
    open_rows: list[list[int]] = [[] for _ in range(capacity + 1)]
    free: list[int] = []
    smallest = int(lengths.min()) if len(lengths) else 1
    for i in order.tolist():
        need = int(lengths[i])
        r = -1
        for f in range(need, capacity + 1):
            if open_rows[f]:
                r = open_rows[f].pop()
                break
        if r < 0:
            r = len(rows)
            rows.append([])
            free.append(capacity)
        rows[r].append(i)
        free[r] -= need
        # Only rows that a remaining (shorter or equal) item could still use stay open.
        if len(rows[r]) < max_per_row and free[r] >= smallest:
            open_rows[free[r]].append(r)
    return rows


def packed_epoch(lengths: np.ndarray, capacity: int, max_per_row: int, seed: int,
                 epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_offsets [R + 1], items [N]): row r holds plan rows
    items[row_offsets[r]:row_offsets[r + 1]], rows in shuffled order."""
    rows = best_fit_decreasing(lengths, capacity, max_per_row)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, _PACK_SALT])))
    rows = [rows[r] for r in rng.permutation(len(rows))]
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    items = np.asarray([i for r in rows for i in r], np.int64)
    return offsets, items


def max_predictions_per_row(max_seq_length: int, masked_lm_prob: float,
                            max_predictions_per_seq: int, max_per_row: int) -> int:
    """An upper bound on the masked positions of one packed row: each instance
    predicts floor(p * candidates + u) <= p * candidates + 1 (masking.py), and
    a row's candidates number at most max_seq_length - 2 per instance."""
    bound = math.floor(masked_lm_prob * max_seq_length) + max_per_row
    return min(bound, max_predictions_per_seq * max_per_row)


def pack_examples(ex: dict[str, np.ndarray], lengths: np.ndarray, row_sizes: list[int],
                  max_seq_length: int, max_predictions: int, max_per_row: int,
                  pad_id: int) -> dict[str, np.ndarray]:
    """Concatenate per-instance examples (`PretrainingPipeline.examples`, rows
    in pack order) into packed rows of `row_sizes[r]` instances each.

    Adds segment_ids (1.. per instance, 0 on padding), position_ids (from 0 per
    instance), nsp_positions / nsp_weights [R, max_per_row] and turns
    nsp_labels into [R, max_per_row]; masked_* become [R, max_predictions]."""
    T, R, K, P = max_seq_length, len(row_sizes), max_per_row, max_predictions
    out = {
        "input_ids": np.full((R, T), pad_id, np.int32),
        "token_type_ids": np.zeros((R, T), np.int32),
        "attention_mask": np.zeros((R, T), np.int32),
        "segment_ids": np.zeros((R, T), np.int32),
        "position_ids": np.zeros((R, T), np.int32),
        "masked_positions": np.zeros((R, P), np.int32),
        "masked_ids": np.zeros((R, P), np.int32),
        "masked_weights": np.zeros((R, P), np.float32),
        "nsp_positions": np.zeros((R, K), np.int32),
        "nsp_weights": np.zeros((R, K), np.float32),
    }
    nsp = "nsp_labels" in ex
    if nsp:
        out["nsp_labels"] = np.zeros((R, K), np.int32)
    i = 0
    for r, size in enumerate(row_sizes):
        at, m = 0, 0
        for j in range(size):
            n = int(lengths[i])
            if at + n > T:
                raise ValueError(f"packed row {r}: {at + n} tokens > max_seq_length {T}")
            sl = slice(at, at + n)
            out["input_ids"][r, sl] = ex["input_ids"][i, :n]
            out["token_type_ids"][r, sl] = ex["token_type_ids"][i, :n]
            out["attention_mask"][r, sl] = 1
            out["segment_ids"][r, sl] = j + 1
            out["position_ids"][r, sl] = np.arange(n)
            keep = ex["masked_weights"][i] > 0
            k = int(keep.sum())
            if m + k > P:
                raise ValueError(f"packed row {r}: {m + k} masked positions > {P}")
            out["masked_positions"][r, m:m + k] = ex["masked_positions"][i][keep] + at
            out["masked_ids"][r, m:m + k] = ex["masked_ids"][i][keep]
            out["masked_weights"][r, m:m + k] = ex["masked_weights"][i][keep]
            out["nsp_positions"][r, j] = at
            out["nsp_weights"][r, j] = 1.0
            if nsp:
                out["nsp_labels"][r, j] = ex["nsp_labels"][i]
            at, m, i = at + n, m + k, i + 1
    return out
