"""Fine-tuning from a ModernBERT checkpoint (a tiny random HF
`ModernBertForMaskedLM` saved with save_pretrained, with its byte-level BPE
tokenizer.json) through the same trainer as BERT: GLUE SST-2 and CoNLL-2003
train, resume after an interruption, predict; the fine-tuned classifier
exported to HF gives transformers' `ModernBertForSequenceClassification`
logits; SQuAD at 512 tokens, the checkpoint's whole context (fewer, longer
windows, each far longer than the sliding window) trains, evaluates and gives
transformers' `ModernBertForQuestionAnswering` logits. The trainer never names
the architecture: what the run keeps from the checkpoint and the dropout fields
come from model/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import data_path
from test_finetune_common import read_jsonl

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONTEXT = 512  # the fixture checkpoint's max_position_embeddings


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """XLA at -O0 (compiling is most of a tiny run; the suite's persistent
    cache, conftest.py, keeps what the repeated runs compile)."""
    import jax
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def modern_hf(tmp_path_factory):
    """A HF dir of a random tiny ModernBertForMaskedLM and its BPE tokenizer."""
    from test_modernbert import save_bpe_tokenizer
    d = tmp_path_factory.mktemp("modern_hf")
    save_bpe_tokenizer(d, vocab_size=400)
    torch.manual_seed(0)
    # [UNK] [CLS] [SEP] [PAD] [MASK] are the tokenizer's ids 0..4.
    config = transformers.ModernBertConfig(
        vocab_size=400, hidden_size=32, num_attention_heads=4, num_hidden_layers=3,
        intermediate_size=48, local_attention=8, global_attn_every_n_layers=2,
        max_position_embeddings=CONTEXT, pad_token_id=3, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2, initializer_range=0.3)
    transformers.ModernBertForMaskedLM._from_config(config).save_pretrained(d)
    return d


def _interrupted_then_resumed(config_fn, workdir, monkeypatch, at=2):
    from bert_jax.finetune import trainer
    from bert_jax.train.step import PreemptionFlag
    monkeypatch.setattr(PreemptionFlag, "reached", lambda self, step: step == at)
    stopped = trainer.finetune(config_fn(), workdir)
    monkeypatch.undo()
    assert stopped["preempted_at"] == at
    summary = trainer.finetune(config_fn(), workdir)
    assert summary["start_step"] == at
    return summary


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]


def test_sst2_from_modernbert_trains_resumes_predicts_and_exports(modern_hf, tmp_path,
                                                                   monkeypatch):
    from bert_jax.convert import formats as convert
    from bert_jax.finetune import trainer
    from bert_jax.finetune.task import PredictRequest
    from bert_jax.predict import Predictor
    from configs.finetune import glue

    def config():
        c = glue.get_config("task=sst2,runlocal")
        c.init_checkpoint = str(modern_hf)
        c.data_dir = str(data_path("glue"))
        c.max_train_examples = 48
        c.global_batch_size = 16
        c.eval_batch_size = 256
        c.length_buckets = (64,)
        c.optim.lr = 1e-3
        c.checkpoint.every = 1
        c.log_every = 1
        # BERT's names; on ModernBERT they set embedding/mlp and attention dropout.
        c.model.hidden_dropout_prob = 0.0
        c.model.attention_probs_dropout_prob = 0.0
        return c

    straight = trainer.finetune(config(), tmp_path / "straight")
    assert straight["steps"] == 3
    resumed = _interrupted_then_resumed(config, tmp_path / "run", monkeypatch)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")

    model = tmp_path / "run" / "model"
    meta = json.loads((model / "bert_jax.json").read_text())
    assert meta["config"]["architecture"] == "modernbert" and meta["head"] == "classification"
    assert (meta["config"]["embedding_dropout"], meta["config"]["mlp_dropout"]) == (0.0, 0.0)
    # The classifier starts from the checkpoint's prediction head (head/), as
    # transformers' ModernBertForSequenceClassification.from_pretrained does.
    _, _, src = convert.read_any(modern_hf)
    init = trainer.init_weights(config())[1]
    assert {k for k in src if k.startswith("head/")} <= set(init)

    # predict on raw lines (the model dir's tokenizer.json) and its dev accuracy.
    pred = Predictor(tmp_path / "run")
    lines = ["a gripping , funny and moving film .", "dull , lifeless and far too long ."]
    records = pred.task.predict(pred, PredictRequest(lines))
    assert [r["label"] for r, _ in records] == [r["label"] for r in pred.classify(lines)]
    assert all(r["label"] in ("0", "1") for r, _ in records)
    assert 0.0 <= resumed["model"]["dev"]["accuracy"] <= 1.0

    # HF export: transformers' ModernBertForSequenceClassification gives our logits.
    convert.convert(model, tmp_path / "hf", "hf")
    hf, info = transformers.ModernBertForSequenceClassification.from_pretrained(
        tmp_path / "hf", attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(lines, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = hf.eval()(input_ids=enc["input_ids"],
                         attention_mask=enc["attention_mask"]).logits.numpy()
    ids = enc["input_ids"].numpy().astype(np.int32)
    mask = enc["attention_mask"].numpy().astype(np.int32)
    got = pred.predict_fn({"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                           "attention_mask": mask})["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_conll_from_modernbert_trains_resumes_and_predicts(modern_hf, tmp_path, monkeypatch):
    from bert_jax.finetune import trainer
    from bert_jax.finetune.task import PredictRequest
    from bert_jax.predict import Predictor
    from configs.finetune import conll2003

    text = data_path("conll2003", "eng.testa").read_text()
    dev = tmp_path / "dev.conll"
    dev.write_text(text[:text.index("-DOCSTART-", 8000)])

    def config():
        c = conll2003.get_config("runlocal")
        c.init_checkpoint = str(modern_hf)
        c.dev_file = str(dev)
        c.max_train_sentences = 48
        c.global_batch_size = 16
        c.eval_batch_size = 64
        c.max_seq_length = 64
        c.window_stride = 32
        c.length_buckets = (64,)
        c.checkpoint.every = 1
        c.log_every = 1
        return c

    straight = trainer.finetune(config(), tmp_path / "straight")
    assert straight["steps"] >= 3
    _interrupted_then_resumed(config, tmp_path / "run", monkeypatch)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")
    meta = json.loads((tmp_path / "run" / "model" / "bert_jax.json").read_text())
    assert meta["head"] == "tagging" and meta["config"]["architecture"] == "modernbert"

    pred = Predictor(tmp_path / "run")
    records = pred.task.predict(pred, PredictRequest(["Peter Blackburn went to Brussels ."]))
    ((record, line),) = records
    assert line == "Peter Blackburn went to Brussels ." and isinstance(record["entities"], list)
    assert pred.head_obj.format(record, line).startswith(line)


def test_squad_at_the_checkpoint_context(modern_hf, tmp_path):
    """SQuAD with max_seq_length = the checkpoint's context (512; the local
    window is 8): fewer, longer windows than at 128, a run that trains and
    writes a prediction for every evaluated question (a slice of its context),
    and the exported span model gives transformers' logits on a full 512-token
    window. One token more than the context is a one-line error before any
    compile."""
    from bert_jax.convert import formats as convert
    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.finetune import squad, trainer
    from bert_jax.predict import Predictor
    from configs.finetune import squad as squad_config

    def config(seq=CONTEXT):
        c = squad_config.get_config("version=1.1,runlocal")
        c.init_checkpoint = str(modern_hf)
        c.dev_file = str(data_path("squad", "dev-v1.1.json"))
        c.max_seq_length, c.doc_stride, c.max_query_length = seq, 128, 64
        c.length_buckets = (seq,)
        c.max_train_examples, c.max_eval_examples = 16, 4
        c.global_batch_size, c.eval_batch_size = 8, 8  # the suite's 8 CPU devices
        c.checkpoint.every = 100
        c.log_every = 1
        return c

    # Windows by the task's own feature builder on real paragraphs (no compile).
    data = json.loads(data_path("squad", "dev-v1.1.json").read_text())["data"]
    examples = squad.examples_from_data(data[:1])[:40]
    tok = load_tokenizer(modern_hf / "tokenizer.json")
    long = squad.build_features(examples, tok, CONTEXT, 128, 64)
    short = squad.build_features(examples, tok, 128, 64, 64)
    assert len(long.windows) < len(short.windows) / 2
    assert max(len(w.input_ids) for w in long.windows) > 256

    summary = trainer.finetune(config(), tmp_path / "run")
    assert summary["steps"] >= 2
    out = tmp_path / "run" / "eval" / "epoch_1" / "dev"
    preds = json.loads((out / "predictions.json").read_text())
    contexts = {qa["id"]: p["context"] for a in data for p in a["paragraphs"] for qa in p["qas"]}
    assert len(preds) == 4 and all(v in contexts[q] for q, v in preds.items())

    pred = Predictor(tmp_path / "run")
    convert.convert(tmp_path / "run" / "model", tmp_path / "hf", "hf")
    hf, info = transformers.ModernBertForQuestionAnswering.from_pretrained(
        tmp_path / "hf", attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 400, size=(8, CONTEXT)).astype(np.int32)  # the eval batch's shape
    ids[:, 0], ids[:, -1] = 1, 2
    mask = np.ones_like(ids)
    mask[1, 300:] = 0
    ids[1, 300:] = 3
    got = pred.predict_fn({"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                           "attention_mask": mask})
    with torch.no_grad():
        want = hf.eval()(input_ids=torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long))
    for k in ("start_logits", "end_logits"):
        np.testing.assert_allclose(np.asarray(got[k])[mask > 0],
                                   getattr(want, k).numpy()[mask > 0], atol=1e-4)

    with pytest.raises(ValueError, match=r"config.max_seq_length: sequences of 513 tokens.*"
                                         r"max_position_embeddings=512"):
        trainer.finetune(config(CONTEXT + 1), tmp_path / "too_long")
