"""Tokenizer parity with transformers' slow, pure-Python `BertTokenizer` (a port
of Google's tokenization.py) on real GLUE, SQuAD and CoNLL-2003 text, for the
uncased and cased BERT vocabularies: single texts, pairs with token_type_ids,
and truncation."""

import csv
import json
import random

import pytest
from conftest import data_path

from bert_jax.data.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")
VOCABS = {"uncased": True, "cased": False}


def _tsv(*parts):
    with open(data_path(*parts), encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def texts():
    """> 5,000 real sentences from GLUE, SQuAD and CoNLL-2003, plus sentence pairs."""
    singles, pairs = [], []
    singles += [r[0] for r in _tsv("glue", "SST-2", "dev.tsv")[1:]]
    singles += [r[3] for r in _tsv("glue", "CoLA", "dev.tsv")]
    for name, a, b in (("MRPC", 3, 4), ("RTE", 1, 2), ("STS-B", 7, 8), ("QNLI", 1, 2),
                       ("WNLI", 1, 2)):
        rows = _tsv("glue", name, "dev.tsv")[1:]
        pairs += [(r[a], r[b]) for r in rows[:300]]
        singles += [x for r in rows[:300] for x in (r[a], r[b])]
    squad = json.loads(data_path("squad", "dev-v1.1.json").read_text(encoding="utf-8"))
    paragraphs = [p for art in squad["data"] for p in art["paragraphs"]]
    questions = [qa["question"] for p in paragraphs for qa in p["qas"]]
    rng = random.Random(0)
    singles += rng.sample(questions, 1500)
    contexts = rng.sample([p["context"] for p in paragraphs], 100)
    singles += contexts
    pairs += [(q["question"], p["context"]) for p in rng.sample(paragraphs, 200)
              for q in p["qas"][:1]]
    sentence = []
    for line in data_path("conll2003", "eng.testa").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            if sentence:
                singles.append(" ".join(sentence))
            sentence = []
        elif not line.startswith("-DOCSTART-"):
            sentence.append(line.split(" ")[0])
    assert len(singles) >= 5000
    return singles, pairs


@pytest.fixture(scope="module", params=sorted(VOCABS))
def both(request):
    path = data_path("vocab", f"bert-base-{request.param}", "vocab.txt")
    ours = load_tokenizer(path)
    ref = transformers.BertTokenizer(str(path), do_lower_case=VOCABS[request.param])
    assert ours.lowercase == VOCABS[request.param]
    return ours, ref


def test_single_texts_match_bert_tokenizer(both, texts):
    ours, ref = both
    singles, _ = texts
    mismatches = [t for t in singles if ours.encode(t).ids != ref(t)["input_ids"]]
    assert not mismatches, mismatches[:5]
    assert ours.tokenize(singles[0]) == ref.tokenize(singles[0])


def test_pairs_and_truncation_match_bert_tokenizer(both, texts):
    ours, ref = both
    _, pairs = texts
    assert len(pairs) >= 1400
    for strategy, subset in (("longest_first", pairs), ("only_second", pairs[::3])):
        for a, b in subset:
            if strategy == "only_second" and len(ref.tokenize(a)) > 40:
                continue  # the question alone would not fit; HF errors there too
            want = ref(a, b, max_length=64, truncation=strategy)
            got = ours.encode(a, b, max_length=64, truncation=strategy)
            assert got.ids == want["input_ids"], (strategy, a, b)
            assert got.type_ids == want["token_type_ids"], (strategy, a, b)
    a, b = pairs[0]
    full = ref(a, b)
    got = ours.encode(a, b)
    assert (got.ids, got.type_ids) == (full["input_ids"], full["token_type_ids"])
