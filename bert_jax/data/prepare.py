"""Tokenize a corpus once into the prepared cache (see `token_cache.py` for the layout).

    python -m bert_jax.data.prepare --corpus=../shared/data/corpus/eltec-eng \\
        --vocab=../shared/data/vocab/bert-base-uncased/vocab.txt --out=/tmp/eltec --num_workers=2

One corpus unit (file, file chunk, TFDS record range, stdlib module group)
becomes one shard, tokenized in a worker process. Re-running skips shards whose
meta.json matches (same unit, vocab and options); a shard is built in a temp
directory and renamed into place, and manifest.json is written only after every
shard exists, so an interrupted run is never taken for a finished one.

Bad-input policy, reported at the end: empty files / documents and sentences
that tokenize to nothing are skipped and counted; one-sentence documents are
kept; a sentence longer than max_sentence_tokens is split into pieces of that
size (counted, the first few named by file:line); non-UTF-8 bytes stop the run
with FILE:LINE unless --encoding_errors=replace; a vocab without
[PAD]/[UNK]/[CLS]/[SEP]/[MASK] stops before anything is written.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
import time

import numpy as np
from absl import flags
from tqdm import tqdm

from bert_jax.data import corpora, token_cache
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.storage import json_input, outputs, paths

_ENCODE_BATCH = 4096  # sentences per tokenizer call
_MAX_WARNINGS = 5


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Choices that change the prepared bytes (a shard is reused only if equal)."""

    segmenter: str = "sentencex"
    encoding_errors: str = "strict"
    max_sentence_tokens: int = 256


# ----------------------------------------------------------------------------- worker

_TOKENIZERS: dict = {}


def _tokenizer(vocab: str):
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = load_tokenizer(vocab)
    return _TOKENIZERS[vocab]


def _shard_header(unit: corpora.Unit, fingerprint: str, opts: PrepareOptions) -> dict:
    return {"format_version": token_cache.FORMAT_VERSION, "unit": unit.describe(),
            "vocab_fingerprint": fingerprint, "options": dataclasses.asdict(opts)}


class _ShardBuilder:
    """Accumulates tokenized documents of one unit into flat arrays."""

    def __init__(self, tok, opts: PrepareOptions):
        self.tok, self.opts = tok, opts
        self.continues = np.asarray(tok.continues_word(), dtype=bool)
        self.ids: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.sent_lens: list[int] = []
        self.doc_sents: list[int] = []
        self.counts = {"split_sentences": 0, "empty_sentences": 0, "empty_documents": 0}
        self.warnings: list[str] = []

    def add(self, docs: list[corpora.Document]) -> None:
        texts = [s for d in docs for s in d.sentences]
        encoded = self.tok.ids_batch(texts)
        lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64,
                           count=int(lens.sum()))
        # Word starts from the vocabulary table; every sentence (and every piece
        # of a split sentence) begins a word.
        starts = ~self.continues[flat]
        first = np.cumsum(lens) - lens
        starts[first[lens > 0]] = True
        limit = self.opts.max_sentence_tokens
        k = 0
        for doc in docs:
            n_before = len(self.sent_lens)
            for i in range(len(doc.sentences)):
                n, at = int(lens[k]), int(first[k])
                k += 1
                if n == 0:
                    self.counts["empty_sentences"] += 1
                    continue
                if n > limit:
                    self._note_split(doc, i, n, limit)
                    starts[at:at + n:limit] = True
                    self.sent_lens += [min(limit, n - a) for a in range(0, n, limit)]
                else:
                    self.sent_lens.append(n)
            if len(self.sent_lens) == n_before:
                self.counts["empty_documents"] += 1
            else:
                self.doc_sents.append(len(self.sent_lens) - n_before)
        self.ids.append(flat)
        self.starts.append(starts)

    def _note_split(self, doc: corpora.Document, i: int, n: int, limit: int) -> None:
        self.counts["split_sentences"] += 1
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(f"{doc.where(i)}: sentence of {n} tokens split into pieces "
                                 f"of <= {limit} tokens (policy: split)")

    def arrays(self) -> dict[str, np.ndarray]:
        dtype = token_cache.token_dtype(self.tok.vocab_size)
        zero = np.zeros(1, np.int64)
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
        return {
            "tokens": cat(self.ids, dtype),
            "word_starts": cat(self.starts, np.uint8),
            "sentence_offsets": np.concatenate([zero, np.cumsum(self.sent_lens, dtype=np.int64)]),
            "document_offsets": np.concatenate([zero, np.cumsum(self.doc_sents, dtype=np.int64)]),
        }


def build_shard(index: int, unit: corpora.Unit, vocab: str, out_dir: str,
                opts: PrepareOptions) -> dict:
    """Tokenize one unit into out_dir/shard-NNNNN (or reuse a finished one); returns its meta."""
    out = pathlib.Path(out_dir)
    final = out / token_cache.shard_name(index)
    tok = _tokenizer(vocab)
    header = _shard_header(unit, tok.fingerprint, opts)
    meta_path = final / token_cache.SHARD_META
    if meta_path.exists():
        meta = json_input.read(meta_path)
        if {k: meta.get(k) for k in header} == header:
            return dict(meta, reused=True)
    t0 = time.perf_counter()
    docs, stats = corpora.read_unit(unit, opts.segmenter, opts.encoding_errors)
    builder = _ShardBuilder(tok, opts)
    batch: list[corpora.Document] = []
    n_batch = 0
    for doc in docs:
        batch.append(doc)
        n_batch += len(doc.sentences)
        if n_batch >= _ENCODE_BATCH:
            builder.add(batch)
            batch, n_batch = [], 0
    if batch:
        builder.add(batch)
    arrays = builder.arrays()
    stats_d = dataclasses.asdict(stats)
    stats_d["empty_documents"] += builder.counts.pop("empty_documents")
    stats_d.update(builder.counts)
    meta = dict(header, name=final.name, documents=len(arrays["document_offsets"]) - 1,
                sentences=len(arrays["sentence_offsets"]) - 1, tokens=len(arrays["tokens"]),
                sha=token_cache.array_sha(arrays), stats=stats_d, warnings=builder.warnings,
                seconds=round(time.perf_counter() - t0, 3))
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a)
    (tmp / token_cache.SHARD_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if final.exists():  # a stale shard from other options or vocab
        shutil.rmtree(final)
    os.replace(tmp, final)
    return dict(meta, reused=False)


def _quiet_rayon() -> None:
    """Worker processes already use the cores: one tokenizer thread each."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _build_shard_star(args) -> dict:
    return build_shard(*args)


# ----------------------------------------------------------------------------- driver


# What a prepared dir's manifest says wrote it (storage/outputs.py).
RECORD = outputs.record("prepare", "prepared corpus")


def _vocab_copy_name(tok) -> str:
    return "vocab.txt" if tok.kind == "wordpiece" else pathlib.Path(tok.vocab_file).name


def _prepared_entry(name: str) -> bool:
    """A name `prepare_corpus` writes into its output directory."""
    return (name in (token_cache.MANIFEST, "vocab.txt", "tokenizer.json")
            or name.endswith((".model", ".vocab"))
            or name.startswith(("shard-", ".shard-", ".vocab.txt.tmp-", ".tokenizer.json.tmp-",
                                f".{token_cache.MANIFEST}.")))


def _clean_stale(out: pathlib.Path, n_units: int) -> None:
    """Remove temp dirs of crashed runs and shards beyond the current unit count."""
    for p in out.glob(".shard-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob("shard-*"):
        if p.is_dir() and p.name[6:].isdigit() and int(p.name[6:]) >= n_units:
            shutil.rmtree(p)


def _run_workers(jobs: list[tuple], num_workers: int, progress: bool) -> list[dict]:
    metas: dict[int, dict] = {}
    total_bytes = shown = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="shard", desc="prepare", disable=not progress,
               file=sys.stderr)
    if num_workers <= 1:
        results = (_build_shard_star(j) for j in jobs)
        pool = None
    else:
        # spawn, not fork: the caller may have started JAX or tokenizers threads.
        pool = multiprocessing.get_context("spawn").Pool(num_workers, initializer=_quiet_rayon)
        results = pool.imap_unordered(_build_shard_star, jobs)
    try:
        for meta in results:
            metas[int(meta["name"][6:])] = meta
            total_bytes += meta["stats"]["bytes"]
            for w in meta["warnings"]:
                if shown < _MAX_WARNINGS:
                    bar.write(f"warning: {w}")
                shown += 1
            bar.set_postfix_str(f"{total_bytes / 1e6 / (time.perf_counter() - t0):.1f} MB/s")
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return [metas[i] for i in sorted(metas)]


class EmptyCorpusError(ValueError):
    """The corpus was read and holds no document (empty or blank files)."""


def prepare_corpus(corpus: str, vocab: str | os.PathLike, out_dir: str | os.PathLike,
                   num_workers: int = 2, segmenter: str = "sentencex",
                   encoding_errors: str = "strict", max_sentence_tokens: int = 256,
                   chunk_bytes: int = corpora.DEFAULT_CHUNK_BYTES,
                   progress: bool = True, overwrite: bool = False) -> dict:
    """Tokenize `corpus` (a spec, see `corpora`) with `vocab` into `out_dir`.

    Args:
      corpus: corpus spec, e.g. 'builtin:stdlib' or 'raw:/data/novels/*.txt'.
      vocab: a BERT vocab.txt or SentencePiece .model (copied into out_dir).
      out_dir: the prepared directory (created; finished shards are reused).
      num_workers: tokenizer processes (<= 1 runs in this process).
      segmenter: 'sentencex' or 'pysbd' for raw documents.
      encoding_errors: 'strict' (stop at non-UTF-8 bytes) or 'replace'.
      max_sentence_tokens: longer sentences are split into pieces this long.
      chunk_bytes: BERT-format files above this size are split between workers.
      progress: show a tqdm bar.
      overwrite: replace an `out_dir` that is not empty and not a prepared
        directory (without it that is an error; an earlier prepared directory
        is resumed or rebuilt in place).

    Returns:
      The manifest dict (also in out_dir/manifest.json).
    """
    if paths.is_url(out_dir):
        return _prepare_to_url(os.fspath(out_dir), corpus, vocab, num_workers=num_workers,
                               segmenter=segmenter, encoding_errors=encoding_errors,
                               max_sentence_tokens=max_sentence_tokens,
                               chunk_bytes=chunk_bytes, progress=progress,
                               overwrite=overwrite)
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"encoding_errors={encoding_errors!r}: use 'strict' or 'replace'")
    if max_sentence_tokens < 1:
        raise ValueError(f"max_sentence_tokens={max_sentence_tokens}: must be >= 1")
    corpora.make_segmenter(segmenter)  # fail on a bad name before any work
    tok = load_tokenizer(vocab)  # a vocab lacking special tokens stops here
    units = corpora.resolve(corpus, chunk_bytes)
    opts = PrepareOptions(segmenter, encoding_errors, max_sentence_tokens)
    out = pathlib.Path(out_dir)
    sources = [tok.vocab_file] + [u.path for u in units if u.kind in ("bert", "raw")]
    # A prepared dir (or an interrupted one, with --overwrite) is resumed or
    # rebuilt in place; a dir holding anything else is refused, --overwrite or
    # not: nothing is deleted that prepare did not write.
    outputs.check_destination(out, overwrite=overwrite, is_own=outputs.only_entries(
        _prepared_entry), sources=sources, what="--out directory", record=RECORD,
        resume=True)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(out, corpus, tok, units, opts, num_workers, progress)
    except BaseException as e:
        # A run that finished no shard, or found nothing to prepare, leaves no
        # directory it created behind.
        if created and (isinstance(e, EmptyCorpusError) or not any(out.glob("shard-*"))):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _prepare(out: pathlib.Path, corpus: str, tok, units, opts, num_workers: int,
             progress: bool) -> dict:
    mpath = out / token_cache.MANIFEST
    header = {"format_version": token_cache.FORMAT_VERSION, "vocab_fingerprint": tok.fingerprint,
              "units": [u.describe() for u in units], "options": dataclasses.asdict(opts)}
    if mpath.exists():
        try:
            old = json_input.read(mpath)
        except ValueError:
            old = {}  # a damaged manifest: rebuild
        if {k: old.get(k) for k in header} == header:
            return old
        mpath.unlink()  # from here on the directory is "unfinished" until rewritten
    _clean_stale(out, len(units))
    vocab_name = _vocab_copy_name(tok)
    tmp_vocab = out / f".{vocab_name}.tmp-{os.getpid()}"
    shutil.copyfile(tok.vocab_file, tmp_vocab)
    os.replace(tmp_vocab, out / vocab_name)
    jobs = [(i, u, str(out / vocab_name), str(out), opts) for i, u in enumerate(units)]
    t0 = time.perf_counter()
    metas = _run_workers(jobs, num_workers, progress)
    manifest = _manifest(header, corpus, tok, vocab_name, metas)
    if manifest["totals"]["documents"] == 0:
        # Prepared data with nothing in it would fail at training time, far
        # from its cause: say it here, naming what was skipped.
        raise EmptyCorpusError(f"--corpus={corpus}: yields no documents; {summary(manifest)}")
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    token_cache.write_json_atomic(mpath, manifest)
    return manifest


def _prepare_to_url(url: str, corpus: str, vocab, overwrite: bool = False, **kwargs) -> dict:
    """Prepare into a local staging dir (kept in the cache, so a rerun reuses its
    finished shards), then upload shards and vocab, and manifest.json last: as
    locally, its presence in the bucket means "complete". The bucket prefix is
    checked first, as a local --out is (and the bucket must exist)."""
    outputs.check_destination(url, overwrite=overwrite, sources=[vocab],
                              is_own=outputs.only_entries(_prepared_entry),
                              what="--out directory", record=RECORD, resume=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    local = paths.cache_root() / "prepare" / digest
    # The staging dir is our own cache: whatever a crashed run left there may go.
    manifest = prepare_corpus(corpus, vocab, local, overwrite=True, **kwargs)
    mpath = paths.join(url, token_cache.MANIFEST)
    if paths.exists(mpath) and json_input.read(mpath).get(
            "data_fingerprint") == manifest["data_fingerprint"]:
        return manifest
    # The old manifest goes first (a reader never sees it over new shards),
    # manifest.json last; only then the old objects the new output lacks.
    outputs.upload_dir(local, url, skip=lambda rel: rel.split("/")[-1].startswith("."))
    return manifest


def _manifest(header: dict, corpus: str, tok, vocab_name: str, metas: list[dict]) -> dict:
    stats: dict[str, int] = {}
    for m in metas:
        for k, v in m["stats"].items():
            stats[k] = stats.get(k, 0) + v
    shards = [{k: m[k] for k in ("name", "unit", "documents", "sentences", "tokens", "sha")}
              for m in metas]
    h = hashlib.sha256(f"{token_cache.FORMAT_VERSION}:{tok.fingerprint}".encode())
    for s in shards:
        h.update(s["sha"].encode())
    totals = {k: sum(s[k] for s in shards) for k in ("documents", "sentences", "tokens")}
    totals["bytes"] = stats.get("bytes", 0)
    return dict(header, written_by=RECORD, corpus=corpus, vocab_file=vocab_name, vocab_source=str(tok.vocab_file),
                shards=shards, totals=totals, stats=stats, data_fingerprint=h.hexdigest()[:16],
                warnings=list(itertools.chain.from_iterable(m["warnings"] for m in metas)))


def summary(manifest: dict) -> str:
    """One paragraph a person reads after preparing."""
    t, s = manifest["totals"], manifest["stats"]
    return (f"{len(manifest['shards'])} shards, {t['documents']} documents, {t['sentences']} "
            f"sentences, {t['tokens']} tokens from {t['bytes'] / 1e6:.1f} MB; skipped: "
            f"{s.get('empty_files', 0)} empty files, {s.get('empty_documents', 0)} empty "
            f"documents, {s.get('empty_sentences', 0)} empty sentences; kept "
            f"{s.get('one_sentence_documents', 0)} one-sentence documents; split "
            f"{s.get('split_sentences', 0)} over-long sentences; replaced "
            f"{s.get('replaced_lines', 0)} lines with bad UTF-8; fingerprint "
            f"{manifest['data_fingerprint']}")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    try:
        manifest = prepare_corpus(f.corpus, f.vocab, f.out, num_workers=f.num_workers,
                                  segmenter=f.segmenter, encoding_errors=f.encoding_errors,
                                  max_sentence_tokens=f.max_sentence_tokens,
                                  overwrite=f.overwrite)
    except OSError as e:
        # ENOSPC, or numpy's short write ("N requested and M written"), names
        # no file: say which output it was.
        if e.errno != errno.ENOSPC and not re.search(r"\d+ requested and \d+ written", str(e)):
            raise
        raise OSError(f"{f.out}: writing the prepared corpus failed: no space left on "
                      "device; free space and rerun") from None
    print(summary(manifest))


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("corpus", None, "corpus spec (see bert_jax.data.corpora)", required=True)
    flags.DEFINE_string("vocab", None, "vocab.txt or SentencePiece .model", required=True)
    flags.DEFINE_string("out", None, "output directory", required=True)
    flags.DEFINE_integer("num_workers", 2, "tokenizer worker processes")
    flags.DEFINE_enum("segmenter", "sentencex", list(corpora.SEGMENTERS), "sentence splitter")
    flags.DEFINE_enum("encoding_errors", "strict", ["strict", "replace"], "non-UTF-8 policy")
    flags.DEFINE_integer("max_sentence_tokens", 256, "split longer sentences")
    flags.DEFINE_bool("overwrite", False, "replace an --out directory that is not empty and "
                      "not a prepared directory")
    from bert_jax import cli
    cli.run(main)
