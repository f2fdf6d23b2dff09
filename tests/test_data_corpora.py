"""Corpus readers: BERT format, raw documents, gzip/glob/dir, chunking of big
files, TFDS data sources (mock_data), the stdlib docstring corpus, segmenters."""

import gzip
import random

import pytest
from conftest import data_path

from bert_jax.data import corpora

BERT_TEXT = ("Doc one, sentence one.\r\nDoc one, sentence two.\r\n\r\n"
             "  \n"
             "Doc two only sentence.\n\nDoc three, first.\nDoc three, second.\nDoc three, third.\n")


def docs_of(spec, **kw):
    return [(d.sentences, d.source) for d in corpora.iter_documents(spec, **kw)]


def test_bert_format_files_gzip_globs_and_dirs(tmp_path):
    (tmp_path / "a.txt").write_text(BERT_TEXT, encoding="utf-8", newline="")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("Zipped doc sentence.\nAnd another.\n\nSecond zipped doc.\n")
    got = docs_of(str(tmp_path))
    assert [s for s, _ in got] == [
        ["Doc one, sentence one.", "Doc one, sentence two."], ["Doc two only sentence."],
        ["Doc three, first.", "Doc three, second.", "Doc three, third."],
        ["Zipped doc sentence.", "And another."], ["Second zipped doc."]]
    assert [src.rsplit(":", 1)[1] for _, src in got] == ["1", "5", "7", "1", "4"]
    assert docs_of(f"bert:{tmp_path}/*.gz") == got[3:]
    assert docs_of(f"{tmp_path}/a.txt,{tmp_path}/b.txt.gz") == got
    with pytest.raises(corpora.CorpusError, match="no such file, directory or glob match"):
        corpora.resolve(str(tmp_path / "nope*.txt"))


def test_big_bert_file_is_cut_at_document_boundaries(tmp_path):
    rng = random.Random(0)
    docs = [[f"doc {d} sentence {s} " + "x" * rng.randrange(1, 80)
             for s in range(rng.randrange(1, 9))]
            for d in range(300)]
    path = tmp_path / "big.txt"
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    units = corpora.resolve(f"bert:{path}", chunk_bytes=2000)
    assert len(units) > 10
    got = []
    for u in units:
        got += [d.sentences for d in corpora.read_unit(u)[0]]
    assert got == docs
    # Line numbers in a later chunk are file line numbers.
    line_of = {}
    n = 1
    for d in docs:
        line_of[d[0]] = n
        n += len(d) + 1
    last = list(corpora.read_unit(units[-1])[0])[-1]
    assert last.source == f"{path}:{line_of[last.sentences[0]]}"


def test_raw_documents_are_split_into_sentences():
    path = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[0]
    unit = corpora.resolve(str(path))[0]
    assert unit.kind == "raw"  # no blank lines: one document per file
    (doc,) = list(corpora.read_unit(unit)[0])
    paras = [p for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
    assert len(doc.sentences) > 1.5 * len(paras)
    # Splitting only cuts: the sentences of a paragraph rejoin to it.
    by_line = {}
    for s, line in zip(doc.sentences, doc.lines):
        by_line.setdefault(line, []).append(s)
    lines = path.read_text(encoding="utf-8").split("\n")
    for line, sents in list(by_line.items())[:500]:
        assert "".join(sents).replace(" ", "") == lines[line - 1].replace(" ", "")


def test_sentencex_agrees_with_pysbd_on_novels():
    """The fast default segmenter against pysbd, the reference rule-based one."""
    rng = random.Random(1)
    files = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))
    paras = []
    for path in rng.sample(files, 4):
        ps = [p for p in path.read_text(encoding="utf-8").split("\n") if len(p) > 40]
        paras += rng.sample(ps, 50)
    fast, ref = corpora.make_segmenter("sentencex"), corpora.make_segmenter("pysbd")
    agree = sum(fast(p) == ref(p) for p in paras)
    assert agree >= 0.8 * len(paras)
    with pytest.raises(corpora.CorpusError, match="segmenter='nltk'"):
        corpora.make_segmenter("nltk")


def test_tfds_text_dataset_through_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        units = corpora.resolve("tfds:wikipedia/20230601.en")
        assert [(u.kind, u.start, u.stop, u.split) for u in units] == [("tfds", 0, 7, "train")]
        docs = list(corpora.iter_documents("tfds:wikipedia/20230601.en:train"))
        source = tfds.data_source("wikipedia/20230601.en", split="train")
        expected = [[s for para in source[i]["text"].split("\n") if para.strip()
                     for s in corpora.make_segmenter()(para)] for i in range(7)]
    assert [d.sentences for d in docs] == [e for e in expected if e]
    assert docs[0].source.startswith("tfds:wikipedia/20230601.en:train#")
    with pytest.raises(corpora.CorpusError, match="tfds:no_such_dataset_xyz:train"):
        corpora.resolve("tfds:no_such_dataset_xyz")


def test_builtin_stdlib_docstrings_are_prose():
    units = corpora.resolve("builtin:stdlib,")
    assert len(units) > 20
    # Every other unit keeps the test short; the whole corpus is ~2x this.
    docs = [d for u in units[::2] for d in corpora.read_unit(u)[0]]
    assert len(docs) > 150
    sentences = [s for d in docs for s in d.sentences]
    assert len(sentences) > 5_000
    assert not any(s.startswith(">>>") for s in sentences)
    words = sum(len(s.split()) for s in sentences)
    assert words > 75_000
    letters = sum(c.isalpha() or c.isspace() for s in sentences for c in s)
    assert letters > 0.9 * sum(map(len, sentences))
    with pytest.raises(corpora.CorpusError, match="the builtin corpora are builtin:stdlib"):
        corpora.resolve("builtin:wiki")


def test_stdlib_train_heldout_split_is_a_partition():
    from bert_jax.data import corpora
    everything = set(corpora.stdlib_files())
    train, heldout = set(corpora.stdlib_files("train")), set(corpora.stdlib_files("heldout"))
    assert train and heldout and not (train & heldout)
    assert train | heldout == everything
    assert 0.08 < len(heldout) / len(everything) < 0.12
    with pytest.raises(corpora.CorpusError, match="builtin:stdlib:heldout"):
        corpora.resolve("builtin:stdlib:validation")
