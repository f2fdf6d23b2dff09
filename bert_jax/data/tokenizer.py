"""One tokenizer interface over WordPiece (BERT `vocab.txt`), SentencePiece models
and HF `tokenizer.json` files (byte-level BPE, as ModernBERT ships).

WordPiece goes through the `tokenizers` library, configured exactly like
transformers' `BertTokenizerFast` (BERT normalizer: clean text, CJK splitting,
accent stripping with lower-casing; BERT pre-tokenizer; greedy longest-match
WordPiece with `##` continuations, 100-char word limit). It is Rust, gives
character offsets into the original text, and agrees with Google's Python
`tokenization.py` on real text (tested against `transformers.BertTokenizer`).

Every encoding carries ids, token_type_ids, character offsets and word ids, so
SQuAD answer spans, first-subword NER labels and whole-word masking all come
from the same call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from bert_jax.storage import paths

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Encoding:
    """One encoded example. offsets are (start, end) character spans into the
    text the token came from ((0, 0) for special tokens); word_ids maps each
    token to its word index within its segment (None for special tokens);
    sequence_ids is 0 / 1 for the segment, None for special tokens."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    special_tokens_mask: list[int]
    overflowing: list[Encoding] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _file_fingerprint(path: str | os.PathLike) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def _vocab_is_cased(tokens: Sequence[str]) -> bool:
    """A vocab with many upper-case ASCII tokens outside [BRACKETED] specials is
    cased (the uncased BERT vocab still holds a couple, such as 'ℝ')."""
    upper = sum(1 for t in tokens if not (t.startswith("[") and t.endswith("]"))
                and any("A" <= c <= "Z" for c in t))
    return upper > 0.01 * len(tokens)


class WordPieceTokenizer:
    """BERT WordPiece from a `vocab.txt` (one token per line, id = line number)."""

    kind = "wordpiece"

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool | None = None,
                 strip_accents: bool | None = None, max_input_chars_per_word: int = 100):
        self.vocab_file = str(vocab_file)
        with open(vocab_file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        # A trailing empty line is not a token (BERT's load_vocab strips lines too).
        while tokens and tokens[-1] == "":
            tokens.pop()
        if not tokens:
            raise ValueError(f"{vocab_file}: empty vocabulary")
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            vocab.setdefault(tok, i)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]") if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: vocabulary lacks special token(s) {', '.join(missing)}")
        self.lowercase = (not _vocab_is_cased(tokens)) if lowercase is None else lowercase
        self._tokens = tokens
        self._vocab = vocab
        tok = HFTokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                           max_input_chars_per_word=max_input_chars_per_word))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
            lowercase=self.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        self._tok = tok
        self.fingerprint = _file_fingerprint(vocab_file)

    def id_to_token(self, i: int) -> str:
        return self._tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def _raw(self, texts: Sequence[str]):
        return self._tok.encode_batch(list(texts), add_special_tokens=False)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens


class SentencePieceTokenizer:
    """A SentencePiece model whose pieces include [CLS], [SEP], [MASK] and a pad
    piece ([PAD] or <pad>), as ALBERT-style vocabularies do."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike):
        self.vocab_file = str(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        n = self._sp.get_piece_size()
        self._tokens = [self._sp.id_to_piece(i) for i in range(n)]
        self._vocab = {t: i for i, t in enumerate(self._tokens)}
        aliases = {"[PAD]": ("[PAD]", "<pad>"), "[UNK]": ("[UNK]", "<unk>")}
        for special in SPECIAL_TOKENS:
            names = aliases.get(special, (special,))
            found = [self._vocab[nm] for nm in names if nm in self._vocab]
            if not found:
                raise ValueError(f"{model_file}: SentencePiece model lacks piece {special}")
            self._vocab.setdefault(special, found[0])
        self.lowercase = False
        self.fingerprint = _file_fingerprint(model_file)

    def id_to_token(self, i: int) -> str:
        return self._tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def _raw(self, texts: Sequence[str]):
        out = []
        for text in texts:
            # "immutable_proto" is gone from sentencepiece 0.2.1+; "proto" pieces carry
            # UTF-8 byte offsets, mapped here to character offsets.
            proto = self._sp.encode(text, out_type="proto")
            b2c = _byte_to_char(text)
            ids, offsets, word_ids = [], [], []
            word = -1
            for p in proto.pieces:
                if p.piece.startswith("\u2581") or word < 0:
                    word += 1
                ids.append(p.id)
                offsets.append((b2c(p.begin), b2c(p.end)))
                word_ids.append(word)
            out.append(_RawEncoding(ids, offsets, word_ids))
        return out


class HFTokenizerJSON:
    """A HF fast tokenizer's `tokenizer.json` (ModernBERT's byte-level BPE), run
    by the `tokenizers` library without its post-processor: Tokenizer adds
    [CLS] / [SEP] itself, as for the other kinds. The special tokens' strings
    come from tokenizer_config.json / special_tokens_map.json beside it
    (default: BERT's [CLS], [SEP], ...)."""

    kind = "bpe"

    def __init__(self, tokenizer_file: str | os.PathLike, config_dir=None):
        self.vocab_file = str(tokenizer_file)
        try:
            self._tok = HFTokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # the Rust error names no file
            raise ValueError(f"{tokenizer_file}: not a tokenizers JSON file ({e})") from None
        names = {t: t for t in SPECIAL_TOKENS}
        d = pathlib.Path(tokenizer_file).parent if config_dir is None else config_dir
        for f in ("special_tokens_map.json", "tokenizer_config.json"):
            f = paths.join(d, f) if paths.is_url(d) else pathlib.Path(d) / f
            if not paths.exists(f):
                continue
            try:
                cfg = json.loads(paths.read_text(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: invalid JSON at line {e.lineno}: {e.msg}") from None
            for special in SPECIAL_TOKENS:
                v = cfg.get(special.strip("[]").lower() + "_token")
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    names[special] = v
        self._vocab = self._tok.get_vocab(with_added_tokens=True)
        self._tokens = {i: t for t, i in self._vocab.items()}
        missing = [names[s] for s in SPECIAL_TOKENS if names[s] not in self._vocab]
        if missing:
            raise ValueError(f"{tokenizer_file}: vocabulary lacks special token(s) "
                             f"{', '.join(missing)}")
        for special in SPECIAL_TOKENS:
            self._vocab.setdefault(special, self._vocab[names[special]])
        self.lowercase = False  # any normalization is in tokenizer.json itself
        self.fingerprint = _file_fingerprint(tokenizer_file)

    def id_to_token(self, i: int) -> str:
        return self._tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def _raw(self, texts: Sequence[str]):
        return self._tok.encode_batch(list(texts), add_special_tokens=False)


def _byte_to_char(text: str):
    """Map a UTF-8 byte offset of `text` to its character offset."""
    if text.isascii():
        return lambda b: b
    table = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
    table.append(len(text))
    return lambda b: table[min(b, len(table) - 1)]


@dataclasses.dataclass
class _RawEncoding:
    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


class Tokenizer:
    """The interface the rest of bert_jax uses: `encode`, `encode_batch`, `decode`,
    the special ids, and a fingerprint of the vocabulary file."""

    def __init__(self, backend: WordPieceTokenizer | SentencePieceTokenizer | HFTokenizerJSON):
        self.backend = backend
        self.kind = backend.kind
        self.vocab_file = backend.vocab_file
        self.fingerprint = backend.fingerprint
        self.lowercase = backend.lowercase
        self.vocab_size = backend.vocab_size
        self.pad_id = backend.token_to_id("[PAD]")
        self.unk_id = backend.token_to_id("[UNK]")
        self.cls_id = backend.token_to_id("[CLS]")
        self.sep_id = backend.token_to_id("[SEP]")
        self.mask_id = backend.token_to_id("[MASK]")
        self.special_ids = frozenset(
            [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id])

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def tokenize(self, text: str) -> list[str]:
        return self.backend.tokenize(text)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.backend.token_to_id(t) if self.backend.token_to_id(t) is not None
                else self.unk_id for t in tokens]

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (no offsets kept)."""
        if self.kind in ("wordpiece", "bpe"):
            return [e.ids for e in self.backend._tok.encode_batch(list(texts),
                                                                  add_special_tokens=False)]
        return [e.ids for e in self.backend._raw(texts)]

    def continues_word(self) -> list[bool]:
        """Per vocabulary id: True if the token can only continue a word ('##x'
        in WordPiece, a piece without the leading '\u2581' in SentencePiece).
        With it, word starts of a text's ids are `not continues_word[id]`, plus
        the first token, without per-token Python work."""
        toks = [self.id_to_token(i) for i in range(self.vocab_size)]
        if self.kind == "wordpiece":
            return [t.startswith("##") for t in toks]
        if self.kind == "bpe":  # byte-level BPE marks a preceding space with 'Ġ'
            return [not t.startswith("\u0120") and i not in self.special_ids
                    for i, t in enumerate(toks)]
        return [not t.startswith("\u2581") and i not in self.special_ids
                for i, t in enumerate(toks)]

    def ids_and_word_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
        """Token ids without special tokens plus, per token, whether it starts a
        word (for whole-word masking). Fast path for corpus preparation."""
        out = []
        for enc in self.backend._raw(texts):
            prev = None
            starts = []
            for w in enc.word_ids:
                starts.append(w is None or w != prev)
                prev = w
            out.append((list(enc.ids), starts))
        return out

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None,
               truncation: str = "longest_first", stride: int = 0) -> Encoding:
        return self.encode_batch([text], None if pair is None else [pair], max_length,
                                 truncation, stride)[0]

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None,
                     max_length: int | None = None, truncation: str = "longest_first",
                     stride: int = 0) -> list[Encoding]:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, truncated to max_length.

        truncation: 'longest_first' (pop from the longer segment, as BERT's
        `_truncate_seq_pair`), 'only_second' (keep A whole; with stride > 0 the
        rest of B spills into `overflowing` windows overlapping by `stride`
        tokens), or 'only_first'.
        """
        a = self.backend._raw(texts)
        b: list = [None] * len(a)
        if pairs is not None:
            # A None pair means a single sentence, so one batch can mix both.
            have = [i for i, p in enumerate(pairs) if p is not None]
            for i, enc in zip(have, self.backend._raw([pairs[i] for i in have])):
                b[i] = enc
        return [self._assemble(ea, eb, max_length, truncation, stride) for ea, eb in zip(a, b)]

    def _assemble(self, a, b, max_length, truncation, stride) -> Encoding:
        a_tok = list(zip(a.ids, a.offsets, a.word_ids))
        b_tok = list(zip(b.ids, b.offsets, b.word_ids)) if b is not None else None
        n_special = 3 if b_tok is not None else 2
        windows = [(a_tok, b_tok)]
        if max_length is not None:
            budget = max_length - n_special
            if budget < 0:
                raise ValueError(f"max_length={max_length} leaves no room for special tokens")
            if b_tok is None:
                a_tok = a_tok[:budget]
                windows = [(a_tok, None)]
            elif truncation == "longest_first":
                a_tok, b_tok = list(a_tok), list(b_tok)
                while len(a_tok) + len(b_tok) > budget:
                    (a_tok if len(a_tok) > len(b_tok) else b_tok).pop()
                windows = [(a_tok, b_tok)]
            elif truncation == "only_first":
                keep = budget - len(b_tok)
                if keep < 0:
                    raise ValueError("only_first truncation: second segment alone exceeds max_length")
                windows = [(a_tok[:keep], b_tok)]
            elif truncation == "only_second":
                keep = budget - len(a_tok)
                if keep <= 0:
                    raise ValueError(
                        "only_second truncation: first segment alone exceeds max_length")
                windows = []
                start = 0
                while True:
                    windows.append((a_tok, b_tok[start:start + keep]))
                    if start + keep >= len(b_tok) or stride <= 0:
                        break
                    start += max(keep - stride, 1)
            else:
                raise ValueError(f"unknown truncation={truncation!r}")
        encs = [self._build(wa, wb) for wa, wb in windows]
        first = encs[0]
        return dataclasses.replace(first, overflowing=encs[1:])

    def _build(self, a_tok, b_tok) -> Encoding:
        ids, types, offsets, word_ids, seq_ids, special = [], [], [], [], [], []

        def special_tok(tid, type_id):
            ids.append(tid)
            types.append(type_id)
            offsets.append((0, 0))
            word_ids.append(None)
            seq_ids.append(None)
            special.append(1)

        special_tok(self.cls_id, 0)
        for seg, toks in ((0, a_tok), (1, b_tok)):
            if toks is None:
                continue
            for tid, off, w in toks:
                ids.append(tid)
                types.append(seg)
                offsets.append(tuple(off))
                word_ids.append(w)
                seq_ids.append(seg)
                special.append(0)
            special_tok(self.sep_id, seg)
        return Encoding(ids, types, offsets, word_ids, seq_ids, special)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self.kind == "bpe":
            keep = [int(i) for i in ids
                    if not (skip_special_tokens and int(i) in self.special_ids - {self.unk_id})]
            return self.backend._tok.decode(keep, skip_special_tokens=False)
        toks = [self.id_to_token(int(i)) for i in ids
                if not (skip_special_tokens and int(i) in self.special_ids - {self.unk_id})]
        if self.kind == "wordpiece":
            text = " ".join(toks).replace(" ##", "").replace("##", "")
            return text
        return "".join(toks).replace("\u2581", " ").strip()


def hf_special_token_files(tokenizer: Tokenizer) -> dict[str, str]:
    """{file name: JSON text} of the tokenizer_config.json and
    special_tokens_map.json that tell transformers which tokens of a bare
    tokenizer.json are [CLS], [SEP], [PAD], [MASK] and [UNK] (AutoTokenizer
    cannot pad or mask without them)."""
    names = {f"{s.strip('[]').lower()}_token": tokenizer.id_to_token(tokenizer.token_to_id(s))
             for s in SPECIAL_TOKENS}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names}
    return {"tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(names, indent=2) + "\n"}


def vocab_in_dir(d: str | os.PathLike) -> str | pathlib.Path | None:
    """The vocabulary file of a directory (local or URL): `vocab.txt`, else the
    first `*.model`, else a HF `tokenizer.json`; None if it has none."""
    names = paths.listdir(d)
    pick = "vocab.txt" if "vocab.txt" in names else next(
        (n for n in names if n.endswith(".model")),
        "tokenizer.json" if "tokenizer.json" in names else None)
    if pick is None:
        return None
    return paths.join(d, pick) if paths.is_url(d) else pathlib.Path(d) / pick


def load_tokenizer(path: str | os.PathLike, lowercase: bool | None = None) -> Tokenizer:
    """A BERT `vocab.txt` (WordPiece), a SentencePiece `.model` file or a HF
    `tokenizer.json`; a directory is searched for `vocab.txt`, then `*.model`,
    then `tokenizer.json`. A URL is read through the local cache
    (bert_jax.storage.paths.local_copy)."""
    if paths.isdir(path):
        found = vocab_in_dir(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no vocab.txt or SentencePiece *.model inside")
        path = found
    if not paths.exists(path):
        raise FileNotFoundError(f"{path}: vocabulary file not found")
    p = paths.local_copy(path)
    if p.suffix == ".model":
        return Tokenizer(SentencePieceTokenizer(p))
    if p.name == "tokenizer.json":  # its special-token files are read where it lies
        return Tokenizer(HFTokenizerJSON(p, config_dir=paths.parent(path)))
    return Tokenizer(WordPieceTokenizer(p, lowercase=lowercase))
