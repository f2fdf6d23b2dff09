"""The pretraining input pipeline the trainer uses: prepared cache -> masked batches.

    pipe = PretrainingPipeline.from_config(data_cfg, global_batch_size=G,
                                           process_index=p, process_count=n)
    batch = pipe.batch(step)               # this process's G // n rows of global step `step`
    for step, batch in pipe.iterate(start_step): ...
    state = pipe.state(step)               # small JSON-able dict saved with checkpoints
    pipe.check_state(state)                # clear error if data / vocab / stream differ

The global example stream is epoch 0's shuffled plan, then epoch 1's, ...
(each plan seeded by (seed, epoch), see `instances.build_plan`), and step s
covers global examples [s * G, (s + 1) * G); process p materializes rows
[p * G / n, (p + 1) * G / n) of it. Truncation and masking draws are keyed by
(seed, global example index), so a batch is a pure function of (seed, step,
prepared files, config), the same for any host count and after any resume; the
only state is the step (plus cached epoch sizes so that a late resume does not
re-plan every earlier epoch).

Batch (numpy): input_ids, token_type_ids, attention_mask int32 [b, T];
masked_positions, masked_ids int32 [b, P]; masked_weights float32 [b, P];
nsp_labels int32 [b] (0 = B is the actual next segment, 1 = random; absent in
MLM-only mode); mlm_labels int32 [b, T] (-100 where not masked) with dense_labels.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator

import ml_collections
import numpy as np

from bert_jax.data import instances, masking, packing
from bert_jax.data.token_cache import PreparedCorpus, check_vocab, open_prepared
from bert_jax.data.tokenizer import load_tokenizer

_STREAM_FIELDS = ("seed", "max_seq_length", "max_predictions_per_seq", "masked_lm_prob",
                  "short_seq_prob", "nsp", "whole_word_masking", "dense_labels", "packing")


def default_data_config():
    """The `data` sub-config of a pretraining config (ml_collections.ConfigDict)."""

    c = ml_collections.ConfigDict()
    c.prepared_dir = ""       # output of `python -m bert_jax.data.prepare`
    c.vocab = ""              # '' = the vocab copy inside prepared_dir; else must match it
    c.max_seq_length = 128
    c.max_predictions_per_seq = 20
    c.masked_lm_prob = 0.15
    c.short_seq_prob = 0.1
    c.nsp = True              # False: MLM-only, contiguous full sentences
    c.whole_word_masking = False
    c.dense_labels = False    # also emit mlm_labels [b, T] with -100
    # >= 2: pack up to this many instances per row (segment-aware attention,
    # see data/packing.py); 0 or 1: one instance per row, padded.
    c.packing = 0
    c.seed = 0
    return c


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Plain, validated copy of the data config (the pipeline never holds a ConfigDict)."""

    prepared_dir: str
    vocab: str = ""
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    nsp: bool = True
    whole_word_masking: bool = False
    dense_labels: bool = False
    packing: int = 0
    seed: int = 0

    def __post_init__(self):
        min_len = 5 if self.nsp else 3
        if self.max_seq_length < min_len:
            raise ValueError(f"data.max_seq_length={self.max_seq_length}: must be >= {min_len}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"data.max_predictions_per_seq={self.max_predictions_per_seq}: "
                             "must be >= 1")
        if not 0.0 < self.masked_lm_prob <= 1.0:
            raise ValueError(f"data.masked_lm_prob={self.masked_lm_prob}: must be in (0, 1]")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"data.short_seq_prob={self.short_seq_prob}: must be in [0, 1]")
        if self.packing < 0:
            raise ValueError(f"data.packing={self.packing}: must be >= 0")
        if self.packing > 1 and self.dense_labels:
            raise ValueError("data.packing needs the gathered MLM head: set data.dense_labels=False")
        if not self.prepared_dir:
            raise ValueError("data.prepared_dir is empty: run `python -m bert_jax.data.prepare` "
                             "and point data.prepared_dir at its --out")

    @classmethod
    def from_any(cls, cfg) -> DataConfig:
        if isinstance(cfg, DataConfig):
            return cfg
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"data config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def stream(self) -> dict:
        return {k: getattr(self, k) for k in _STREAM_FIELDS}


def batch_spec(data_cfg, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the batches this config yields, with no data:
    what `bert_jax.aot` compiles against. tests/test_aot.py checks it against
    real batches of every kind (padded, packed, dense labels, MLM-only)."""
    d = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    T, B = int(d["max_seq_length"]), int(batch_size)
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    spec = {"input_ids": ((B, T), i32), "token_type_ids": ((B, T), i32),
            "attention_mask": ((B, T), i32)}
    k = int(d.get("packing", 0))
    if k > 1:
        P = packing.max_predictions_per_row(T, d["masked_lm_prob"],
                                            d["max_predictions_per_seq"], k)
        spec.update(segment_ids=((B, T), i32), position_ids=((B, T), i32),
                    nsp_positions=((B, k), i32), nsp_weights=((B, k), f32))
        nsp_shape = (B, k)
    else:
        P = int(d["max_predictions_per_seq"])
        nsp_shape = (B,)
        if d.get("dense_labels"):
            spec["mlm_labels"] = ((B, T), i32)
    spec.update(masked_positions=((B, P), i32), masked_ids=((B, P), i32),
                masked_weights=((B, P), f32))
    if d.get("nsp", True):
        spec["nsp_labels"] = (nsp_shape, i32)
    return spec


class PretrainingPipeline:
    """Deterministic MLM(+NSP) batches for one process (see module docstring)."""

    def __init__(self, corpus: PreparedCorpus, tokenizer, cfg: DataConfig,
                 global_batch_size: int, process_index: int = 0, process_count: int = 1):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
        if global_batch_size < 1 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        if cfg.nsp and corpus.num_documents < 2:
            raise ValueError(f"{corpus.path}: NSP needs >= 2 documents, found "
                             f"{corpus.num_documents} (set data.nsp=False for MLM-only)")
        if corpus.num_sentences == 0:
            raise ValueError(f"{corpus.path}: the prepared corpus holds no sentences")
        self.corpus, self.tokenizer, self.cfg = corpus, tokenizer, cfg
        self.global_batch_size = global_batch_size
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.pairing = instances.PairingConfig(cfg.max_seq_length, cfg.short_seq_prob, cfg.nsp)
        self.pool = masking.random_token_pool(tokenizer)
        self._epoch_ends = [0]  # cumulative instance counts: epoch e = [ends[e], ends[e+1])
        self._plans: OrderedDict[int, instances.Plan] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, data_cfg, global_batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> PretrainingPipeline:
        """Open data_cfg.prepared_dir and check data_cfg.vocab (if set) against it."""
        cfg = DataConfig.from_any(data_cfg)
        corpus = open_prepared(cfg.prepared_dir)
        tok = load_tokenizer(cfg.vocab or corpus.vocab_path)
        check_vocab(corpus, tok.fingerprint, cfg.vocab or str(corpus.vocab_path))
        if cls is PretrainingPipeline and cfg.packing > 1:
            cls = PackedPipeline
        return cls(corpus, tok, cfg, global_batch_size, process_index, process_count)

    # ------------------------------------------------------------------ epochs

    def _plan(self, epoch: int) -> instances.Plan:
        with self._lock:
            if epoch in self._plans:
                self._plans.move_to_end(epoch)
                return self._plans[epoch]
        plan = instances.build_plan(self.corpus.sentence_length, self.corpus.document_offsets,
                                    self.pairing, self.cfg.seed, epoch)
        if not len(plan):
            raise ValueError(f"{self.corpus.path}: epoch {epoch} has no instances")
        with self._lock:
            self._plans[epoch] = plan
            while len(self._plans) > 3:
                self._plans.popitem(last=False)
            if epoch + 1 < len(self._epoch_ends):
                known = self._epoch_ends[epoch + 1] - self._epoch_ends[epoch]
                if known != len(plan):
                    raise ValueError(f"epoch {epoch}: restored state says {known} instances, "
                                     f"the data gives {len(plan)}; the state is from other data")
            elif epoch + 1 == len(self._epoch_ends):
                self._epoch_ends.append(self._epoch_ends[-1] + len(plan))
        return plan

    def locate(self, g: int) -> tuple[int, int]:
        """(epoch, row in that epoch's plan) of global instance g."""
        while g >= self._epoch_ends[-1]:
            self._plan(len(self._epoch_ends) - 1)
        e = bisect.bisect_right(self._epoch_ends, g) - 1
        return e, g - self._epoch_ends[e]

    def epoch_range(self, epoch: int) -> tuple[int, int]:
        """[first, end) global instance indices of `epoch`."""
        while len(self._epoch_ends) <= epoch + 1:
            self._plan(len(self._epoch_ends) - 1)
        return self._epoch_ends[epoch], self._epoch_ends[epoch + 1]

    def epoch_of(self, step: int) -> int:
        return self.locate(step * self.global_batch_size)[0]

    def instance_info(self, g: int) -> dict:
        """Where global instance g comes from: epoch, sentence ranges, documents."""
        e, row = self.locate(g)
        plan = self._plan(e)
        doc_of = lambda s: int(np.searchsorted(self.corpus.document_offsets, s, "right") - 1)
        a0, a1, b0, b1 = (int(x[row]) for x in (plan.a_start, plan.a_end, plan.b_start,
                                                 plan.b_end))
        return {"epoch": e, "row": row, "a": (a0, a1), "b": (b0, b1),
                "a_doc": doc_of(a0), "b_doc": doc_of(b0) if b1 > b0 else None,
                "is_random": bool(plan.is_random[row])}

    # ------------------------------------------------------------------ batches

    def sequences(self, g: np.ndarray) -> instances.Sequences:
        """Unmasked instances for global indices g (any order, any epochs)."""
        g = np.asarray(g, np.int64)
        for x in (g.min(), g.max()):
            self.locate(int(x))
        ends = np.asarray(self._epoch_ends)
        epochs = np.searchsorted(ends, g, "right") - 1
        parts, index = [], []
        for e in np.unique(epochs):
            sel = np.nonzero(epochs == e)[0]
            parts.append(instances.materialize(
                self.corpus, self._plan(int(e)), g[sel] - ends[e], g[sel], self.pairing,
                self.cfg.seed, self.tokenizer.cls_id, self.tokenizer.sep_id,
                self.tokenizer.pad_id))
            index.append(sel)
        if len(parts) == 1:
            return parts[0]
        inv = np.argsort(np.concatenate(index))
        return instances.Sequences(*(np.concatenate([getattr(p, f.name) for p in parts])[inv]
                                     for f in dataclasses.fields(instances.Sequences)))

    def examples(self, g: np.ndarray) -> dict[str, np.ndarray]:
        """Masked training examples for global instance indices g."""
        g = np.asarray(g, np.int64)
        seq = self.sequences(g)
        cfg = self.cfg
        batch = masking.mask_batch(
            seq.ids, seq.candidate, seq.word_start, g, cfg.seed, self.tokenizer.mask_id,
            self.pool, cfg.masked_lm_prob, cfg.max_predictions_per_seq,
            cfg.whole_word_masking, cfg.dense_labels)
        T = cfg.max_seq_length
        batch["token_type_ids"] = seq.type_ids
        batch["attention_mask"] = (np.arange(T)[None, :] < seq.length[:, None]).astype(np.int32)
        if cfg.nsp:
            batch["nsp_labels"] = seq.is_random
        return batch

    def global_indices(self, step: int) -> np.ndarray:
        """Global instance indices of this process's rows of `step`."""
        if step < 0:
            raise ValueError(f"step={step}: must be >= 0")
        first = step * self.global_batch_size + self.process_index * self.local_batch_size
        return np.arange(first, first + self.local_batch_size, dtype=np.int64)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice (global_batch_size // process_count rows) of step `step`."""
        return self.examples(self.global_indices(step))

    def iterate(self, start_step: int = 0, num_steps: int | None = None,
                prefetch: int = 4) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield (step, batch) from start_step on, built by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        stop = threading.Event()
        end = None if num_steps is None else start_step + num_steps

        def work():
            step = start_step
            try:
                while not stop.is_set() and (end is None or step < end):
                    item = (step, self.batch(step))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    step += 1
                q.put(None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)

        thread = threading.Thread(target=work, daemon=True, name="pretraining-data")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    # ------------------------------------------------------------------ state

    def _stream_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.cfg.stream(), sort_keys=True).encode()
                              ).hexdigest()[:16]

    def state(self, step: int) -> dict:
        """JSON-able iterator state for a checkpoint taken before `step` is consumed."""
        self.locate(max(step * self.global_batch_size - 1, 0))
        return {"step": int(step), "data_fingerprint": self.corpus.data_fingerprint,
                "vocab_fingerprint": self.corpus.vocab_fingerprint,
                "stream": self.cfg.stream(), "stream_hash": self._stream_hash(),
                "global_batch_size": self.global_batch_size,
                "epoch_ends": list(self._epoch_ends)}

    def check_state(self, state: dict) -> None:
        """Raise a clear error if `state` came from other data, vocab or stream
        settings; otherwise adopt its cached epoch sizes (checked when re-planned)."""
        where = f"{self.corpus.path}"
        if state.get("data_fingerprint") != self.corpus.data_fingerprint:
            raise ValueError(f"{where}: checkpoint data fingerprint {state.get('data_fingerprint')}"
                             f" != prepared data {self.corpus.data_fingerprint}; resume with "
                             "the prepared directory the run started with")
        if state.get("vocab_fingerprint") != self.corpus.vocab_fingerprint:
            raise ValueError(f"{where}: checkpoint vocab fingerprint "
                             f"{state.get('vocab_fingerprint')} != {self.corpus.vocab_fingerprint}")
        if state.get("stream_hash") != self._stream_hash():
            diff = {k: (v, self.cfg.stream().get(k)) for k, v in state.get("stream", {}).items()
                    if self.cfg.stream().get(k) != v}
            raise ValueError(f"{where}: data settings differ from the checkpoint's "
                             f"(checkpoint, now): {diff}")
        if state.get("global_batch_size") != self.global_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} != checkpoint's "
                             f"{state.get('global_batch_size')}: batches would differ")
        ends = [int(x) for x in state.get("epoch_ends", [0])]
        with self._lock:
            mine = self._epoch_ends
            common = min(len(ends), len(mine))
            if ends[:common] != mine[:common]:
                raise ValueError(f"{where}: checkpoint epoch sizes {ends[:common]} != "
                                 f"{mine[:common]}; the state is from other data")
            if len(ends) > len(mine):
                self._epoch_ends = ends


class PackedPipeline(PretrainingPipeline):
    """The same instances, packed up to `cfg.packing` per row (data/packing.py).

    The stream is per epoch: the epoch's instances packed into rows, rows
    shuffled; step s covers packed rows [s * G, (s + 1) * G) of it, so a batch
    is still a pure function of (seed, step, data, config). Batches add
    segment_ids, position_ids, nsp_positions and nsp_weights; nsp_labels is
    [b, packing]; masked_* have `max_predictions` columns.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_per_row = self.cfg.packing
        self.max_predictions = packing.max_predictions_per_row(
            self.cfg.max_seq_length, self.cfg.masked_lm_prob, self.cfg.max_predictions_per_seq,
            self.max_per_row)
        self._row_ends = [0]  # cumulative packed rows: epoch e = [ends[e], ends[e+1])
        self._packs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _pack(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if epoch in self._packs:
                return self._packs[epoch]
        lengths = packing.instance_lengths(self.corpus, self._plan(epoch), self.pairing)
        pack = packing.packed_epoch(lengths, self.cfg.max_seq_length, self.max_per_row,
                                    self.cfg.seed, epoch)
        with self._lock:
            self._packs[epoch] = pack
            while len(self._packs) > 3:
                self._packs.popitem(last=False)
            if epoch + 1 == len(self._row_ends):
                self._row_ends.append(self._row_ends[-1] + len(pack[0]) - 1)
        return pack

    def locate_row(self, r: int) -> tuple[int, int]:
        """(epoch, packed row in that epoch) of global packed row r."""
        while r >= self._row_ends[-1]:
            self._pack(len(self._row_ends) - 1)
        e = bisect.bisect_right(self._row_ends, r) - 1
        return e, r - self._row_ends[e]

    def epoch_of(self, step: int) -> int:
        return self.locate_row(step * self.global_batch_size)[0]

    def rows_instances(self, rows: np.ndarray) -> list[np.ndarray]:
        """Global instance indices held by each global packed row."""
        out = []
        for r in np.asarray(rows, np.int64).tolist():
            e, row = self.locate_row(r)
            offsets, items = self._pack(e)
            first, _ = self.epoch_range(e)
            out.append(first + items[offsets[row]:offsets[row + 1]])
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        members = self.rows_instances(self.global_indices(step))
        g = np.concatenate(members)
        ex = self.examples(g)
        return packing.pack_examples(ex, ex["attention_mask"].sum(axis=1),
                                     [len(m) for m in members], self.cfg.max_seq_length,
                                     self.max_predictions, self.max_per_row,
                                     self.tokenizer.pad_id)

    def state(self, step: int) -> dict:
        self.locate_row(max(step * self.global_batch_size - 1, 0))
        out = super().state(0)
        out.update(step=int(step), packed_row_ends=list(self._row_ends))
        return out

    def check_state(self, state: dict) -> None:
        super().check_state(state)
        ends = [int(x) for x in state.get("packed_row_ends", [0])]
        for e in range(len(ends) - 1):
            self._pack(e)
            if self._row_ends[e + 1] - self._row_ends[e] != ends[e + 1] - ends[e]:
                raise ValueError(f"{self.corpus.path}: checkpoint says epoch {e} packs into "
                                 f"{ends[e + 1] - ends[e]} rows, the data gives "
                                 f"{self._row_ends[e + 1] - self._row_ends[e]}")
