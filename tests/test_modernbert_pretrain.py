"""ModernBERT pretraining: MLM-only packed batches at 30% masking on real text
with a byte-level BPE tokenizer.json, the warmup-stable-decay schedule, the
recipe config, and `python -m bert_jax.pretrain` end to end with exact resume.

Expected values come from hand counts over the batch fields (not from the
masking code) and from the schedule's formula written out here.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import forked_cli
import numpy as np
import pytest
from conftest import data_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    """A 1,000-token byte-level BPE trained by `bert_jax.data.vocab --kind=bpe`
    on two ELTeC novels, those novels prepared with it ('train') and a third
    novel prepared as held-out data."""
    from bert_jax.data.prepare import prepare_corpus
    from bert_jax.data.vocab import train_vocab

    novels = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))
    root = tmp_path_factory.mktemp("bpe_data")
    train = ",".join(f"raw:{p}" for p in novels[:2])
    tok = train_vocab(train, 1000, root / "tok" / "tokenizer.json", kind="bpe")
    prepare_corpus(train, tok, root / "train", num_workers=1, progress=False)
    prepare_corpus(f"raw:{novels[3]}", tok, root / "heldout", num_workers=1, progress=False)
    return {"tokenizer": tok, "train": root / "train", "heldout": root / "heldout",
            "text": novels[0].read_text(encoding="utf-8")[:20_000]}


def modern_data_config(prepared, T=128, packing=4):
    from configs.pretrain import modernbert
    c = modernbert.get_config("size=tiny,runlocal").data
    c.prepared_dir = str(prepared)
    c.max_seq_length, c.packing = T, packing
    return c


def test_bpe_tokenizer_json_loads_in_transformers_with_our_ids(bpe_data):
    """`vocab --kind=bpe` writes a tokenizer.json transformers loads as it is
    (post-processor included) with the ids our tokenizer layer gives."""
    import transformers

    from bert_jax.data.tokenizer import load_tokenizer
    ours = load_tokenizer(bpe_data["tokenizer"])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(bpe_data["tokenizer"]))
    lines = [x for x in bpe_data["text"].splitlines() if x.strip()][:50]
    assert ours.kind == "bpe" and ours.vocab_size == 1000
    for line in lines:
        assert ours.encode(line).ids == hf(line)["input_ids"]
    assert hf.convert_ids_to_tokens([ours.cls_id, ours.sep_id, ours.mask_id, ours.pad_id]) == [
        "[CLS]", "[SEP]", "[MASK]", "[PAD]"]


@pytest.fixture(scope="module")
def packed_batches(bpe_data):
    from bert_jax.data.pipeline import PretrainingPipeline
    pipe = PretrainingPipeline.from_config(modern_data_config(bpe_data["train"]), 64)
    return pipe, [pipe.batch(s) for s in range(4)]


def test_mask_rate_is_30_percent_on_real_data(packed_batches):
    """Hand count over 4 batches of 64 packed rows: masked positions / maskable
    tokens (real tokens minus each packed sequence's [CLS] and [SEP]) = 0.30,
    and the masked inputs split 80/10/10 into [MASK] / random / kept."""
    pipe, batches = packed_batches
    tok = pipe.tokenizer
    masked = cand = as_mask = kept = 0
    for b in batches:
        n_seq = sum(len(np.unique(r[r > 0])) for r in b["segment_ids"])
        real = int(b["attention_mask"].sum())
        assert int(np.isin(b["input_ids"], [tok.cls_id]).sum()) == n_seq  # one [CLS] each
        cand += real - 2 * n_seq
        w = b["masked_weights"] > 0
        masked += int(w.sum())
        inp = np.take_along_axis(b["input_ids"], b["masked_positions"], axis=1)[w]
        as_mask += int((inp == tok.mask_id).sum())
        kept += int((inp == b["masked_ids"][w]).sum())
    assert cand > 25_000
    assert abs(masked / cand - 0.30) < 0.005, masked / cand
    assert abs(as_mask / masked - 0.80) < 0.02
    assert abs(kept / masked - 0.10) < 0.02


def test_packed_batches_have_no_nsp_no_token_types_and_separate_sequences(packed_batches):
    """MLM-only batch fields: no nsp_labels, all token types 0; each packed
    sequence is one run of segment ids framed by [CLS] ... [SEP] whose
    position ids restart at 0 (the model's own segment_positions agrees); the
    attention mask built from the batch joins exactly the pairs of one
    sequence; masked positions lie inside sequences, never on [CLS]/[SEP]."""
    import jax.numpy as jnp

    from bert_jax.model.attention import attention_mask
    from bert_jax.model.modern import segment_positions
    pipe, batches = packed_batches
    tok = pipe.tokenizer
    b = batches[0]
    assert "nsp_labels" not in b and not b["token_type_ids"].any()
    several = 0
    for r in range(len(b["input_ids"])):
        seg, pos, ids = b["segment_ids"][r], b["position_ids"][r], b["input_ids"][r]
        n = int(b["attention_mask"][r].sum())
        assert (seg[:n] > 0).all() and not seg[n:].any()
        k = seg[:n].max()
        several += k > 1
        for s in range(1, k + 1):
            where = np.nonzero(seg == s)[0]
            assert (np.diff(where) == 1).all()            # one contiguous run
            assert (pos[where] == np.arange(len(where))).all()
            assert ids[where[0]] == tok.cls_id and ids[where[-1]] == tok.sep_id
        p = b["masked_positions"][r][b["masked_weights"][r] > 0]
        assert (seg[p] > 0).all() and not np.isin(ids[p], [tok.cls_id, tok.sep_id]).any()
    assert several >= 4  # rows do hold several sequences
    np.testing.assert_array_equal(segment_positions(jnp.asarray(b["segment_ids"]))
                                  * (b["segment_ids"] > 0), b["position_ids"])
    dense = np.asarray(attention_mask(jnp.asarray(b["attention_mask"]),
                                      jnp.asarray(b["segment_ids"])).dense)[:, 0]
    seg = b["segment_ids"]
    # Padding queries may attend to padding keys (masked out as keys); real
    # queries attend exactly to their own sequence.
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    real_q = seg[:, :, None] > 0
    np.testing.assert_array_equal(dense & real_q, same)


def test_wsd_schedule_equals_hand_computation():
    from bert_jax.train.optim import build_optimizer, wsd_schedule
    from bert_jax.train.train_config import optim

    peak, end, N, W, D = 1e-3, 1e-4, 100, 10, 20

    def hand(t, shape):
        if t < W:
            return peak * t / W
        if t < N - D:
            return peak
        frac = min((t - (N - D)) / D, 1.0)
        return end + (peak - end) * (1 - (math.sqrt(frac) if shape == "sqrt" else frac))
    steps = [0, 1, 5, 10, 11, 50, 79, 80, 81, 85, 90, 99, 100, 120]
    for shape in ("sqrt", "linear"):
        s = wsd_schedule(peak, N, W, D, shape, end)
        got = [float(s(t)) for t in steps]
        np.testing.assert_allclose(got, [hand(t, shape) for t in steps], rtol=1e-6, atol=1e-12)
    # From the config: decay_ratio 0.2 of 100 steps is the same 20-step decay.
    c = optim(peak, warmup_steps=W)
    c.schedule, c.decay_ratio, c.end_lr_ratio = "wsd", 0.2, end / peak
    _, sched = build_optimizer(c, N)
    np.testing.assert_allclose([float(sched(t)) for t in steps],
                               [hand(t, "sqrt") for t in steps], rtol=1e-6, atol=1e-12)
    # No decay: warmup then constant to the end (ModernBERT's phase 1).
    s = wsd_schedule(peak, N, W, 0)
    assert [float(s(t)) for t in (0, 5, 10, 100)] == pytest.approx([0, peak / 2, peak, peak])
    with pytest.raises(ValueError, match=r"warmup \(10\) \+ decay \(95\) steps exceed "
                                         r"num_train_steps=100"):
        wsd_schedule(peak, N, W, 95)


def test_bad_wsd_fields_are_one_line_errors():
    from bert_jax.train.train_config import check_optim, optim
    c = optim(1e-3)
    c.schedule = "cosine"
    with pytest.raises(ValueError, match=r"config.optim.schedule='cosine': expected linear"):
        check_optim(c)
    c.schedule, c.decay_steps, c.decay_ratio = "wsd", 5, 0.1
    with pytest.raises(ValueError, match="decay_steps=5 and config.optim.decay_ratio=0.1"):
        check_optim(c)
    c.decay_ratio, c.decay_shape = 0.0, "cos"
    with pytest.raises(ValueError, match="config.optim.decay_shape='cos'"):
        check_optim(c)


@pytest.mark.parametrize("size,phase,shape", [
    ("base", 1, (22, 768, 1152, 12)), ("large", 1, (28, 1024, 2624, 16)),
    ("base", 2, (22, 768, 1152, 12))])
def test_recipe_config(size, phase, shape):
    """The config builds ModernBERT-base/large as the paper and HF's configs
    give them; phase 2 is 8,192 tokens with the global theta raised."""
    from bert_jax.pretrain import validate_config
    from bert_jax.train.pretrain_job import bert_config
    from configs.pretrain import modernbert
    c = modernbert.get_config(f"size={size},phase={phase}")
    c.data.prepared_dir = "x"
    validate_config(c)
    cfg = bert_config(c, 50368, {"pad_token_id": 50283})
    assert cfg.modern and (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                           cfg.num_attention_heads) == shape
    assert (cfg.local_attention, cfg.global_attn_every_n_layers) == (128, 3)
    assert cfg.local_rope_theta == 10_000 and cfg.pad_token_id == 50283
    assert cfg.global_rope_theta == (160_000 if phase == 2 else 10_000)
    assert c.data.max_seq_length == (8192 if phase == 2 else 1024)
    assert c.data.masked_lm_prob == 0.3 and not c.data.nsp
    assert c.global_batch_size * c.data.max_seq_length == 4608 * 1024
    assert (c.optim.schedule, c.optim.b2, c.optim.weight_decay) == ("wsd", 0.98, 1e-5)
    with pytest.raises(ValueError, match="config arg size=huge"):
        modernbert.get_config("size=huge")
    c.data.nsp = True
    with pytest.raises(ValueError, match="modernbert' is MLM-only: set config.data.nsp=False"):
        validate_config(c)


def test_aot_vocab_size_for_modernbert(bpe_data):
    """aot sizes the embedding by the run's tokenizer.json, else by ModernBERT's
    50,368 tokens (BERT configs keep 30,522)."""
    from bert_jax.aot import vocab_size_of
    from configs.pretrain import bert, modernbert
    c = modernbert.get_config("size=base")
    assert vocab_size_of(c) == 50368 and vocab_size_of(bert.get_config("size=base")) == 30522
    c.data.prepared_dir = str(bpe_data["train"])
    assert vocab_size_of(c) == 1000


# Runs the real CLI; SIGTERM (a preemption) after the metrics of step term_at.
HOOK = textwrap.dedent("""
    import json, os, signal, sys
    hook = json.loads(sys.argv.pop(1))
    from absl import app
    from bert_jax import pretrain
    from bert_jax.train.step import MetricWriter
    write = MetricWriter.write

    def hooked_write(self, step, metrics, prefix=""):
        write(self, step, metrics, prefix)
        if step == hook.get("term_at") and not prefix:
            os.kill(os.getpid(), signal.SIGTERM)

    MetricWriter.write = hooked_write
    from bert_jax import cli
    cli.run(pretrain.main)  # as `python -m bert_jax.pretrain` runs it
""")


@pytest.fixture(scope="module")
def cli(bpe_data, tmp_path_factory):
    """run(workdir, hook=None, rc=0): `python -m bert_jax.pretrain
    --config=configs/pretrain/modernbert.py:size=tiny,runlocal` on the BPE-prepared
    corpus, shrunk further (H32, seq 64, batch 8, 8 steps, window 16), on one device."""
    tmp = tmp_path_factory.mktemp("modern_cli")
    (tmp / "hook.py").write_text(HOOK)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_DISABLE_MOST_OPTIMIZATIONS="true",
               JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    args = ["--config=configs/pretrain/modernbert.py:size=tiny,runlocal",
            f"--config.data.prepared_dir={bpe_data['train']}",
            f"--config.eval_data.prepared_dir={bpe_data['heldout']}",
            "--config.data.max_seq_length=64", "--config.model.hidden_size=32",
            "--config.model.num_heads=2", "--config.model.intermediate_size=48",
            "--config.model.local_attention=16", "--config.global_batch_size=8",
            "--config.num_train_steps=8", "--config.log_every=1",
            "--config.checkpoint.every=4", "--config.eval_every=8", "--config.eval_batches=1"]

    def run(workdir, hook=None, rc=0):
        head = [str(tmp / "hook.py"), json.dumps(hook)] if hook else ["-m", "bert_jax.pretrain"]
        # Forked from a server that imported JAX (tests/forked_cli.py).
        proc = forked_cli.run_argv([*head, *args, f"--workdir={workdir}"], env, str(REPO),
                                   timeout=600)
        assert proc.returncode == rc, proc.stderr[-3000:]
        return proc
    return run


@pytest.fixture(scope="module")
def straight(cli, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("modern_straight")
    cli(workdir)
    return workdir


def test_cli_trains_modernbert_tiny_and_resumes_exactly(cli, straight, bpe_data, tmp_path):
    """Finite losses, held-out MLM metrics and no NSP anywhere; the workdir is a
    ModernBERT model dir with its tokenizer.json; a run preempted after step 3
    and rerun ends bitwise equal to the straight run, logging the same numbers."""
    from test_pretrain import assert_bitwise_equal, assert_same_metrics, records

    from bert_jax.train import checkpointing

    recs = records(straight)
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(np.isfinite(r["loss"]) for r in train)
    assert not [k for r in recs for k in r if "nsp" in k]
    [ev] = [r for r in recs if "eval_mlm_loss" in r]
    assert np.isfinite(ev["eval_mlm_loss"]) and 0 <= ev["eval_mlm_accuracy"] <= 1
    meta = json.loads((straight / "bert_jax.json").read_text())
    assert meta["config"]["architecture"] == "modernbert"
    assert (straight / "tokenizer.json").read_bytes() == bpe_data["tokenizer"].read_bytes()

    resumed = tmp_path / "resumed"
    proc = cli(resumed, hook={"term_at": 3}, rc=75)
    assert "preemption: saved step 4" in proc.stderr + proc.stdout
    proc = cli(resumed)
    assert f"resumed from {resumed} at step 4" in proc.stdout
    assert_bitwise_equal(checkpointing.load_state_on_host(resumed, 8),
                         checkpointing.load_state_on_host(straight, 8))
    assert_same_metrics(resumed, straight, steps=range(1, 9))


def test_phase2_context_extension_from_phase1(straight, bpe_data, tmp_path):
    """phase=2 from the phase-1 workdir (init_from): twice the sequence length,
    the global layers' rope theta raised to 160,000, the local ones kept."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.pretrain",
         "--config=configs/pretrain/modernbert.py:size=tiny,phase=2,runlocal",
         f"--workdir={tmp_path / 'p2'}", f"--config.data.prepared_dir={bpe_data['train']}",
         f"--config.init_from={straight}", "--config.data.max_seq_length=128",
         "--config.model.hidden_size=32", "--config.model.num_heads=2",
         "--config.model.intermediate_size=48", "--config.model.local_attention=16",
         "--config.global_batch_size=4", "--config.num_train_steps=2",
         "--config.optim.warmup_steps=1",
         "--config.checkpoint.every=2"], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"initialized weights from {straight}" in proc.stdout
    p1 = json.loads((straight / "bert_jax.json").read_text())["config"]
    p2 = json.loads((tmp_path / "p2" / "bert_jax.json").read_text())["config"]
    assert (p1["global_rope_theta"], p2["global_rope_theta"]) == (10_000, 160_000)
    assert p1["local_rope_theta"] == p2["local_rope_theta"] == 10_000
    assert json.loads((tmp_path / "p2" / "config.json").read_text())["data"][
        "max_seq_length"] == 128


# Longer than the 16-token window, so local layers see only part of each text.
TEXTS = ["It was a dark and stormy [MASK], and the rain fell in torrents, except at "
         "occasional intervals, when it was checked by a violent gust of wind which swept "
         "up the streets.",
         "She opened the [MASK] and looked out at the [MASK] garden."]


@pytest.fixture(scope="module")
def hf_export(straight, tmp_path_factory):
    """Our ModernBERT workdir exported by `convert --to hf`, and transformers'
    tokenizer for it."""
    transformers = pytest.importorskip("transformers")
    from bert_jax.convert import formats as convert
    out = tmp_path_factory.mktemp("modern_hf") / "hf"
    convert.convert(straight, out, to="hf")
    return out, transformers.AutoTokenizer.from_pretrained(out)


def test_fill_mask_from_modernbert_matches_transformers(straight, hf_export):
    """fill_mask on our workdir gives, at every [MASK], the softmax of
    transformers' ModernBertForMaskedLM on the exported dir (token ids from
    AutoTokenizer); the CLI prints its top tokens decoded."""
    import torch
    import transformers

    from bert_jax import fill_mask
    hf_dir, hf_tok = hf_export
    hf = transformers.ModernBertForMaskedLM.from_pretrained(
        hf_dir, attn_implementation="eager").eval()
    model, tok = fill_mask.load(straight)
    got = fill_mask.mask_probabilities(model, tok, TEXTS)
    for text, g in zip(TEXTS, got):
        enc = hf_tok(text, return_tensors="pt")
        assert enc["input_ids"].shape[1] > 16 or "garden" in text
        with torch.no_grad():
            logits = hf(input_ids=enc["input_ids"],
                        attention_mask=enc["attention_mask"]).logits[0]
        want = torch.softmax(logits[enc["input_ids"][0] == hf_tok.mask_token_id], -1).numpy()
        assert g.shape == want.shape == (want.shape[0], tok.vocab_size)
        np.testing.assert_allclose(g, want, atol=1e-6, rtol=1e-4)
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.fill_mask", f"--checkpoint={straight}", TEXTS[1],
         "--top_k=3"], env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [x for x in proc.stdout.splitlines() if x.startswith("  [MASK]")]
    assert len(rows) == 2
    for row, probs in zip(rows, got[1]):
        best = np.argsort(-probs, kind="stable")[:3]
        want = "  ".join(f"{hf_tok.decode([int(i)])!r} {probs[i]:.4f}" for i in best)
        assert row.split(": ", 1)[1] == want


def test_embed_from_modernbert_matches_transformers(straight, hf_export, tmp_path):
    """embed on our workdir: last_hidden_state equals transformers'
    ModernBertModel on the exported dir; cls and mean pooling are its [CLS]
    state and its mean over real tokens; pooler is a one-line error."""
    import torch
    import transformers

    from bert_jax.embed import Embedder
    hf_dir, hf_tok = hf_export
    hf = transformers.ModernBertModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    texts = [t.replace("[MASK]", "night") for t in TEXTS]
    enc = hf_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = hf(input_ids=enc["input_ids"],
                  attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
    mask = enc["attention_mask"].numpy()
    emb = Embedder(straight)
    assert emb.default_pooling == "mean"
    for pooling in ("cls", "mean"):
        out = emb.encode(texts, pooling=pooling)
        np.testing.assert_array_equal(out["input_ids"], enc["input_ids"].numpy() * mask)
        for i in range(len(texts)):
            n = int(mask[i].sum())
            np.testing.assert_allclose(out["last_hidden_state"][i, :n], want[i, :n],
                                       atol=1e-4, rtol=1e-4)
            ref = want[i, 0] if pooling == "cls" else want[i, :n].mean(0)
            np.testing.assert_allclose(out["pooled"][i], ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="ModernBERT checkpoint has no pooler"):
        emb.encode(texts, pooling="pooler")
