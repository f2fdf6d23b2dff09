"""Vocabulary training: the WordPiece file is a BERT vocab.txt that transformers'
BertTokenizer reads the same way we do; SentencePiece carries the BERT specials."""

import os
import subprocess
import sys

import pytest
from conftest import data_path

from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.data.vocab import train_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """The first 1,500 paragraphs of a real novel (raw format)."""
    src = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[1]
    path = tmp_path_factory.mktemp("vocab") / "novel.txt"
    paras = src.read_text(encoding="utf-8").split("\n")[:1500]
    path.write_text("\n".join(paras) + "\n", encoding="utf-8")
    return path, [p for p in paras if p.strip()]


def test_wordpiece_vocab_is_a_bert_vocab(text_corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, paras = text_corpus
    out = train_vocab(str(path), 3000, tmp_path / "v" / "vocab.txt", num_unused=3)
    tokens = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokens) <= 3000 and len(tokens) > 2000
    assert tokens[:8] == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]",
                          "[SEP]", "[MASK]"]
    assert any(t.startswith("##") for t in tokens)
    tok = load_tokenizer(out)
    assert tok.lowercase and (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == \
        (0, 4, 5, 6, 7)
    ref = transformers.BertTokenizer(str(out), do_lower_case=True)
    for p in paras[:200]:
        assert tok.encode(p).ids == ref(p)["input_ids"]
    ids = [i for row in tok.ids_batch(paras) for i in row]
    assert ids.count(tok.unk_id) < 0.001 * len(ids)


def test_sentencepiece_model_has_bert_specials(text_corpus, tmp_path):
    path, paras = text_corpus
    model = train_vocab(str(path), 2000, tmp_path / "spm", kind="sentencepiece")
    assert model.name == "spm.model"
    tok = load_tokenizer(model)
    assert tok.kind == "sentencepiece" and tok.pad_id == 0
    assert {tok.id_to_token(i) for i in (tok.cls_id, tok.sep_id, tok.mask_id)} == \
        {"[CLS]", "[SEP]", "[MASK]"}
    enc = tok.encode(paras[3], paras[4])
    assert enc.ids[0] == tok.cls_id and enc.ids.count(tok.sep_id) == 2
    assert tok.decode(tok.encode(paras[3]).ids) == paras[3].strip()


def test_vocab_cli(text_corpus, tmp_path):
    path, _ = text_corpus
    out = tmp_path / "vocab.txt"
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.vocab", f"--corpus={path}",
                        "--vocab_size=1500", f"--out={out}"], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and load_tokenizer(out).vocab_size <= 1500
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.vocab", f"--corpus={path}",
                        "--vocab_size=3", f"--out={out}"], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 1 and "vocab_size=3" in r.stderr
