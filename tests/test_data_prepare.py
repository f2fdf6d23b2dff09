"""Preparation: shards, re-runs, interrupted runs, vocab fingerprint checks and the
bad-input policies (one-line messages naming file and line, nothing half-written)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import data_path

from bert_jax.data import corpora
from bert_jax.data.pipeline import PretrainingPipeline, default_data_config
from bert_jax.data.prepare import prepare_corpus
from bert_jax.data.token_cache import PreparedError, open_prepared
from bert_jax.data.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vocab():
    return str(data_path("vocab", "bert-base-uncased", "vocab.txt"))


@pytest.fixture(scope="module")
def novels(tmp_path_factory):
    """Three real novels, cut to their first 300 paragraphs (raw format)."""
    src = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[:3]
    d = tmp_path_factory.mktemp("novels")
    for p in src:
        lines = p.read_text(encoding="utf-8").split("\n")[:300]
        (d / p.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def shard_mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}


def test_prepare_with_workers_then_rerun_skips(novels, vocab, tmp_path):
    out = tmp_path / "prep"
    m = prepare_corpus(str(novels), vocab, out, num_workers=2, max_sentence_tokens=1000,
                       progress=False)
    assert [s["name"] for s in m["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert m["totals"]["documents"] == 3
    corpus = open_prepared(out)
    tok = load_tokenizer(vocab)
    # Sentence tokens are exactly the tokenizer's ids of the segmented sentences.
    doc = next(corpora.iter_documents(str(sorted(novels.glob("*.txt"))[0])))
    got = corpus.document_sentences(0)
    assert len(got) == len(doc.sentences)
    for s, ids in list(zip(doc.sentences, got))[:50]:
        assert ids.tolist() == tok.encode(s).ids[1:-1]
    starts = corpus.word_starts[0][:200]
    names = [tok.id_to_token(int(i)) for i in corpus.tokens[0][:200]]
    assert [bool(x) for x in starts] == [not n.startswith("##") for n in names]
    before = shard_mtimes(out)
    again = prepare_corpus(str(novels), vocab, out, num_workers=2, max_sentence_tokens=1000,
                           progress=False)
    assert again["data_fingerprint"] == m["data_fingerprint"]
    assert shard_mtimes(out) == before


def test_interrupted_run_is_not_taken_for_finished(novels, vocab, tmp_path):
    out = tmp_path / "prep"
    m = prepare_corpus(str(novels), vocab, out, num_workers=0, progress=False)
    # Simulate a crash: no manifest, one shard only half there, a temp dir left over.
    (out / "manifest.json").unlink()
    (out / "shard-00001" / "meta.json").unlink()
    (out / ".shard-00002.tmp-999").mkdir()
    with pytest.raises(PreparedError, match="no manifest.json"):
        open_prepared(out)
    before = shard_mtimes(out)
    m2 = prepare_corpus(str(novels), vocab, out, num_workers=0, progress=False)
    after = shard_mtimes(out)
    assert after["shard-00000"] == before["shard-00000"]
    assert after["shard-00001"] != before["shard-00001"]
    assert not list(out.glob(".shard-*"))
    assert m2["data_fingerprint"] == m["data_fingerprint"]


def test_vocab_mismatch_is_a_clear_error(novels, vocab, tmp_path):
    out = tmp_path / "prep"
    prepare_corpus(str(novels), vocab, out, num_workers=0, progress=False)
    cfg = default_data_config()
    cfg.prepared_dir = str(out)
    cfg.vocab = str(data_path("vocab", "bert-base-cased", "vocab.txt"))
    with pytest.raises(PreparedError, match="prepared with vocab fingerprint .* use the same vocab"):
        PretrainingPipeline.from_config(cfg, global_batch_size=8)
    cfg.vocab = vocab
    assert PretrainingPipeline.from_config(cfg, global_batch_size=8).batch(0)["input_ids"].shape \
        == (8, 128)


def test_vocab_without_specials_stops_before_writing(novels, tmp_path):
    bad = tmp_path / "vocab.txt"
    base = data_path("vocab", "bert-base-uncased", "vocab.txt").read_text(encoding="utf-8")
    bad.write_text("".join(t + "\n" for t in base.split("\n") if t not in ("[CLS]", "[MASK]")),
                   encoding="utf-8")
    out = tmp_path / "prep"
    with pytest.raises(ValueError, match=r"vocab.txt: vocabulary lacks special token\(s\) "
                                         r"\[CLS\], \[MASK\]"):
        prepare_corpus(str(novels), bad, out, num_workers=0, progress=False)
    assert not out.exists()


def test_bad_input_policies(vocab, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_empty.txt").write_text("")
    (src / "b_docs.txt").write_text(
        "First sentence of doc one.\nSecond sentence.\n\n\n\n"   # runs of blank lines
        "A lonely one-sentence document.\n\n"
        + "word " * 400 + "\n\n"                                 # an over-long line
        "\x07\x07\n\u200b\n\n"                                    # nothing but control chars
        "Last document here.\nIt has two sentences.\n", encoding="utf-8")
    out = tmp_path / "prep"
    m = prepare_corpus(f"bert:{src}", vocab, out, num_workers=0, max_sentence_tokens=128,
                       progress=False)
    s = m["stats"]
    assert s["empty_files"] == 1
    assert s["empty_documents"] == 1 and s["empty_sentences"] == 2
    assert s["one_sentence_documents"] == 2
    assert s["split_sentences"] == 1
    assert m["totals"]["documents"] == 4
    assert any("b_docs.txt:8: sentence of 400 tokens split" in w for w in m["warnings"])
    corpus = open_prepared(out)
    assert [len(x) for x in corpus.document_sentences(2)] == [128, 128, 128, 16]


def test_non_utf8_stops_with_file_and_line(vocab, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_good.txt").write_text("Fine text.\nMore.\n\nDoc two.\n", encoding="utf-8")
    (src / "b_bad.txt").write_bytes(b"Good line.\n\nAnother good line.\nBad \xff\xfe byte.\n")
    out = tmp_path / "prep"
    with pytest.raises(corpora.CorpusError) as e:
        prepare_corpus(f"bert:{src}", vocab, out, num_workers=0, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{src / 'b_bad.txt'}:4: invalid UTF-8 byte 0xff at column 5")
    assert not (out / "manifest.json").exists()
    assert not (out / "shard-00001").exists() and not list(out.glob(".shard-*"))
    m = prepare_corpus(f"bert:{src}", vocab, out, num_workers=0, encoding_errors="replace",
                       progress=False)
    assert m["stats"]["replaced_lines"] == 1


def test_cli_prepare_and_inspect(novels, vocab, tmp_path):
    out = tmp_path / "prep"
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={novels}",
                        f"--vocab={vocab}", f"--out={out}", "--num_workers=1"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "3 documents" in r.stdout
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.inspect_batches", f"--prepared={out}",
                        "--num_batches=3", "--batch_size=16", "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["sequences"] == 48
    assert 0.1 < stats["mask_rate"] < 0.2 and 0 <= stats["padding_fraction"] < 1
    # The same through a pretraining config file with a `data` sub-config.
    cfg = tmp_path / "pretrain_cfg.py"
    cfg.write_text(
        "from bert_jax.data.pipeline import default_data_config\n"
        "import ml_collections\n\n\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.global_batch_size = 8\n"
        "    c.data = default_data_config()\n"
        f"    c.data.prepared_dir = {str(out)!r}\n"
        "    c.data.nsp = False\n"
        "    return c\n")
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.inspect_batches", f"--config={cfg}",
                        "--num_batches=2", "--config.data.max_seq_length=64"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout[r.stdout.index("{\n"):])
    assert stats["sequences"] == 16 and "nsp_positive_fraction" not in stats
    assert stats["mean_real_length"] <= 64 and "[MASK](=" in r.stdout
    r = subprocess.run([sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={novels}",
                        f"--vocab={tmp_path / 'missing.txt'}", f"--out={tmp_path / 'x'}"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "missing.txt" in r.stderr


def test_incomplete_or_old_prepared_dir(tmp_path):
    with pytest.raises(PreparedError, match="no manifest.json"):
        open_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(PreparedError, match="format_version 0"):
        open_prepared(tmp_path)
