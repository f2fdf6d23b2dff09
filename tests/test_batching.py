"""Length-bucketed batching: coverage, determinism, static shapes, and the token
savings on real SST-2 tokenized with the bert-base-uncased vocabulary."""

import collections

import numpy as np
import pytest
from conftest import data_path

from bert_jax.finetune import batching

BUCKETS = (32, 64, 96, 128)


def _examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(1000, 2000, n).tolist(), "token_type_ids": [0] * n,
             "labels": i, "label_ids": [7] * n} for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def synthetic():
    lengths = np.random.default_rng(1).integers(3, 129, 1003)
    return _examples(lengths)


def _ids(batches):
    return [int(v) for b in batches for v, w in zip(b["labels"], b["example_weights"]) if w > 0]


def test_train_epoch_covers_every_example_once(synthetic):
    batches = list(batching.iterate_batches(synthetic, 32, BUCKETS, shuffle=True, seed=3, epoch=0))
    assert sorted(_ids(batches)) == list(range(len(synthetic)))
    assert all(b["input_ids"].shape[0] == 32 for b in batches)
    assert {b["input_ids"].shape[1] for b in batches} <= set(BUCKETS)
    # 1003 = 31 * 32 + 11: exactly one partial batch, filled with 21 zero-weight rows.
    weights = collections.Counter(int(b["example_weights"].sum()) for b in batches)
    assert weights == {32: 31, 11: 1}


def test_same_seed_epoch_same_batches_other_epoch_other_order(synthetic):
    a = _ids(batching.iterate_batches(synthetic, 16, BUCKETS, shuffle=True, seed=5, epoch=2))
    b = _ids(batching.iterate_batches(synthetic, 16, BUCKETS, shuffle=True, seed=5, epoch=2))
    c = _ids(batching.iterate_batches(synthetic, 16, BUCKETS, shuffle=True, seed=5, epoch=3))
    d = _ids(batching.iterate_batches(synthetic, 16, BUCKETS, shuffle=True, seed=6, epoch=2))
    assert a == b
    assert a != c and a != d
    assert sorted(a) == sorted(c) == sorted(d)


def test_batches_group_similar_lengths(synthetic):
    """Shuffling stays inside buckets: at most one batch straddles two buckets
    per bucket boundary, so nearly every row is padded to its own bucket."""
    plan = batching.plan_batches([len(e["input_ids"]) for e in synthetic], 32, BUCKETS,
                                 shuffle=True, seed=0, epoch=0)
    mixed = 0
    for idx in plan:
        own = {batching.bucket_length(len(synthetic[i]["input_ids"]), BUCKETS) for i in idx}
        mixed += len(own) > 1
    assert mixed <= len(BUCKETS) - 1


def test_padding_values_and_masks(synthetic):
    batch = batching.collate(synthetic, np.array([5, 9, 2]), 4, BUCKETS,
                             pad_values={"input_ids": 0})
    L = batch["input_ids"].shape[1]
    assert L == batching.bucket_length(max(len(synthetic[i]["input_ids"]) for i in (5, 9, 2)),
                                       BUCKETS)
    for row, i in enumerate((5, 9, 2)):
        n = len(synthetic[i]["input_ids"])
        np.testing.assert_array_equal(batch["input_ids"][row, :n], synthetic[i]["input_ids"])
        assert (batch["input_ids"][row, n:] == 0).all()
        assert batch["attention_mask"][row].sum() == n
        assert (batch["label_ids"][row, n:] == -100).all()
    assert batch["labels"].tolist()[:3] == [5, 9, 2]
    assert batch["example_weights"].tolist() == [1, 1, 1, 0]
    assert batch["attention_mask"][3].sum() == 0 and (batch["label_ids"][3] == -100).all()
    assert batch["input_ids"].dtype == np.int32 and batch["example_weights"].dtype == np.float32


def test_eval_keeps_order(synthetic):
    batches = list(batching.iterate_batches(synthetic, 64, BUCKETS, shuffle=False))
    assert _ids(batches) == list(range(len(synthetic)))


def test_too_long_example_is_an_error():
    with pytest.raises(ValueError, match="130 tokens fits no bucket"):
        list(batching.iterate_batches(_examples([10, 130]), 8, BUCKETS, shuffle=False))


def test_sst2_bucketing_processes_3x_fewer_tokens():
    """Real SST-2 train, bert-base-uncased WordPiece: bucketed batches process
    >= 3x fewer tokens than padding every example to 128."""
    from bert_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(data_path("vocab", "bert-base-uncased", "vocab.txt"))
    with open(data_path("glue", "SST-2", "train.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert len(rows) == 67349
    examples = [{"input_ids": [tok.cls_id] + ids[:126] + [tok.sep_id], "labels": i}
                for i, (ids, _) in enumerate(tok.ids_and_word_starts([r[0] for r in rows]))]
    batches = list(batching.iterate_batches(examples, 32, BUCKETS, shuffle=True, seed=0,
                                            epoch=0))
    processed = sum(b["input_ids"].size for b in batches)
    assert processed * 3 <= len(examples) * 128, processed
    assert sorted(_ids(batches)) == list(range(len(examples)))
    assert sum(b["attention_mask"].sum() for b in batches) == sum(
        len(e["input_ids"]) for e in examples)


# ------------------------------------------------------------------ packing


def _packed_ids(batches):
    return [int(v) for b in batches for v, w in zip(b["labels"].ravel(),
                                                    b["example_weights"].ravel()) if w > 0]


def test_packed_epoch_covers_every_example_once(synthetic):
    short = [e for e in synthetic if len(e["input_ids"]) <= 40]
    lengths = [len(e["input_ids"]) for e in short]
    length_of = {e["labels"]: len(e["input_ids"]) for e in short}
    batches = list(batching.iterate_packed_batches(short, 8, BUCKETS, 4, seed=0, epoch=0))
    assert sorted(_packed_ids(batches)) == [e["labels"] for e in short]
    n_rows = batching.num_packed_rows(lengths, 128, 4)
    assert len(batches) == -(-n_rows // 8)
    # Lower bound: total tokens / 128 and examples / 4 per row.
    bound = max(-(-sum(lengths) // 128), -(-len(short) // 4))
    assert n_rows <= 11 / 9 * bound + 1 and n_rows < len(short) / 3
    for b in batches:
        assert b["input_ids"].shape[1] in BUCKETS and b["labels"].shape == (8, 4)
        # Real tokens equal the members' lengths; segments number the members.
        for r in range(8):
            k = int(b["example_weights"][r].sum())
            assert b["segment_ids"][r].max() == k
            members = b["labels"][r, :k].tolist()
            assert b["attention_mask"][r].sum() == (b["segment_ids"][r] > 0).sum() == sum(
                length_of[i] for i in members)
    # Another epoch: other row memberships, the same row count.
    other = list(batching.iterate_packed_batches(short, 8, BUCKETS, 4, seed=0, epoch=1))
    assert len(other) == len(batches)
    assert [b["labels"].tolist() for b in other] != [b["labels"].tolist() for b in batches]


def test_collate_packed_layout():
    ex = [{"input_ids": [101, 5, 6, 102], "token_type_ids": [0, 0, 0, 0], "labels": 1},
          {"input_ids": [101, 7, 102, 8, 102], "token_type_ids": [0, 0, 0, 1, 1], "labels": 0},
          {"input_ids": [101, 9, 102], "token_type_ids": [0, 0, 0], "labels": 1}]
    b = batching.collate_packed(ex, [np.array([0, 1]), np.array([2])], 3, (16,), 2,
                                {"input_ids": 0})
    np.testing.assert_array_equal(b["input_ids"][0, :10], [101, 5, 6, 102, 101, 7, 102, 8, 102, 0])
    np.testing.assert_array_equal(b["token_type_ids"][0, :9], [0, 0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(b["segment_ids"][0, :10], [1, 1, 1, 1, 2, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(b["position_ids"][0, :9], [0, 1, 2, 3, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(b["cls_positions"], [[0, 4], [0, 0], [0, 0]])
    np.testing.assert_array_equal(b["labels"], [[1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(b["example_weights"], [[1, 1], [1, 0], [0, 0]])
    assert b["attention_mask"].sum() == 12 and b["input_ids"].shape == (3, 16)
    with pytest.raises(ValueError, match="holds 2 > 1 examples"):
        batching.collate_packed(ex, [np.array([0, 1])], 3, (16,), 1)
