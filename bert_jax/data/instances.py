"""Online NSP pairs (or MLM-only sequences) with Google BERT's pairing semantics.

An epoch's *plan* lists every training instance as sentence ranges; it is
built from sentence lengths only, seeded by (seed, epoch), so it is cheap and
identical on every host. Instance contents are then sliced from the prepared
token arrays and truncated with counter-based randomness keyed by the
instance's global index (`materialize`).

Pairing follows `create_instances_from_document` in google-research/bert
`create_pretraining_data.py`:
- target length max_seq_length - 3; with probability short_seq_prob a random
  target in [2, max_seq_length - 3];
- whole sentences are gathered until the target is reached, segment A is the
  first 1..n-1 of them (all of them when n = 1);
- with probability 0.5 (always when n = 1) B is a span of whole sentences from
  a random start in a different document, filling the rest of the target, and
  the chunk's unused sentences go back to the stream; otherwise B is the rest
  of the chunk;
- the pair is truncated from the longer segment, one token at a time from a
  random end, to max_seq_length - 3 (`truncate_seq_pair`);
- all instances of the epoch are shuffled.
Three deliberate differences:
- the short target is drawn per instance instead of per document (Google's
  documents were Wikipedia articles; ours can be novels, where a per-document
  draw would make whole books short);
- when the gathered chunk is a single sentence and the coin says "actual next",
  the document's next sentence is taken as B (Google forces a random B there,
  which on long-sentence text such as novels pushes random pairs to ~53%
  instead of 50%; only a document's last sentence still forces a random B);
- the random document is drawn uniformly among the other documents directly
  instead of retrying 10 times.

MLM-only mode (nsp=False): `[CLS] chunk [SEP]`, a chunk being as many whole
contiguous sentences of one document as fit in max_seq_length - 2 tokens (only
a single over-long sentence is truncated), as RoBERTa's DOC-SENTENCES.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

from bert_jax.data import hashrng
from bert_jax.data.token_cache import PreparedCorpus

# Purposes of counter-based draws (second counter after the instance index).
STREAM_TRUNC = 1
_PLAN_SALT = 0x504C414E  # "PLAN"


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    nsp: bool = True

    @property
    def max_num_tokens(self) -> int:
        return self.max_seq_length - (3 if self.nsp else 2)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One epoch's instances (after the shuffle), as global sentence ranges.

    A = sentences [a_start, a_end); B = [b_start, b_end) (empty in MLM-only
    mode); is_random is 1 when B comes from another document.
    """

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random: np.ndarray

    def __len__(self) -> int:
        return len(self.a_start)


class _Uniforms:
    """Buffered scalar draws from a numpy Generator (per-call overhead dominates otherwise)."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16):
        self.rng, self.block = rng, block
        self.buf: list[float] = []
        self.i = 0

    def __call__(self) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = self.rng.random(self.block).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] inclusive, like Python's random.randint."""
        return lo + min(int(self() * (hi - lo + 1)), hi - lo)


def build_plan(sentence_length: np.ndarray, document_offsets: np.ndarray, cfg: PairingConfig,
               seed: int, epoch: int) -> Plan:
    """The shuffled instance list of one epoch; a pure function of its arguments."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, _PLAN_SALT])))
    u = _Uniforms(rng)
    cum = np.concatenate([[0], np.cumsum(sentence_length, dtype=np.int64)]).tolist()
    docs = np.asarray(document_offsets).tolist()
    n_docs = len(docs) - 1
    max_num = cfg.max_num_tokens
    out: tuple[list[int], ...] = ([], [], [], [], [])
    for d in range(n_docs):
        i, end = docs[d], docs[d + 1]
        while i < end:
            target = u.randint(2, max_num) if u() < cfg.short_seq_prob else max_num
            if not cfg.nsp:
                # As many whole sentences as fit (at least one; only that one is cut).
                e = max(bisect.bisect_right(cum, cum[i] + target, i + 1, end + 1) - 1, i + 1)
                _append(out, i, e, e, e, 0)
                i = e
                continue
            # Whole sentences until the target is reached (or the document ends).
            e = bisect.bisect_left(cum, cum[i] + target, i + 1, end)
            is_random = u() < 0.5
            if e - i == 1 and not is_random and e < end:
                e += 1  # a lone sentence takes the next one as B (see module docstring)
            n = e - i
            a_end = i + (u.randint(1, n - 1) if n >= 2 else 1)
            if n == 1 or is_random:
                r = u.randint(0, n_docs - 2)
                r += r >= d  # uniform over the other documents
                k = u.randint(docs[r], docs[r + 1] - 1)
                target_b = target - (cum[a_end] - cum[i])
                b_end = bisect.bisect_left(cum, cum[k] + target_b, k + 1, docs[r + 1])
                _append(out, i, a_end, k, b_end, 1)
                i = a_end  # the chunk's unused sentences go back to the stream
            else:
                _append(out, i, a_end, a_end, e, 0)
                i = e
    perm = rng.permutation(len(out[0]))
    a0, a1, b0, b1 = (np.asarray(x, dtype=np.int64)[perm] for x in out[:4])
    return Plan(a0, a1, b0, b1, np.asarray(out[4], dtype=np.int8)[perm])


def _append(out, a0, a1, b0, b1, rnd) -> None:
    for lst, v in zip(out, (a0, a1, b0, b1, rnd)):
        lst.append(v)


def truncated_lengths(la: np.ndarray, lb: np.ndarray, max_num: int):
    """Final (len_a, len_b) of Google's truncate_seq_pair, vectorized.

    It pops from the longer segment (B on ties) until the total fits: the
    longer one shrinks alone until both are equal, then they alternate, B first.
    """
    la, lb = np.asarray(la, np.int64), np.asarray(lb, np.int64)
    excess = np.maximum(la + lb - max_num, 0)
    half_a, half_b = (max_num + 1) // 2, max_num // 2
    na = np.where(la - lb >= excess, la - excess, np.where(lb - la >= excess, la, half_a))
    nb = np.where(la - lb >= excess, lb, np.where(lb - la >= excess, lb - excess, half_b))
    return na, nb


def front_cuts(seed: int, g: np.ndarray, removed: np.ndarray, segment: int) -> np.ndarray:
    """How many of `removed` popped tokens came off the front: each pop picks
    the front with probability 1/2 (Google: `rng.random() < 0.5`), i.e. the
    popcount of `removed` random bits keyed by (seed, instance, segment)."""
    removed = np.asarray(removed, np.int64)
    if not removed.size or removed.max() == 0:
        return np.zeros_like(removed)
    words = int(removed.max() + 63) // 64
    w = np.arange(words, dtype=np.int64)
    r = hashrng.bits(seed, g[:, None], STREAM_TRUNC * 4 + segment, w[None, :])
    keep = np.clip(removed[:, None] - 64 * w[None, :], 0, 64)
    mask = np.where(keep >= 64, np.uint64(0xFFFFFFFFFFFFFFFF),
                    (np.uint64(1) << np.minimum(keep, 63).astype(np.uint64)) - np.uint64(1))
    return np.bitwise_count(r & mask).sum(axis=1).astype(np.int64)


@dataclasses.dataclass
class Sequences:
    """Unmasked instances, padded to max_seq_length.

    ids / type_ids int32 [b, T]; word_start bool [b, T] (True on the first token
    of every word, and on the first token left in a segment after truncation);
    candidate bool [b, T] (real non-special tokens); length int32 [b];
    is_random int32 [b].
    """

    ids: np.ndarray
    type_ids: np.ndarray
    word_start: np.ndarray
    candidate: np.ndarray
    length: np.ndarray
    is_random: np.ndarray


def segment_spans(corpus: PreparedCorpus, plan: Plan, rows, cfg: PairingConfig):
    """(sa, sb, la, lb, na, nb) of plan rows `rows`: token offsets of segments
    A and B in their shards, their lengths, and their lengths after
    truncate_seq_pair. Needs sentence lengths only, no tokens."""
    a0, a1, b0, b1 = plan.a_start[rows], plan.a_end[rows], plan.b_start[rows], plan.b_end[rows]
    start, length = corpus.sentence_start, corpus.sentence_length
    sa, sb = start[a0], start[np.minimum(b0, len(start) - 1)]
    la = start[a1 - 1] + length[a1 - 1] - sa
    lb = np.where(b1 > b0, start[np.maximum(b1 - 1, 0)] + length[np.maximum(b1 - 1, 0)] - sb, 0)
    na, nb = truncated_lengths(la, lb, cfg.max_num_tokens)
    return sa, sb, la, lb, na, nb


def materialize(corpus: PreparedCorpus, plan: Plan, rows: np.ndarray, g: np.ndarray,
                cfg: PairingConfig, seed: int, cls_id: int, sep_id: int,
                pad_id: int) -> Sequences:
    """Build `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`) for plan rows `rows`,
    whose global instance indices are `g` (keying the truncation draws)."""
    T = cfg.max_seq_length
    a0, b0 = plan.a_start[rows], plan.b_start[rows]
    start, shard = corpus.sentence_start, corpus.sentence_shard
    sa, sb, la, lb, na, nb = segment_spans(corpus, plan, rows, cfg)
    sa = sa + front_cuts(seed, g, la - na, 0)
    sb = sb + front_cuts(seed, g, lb - nb, 1)
    b = len(rows)
    ids = np.full((b, T), pad_id, np.int32)
    types = np.zeros((b, T), np.int32)
    ws = np.zeros((b, T), bool)
    cand = np.zeros((b, T), bool)
    toks, starts = corpus.tokens, corpus.word_starts
    sha, shb = shard[a0], shard[np.minimum(b0, len(start) - 1)]
    ids[:, 0] = cls_id
    for r in range(b):
        n_a, n_b = int(na[r]), int(nb[r])
        x, y = int(sa[r]), int(sb[r])
        ids[r, 1:1 + n_a] = toks[sha[r]][x:x + n_a]
        ws[r, 1:1 + n_a] = starts[sha[r]][x:x + n_a]
        ids[r, 1 + n_a] = sep_id
        if n_b:
            p = 2 + n_a
            ids[r, p:p + n_b] = toks[shb[r]][y:y + n_b]
            ws[r, p:p + n_b] = starts[shb[r]][y:y + n_b]
            ids[r, p + n_b] = sep_id
            types[r, p:p + n_b + 1] = 1
    pos = np.arange(T)[None, :]
    nb_special = np.where(nb > 0, 1, 0)
    length_ = 2 + na + nb + nb_special
    in_a = (pos >= 1) & (pos < 1 + na[:, None])
    in_b = (pos >= 2 + na[:, None]) & (pos < 2 + na[:, None] + nb[:, None])
    cand[:] = in_a | in_b
    # A truncated segment may begin mid-word: that remnant counts as its own word.
    ws[:, 1] = True
    ws[np.arange(b), np.minimum(2 + na, T - 1)] |= nb > 0
    ws &= cand
    return Sequences(ids, types, ws, cand, length_.astype(np.int32),
                     plan.is_random[rows].astype(np.int32))
