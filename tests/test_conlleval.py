"""conlleval.py against the conlleval Perl script (version 2004-01-26) and seqeval.

The expected reports below were produced by running the Perl conlleval script,
version 2004-01-26 (the copy in pvcastro/tagger's evaluation/ folder, a fork of
glample/tagger; its counting code is line for line the same as other copies of
that version; not part of this repo), on each file from a scratch directory:
`perl conlleval < FILE`. Our `report` must reproduce them byte for byte.
"""

import random
import warnings

import pytest
from conftest import data_path
from seqeval.metrics import accuracy_score
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

from bert_jax.finetune import conll, conlleval

# name -> (WORD ... GOLD PRED file, conlleval's output on it)
PERL_CASES = {
    # IOB1 gold and predictions (B- only between adjacent same-type entities), entity at sentence and file end
    "iob1": ("""\
EU B-ORG I-ORG
rejects O O
German I-MISC I-MISC
call O O
to O O
boycott O O
British I-MISC I-MISC
lamb O O
. O O

Peter I-PER I-PER
Blackburn I-PER I-PER

BRUSSELS I-LOC I-LOC
1996-08-22 O O

Hansa I-ORG I-ORG
Rostock B-ORG I-ORG
Bayern I-ORG B-ORG
Munich B-ORG I-ORG
play O O
Germany I-LOC I-LOC
""", """\
processed 19 tokens with 9 phrases; found: 8 phrases; correct: 6.
accuracy:  78.95%; precision:  75.00%; recall:  66.67%; FB1:  70.59
              LOC: precision: 100.00%; recall: 100.00%; FB1: 100.00  2
             MISC: precision: 100.00%; recall: 100.00%; FB1: 100.00  2
              ORG: precision:  33.33%; recall:  25.00%; FB1:  28.57  3
              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
"""),
    # IOB2: boundary errors, type errors, B- inside an entity, an entity at sentence end
    "iob2": ("""\
John B-PER B-PER
Smith I-PER I-PER
visited O O
New B-LOC B-LOC
York I-LOC I-ORG
City I-LOC I-LOC
and O O
Los B-LOC B-LOC
Angeles I-LOC O
yesterday O B-MISC

The O O
United B-ORG B-ORG
Nations I-ORG I-ORG
met O O
Kofi B-PER B-PER
Annan I-PER I-PER

Paris B-LOC B-PER
Hilton B-PER I-PER
""", """\
processed 18 tokens with 7 phrases; found: 9 phrases; correct: 3.
accuracy:  72.22%; precision:  33.33%; recall:  42.86%; FB1:  37.50
              LOC: precision:   0.00%; recall:   0.00%; FB1:   0.00  3
             MISC: precision:   0.00%; recall:   0.00%; FB1:   0.00  1
              ORG: precision:  50.00%; recall: 100.00%; FB1:  66.67  2
              PER: precision:  66.67%; recall:  66.67%; FB1:  66.67  3
"""),
    # IOB1 gold vs IOB2 predictions: same entities, different tags
    "mixed": ("""\
Peter I-PER B-PER
Blackburn I-PER I-PER
met O O
Hansa I-ORG B-ORG
Rostock B-ORG B-ORG
and O O
German I-MISC B-MISC
fans O O

Bonn I-LOC B-LOC
""", """\
processed 9 tokens with 5 phrases; found: 5 phrases; correct: 5.
accuracy:  55.56%; precision: 100.00%; recall: 100.00%; FB1: 100.00
              LOC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
             MISC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
              ORG: precision: 100.00%; recall: 100.00%; FB1: 100.00  2
              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
"""),
    # I- tags without B-, I- of another type after B-
    "i_without_b": ("""\
a O I-PER
b O I-PER
c B-PER I-LOC
d I-PER I-LOC
e O O
f I-ORG I-ORG
g I-ORG B-ORG
h O I-MISC

i I-PER I-PER
""", """\
processed 9 tokens with 3 phrases; found: 6 phrases; correct: 1.
accuracy:  33.33%; precision:  16.67%; recall:  33.33%; FB1:  22.22
              LOC: precision:   0.00%; recall:   0.00%; FB1:   0.00  1
             MISC: precision:   0.00%; recall:   0.00%; FB1:   0.00  1
              ORG: precision:   0.00%; recall:   0.00%; FB1:   0.00  2
              PER: precision:  50.00%; recall:  50.00%; FB1:  50.00  2
"""),
    # tags conlleval has no rule for (X, PER, S-, E-, B-, I-0, [, ], .), hyphenated types, -X- boundary lines, -DOCSTART-, untyped B/I, repeated blank lines
    "stray": ("""\
w1 POS X O
w2 POS PER PER
w3 POS B-PER S-PER
w4 POS I-PER E-PER
w5 POS O B-
w6 POS B-0 I-0
w7 POS B-ORG-X B-ORG-X
w8 POS I-ORG-X I-ORG
w9 POS [ ]
w10 POS . .
-X- POS B-LOC B-LOC
w11 POS I-LOC I-LOC
w12 POS E-LOC E-LOC
w13 POS S-MISC S-MISC
w14 POS S-MISC S-MISC
-DOCSTART- -X- O O

w15 POS B B
w16 POS I I
w17 POS I-PER I-PER


w18 POS B-PER B-PER
""", """\
processed 19 tokens with 9 phrases; found: 10 phrases; correct: 7.
accuracy:  63.16%; precision:  70.00%; recall:  77.78%; FB1:  73.68
                 : precision:  66.67%; recall:  66.67%; FB1:  66.67  3
                 : precision:  66.67%; recall:  66.67%; FB1:  66.67  3
              LOC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
             MISC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
              ORG: precision:   0.00%; recall:   0.00%; FB1:   0.00  1
            ORG-X: precision:   0.00%; recall:   0.00%; FB1:   0.00  1
              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  3
"""),
    # same-type entity on both sides of a sentence boundary; leading and repeated blank lines
    "across": ("""\

a I-PER I-PER
b I-PER I-PER

c I-PER I-PER
d O O



e B-LOC B-LOC
""", """\
processed 5 tokens with 3 phrases; found: 3 phrases; correct: 3.
accuracy: 100.00%; precision: 100.00%; recall: 100.00%; FB1: 100.00
              LOC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  2
"""),
    # file ending in an entity without a final newline
    "eof": ("""\
Kofi B-PER B-PER
Annan I-PER I-PER

in O O
New B-LOC B-LOC
York I-LOC I-LOC""", """\
processed 5 tokens with 2 phrases; found: 2 phrases; correct: 2.
accuracy: 100.00%; precision: 100.00%; recall: 100.00%; FB1: 100.00
              LOC: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1
"""),
}


@pytest.mark.parametrize("name", sorted(PERL_CASES))
def test_report_matches_perl_conlleval(tmp_path, name):
    text, expected = PERL_CASES[name]
    path = tmp_path / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    assert conlleval.report(conlleval.count_file(path)) == expected


@pytest.mark.parametrize("name", ["iob1", "iob2", "mixed", "i_without_b", "across", "eof"])
def test_sentences_and_file_agree(tmp_path, name):
    """count_sentences (what evaluation uses) == count_file of the file write_file makes."""
    path = tmp_path / "in.txt"
    path.write_text(PERL_CASES[name][0], encoding="utf-8")
    words, gold, pred = conlleval.read_file(path)
    direct = conlleval.count_sentences(gold, pred)
    out = tmp_path / "out.txt"
    conlleval.write_file(out, words, gold, pred)
    assert conlleval.count_file(out) == direct
    assert conlleval.report(direct) == PERL_CASES[name][1]


def test_chunks_match_perl_counts():
    # conlleval found 9 gold phrases (LOC 2, MISC 2, ORG 4, PER 1) in the iob1 case.
    _, gold, _ = _parse(PERL_CASES["iob1"][0])
    found = [c[0] for g in gold for c in conlleval.chunks(g)]
    assert sorted(found) == ["LOC", "LOC", "MISC", "MISC", "ORG", "ORG", "ORG", "ORG", "PER"]
    assert conlleval.chunks(["I-ORG", "B-ORG", "I-ORG", "O", "I-PER"]) == [
        ("ORG", 0, 1), ("ORG", 1, 3), ("PER", 4, 5)]


def _parse(text):
    sents, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line.split())
        elif cur:
            sents.append(cur)
            cur = []
    if cur:
        sents.append(cur)
    return ([[f[0] for f in s] for s in sents], [[f[-2] for f in s] for s in sents],
            [[f[-1] for f in s] for s in sents])


def _assert_matches_seqeval(gold, pred):
    m = conlleval.metrics(conlleval.count_sentences(gold, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types absent from one side
        p, r, f, support = precision_recall_fscore_support(gold, pred, average="micro")
        types = sorted({c[0] for s in gold + pred for c in conlleval.chunks(s)})
        tp, tr, tf, _ = precision_recall_fscore_support(gold, pred, average=None)
    assert m["precision"] == pytest.approx(100 * p, abs=1e-9)
    assert m["recall"] == pytest.approx(100 * r, abs=1e-9)
    assert m["f1"] == pytest.approx(100 * f, abs=1e-9)
    assert m["accuracy"] == pytest.approx(100 * accuracy_score(gold, pred), abs=1e-9)
    assert m["gold_chunks"] == support
    for t, a, b, c in zip(types, tp, tr, tf):
        assert (m[f"precision_{t}"], m[f"recall_{t}"], m[f"f1_{t}"]) == pytest.approx(
            (100 * a, 100 * b, 100 * c), abs=1e-9)


def _corrupt(tags, rng):
    """Model-like mistakes: wrong type, dropped or extended entities, I- without B-."""
    out = list(tags)
    for i, t in enumerate(out):
        r = rng.random()
        if r < 0.03:
            out[i] = "O"
        elif r < 0.06:
            out[i] = f"{rng.choice('BI')}-{rng.choice(['LOC', 'MISC', 'ORG', 'PER'])}"
        elif r < 0.08 and t != "O":
            out[i] = "I" + t[1:]
    return out


@pytest.fixture(scope="module")
def testa():
    return conll.read_conll_file(data_path("conll2003", "eng.testa"))


@pytest.mark.parametrize("scheme", ["iob1", "iob2"])
def test_matches_seqeval_on_real_tags(testa, scheme):
    """Entity and token scores on eng.testa with corrupted predictions, gold in
    the file's IOB1 and in IOB2, equal seqeval's default (conlleval) mode."""
    rng = random.Random(0)
    gold = [list(s.tags) for s in testa]
    if scheme == "iob2":
        gold = [conll.iob1_to_iob2(g) for g in gold]
    pred = [_corrupt(g, rng) for g in gold]
    _assert_matches_seqeval(gold, pred)


def test_matches_seqeval_on_random_tags():
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG", "I-MISC"]
    for seed in range(200):
        rng = random.Random(seed)
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))]
                for _ in range(rng.randint(1, 6))]
        pred = [[rng.choice(tags) for _ in s] for s in gold]
        _assert_matches_seqeval(gold, pred)


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    # conlleval exits with "unexpected number of features: 3 (4)" on line 2.
    path.write_text("a x B-PER O\nb B-PER O\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:2: 3 fields") as e:
        conlleval.count_file(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=rf"^{path}:2: 3 fields"):
        conlleval.read_file(path)
    path.write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:1: 1 field"):
        conlleval.count_file(path)


def test_write_file_rejects_fields_conlleval_would_split(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        conlleval.write_file(tmp_path / "x.txt", [["New York"]], [["B-LOC"]], [["B-LOC"]])
    assert not list(tmp_path.iterdir())
