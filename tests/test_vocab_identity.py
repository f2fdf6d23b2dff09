"""The vocabulary and its casing travel with every model we write.

A model dir records do_lower_case; the HF export writes vocab.txt,
tokenizer_config.json and special_tokens_map.json, so that transformers'
`AutoTokenizer.from_pretrained(dir)` (the reference) gives our token ids on
CoNLL-2003 sentences, proper nouns included, for the cased and the uncased
Google vocabularies. Loading a checkpoint with another vocabulary is an error
unless explicitly allowed.
"""

from __future__ import annotations

import json

import pytest
from conftest import data_path
from test_finetune_common import TINY, random_params

CASED = {"bert-base-cased": False, "bert-base-uncased": True}


def conll_sentences(n: int = 400) -> list[str]:
    from bert_jax.finetune.conll import read_conll_file
    return [" ".join(s.words) for s in read_conll_file(data_path("conll2003", "eng.testa"))[:n]]


def tiny_model_dir(path, vocab_name: str):
    from bert_jax.convert.model_dir import save_model_dir
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.model.config import BertConfig

    vocab = data_path("vocab", vocab_name, "vocab.txt")
    cfg = BertConfig(**{**TINY, "vocab_size": load_tokenizer(vocab).vocab_size})
    save_model_dir(path, cfg, random_params(cfg, "pretraining"), "pretraining", vocab=vocab,
                   do_lower_case=CASED[vocab_name])
    return path


@pytest.mark.parametrize("vocab_name", sorted(CASED))
def test_hf_export_tokenizes_like_us(tmp_path, vocab_name):
    transformers = pytest.importorskip("transformers")
    from bert_jax.convert import formats as convert
    from bert_jax.convert import model_dir

    ours_dir = tiny_model_dir(tmp_path / "ours", vocab_name)
    assert json.loads((ours_dir / "bert_jax.json").read_text())["do_lower_case"] == \
        CASED[vocab_name]
    hf_dir = tmp_path / "hf"
    convert.convert(ours_dir, hf_dir, "hf")
    assert {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in hf_dir.iterdir()}
    hf = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    ours = model_dir.tokenizer_of(ours_dir, model_dir.read_meta(ours_dir))
    sentences = conll_sentences()
    # Proper nouns with capitals are in the sample, and casing changes their ids
    # with the cased vocabulary only.
    assert sum(any(w[:1].isupper() for w in s.split()[1:]) for s in sentences) > 100
    probe = "Germany 's representative to the European Union"
    same = hf(probe)["input_ids"] == hf(probe.lower())["input_ids"]
    assert same == CASED[vocab_name]
    mismatches = [s for s in sentences if hf(s)["input_ids"] != ours.encode(s).ids]
    assert not mismatches, mismatches[:3]
    # The export, read back, records the casing too.
    _, meta, _ = convert.read_any(hf_dir)
    assert meta["do_lower_case"] == CASED[vocab_name]


def test_init_from_and_embed_refuse_another_vocabulary(tmp_path):
    """Two same-architecture models, cased vs uncased vocabulary: `embed
    --vocab=<the other one>` is an error naming both fingerprints, unless
    --allow_vocab_mismatch."""
    from bert_jax import embed

    ours = tiny_model_dir(tmp_path / "uncased", "bert-base-uncased")
    cased_vocab = data_path("vocab", "bert-base-cased", "vocab.txt")
    with pytest.raises(ValueError, match="not the vocabulary the checkpoint was trained with"):
        embed.checked_tokenizer(ours, cased_vocab)
    tok = embed.checked_tokenizer(ours, cased_vocab, allow_vocab_mismatch=True)
    assert tok.vocab_size == 28996
    same = embed.checked_tokenizer(ours, data_path("vocab", "bert-base-uncased", "vocab.txt"))
    assert same.vocab_size == 30522
