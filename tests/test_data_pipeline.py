"""The pretraining pipeline on real text (ELTeC novels): masking and NSP statistics,
pairing semantics checked against an independent tokenization of the input
lines, determinism, per-host slicing and resume."""

import json

import numpy as np
import pytest
from conftest import data_path

from bert_jax.data import corpora
from bert_jax.data.pipeline import PretrainingPipeline, default_data_config
from bert_jax.data.prepare import prepare_corpus
from bert_jax.data.tokenizer import load_tokenizer

NOVELS = 8
SENTENCES_PER_NOVEL = 700


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A BERT-format file (one sentence per line, blank line between documents)
    from the first sentences of 8 novels, and its prepared directory."""
    root = data_path("corpus", "eltec-eng")
    vocab = data_path("vocab", "bert-base-uncased", "vocab.txt")
    split = corpora.make_segmenter("sentencex")
    docs = []
    for path in sorted(root.glob("*.txt"))[:NOVELS]:
        sents = []
        for para in path.read_text(encoding="utf-8").split("\n"):
            sents += split(para) if para.strip() else []
            if len(sents) >= SENTENCES_PER_NOVEL:
                break
        docs.append(sents[:SENTENCES_PER_NOVEL])
    tmp = tmp_path_factory.mktemp("pipeline")
    text_file = tmp / "novels.txt"
    text_file.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    out = tmp / "prepared"
    # No sentence splitting, so prepared sentence i is line i of the file.
    prepare_corpus(f"bert:{text_file}", vocab, out, num_workers=0, max_sentence_tokens=10**6,
                   progress=False)
    tok = load_tokenizer(vocab)
    line_ids = [tok.encode(s).ids[1:-1] for d in docs for s in d]
    doc_of_line = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    assert sum(map(len, line_ids)) >= 100_000
    return {"dir": str(out), "tok": tok, "line_ids": line_ids, "doc_of_line": doc_of_line}


def make(corpus, batch=32, index=0, count=1, **overrides):
    cfg = default_data_config()
    cfg.prepared_dir = corpus["dir"]
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return PretrainingPipeline.from_config(cfg, global_batch_size=batch, process_index=index,
                                           process_count=count)


@pytest.fixture(scope="module")
def pipe(corpus):
    return make(corpus, batch=64)


@pytest.fixture(scope="module")
def big_sample(pipe):
    """~10k sequences spanning several epochs (the corpus has ~1.2k per epoch)."""
    return [pipe.batch(s) for s in range(160)]


def cat(batches, key):
    return np.concatenate([b[key] for b in batches])


def originals(batch):
    """input_ids with the masked positions restored to the original tokens."""
    ids = batch["input_ids"].copy()
    rows = np.nonzero(batch["masked_weights"])[0]
    cols = batch["masked_positions"][batch["masked_weights"] > 0]
    ids[rows, cols] = batch["masked_ids"][batch["masked_weights"] > 0]
    return ids


def test_batch_contract(corpus, pipe):
    b = pipe.batch(0)
    T, P = 128, 20
    shapes = {"input_ids": (64, T), "token_type_ids": (64, T), "attention_mask": (64, T),
              "masked_positions": (64, P), "masked_ids": (64, P), "masked_weights": (64, P),
              "nsp_labels": (64,)}
    assert {k: v.shape for k, v in b.items()} == shapes
    for k, v in b.items():
        assert v.dtype == (np.float32 if k == "masked_weights" else np.int32), k
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        make(corpus, batch=32, count=3)
    dense = make(corpus, dense_labels=True).batch(0)
    w = dense["masked_weights"] > 0
    labels = dense["mlm_labels"]
    rows = np.nonzero(w)[0]
    assert (labels[rows, dense["masked_positions"][w]] == dense["masked_ids"][w]).all()
    assert (labels != -100).sum() == w.sum()


def test_mask_statistics(corpus, big_sample):
    tok = corpus["tok"]
    ids, att = cat(big_sample, "input_ids"), cat(big_sample, "attention_mask")
    orig = np.concatenate([originals(b) for b in big_sample])
    w = cat(big_sample, "masked_weights") > 0
    pos, mids = cat(big_sample, "masked_positions"), cat(big_sample, "masked_ids")
    assert len(ids) >= 10_000
    specials = np.isin(orig, [tok.cls_id, tok.sep_id, tok.pad_id])
    real = int(((att > 0) & ~specials).sum())
    assert abs(w.sum() / real - 0.15) < 0.003
    shown = np.take_along_axis(ids, pos, axis=1)[w]
    frac_mask = np.mean(shown == tok.mask_id)
    frac_kept = np.mean(shown == mids[w])
    assert abs(frac_mask - 0.8) < 0.01
    assert abs(frac_kept - 0.1) < 0.01
    assert abs(1 - frac_mask - frac_kept - 0.1) < 0.01
    # Never a special token or padding, never beyond the real length.
    assert not np.isin(mids[w], list(tok.special_ids)).any()
    rows = np.nonzero(w)[0]
    assert (att[rows, pos[w]] == 1).all()
    assert not specials[rows, pos[w]].any()
    # Random replacements come from the ordinary vocabulary.
    rand = shown[(shown != tok.mask_id) & (shown != mids[w])]
    names = [tok.id_to_token(int(i)) for i in rand]
    assert not any(n.startswith("[") and n.endswith("]") for n in names)
    # Padding of the prediction slots: positions/ids 0, weights 0.
    assert (pos[~w] == 0).all() and (mids[~w] == 0).all()
    assert (w.sum(1) <= 20).all() and (w.sum(1) >= 1).all()


def test_nsp_positive_fraction(big_sample):
    labels = cat(big_sample, "nsp_labels")
    assert set(np.unique(labels)) == {0, 1}
    assert abs(np.mean(labels == 0) - 0.5) < 0.02


def _find_run(haystack, needle):
    """Start offsets where `needle` occurs contiguously in `haystack`."""
    n = len(needle)
    return [i for i in range(len(haystack) - n + 1) if haystack[i:i + n] == needle]


def test_pairs_follow_sentences_and_documents(corpus, pipe):
    """Each A / B is whole lines of one document (or a run of them cut only by
    truncation, which happens only when the pair fills max_seq_length), B is
    the continuation for label 0 and another document for label 1."""
    line_ids, doc_of_line = corpus["line_ids"], corpus["doc_of_line"]
    tok = corpus["tok"]
    checked = 0
    for step in (0, 7, 30):  # epochs 0..1
        batch = pipe.batch(step)
        orig = originals(batch)
        for r, g in enumerate(pipe.global_indices(step)):
            info = pipe.instance_info(int(g))
            length = int(batch["attention_mask"][r].sum())
            assert length <= 128
            seq = orig[r, :length].tolist()
            assert seq[0] == tok.cls_id and seq[-1] == tok.sep_id
            sep = seq.index(tok.sep_id)
            a, b = seq[1:sep], seq[sep + 1:-1]
            assert tok.sep_id not in b and a and b
            assert (batch["token_type_ids"][r, :length] == [0] * (sep + 1) + [1] * (len(b) + 1)).all()
            (a0, a1), (b0, b1) = info["a"], info["b"]
            assert len(set(doc_of_line[a0:a1])) == 1 and len(set(doc_of_line[b0:b1])) == 1
            full_a = [t for i in range(a0, a1) for t in line_ids[i]]
            full_b = [t for i in range(b0, b1) for t in line_ids[i]]
            truncated = len(full_a) + len(full_b) > 125
            if truncated:
                assert length == 128
                assert _find_run(full_a, a) and _find_run(full_b, b)
            else:
                assert (a, b) == (full_a, full_b)
            label = batch["nsp_labels"][r]
            assert label == info["is_random"]
            if label == 0:
                assert b0 == a1
            else:
                assert doc_of_line[b0] != doc_of_line[a0]
            checked += 1
    assert checked == 192


def test_whole_word_masking_masks_whole_words(corpus):
    tok = corpus["tok"]
    pipe = make(corpus, whole_word_masking=True, batch=64)
    total = real = 0
    for step in range(20):
        batch = pipe.batch(step)
        orig = originals(batch)
        for r in range(len(orig)):
            w = batch["masked_weights"][r] > 0
            masked = set(batch["masked_positions"][r][w].tolist())
            length = int(batch["attention_mask"][r].sum())
            names = [tok.id_to_token(int(i)) for i in orig[r, :length]]
            seg_start = {1} | {i + 1 for i, t in enumerate(orig[r, :length]) if t == tok.sep_id}
            for p in masked:
                lo = p
                while names[lo].startswith("##") and lo not in seg_start:
                    lo -= 1
                hi = p + 1
                while hi < length and names[hi].startswith("##"):
                    hi += 1
                assert set(range(lo, hi)) <= masked, (names[lo:hi], p)
            total += len(masked)
            real += length - 3
    # Words that would overshoot the count are skipped, so slightly under 15%.
    assert 0.14 < total / real < 0.1505


def test_same_seed_and_step_give_identical_batches(corpus, pipe):
    again = make(corpus, batch=64)
    for step in (0, 5, 40):
        a, b = pipe.batch(step), again.batch(step)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    other = make(corpus, batch=64, seed=1).batch(0)
    assert not np.array_equal(other["input_ids"], pipe.batch(0)["input_ids"])


def test_one_host_equals_concatenation_of_two(corpus):
    one = make(corpus, batch=32)
    two = [make(corpus, batch=32, index=i, count=2) for i in range(2)]
    boundary_step = one.epoch_range(0)[1] // 32
    for step in (0, 3, boundary_step):  # the last one straddles epochs 0 and 1
        full = one.batch(step)
        halves = [p.batch(step) for p in two]
        assert all(h["input_ids"].shape[0] == 16 for h in halves)
        for k in full:
            assert np.array_equal(full[k], np.concatenate([h[k] for h in halves])), k
    assert len({one.locate(int(g))[0] for g in one.global_indices(boundary_step)}) == 2


def test_resume_equals_uninterrupted(corpus):
    ref_pipe = make(corpus, batch=32)
    boundary = ref_pipe.epoch_range(0)[1] // 32
    n_steps = boundary + 4
    reference = dict(ref_pipe.iterate(0, num_steps=n_steps))
    assert sorted(reference) == list(range(n_steps))
    for restore in (1, boundary - 1, boundary + 1):  # the last two cross the epoch boundary
        state = json.loads(json.dumps(ref_pipe.state(restore)))
        fresh = make(corpus, batch=32)
        fresh.check_state(state)
        for step, batch in fresh.iterate(state["step"], num_steps=n_steps - restore):
            for k in batch:
                assert np.array_equal(batch[k], reference[step][k]), (restore, step, k)


def test_check_state_rejects_other_data_or_settings(corpus, pipe):
    state = pipe.state(3)
    with pytest.raises(ValueError, match="data settings differ.*seed"):
        make(corpus, batch=64, seed=5).check_state(state)
    with pytest.raises(ValueError, match="data fingerprint"):
        pipe.check_state(dict(state, data_fingerprint="0000000000000000"))
    with pytest.raises(ValueError, match="global_batch_size"):
        make(corpus, batch=32).check_state(state)


def test_masks_differ_across_epochs(corpus):
    """MLM-only with fixed targets makes the same sequences every epoch, reshuffled,
    with fresh masks."""
    pipe = make(corpus, nsp=False, short_seq_prob=0.0, batch=64)
    n0 = pipe.epoch_range(0)[1]
    first = pipe.examples(np.arange(n0))
    second = pipe.examples(np.arange(n0, 2 * n0))
    assert "nsp_labels" not in first
    assert (first["token_type_ids"] == 0).all()
    # Sequences cut by truncation (one over-long sentence) differ by the cut.
    key = lambda batch: [row.tobytes() if n < 128 else None
                         for row, n in zip(originals(batch), batch["attention_mask"].sum(1))]
    seq0, seq1 = key(first), key(second)
    assert sorted(filter(None, seq0)) == sorted(filter(None, seq1))  # same sequences...
    assert seq0 != seq1                                              # ...in a new order
    where1 = {s: i for i, s in enumerate(seq1) if s}
    pairs = [(i, where1[s]) for i, s in enumerate(seq0) if s]
    assert len(pairs) > 0.8 * n0
    same = sum(np.array_equal(first["masked_positions"][i], second["masked_positions"][j])
               for i, j in pairs)
    assert same < 0.01 * len(pairs)
    # MLM-only sequences are [CLS] whole contiguous sentences [SEP].
    lengths = first["attention_mask"].sum(1)
    assert (lengths <= 128).all()
    assert ((originals(first) == corpus["tok"].sep_id).sum(1) == 1).all()
