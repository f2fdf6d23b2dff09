"""Sequence packing for pretraining (data.packing): best-fit-decreasing rows,
every instance of an epoch packed exactly once with its own tokens, and a
packed row computing the same MLM/NSP outputs and loss sums per instance as
the instances padded one per row (segment-aware attention, restarted
positions, NSP on each [CLS])."""

import math

import jax
import numpy as np
import pytest

from bert_jax.data import packing
from bert_jax.data.pipeline import PackedPipeline, PretrainingPipeline, default_data_config
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import build_model
from bert_jax.train.pretrain_job import pretraining_objective

T = 64


def _pipe(data, packed: int, batch: int = 16, index: int = 0, count: int = 1):
    cfg = default_data_config()
    cfg.prepared_dir = str(data["train"])
    cfg.max_seq_length = T
    cfg.max_predictions_per_seq = 10
    cfg.short_seq_prob = 0.3  # more short instances than Google's 0.1: more to pack
    cfg.packing = packed
    return PretrainingPipeline.from_config(cfg, global_batch_size=batch, process_index=index,
                                           process_count=count)


def test_best_fit_decreasing_is_a_valid_tight_packing():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 129, 300), np.full(200, 128)])
    rows = packing.best_fit_decreasing(lengths, 128, 3)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[r]) <= 128 and len(r) <= 3 for r in rows)
    # Bin-packing bound of first/best-fit decreasing: <= 11/9 OPT + 6/9, and
    # OPT >= ceil(total / capacity).
    assert len(rows) <= 11 / 9 * math.ceil(lengths.sum() / 128) + 1
    assert len(packing.best_fit_decreasing(np.full(10, 64), 128, 2)) == 5
    assert len(packing.best_fit_decreasing(np.full(9, 10), 128, 3)) == 3
    with pytest.raises(ValueError, match="item lengths"):
        packing.best_fit_decreasing(np.array([129]), 128, 2)


def test_packed_epoch_holds_every_instance_once_with_its_tokens(tiny_pretraining_data):
    plain = _pipe(tiny_pretraining_data, 0)
    packed = _pipe(tiny_pretraining_data, 3)
    assert isinstance(packed, PackedPipeline) and not isinstance(plain, PackedPipeline)
    n_inst = plain.epoch_range(0)[1]
    packed.locate_row(0)
    n_rows = packed._row_ends[1]
    lengths = plain.sequences(np.arange(n_inst)).length
    # The lengths packing plans with (from the plan alone) are the materialized ones.
    np.testing.assert_array_equal(
        packing.instance_lengths(plain.corpus, plain._plan(0), plain.pairing), lengths)
    # Fewer rows than instances, and no more than the bin-packing bound.
    assert n_rows < n_inst
    assert n_rows <= 11 / 9 * math.ceil(lengths.sum() / T) + 1
    members = packed.rows_instances(np.arange(n_rows))
    assert sorted(np.concatenate(members).tolist()) == list(range(n_inst))
    # Rows of the first steps: each instance's tokens, types and masks as unpacked.
    for step in range(3):
        b = packed.batch(step)
        g_rows = packed.rows_instances(packed.global_indices(step))
        for r, g in enumerate(g_rows):
            ex = plain.examples(g)
            at, m = 0, 0
            for j in range(len(g)):
                n = int(ex["attention_mask"][j].sum())
                np.testing.assert_array_equal(b["input_ids"][r, at:at + n], ex["input_ids"][j, :n])
                np.testing.assert_array_equal(b["token_type_ids"][r, at:at + n],
                                              ex["token_type_ids"][j, :n])
                assert (b["segment_ids"][r, at:at + n] == j + 1).all()
                np.testing.assert_array_equal(b["position_ids"][r, at:at + n], np.arange(n))
                k = int((ex["masked_weights"][j] > 0).sum())
                np.testing.assert_array_equal(b["masked_positions"][r, m:m + k],
                                              ex["masked_positions"][j, :k] + at)
                np.testing.assert_array_equal(b["masked_ids"][r, m:m + k],
                                              ex["masked_ids"][j, :k])
                assert b["nsp_labels"][r, j] == ex["nsp_labels"][j]
                assert b["nsp_positions"][r, j] == at and b["nsp_weights"][r, j] == 1
                at, m = at + n, m + k
            assert (b["attention_mask"][r, at:] == 0).all() and (b["segment_ids"][r, at:] == 0).all()
            assert (b["masked_weights"][r, m:] == 0).all() and (b["nsp_weights"][r, len(g):] == 0).all()


def test_packed_rows_split_across_processes(tiny_pretraining_data):
    one = _pipe(tiny_pretraining_data, 3, batch=16)
    halves = [_pipe(tiny_pretraining_data, 3, batch=16, index=i, count=2) for i in range(2)]
    whole = one.batch(5)
    parts = [h.batch(5) for h in halves]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([p[k] for p in parts]), err_msg=k)


def test_packed_state_must_match_packing(tiny_pretraining_data):
    packed = _pipe(tiny_pretraining_data, 3)
    state = packed.state(40)
    _pipe(tiny_pretraining_data, 3).check_state(state)
    with pytest.raises(ValueError, match="packing"):
        _pipe(tiny_pretraining_data, 2).check_state(state)


def test_packed_forward_equals_unpacked(tiny_pretraining_data):
    """The model and loss on packed rows == on the same instances padded one
    per row: MLM logits at every masked token, NSP logits per instance, and the
    objective's loss sums."""
    plain = _pipe(tiny_pretraining_data, 0)
    packed = _pipe(tiny_pretraining_data, 3)
    cfg = BertConfig(vocab_size=plain.tokenizer.vocab_size, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=T, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = build_model(cfg, "pretraining", seed=3)
    b = packed.batch(0)
    g_rows = packed.rows_instances(packed.global_indices(0))
    assert max(map(len, g_rows)) >= 2, "the first step should pack something"
    ex = plain.examples(np.concatenate(g_rows))
    out_p = model(b["input_ids"], b["token_type_ids"], b["attention_mask"],
                  masked_positions=b["masked_positions"], segment_ids=b["segment_ids"],
                  position_ids=b["position_ids"], nsp_positions=b["nsp_positions"])
    out_u = model(ex["input_ids"], ex["token_type_ids"], ex["attention_mask"],
                  masked_positions=ex["masked_positions"])
    i = 0
    for r, g in enumerate(g_rows):
        m = 0
        for j in range(len(g)):
            k = int((ex["masked_weights"][i] > 0).sum())
            np.testing.assert_allclose(out_p["mlm_logits"][r, m:m + k],
                                       out_u["mlm_logits"][i, :k], atol=2e-5, rtol=1e-5)
            np.testing.assert_allclose(out_p["nsp_logits"][r, j], out_u["nsp_logits"][i],
                                       atol=2e-5, rtol=1e-5)
            m, i = m + k, i + 1
    obj = pretraining_objective(nsp=True, gathered=True)
    s_p = jax.device_get(obj.sums(model, b, None))
    s_u = jax.device_get(obj.sums(model, ex, None))
    for k in ("mlm_loss", "mlm_correct", "mlm_weight", "nsp_loss", "nsp_correct", "nsp_weight"):
        np.testing.assert_allclose(s_p[k], s_u[k], rtol=1e-5, err_msg=k)
    t_p, t_u = obj.totals(b), obj.totals(ex)
    assert float(t_p["mlm"]) == float(t_u["mlm"]) and float(t_p["nsp"]) == float(t_u["nsp"])


def test_packed_classification_equals_unpacked(tiny_pretraining_data):
    """GLUE packing (config.packing): each example's logits and the
    classification loss sums on packed rows equal those of the examples
    batched one per row."""
    from conftest import data_path

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import batching
    from bert_jax.finetune.trainer import objective_for

    tok = load_tokenizer(tiny_pretraining_data["vocab"])
    lines = data_path("glue", "SST-2", "dev.tsv").read_text().splitlines()[1:25]
    examples = []
    for line in lines:
        text, label = line.split("\t")
        ids = tok.encode(text).ids[:40]
        examples.append({"input_ids": ids, "token_type_ids": [0] * len(ids),
                         "labels": int(label)})
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(cfg, "classification", 2, seed=5)
    packed = next(batching.iterate_packed_batches(examples, 8, (128,), 4, seed=0, epoch=0))
    assert packed["example_weights"].sum() == len(examples)
    plain = batching.collate(examples, np.arange(len(examples)), len(examples), (64,))
    obj = objective_for("classification")
    lp = model(packed["input_ids"], packed["token_type_ids"], packed["attention_mask"],
               segment_ids=packed["segment_ids"], position_ids=packed["position_ids"],
               cls_positions=packed["cls_positions"])["logits"]
    lu = model(plain["input_ids"], plain["token_type_ids"], plain["attention_mask"])["logits"]
    # Slot (r, j) of a packed row <-> the example whose position it holds: match by input ids.
    by_ids = {tuple(e["input_ids"]): n for n, e in enumerate(examples)}
    for r in range(8):
        for j in range(4):
            if not packed["example_weights"][r, j]:
                continue
            at = packed["cls_positions"][r, j]
            n = int((packed["segment_ids"][r] == j + 1).sum())
            e = by_ids[tuple(packed["input_ids"][r, at:at + n].tolist())]
            assert packed["labels"][r, j] == examples[e]["labels"]
            np.testing.assert_allclose(lp[r, j], lu[e], atol=2e-5, rtol=1e-5)
    s_p = jax.device_get(obj.sums(model, packed, None))
    s_u = jax.device_get(obj.sums(model, plain, None))
    for k in ("loss", "correct", "weight"):
        np.testing.assert_allclose(s_p[k], s_u[k], rtol=1e-5, err_msg=k)


def test_packed_tagging_equals_unpacked(tiny_pretraining_data):
    """CoNLL packing (config.packing): real eng.testa sentence windows packed
    into rows give every token the logits it gets in its own row, and the
    tagging loss sums and token count equal the unpacked ones."""
    from conftest import data_path

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import batching, conll
    from bert_jax.finetune.trainer import objective_for

    tok = load_tokenizer(tiny_pretraining_data["vocab"])
    sents = conll.read_conll_file(data_path("conll2003", "eng.testa"))[:30]
    names = conll.label_names_from(sents)
    task = conll.ConllTask(lambda split: sents, tok, max_seq_length=64, window_stride=32,
                           length_buckets=(64,), label_names=names, packing=4)
    examples = task.features("train").examples
    n_rows = len(batching.plan_packed_rows([len(e["input_ids"]) for e in examples], 64, 4,
                                           seed=0, epoch=0))
    batches = list(task.train_batches(64, seed=0, epoch=0))
    assert len(batches) == task.train_steps_per_epoch(64) == 1   # all windows in one batch
    packed = batches[0]
    assert "cls_positions" not in packed and packed["example_weights"].shape == (64, 4)
    assert packed["example_weights"].sum() == len(examples) > n_rows   # really packed
    assert (packed["example_weights"].max(-1) > 0).sum() == n_rows
    plain = batching.collate(examples, np.arange(len(examples)), len(examples), (64,),
                             {"input_ids": tok.pad_id})
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(cfg, "tagging", len(names), seed=5)
    lp = np.asarray(model(packed["input_ids"], packed["token_type_ids"], packed["attention_mask"],
                          segment_ids=packed["segment_ids"],
                          position_ids=packed["position_ids"])["logits"])
    lu = np.asarray(model(plain["input_ids"], plain["token_type_ids"],
                          plain["attention_mask"])["logits"])
    by_ids = {tuple(e["input_ids"].tolist()): n for n, e in enumerate(examples)}
    seen = 0
    for r in range(64):
        for j in range(4):
            span = np.nonzero(packed["segment_ids"][r] == j + 1)[0]
            if not span.size:
                continue
            e = by_ids[tuple(packed["input_ids"][r, span].tolist())]
            np.testing.assert_array_equal(packed["label_ids"][r, span], examples[e]["label_ids"])
            np.testing.assert_allclose(lp[r, span], lu[e, :span.size], atol=2e-5, rtol=1e-5)
            seen += 1
    assert seen == len(examples)
    obj = objective_for("tagging")
    s_p = jax.device_get(obj.sums(model, packed, None))
    s_u = jax.device_get(obj.sums(model, plain, None))
    for k in ("loss", "correct", "weight"):
        np.testing.assert_allclose(s_p[k], s_u[k], rtol=1e-5, err_msg=k)
    assert float(obj.totals(packed)["n"]) == float(obj.totals(plain)["n"]) > 0
