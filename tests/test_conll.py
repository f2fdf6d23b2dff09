"""CoNLL-2003 task: reader vs the published statistics, features vs transformers'
first-subword labeling, lossless windows, bad input, and tag_text vs HF's ner pipeline."""

import collections
import json

import numpy as np
import pytest
from conftest import data_path

from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.finetune import conll, conlleval

LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


@pytest.fixture(scope="module")
def train():
    return conll.read_conll_file(data_path("conll2003", "eng.train"))


@pytest.fixture(scope="module")
def testa():
    return conll.read_conll_file(data_path("conll2003", "eng.testa"))


@pytest.fixture(scope="module")
def vocab():
    return str(data_path("vocab", "bert-base-cased", "vocab.txt"))


@pytest.fixture(scope="module")
def tok(vocab):
    return load_tokenizer(vocab)


# -------------------------------------------------------------------- reader


@pytest.mark.parametrize("name, sentences, tokens, docs, entities", [
    # shared/data/README.md, which matches the published CoNLL-2003 statistics.
    ("eng.train", 14041, 203621, 946, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}),
    ("eng.testa", 3250, 51362, 216, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),
])
def test_reader_counts_match_published_statistics(request, name, sentences, tokens, docs,
                                                  entities):
    sents = request.getfixturevalue("train" if name == "eng.train" else "testa")
    assert len(sents) == sentences
    assert sum(len(s.words) for s in sents) == tokens
    assert len({s.doc for s in sents}) == docs
    assert all(len(s.words) == len(s.tags) for s in sents)
    found = collections.Counter(c[0] for s in sents for c in conlleval.chunks(s.tags))
    assert dict(found) == entities


def test_reader_keeps_iob1_and_line_numbers(train):
    # README: train has B-LOC 11, B-MISC 37, B-ORG 24 (IOB1 uses B- only between
    # adjacent same-type entities).
    b = collections.Counter(t for s in train for t in s.tags if t.startswith("B-"))
    assert dict(b) == {"B-LOC": 11, "B-MISC": 37, "B-ORG": 24}
    path = data_path("conll2003", "eng.train")
    lines = path.read_text(encoding="utf-8").split("\n")
    for s in (train[0], train[5000], train[-1]):
        for i, w in enumerate(s.words):
            assert lines[s.line - 1 + i].split()[0] == w


def test_iob1_to_iob2_keeps_entities(train):
    from seqeval.metrics.sequence_labeling import get_entities

    iob2 = [conll.iob1_to_iob2(s.tags) for s in train]
    # seqeval reads IOB1 the conlleval way: an independent chunker. On a list of
    # sentences it offsets each by the sentence lengths + 1 (an O between).
    want = [(t, a, b + 1) for t, a, b in get_entities([list(s.tags) for s in train])]
    got, offset = [], 0
    for tags in iob2:
        got += [(t, a + offset, b + offset) for t, a, b in conlleval.chunks(tags)]
        assert conll.iob1_to_iob2(tags) == tags
        offset += len(tags) + 1
    assert got == want
    flat = [t for tags in iob2 for t in tags + ["O"]]
    assert all(flat[a] == "B-" + t and all(flat[i] == "I-" + t for i in range(a + 1, b))
               for t, a, b in want)
    assert conll.label_names_from(train) == LABELS


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, line, match", [
    ("-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP\n", 4, "3 columns where line 3 has 4"),
    ("EU\n", 1, "1 column"),
    ("EU NNP I-NP I-ORG\nrejects VBZ I-VP S-ORG\n", 2, "tag 'S-ORG' is not O, B-TYPE or I-TYPE"),
    ("", 1, "no sentences"),
    ("-DOCSTART- -X- O O\n\n", 2, "no sentences"),
])
def test_bad_file_names_file_and_line(tmp_path, text, line, match):
    path = tmp_path / "bad.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:{line}: {match}") as e:
        conll.read_conll_file(path)
    assert "\n" not in str(e.value)


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_bytes(b"EU NNP I-NP I-ORG\nK\xf6ln NNP I-NP I-LOC\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8"):
        conll.read_conll_file(path)


def test_unknown_tag_at_evaluation(tmp_path, tok):
    path = tmp_path / "dev.conll"
    path.write_text("EU NNP I-NP I-ORG\n\nBonn NNP I-NP O\nis VBZ I-VP O\nin IN I-PP O\n"
                    "Germany NNP I-NP I-GPE\n", encoding="utf-8")
    task = conll.ConllTask(lambda split: conll.read_conll_file(path), tok, label_names=LABELS)
    with pytest.raises(ValueError, match=rf"^{path}:6: tag 'I-GPE' is not in the label set") as e:
        task.eval_batches("dev", 8)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ features


def test_first_piece_labels_match_transformers(testa, tok, vocab):
    """One window per sentence: input ids and labels equal transformers'
    is_split_into_words encoding with labels on the first piece of each word."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast(vocab_file=vocab, do_lower_case=False)
    feats = conll.build_features(testa, tok, LABELS, max_seq_length=512)
    assert len(feats.examples) == len(testa)
    enc = hf([list(s.words) for s in testa], is_split_into_words=True)
    for i, s in enumerate(testa):
        tags = conll.iob1_to_iob2(s.tags)
        word_ids = enc.word_ids(i)
        want = [-100 if w is None or (j and word_ids[j - 1] == w) else LABELS.index(tags[w])
                for j, w in enumerate(word_ids)]
        ex = feats.examples[i]
        assert ex["input_ids"].tolist() == enc["input_ids"][i]
        assert ex["label_ids"].tolist() == want
        assert ex["feature_index"] == i


def _gold_outputs(task, split, batch_size, with_index):
    """Model outputs that put all mass on the gold label of each labeled token,
    optionally with the batch's feature_index (and example_weights)."""
    outs = []
    for b in task.eval_batches(split, batch_size):
        labels = b["label_ids"]
        logits = np.zeros(labels.shape + (len(LABELS),), np.float32)
        rows, cols = np.nonzero(labels >= 0)
        logits[rows, cols, labels[rows, cols]] = 1.0
        logits[b["example_weights"] == 0, :, 4] = 1.0  # filler rows must be ignored
        out = {"logits": logits}
        if with_index:
            out["feature_index"] = b["feature_index"]
            if with_index == "weights":
                out["example_weights"] = b["example_weights"]
        outs.append(out)
    return outs


@pytest.mark.parametrize("kw", [
    dict(max_seq_length=32, window_stride=12, length_buckets=(16, 32)),
    dict(max_seq_length=128, doc_context=True, length_buckets=(64, 128)),
], ids=["short_windows", "doc_context"])
def test_gold_through_features_gives_f1_100(tmp_path, testa, tok, kw):
    """Windowing / document context and the merge back to words lose nothing:
    gold labels pushed through eval batches score F1 = accuracy = 100."""
    task = conll.ConllTask(lambda split: testa, tok, label_names=LABELS, **kw)
    feats = task.features("dev")
    n_pieces = [len(ex["input_ids"]) for ex in feats.examples]
    if kw.get("doc_context"):
        # Context fills the windows: on average far more than a sentence (~23 pieces).
        assert np.mean(n_pieces) > 120 and max(n_pieces) <= 128
    else:
        assert len(feats.examples) > len(testa) + 500  # many sentences were split
        # Windows open on a word's first piece (labeled), never mid-word.
        assert all(ex["label_ids"][1] >= 0 for ex in feats.examples)
    for with_index in ("weights", "index", None):
        m = task.evaluate("dev", _gold_outputs(task, "dev", 48, with_index),
                          out_dir=str(tmp_path))
        assert (m["f1"], m["accuracy"], m["gold_chunks"]) == (100.0, 100.0, 5942.0)
    # The written file is conlleval input that scores the same.
    file_counts = conlleval.count_file(tmp_path / "dev" / "predictions.txt")
    assert conlleval.metrics(file_counts)["f1"] == 100.0 and file_counts.tokens == 51362
    saved = json.loads((tmp_path / "dev" / "eval_results.json").read_text())
    assert saved["f1"] == 100.0 and saved["label_names"] == LABELS


def test_each_word_read_from_its_best_window(tok):
    """Each word is predicted from the window where it has the most context:
    min(left, right) + 0.01 * window length, the earlier window on ties (BERT's
    SQuAD `_check_is_max_context`)."""
    assert tok.tokenize("the") == ["the"]
    sent = conll.Sentence(("the",) * 30, ("O",) * 30, 0, "x", 1)
    feats = conll.build_features([sent], tok, LABELS, max_seq_length=12, window_stride=4)
    spans = [(0, 10), (4, 14), (8, 18), (12, 22), (16, 26), (20, 30)]
    assert [len(ex["input_ids"]) - 2 for ex in feats.examples] == [hi - lo for lo, hi in spans]
    # Window f votes for label f + 1 everywhere, so each word's label names its window.
    outputs = []
    for f, ex in enumerate(feats.examples):
        logits = np.zeros((1, len(ex["input_ids"]), len(LABELS)))
        logits[..., f + 1] = 1.0
        outputs.append({"logits": logits})
    want = []
    for w in range(30):
        scores = [(min(w - lo, hi - 1 - w) + 0.01 * (hi - lo), -j)
                  for j, (lo, hi) in enumerate(spans) if lo <= w < hi]
        want.append(-max(scores)[1] + 1)
    assert conll.merge_predictions(feats, outputs).tolist() == want


def test_train_batches_static_and_deterministic(testa, tok):
    task = conll.ConllTask(lambda split: testa[:300], tok, label_names=LABELS)
    assert task.num_train_examples() == 300
    a = list(task.train_batches(16, seed=1, epoch=0))
    b = list(task.train_batches(16, seed=1, epoch=0))
    c = list(task.train_batches(16, seed=1, epoch=1))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    for batch in a:
        assert "feature_index" not in batch
        assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] in (32, 64, 128)
        assert batch["label_ids"].shape == batch["input_ids"].shape
        pad = batch["attention_mask"] == 0
        assert (batch["label_ids"][pad] == -100).all() and (batch["input_ids"][pad] == 0).all()
    assert sum(int(bt["example_weights"].sum()) for bt in a) == 300
    labeled = sum(int((bt["label_ids"] >= 0).sum()) for bt in a)
    assert labeled == sum(len(s.words) for s in testa[:300])


def test_build_task_from_config(tok):
    from configs.finetune.conll2003 import get_config

    cfg = get_config("runlocal")
    cfg.train_file = str(data_path("conll2003", "eng.train"))
    cfg.max_train_sentences = 200
    task = conll.build_task(cfg, tok)
    assert (task.name, task.head, task.num_labels, task.label_names) == (
        "conll2003", "tagging", 9, LABELS)
    assert task.num_train_examples() == 200
    assert get_config("doc_context").doc_context and not get_config().doc_context
    with pytest.raises(ValueError, match="unknown switch"):
        get_config("runlocl")


# ------------------------------------------------------------------ tag_text

TEXT = ("Peter Blackburn met officials of Hansa Rostock in New York-based U.S. offices on "
        "Friday, said EU spokesman Nikolaus van der Pas.")


def test_tag_text_matches_hf_ner_pipeline(tok, vocab):
    """Same (random) model through HF's pipeline(aggregation_strategy='first')
    and through tag_text: same spans, types and scores."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast, pipeline

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, num_labels=len(LABELS),
                     id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in
                                                                 enumerate(LABELS)})
    model = BertForTokenClassification(cfg).eval()
    hf = BertTokenizerFast(vocab_file=vocab, do_lower_case=False)
    ner = pipeline("token-classification", model=model, tokenizer=hf,
                   aggregation_strategy="first", device="cpu")
    want = ner(TEXT)

    def predict(batch):
        with torch.no_grad():
            out = model(**{k: torch.as_tensor(batch[k], dtype=torch.long)
                           for k in ("input_ids", "attention_mask", "token_type_ids")})
        return {"logits": out.logits.numpy()}

    got = conll.tag_text(TEXT, predict, tok, LABELS, length_buckets=(64,))
    assert len(got) == len(want) > 5
    for g, w in zip(got, want):
        assert (g["entity_group"], g["start"], g["end"]) == (w["entity_group"], w["start"],
                                                              w["end"])
        assert g["score"] == pytest.approx(float(w["score"]), abs=1e-5)
        assert g["word"] == TEXT[g["start"]:g["end"]]


def test_tag_text_windows_agree_with_one_window(tok):
    """With a context-free model (logits looked up per token id) short
    overlapping windows give the same entities as one window."""
    table = np.random.default_rng(0).normal(size=(tok.vocab_size, len(LABELS)))
    predict = lambda batch: {"logits": table[batch["input_ids"]]}
    text = " ".join([TEXT] * 4)
    one = conll.tag_text(text, predict, tok, LABELS, max_seq_length=256)
    many = conll.tag_text(text, predict, tok, LABELS, max_seq_length=16, window_stride=5,
                          batch_size=4)
    assert one == many and len(one) > 20
    assert conll.tag_text("", predict, tok, LABELS) == []
