"""Train a vocabulary on a corpus: BERT WordPiece (`tokenizers`) or SentencePiece.

    python -m bert_jax.data.vocab --corpus=builtin:stdlib --vocab_size=8000 --out=/tmp/vocab.txt

WordPiece output is a BERT `vocab.txt`: [PAD], optional [unused0..], [UNK],
[CLS], [SEP], [MASK], then the learned pieces, with BERT's normalizer (clean
text, CJK split, lower-casing and accent stripping unless cased) and
pre-tokenizer, so it loads with `load_tokenizer` exactly like Google's files.
SentencePiece output is `<out>.model` / `<out>.vocab` (unigram) with [PAD] id 0,
[UNK], [CLS], [SEP], [MASK] pieces. Byte-level BPE (ModernBERT's kind, GPT-2's
byte alphabet, case kept) is a HF `tokenizer.json` whose post-processor adds
[CLS] A [SEP] as ModernBERT's does, so it loads both with `load_tokenizer` and
with `transformers.PreTrainedTokenizerFast`. All are written to a temp path and
renamed.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import sentencepiece as spm
from absl import flags
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from bert_jax.data import corpora
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.storage import outputs

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _sentences(corpus: str, segmenter: str) -> Iterator[str]:
    """The corpus's sentences; a corpus with none is an error (raised when the
    trainer has drained the iterator, before any file is written)."""
    n = 0
    for doc in corpora.iter_documents(corpus, segmenter):
        for sentence in doc.sentences:
            n += 1
            yield sentence
    if n == 0:
        raise ValueError(f"--corpus={corpus}: yields no text (empty or blank files); a "
                         "vocabulary needs sentences to learn from")


def train_vocab(corpus: str, vocab_size: int, out: str | os.PathLike, kind: str = "wordpiece",
                lowercase: bool = True, num_unused: int = 0, min_frequency: int = 2,
                segmenter: str = "sentencex") -> pathlib.Path:
    """Train a vocabulary and return the file `load_tokenizer` takes.

    Args:
      corpus: corpus spec (see `bert_jax.data.corpora`).
      vocab_size: target size including special tokens.
      out: vocab.txt path (wordpiece), model prefix (sentencepiece; '.model' added) or
        tokenizer.json path (bpe).
      kind: 'wordpiece', 'sentencepiece' or 'bpe'.
      lowercase: uncased vocab (BERT-uncased style); sentencepiece keeps case.
      num_unused: [unusedN] placeholders after [PAD] (BERT reserves 99 or 993).
      min_frequency: WordPiece: minimum pair frequency of a merge.
      segmenter: sentence splitter for raw documents.
    """
    _check_size(vocab_size, num_unused)
    if kind == "wordpiece":
        return _train_wordpiece(corpus, vocab_size, pathlib.Path(out), lowercase, num_unused,
                                min_frequency, segmenter)
    if kind == "sentencepiece":
        return _train_sentencepiece(corpus, vocab_size, pathlib.Path(out), num_unused, segmenter)
    if kind == "bpe":
        return _train_bpe(corpus, vocab_size, pathlib.Path(out), min_frequency, segmenter)
    raise ValueError(f"kind={kind!r}: use 'wordpiece', 'sentencepiece' or 'bpe'")


def _check_size(vocab_size: int, num_unused: int) -> None:
    if vocab_size < len(BERT_SPECIALS) + num_unused + 1:
        raise ValueError(f"vocab_size={vocab_size}: too small for the special tokens")


def _train_wordpiece(corpus, vocab_size, out, lowercase, num_unused, min_frequency, segmenter):
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(num_unused)] + list(BERT_SPECIALS[1:])
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(_sentences(corpus, segmenter), trainer=trainer)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    os.replace(tmp, out)
    load_tokenizer(out, lowercase=lowercase)  # the file must load as a BERT vocab
    return out


def _train_bpe(corpus, vocab_size, out, min_frequency, segmenter):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The 256-byte alphabet first: every text encodes, no [UNK] ever needed.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(BERT_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sentences(corpus, segmenter), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, out)
    load_tokenizer(out)
    return out


def _train_sentencepiece(corpus, vocab_size, out, num_unused, segmenter):
    prefix = out.with_suffix("") if out.suffix == ".model" else out
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(f".{prefix.name}.tmp-{os.getpid()}")
    user = ["[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(num_unused)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(corpus, segmenter), model_prefix=str(tmp),
        vocab_size=vocab_size, model_type="unigram", character_coverage=0.9999,
        pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
        user_defined_symbols=user, hard_vocab_limit=False, minloglevel=2)
    for ext in (".model", ".vocab"):
        os.replace(f"{tmp}{ext}", f"{prefix}{ext}")
    model = pathlib.Path(f"{prefix}.model")
    load_tokenizer(model)
    return model


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    _check_size(f.vocab_size, f.num_unused)  # values first, then where they go
    out = pathlib.Path(f.out)
    if f.kind == "sentencepiece":
        out = out.with_name(out.name.removesuffix(".model") + ".model")
    outputs.check_destination(out, kind="file", overwrite=f.overwrite, what="--out file")
    path = train_vocab(f.corpus, f.vocab_size, f.out, kind=f.kind, lowercase=f.lowercase,
                       num_unused=f.num_unused, segmenter=f.segmenter)
    tok = load_tokenizer(path)
    print(f"wrote {path}: {tok.vocab_size} tokens ({tok.kind}, fingerprint {tok.fingerprint})")


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("corpus", None, "corpus spec (see bert_jax.data.corpora)", required=True)
    flags.DEFINE_integer("vocab_size", 30522, "vocabulary size incl. special tokens")
    flags.DEFINE_string("out", None, "vocab.txt path, SentencePiece model prefix or "
                        "tokenizer.json path (bpe)",
                        required=True)
    flags.DEFINE_enum("kind", "wordpiece", ["wordpiece", "sentencepiece", "bpe"],
                      "vocabulary type (bpe: byte-level, a tokenizer.json)")
    flags.DEFINE_bool("lowercase", True, "uncased WordPiece vocabulary")
    flags.DEFINE_integer("num_unused", 0, "[unusedN] placeholder tokens")
    flags.DEFINE_enum("segmenter", "sentencex", list(corpora.SEGMENTERS), "sentence splitter")
    flags.DEFINE_bool("overwrite", False, "replace an existing --out file")
    from bert_jax import cli
    cli.run(main)
