"""Dynamic masked-LM masking at batch time, vectorized over the batch.

Semantics of `create_masked_lm_predictions` in google-research/bert: pick
num_to_predict of the non-special tokens (whole words with whole-word masking:
words are visited in random order and a word that would overshoot is skipped),
then replace 80% with [MASK], 10% with a random token, keep 10%; positions are
sorted and padded with zeros to max_predictions_per_seq. Differences, on
purpose: num_to_predict is `masked_lm_prob` times the *non-special* token
count with unbiased random rounding (Google rounds `len(tokens) * p` including
[CLS]/[SEP], which over-masks short sequences), and random replacements are
drawn from the non-special vocabulary (Google's draw could insert [CLS],
[unused3], ...).

Every draw is keyed by (seed, global instance index, purpose, position) with
`hashrng`, so a row's mask does not depend on the batch it is computed in.
"""

from __future__ import annotations

import re

import numpy as np

from bert_jax.data import hashrng

STREAM_COUNT, STREAM_ORDER, STREAM_ACTION, STREAM_RANDOM = 11, 12, 13, 14
IGNORE_INDEX = -100
_SPECIAL_TOKEN = re.compile(r"^\[[^\[\]]+\]$|^<[^<>]+>$")


def random_token_pool(tokenizer) -> np.ndarray:
    """Ids a random replacement may take: the vocabulary without special or
    reserved tokens ([PAD], [CLS], [unused17], <pad>, ...)."""
    ids = [i for i in range(tokenizer.vocab_size)
           if i not in tokenizer.special_ids
           and not _SPECIAL_TOKEN.match(tokenizer.id_to_token(i))]
    if not ids:
        raise ValueError(f"{tokenizer.vocab_file}: no non-special tokens to draw from")
    return np.asarray(ids, np.int32)


def _num_to_predict(seed, g, candidate, prob, max_predictions) -> np.ndarray:
    n_cand = candidate.sum(axis=1)
    u = hashrng.uniform(seed, g, STREAM_COUNT)
    num = np.floor(n_cand * prob + u).astype(np.int64)
    return np.clip(num, 1, np.minimum(max_predictions, n_cand))


def _select_tokens(keys: np.ndarray, candidate: np.ndarray, num: np.ndarray) -> np.ndarray:
    """The `num` candidates with the smallest keys in each row (bool [b, T])."""
    keys = np.where(candidate, keys, 2.0)
    order = np.argsort(keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(keys.shape[1])[None, :].repeat(len(keys), 0), 1)
    return candidate & (rank < num[:, None])


def _select_words(keys: np.ndarray, candidate: np.ndarray, word_start: np.ndarray,
                  num: np.ndarray) -> np.ndarray:
    """Whole words in key order, skipping a word that would overshoot `num`."""
    b, T = candidate.shape
    pos = np.broadcast_to(np.arange(T), (b, T))
    starts = word_start & candidate
    # Each candidate token's word start, and each word's length (at its start).
    owner = np.maximum.accumulate(np.where(starts, pos, -1), axis=1)
    owner = np.where(candidate, owner, -1)
    wlen = np.zeros((b, T + 1), np.int64)
    np.add.at(wlen, (np.nonzero(candidate)[0], owner[candidate]), 1)
    wlen = wlen[:, :T]
    order = np.argsort(np.where(starts, keys, 2.0), axis=1, kind="stable")
    lens = np.take_along_axis(wlen, order, axis=1)
    n_words = starts.sum(axis=1)
    taken = np.zeros((b, T), bool)
    count = np.zeros(b, np.int64)
    rows = np.arange(b)
    for k in range(int(n_words.max(initial=0))):
        ok = (k < n_words) & (count + lens[:, k] <= num)
        taken[rows[ok], order[ok, k]] = True
        count += np.where(ok, lens[:, k], 0)
        if (count >= num).all():
            break
    chosen = np.zeros((b, T + 1), bool)
    chosen[:, :T] = taken
    return candidate & np.take_along_axis(chosen, np.where(owner < 0, T, owner), axis=1)


def mask_batch(ids: np.ndarray, candidate: np.ndarray, word_start: np.ndarray, g: np.ndarray,
               seed: int, mask_id: int, pool: np.ndarray, masked_lm_prob: float = 0.15,
               max_predictions: int = 20, whole_word: bool = False,
               dense_labels: bool = False) -> dict[str, np.ndarray]:
    """Mask a batch of sequences.

    Args:
      ids: int32 [b, T] token ids (unmasked).
      candidate: bool [b, T], True on real non-special tokens.
      word_start: bool [b, T], True where a word begins (whole-word masking).
      g: int64 [b] global instance indices (key every random draw).
      seed: the data seed.
      mask_id: id of [MASK].
      pool: int32 ids random replacements are drawn from.
      masked_lm_prob, max_predictions: as in BERT.
      whole_word: mask whole words.
      dense_labels: also return mlm_labels [b, T] (-100 where not masked).

    Returns:
      input_ids int32 [b, T]; masked_positions, masked_ids int32 [b, P];
      masked_weights float32 [b, P]; and mlm_labels int32 [b, T] if asked.
    """
    b, T = ids.shape
    P = max_predictions
    g = np.asarray(g, np.int64)
    pos = np.arange(T)[None, :]
    num = _num_to_predict(seed, g, candidate, masked_lm_prob, P)
    keys = hashrng.uniform(seed, g[:, None], STREAM_ORDER, pos)
    if whole_word:
        selected = _select_words(keys, candidate, word_start, num)
    else:
        selected = _select_tokens(keys, candidate, num)
    action = hashrng.uniform(seed, g[:, None], STREAM_ACTION, pos)
    rand_ids = pool[(hashrng.uniform(seed, g[:, None], STREAM_RANDOM, pos)
                     * len(pool)).astype(np.int64)]
    out_ids = np.where(selected & (action < 0.8), mask_id, ids)
    out_ids = np.where(selected & (action >= 0.8) & (action < 0.9), rand_ids, out_ids)
    # Selected positions in ascending order, padded with 0 (Google pads with 0).
    sort_key = np.where(selected, pos, T)
    if P > T:
        sort_key = np.concatenate([sort_key, np.full((b, P - T), T)], axis=1)
    positions = np.sort(sort_key, axis=1)[:, :P]
    valid = positions < T
    positions = np.where(valid, positions, 0)
    masked_ids = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0)
    batch = {
        "input_ids": out_ids.astype(np.int32),
        "masked_positions": positions.astype(np.int32),
        "masked_ids": masked_ids.astype(np.int32),
        "masked_weights": valid.astype(np.float32),
    }
    if dense_labels:
        batch["mlm_labels"] = np.where(selected, ids, IGNORE_INDEX).astype(np.int32)
    return batch
