"""The prepared pretraining cache: tokenized documents in sharded numpy files.

Layout of a prepared directory (written by `bert_jax.data.prepare`)::

    manifest.json              written last; its presence means "complete"
    vocab.txt | *.model        a copy of the vocabulary it was tokenized with
    shard-00000/
        tokens.npy             uint16 (int32 for vocabularies > 65536) [N]
        word_starts.npy        uint8 [N], 1 where a token starts a word
        sentence_offsets.npy   int64 [S + 1], token offset of each sentence
        document_offsets.npy   int64 [D + 1], sentence offset of each document
        meta.json              unit, vocab fingerprint, counts, checksums

Why numpy files rather than ArrayRecord: online pairing slices arbitrary
sentence ranges out of flat token arrays, and `np.load(mmap_mode='r')` gives
that as a zero-copy view with no per-record decoding; pairing + masking then
runs as vectorized numpy (see bench/bench_data.py). A shard is one directory
renamed into place when complete, so a crashed run never leaves a shard that
looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

from bert_jax.storage import json_input, paths

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_META = "meta.json"
ARRAYS = ("tokens", "word_starts", "sentence_offsets", "document_offsets")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def array_sha(arrays: dict[str, np.ndarray]) -> str:
    """A checksum of a shard's arrays (part of the data fingerprint)."""
    h = hashlib.sha256()
    for name in ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def write_json_atomic(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class PreparedError(ValueError):
    """A prepared directory that is missing, incomplete or does not fit the vocab."""


@dataclasses.dataclass
class PreparedCorpus:
    """Read-only view of a prepared directory.

    Sentences are numbered globally across shards in shard order. For global
    sentence i: its tokens are `tokens[sentence_shard[i]][sentence_start[i]:
    sentence_start[i] + sentence_length[i]]`; document d owns sentences
    `document_offsets[d]:document_offsets[d + 1]`.
    """

    path: pathlib.Path
    manifest: dict
    tokens: list[np.ndarray]
    word_starts: list[np.ndarray]
    sentence_shard: np.ndarray   # int32 [S]
    sentence_start: np.ndarray   # int64 [S], offset inside its shard
    sentence_length: np.ndarray  # int32 [S]
    document_offsets: np.ndarray  # int64 [D + 1]

    @property
    def vocab_fingerprint(self) -> str:
        return self.manifest["vocab_fingerprint"]

    @property
    def data_fingerprint(self) -> str:
        return self.manifest["data_fingerprint"]

    @property
    def vocab_path(self) -> pathlib.Path:
        return self.path / self.manifest["vocab_file"]

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_length)

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["totals"]["tokens"])

    def sentence_tokens(self, i: int) -> np.ndarray:
        s = int(self.sentence_start[i])
        return self.tokens[self.sentence_shard[i]][s:s + int(self.sentence_length[i])]

    def document_sentences(self, d: int) -> list[np.ndarray]:
        a, b = self.document_offsets[d], self.document_offsets[d + 1]
        return [self.sentence_tokens(i) for i in range(a, b)]


def open_prepared(path: str | os.PathLike) -> PreparedCorpus:
    """Memory-map a prepared directory; raises PreparedError if it is incomplete.

    A URL (gs://) is read through a local cache: its manifest is read from the
    bucket, then the shards are downloaded once per host into a cache entry
    named after the URL and the manifest's data fingerprint, and memory-mapped
    from there (each process still reads only its own rows of them)."""
    if paths.is_url(path):
        url = os.fspath(path)
        paths.check_bucket(url)
        mpath = paths.join(url, MANIFEST)
        if not paths.exists(mpath):
            raise PreparedError(
                f"{url}: no {MANIFEST}; the directory is not a finished prepared corpus "
                "(run `python -m bert_jax.data.prepare` to finish it)")
        fingerprint = json_input.read(mpath).get("data_fingerprint", "")
        path = paths.local_copy(url, key=fingerprint)
    root = pathlib.Path(path)
    mpath = root / MANIFEST
    if not mpath.exists():
        raise PreparedError(
            f"{root}: no {MANIFEST}; the directory is not a finished prepared corpus "
            "(run `python -m bert_jax.data.prepare` to finish it)")
    manifest = json_input.read(mpath)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PreparedError(f"{mpath}: format_version {manifest.get('format_version')} != "
                            f"{FORMAT_VERSION}; re-run prepare")
    tokens, starts, shards, sstarts, slens, doffs = [], [], [], [], [], [np.zeros(1, np.int64)]
    n_sent = 0
    for k, shard in enumerate(manifest["shards"]):
        d = root / shard["name"]
        t = np.load(d / "tokens.npy", mmap_mode="r")
        tokens.append(np.asarray(t))
        starts.append(np.asarray(np.load(d / "word_starts.npy", mmap_mode="r")))
        so = np.load(d / "sentence_offsets.npy")
        do = np.load(d / "document_offsets.npy")
        if len(t) != shard["tokens"] or len(so) - 1 != shard["sentences"]:
            raise PreparedError(f"{d}: arrays do not match {MANIFEST}; re-run prepare")
        shards.append(np.full(len(so) - 1, k, np.int32))
        sstarts.append(so[:-1])
        slens.append(np.diff(so).astype(np.int32))
        doffs.append(do[1:] + n_sent)
        n_sent += len(so) - 1
    return PreparedCorpus(
        path=root, manifest=manifest, tokens=tokens, word_starts=starts,
        sentence_shard=np.concatenate(shards) if shards else np.zeros(0, np.int32),
        sentence_start=np.concatenate(sstarts) if sstarts else np.zeros(0, np.int64),
        sentence_length=np.concatenate(slens) if slens else np.zeros(0, np.int32),
        document_offsets=np.concatenate(doffs))


def check_vocab(prepared: PreparedCorpus, vocab_fingerprint: str, vocab_path: str) -> None:
    """Raise a clear error when the vocab differs from the one used to prepare."""
    if vocab_fingerprint != prepared.vocab_fingerprint:
        raise PreparedError(
            f"{prepared.path}: prepared with vocab fingerprint {prepared.vocab_fingerprint} "
            f"({prepared.manifest['vocab_source']}) but vocab {vocab_path} has fingerprint "
            f"{vocab_fingerprint}; use the same vocab or re-run prepare")
