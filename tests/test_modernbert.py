"""ModernBERT (cfg.architecture="modernbert") against transformers' ModernBert* (fp32,
eager attention) on randomly initialized tiny models saved with save_pretrained:
hidden states and MLM / classification logits through our converter, packed rows
equal to each sequence alone, our HF export loaded back by transformers, and
config.json as transformers 4.x and 5.x write it.

No ModernBERT weights can be downloaded here, so the reference is transformers
itself with random weights; norm weights (and biases, where the shape has them)
are perturbed away from 1 / 0 so that a norm in the wrong place shows.
"""

import json

import numpy as np
import pytest
from conftest import data_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Tiny shapes: every sequence below is longer than the sliding window.
SHAPES = {
    # 3 layers, global every 2 (layers 0, 2), window 8 (+-4), no biases (ModernBERT's).
    "nobias": dict(vocab_size=101, hidden_size=32, num_attention_heads=4, num_hidden_layers=3,
                   intermediate_size=48, local_attention=8, global_attn_every_n_layers=2,
                   global_rope_theta=1000.0, local_rope_theta=50.0),
    # 4 layers, global every 3 (0, 3), window 6 (+-3), every bias on, tanh GELU,
    # mean pooling, no decoder bias.
    "biases": dict(vocab_size=89, hidden_size=48, num_attention_heads=3, num_hidden_layers=4,
                   intermediate_size=40, local_attention=6, global_attn_every_n_layers=3,
                   norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
                   decoder_bias=False, hidden_activation="gelu_pytorch_tanh",
                   classifier_pooling="mean", global_rope_theta=500.0, local_rope_theta=20.0),
}
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)


def _perturb_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def hf_model(cls, shape: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(**SHAPES[shape], **TOKEN_IDS, **extra,
                                           max_position_embeddings=64, norm_eps=1e-5,
                                           initializer_range=0.1)
    model = getattr(transformers, cls)._from_config(config, attn_implementation="eager")
    _perturb_norms(model, seed)
    return model.eval()


def save_bpe_tokenizer(d, vocab_size=400):
    """A small byte-level BPE (ModernBERT's kind of tokenizer) trained with the
    `tokenizers` library on real text, saved as transformers saves one:
    tokenizer.json + tokenizer_config.json + special_tokens_map.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    novel = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[0]
    text = novel.read_text(encoding="utf-8")[:200_000].splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # ModernBERT's tokenizer.json adds [CLS] A [SEP] (B [SEP]) in its post-processor.
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]")
    fast.save_pretrained(d)
    return text


def _batch(vocab, lengths, t, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, vocab, n)
        ids[i, 0] = 1
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="module", params=sorted(SHAPES))
def mlm(request, tmp_path_factory):
    """(shape, HF dir, HF model, batch, HF outputs) for one tiny ModernBertForMaskedLM."""
    shape = request.param
    model = hf_model("ModernBertForMaskedLM", shape)
    d = tmp_path_factory.mktemp(f"hf_{shape}")
    model.save_pretrained(d)
    save_bpe_tokenizer(d)
    ids, mask = _batch(model.config.vocab_size, [23, 17, 9], 23)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
        out.last_hidden_state = model.model(input_ids=torch.tensor(ids),
                                            attention_mask=torch.tensor(mask)).last_hidden_state
    return shape, d, model, (ids, mask), out


def _ours(path, head=None, **kw):
    from bert_jax.convert import formats as convert
    from bert_jax.model.heads import build_model
    from bert_jax.model.params import assign_params
    cfg, meta, flat = convert.read_any(path, head=head)
    model = build_model(cfg, meta["head"], meta["num_labels"])
    assign_params(model, flat, strict=True)
    return cfg, meta, model


def _run(model, ids, mask, **kw):
    import jax.numpy as jnp
    from flax import nnx
    return nnx.jit(lambda m, a, b: m(a, None, b, **kw))(model, jnp.asarray(ids),
                                                        jnp.asarray(mask))


def _max_diff(a, b, mask):
    m = mask.astype(bool)[..., None]
    return float(np.abs(np.where(m, np.asarray(a) - np.asarray(b), 0)).max())


@pytest.fixture(scope="module")
def ours(mlm):
    """(cfg, meta, our model) read from the mlm fixture's HF dir by convert.read_any."""
    return _ours(mlm[1])


def test_mlm_parity(mlm, ours):
    """Hidden states (embeddings + every layer, pre final norm), last hidden state
    and MLM logits of our model from the converted dir, within 1e-4 of HF."""
    from flax import nnx
    shape, d, _, (ids, mask), ref = mlm
    cfg, meta, model = ours
    assert cfg.architecture == "modernbert" and meta["head"] == "pretraining"
    assert cfg.local_attention < ids.shape[1]

    def run(m, a, b):
        out = m.bert(a, None, b, output_hidden_states=True)
        return out, m.mlm_logits(out["last_hidden_state"])
    enc, logits = nnx.jit(run)(model, ids, mask)
    diffs = {"hidden_states": max(_max_diff(a, b.numpy(), mask)
                                  for a, b in zip(enc["hidden_states"], ref.hidden_states)),
             "last_hidden_state": _max_diff(enc["last_hidden_state"],
                                            ref.last_hidden_state.numpy(), mask),
             "mlm_logits": _max_diff(logits, ref.logits.numpy(), mask)}
    print(shape, diffs, "max |logit|", float(np.abs(ref.logits.numpy()).max()))
    assert len(enc["hidden_states"]) == cfg.num_hidden_layers + 1
    assert max(diffs.values()) <= 1e-4, diffs


def test_packed_equals_alone(mlm, ours):
    """Three sequences packed in one row (with padding) give each the outputs it
    gets alone in its own row: rotary positions restart and no window (local or
    global) crosses a boundary. One batch: row 0 packed, rows 1-3 alone."""
    from flax import nnx
    _, _, _, (ids, _), _ = mlm
    model = ours[2]
    lengths = [11, 9, 7]  # each longer than the window
    seqs = [ids[i, :n] for i, n in enumerate(lengths)]
    t = 32
    rows = np.zeros((4, t), np.int64)
    seg = np.zeros((4, t), np.int64)
    start = 0
    for k, s in enumerate(seqs):
        rows[0, start:start + len(s)] = s
        seg[0, start:start + len(s)] = k + 1
        rows[k + 1, :len(s)] = s
        seg[k + 1, :len(s)] = 1
        start += len(s)
    out = np.asarray(nnx.jit(lambda m, a, b, s: m(a, None, b, segment_ids=s))(
        model, rows, (seg > 0).astype(np.int64), seg)["mlm_logits"])
    start = 0
    for k, s in enumerate(seqs):
        diff = np.abs(out[0, start:start + len(s)] - out[k + 1, :len(s)]).max()
        assert diff <= 1e-5, diff
        start += len(s)
    # A real check: without segment ids the packed row's sequences see each other.
    mixed = np.asarray(_run(model, rows[:1], (seg[:1] > 0).astype(np.int64))["mlm_logits"])
    assert np.abs(mixed[0, 11:20] - out[2, :9]).max() > 1e-3


def test_cli_convert_and_hf_export_round_trip(mlm, tmp_path):
    """HF dir -> `python -m bert_jax.convert` -> bert_jax dir -> --to hf: every tensor
    comes back bit-exact (Wqkv re-fused), ModernBertForMaskedLM loads it with
    nothing missing or unexpected and gives the original logits."""
    import subprocess
    import sys
    shape, d, model, (ids, mask), ref = mlm
    from safetensors.numpy import load_file
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PATH": "/usr/bin:/bin"}
    for src, dst, to in ((d, tmp_path / "ours", "bert_jax"), (tmp_path / "ours",
                                                              tmp_path / "hf", "hf")):
        r = subprocess.run([sys.executable, "-m", "bert_jax.convert", str(src), str(dst),
                            "--to", to], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "ours" / "bert_jax.json").read_text())
    assert meta["config"]["architecture"] == "modernbert"
    assert meta["config"]["local_attention"] == SHAPES[shape]["local_attention"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (d / name).read_bytes(), name
    a, b = load_file(str(d / "model.safetensors")), load_file(str(tmp_path / "hf" /
                                                                  "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    back, info = transformers.ModernBertForMaskedLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        logits = back.eval()(input_ids=torch.tensor(ids),
                             attention_mask=torch.tensor(mask)).logits.numpy()
    assert _max_diff(logits, ref.logits.numpy(), mask) == 0.0


# (HF class, shape, our head, HF output -> [our output key: array]).
TASKS = [
    ("ModernBertForSequenceClassification", "nobias", "classification",
     lambda o: {"logits": o.logits}),
    ("ModernBertForSequenceClassification", "biases", "classification",  # mean pooling
     lambda o: {"logits": o.logits}),
    ("ModernBertForTokenClassification", "biases", "tagging", lambda o: {"logits": o.logits}),
    ("ModernBertForQuestionAnswering", "nobias", "span",
     lambda o: {"start_logits": o.start_logits, "end_logits": o.end_logits}),
]


@pytest.mark.parametrize("cls,shape,head,outputs", TASKS, ids=[f"{t[2]}-{t[1]}" for t in TASKS])
def test_task_heads_both_ways(cls, shape, head, outputs, tmp_path):
    """ModernBertFor{SequenceClassification (cls and mean pooling), TokenClassification,
    QuestionAnswering} -> ours: same logits on a padded batch (padding positions
    of per-token heads left out); ours -> HF: transformers loads the export with
    nothing missing and gives them again."""
    from bert_jax.convert import formats as convert
    model = hf_model(cls, shape, seed=1, num_labels=2 if head == "span" else 3)
    model.save_pretrained(tmp_path / "hf")
    ids, mask = _batch(model.config.vocab_size, [21, 8, 14], 21, seed=2)
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in outputs(
            model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))).items()}
    cfg, meta, ours = _ours(tmp_path / "hf")
    assert meta["head"] == head
    assert cfg.classifier_pooling == SHAPES[shape].get("classifier_pooling", "cls")
    got = _run(ours, ids, mask)
    for k, want in ref.items():
        diff = np.asarray(got[k]) - want
        if head != "classification":  # per-token outputs: real tokens only
            diff = np.where(mask.astype(bool).reshape(mask.shape + (1,) * (diff.ndim - 2)),
                            diff, 0)
        assert np.abs(diff).max() <= 1e-4, (k, np.abs(diff).max())
    convert.convert(tmp_path / "hf", tmp_path / "ours", "bert_jax")
    convert.convert(tmp_path / "ours", tmp_path / "back", "hf")
    back, info = getattr(transformers, cls).from_pretrained(
        tmp_path / "back", attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        again = outputs(back.eval()(input_ids=torch.tensor(ids),
                                    attention_mask=torch.tensor(mask)))
    for k, want in ref.items():
        np.testing.assert_array_equal(again[k].numpy(), want, err_msg=k)


def test_encoder_export_loads_as_modernbertmodel(mlm, tmp_path):
    """--head encoder: ModernBertModel names (no `model.` prefix, no head or
    decoder), loaded by transformers with nothing missing; same last hidden state."""
    from bert_jax.convert import formats as convert
    _, d, _, (ids, mask), ref = mlm
    report = convert.convert(d, tmp_path / "enc", "hf", head="encoder")
    assert any("ignored (unused by the model): decoder.bias" in r for r in report) or \
        not SHAPES[mlm[0]].get("decoder_bias", True)
    enc, info = transformers.ModernBertModel.from_pretrained(
        tmp_path / "enc", attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        last = enc.eval()(input_ids=torch.tensor(ids),
                          attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    assert _max_diff(last, ref.last_hidden_state.numpy(), mask) == 0.0


def _v5_config(d4: dict) -> dict:
    """config.json as transformers 5 writes it: per-layer `layer_types` and a
    `rope_parameters` block per layer type instead of the flat fields."""
    d = {k: v for k, v in d4.items()
         if k not in ("global_rope_theta", "local_rope_theta", "global_attn_every_n_layers")}
    n = d4["global_attn_every_n_layers"]
    d["layer_types"] = ["full_attention" if i % n == 0 else "sliding_attention"
                        for i in range(d4["num_hidden_layers"])]
    d["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": d4["global_rope_theta"]},
        "sliding_attention": {"rope_type": "default", "rope_theta": d4["local_rope_theta"]}}
    return d


def test_config_json_4x_and_5x(mlm, tmp_path):
    """The same architecture from transformers 4.x's flat config.json and from a
    5.x one (written by hand); a layer pattern our encoder cannot express and
    a scaled rope are errors naming the file."""
    from bert_jax.model.config import BertConfig
    _, d, _, _, _ = mlm
    d4 = json.loads((d / "config.json").read_text())
    cfg4 = BertConfig.from_json_file(d / "config.json")
    (tmp_path / "v5.json").write_text(json.dumps(_v5_config(d4)))
    cfg5 = BertConfig.from_json_file(tmp_path / "v5.json")
    assert cfg5 == cfg4
    assert (cfg4.global_rope_theta, cfg4.local_rope_theta) == (d4["global_rope_theta"],
                                                                 d4["local_rope_theta"])
    bad = _v5_config(d4)
    bad["layer_types"] = ["sliding_attention"] + bad["layer_types"][1:]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json: layer_types"):
        BertConfig.from_json_file(tmp_path / "bad.json")
    bad = _v5_config(d4)
    bad["rope_parameters"]["full_attention"]["rope_type"] = "yarn"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json: rope_parameters.full_attention"):
        BertConfig.from_json_file(tmp_path / "bad.json")


def test_modern_config_checks():
    """Our own config round-trips through bert_jax.json's dict; bad values are
    one-line errors naming the field."""
    from bert_jax.model.config import BertConfig
    cfg = BertConfig(architecture="modernbert", **SHAPES["biases"])
    assert BertConfig.from_dict(cfg.to_google_dict()) == cfg
    assert [cfg.is_global_layer(i) for i in range(4)] == [True, False, False, True]
    with pytest.raises(ValueError, match="local_attention=7"):
        cfg.replace(local_attention=7)
    with pytest.raises(ValueError, match="classifier_pooling='max'"):
        cfg.replace(classifier_pooling="max")
    with pytest.raises(ValueError, match="splash.*attention_dropout=0"):
        cfg.replace(attention_impl="splash", attention_dropout=0.1)
    from bert_jax.convert import hf_format
    with pytest.raises(ValueError, match=r"pad_token_id=50283 is outside the vocabulary"):
        hf_format.hf_config_dict(cfg, "pretraining")  # ModernBERT's default, vocab 89
    assert hf_format.hf_config_dict(cfg.replace(pad_token_id=3), "pretraining")[
        "architectures"] == ["ModernBertForMaskedLM"]
    with pytest.raises(ValueError, match="x.json: field 'norm_bias'"):
        BertConfig.from_dict({"model_type": "modernbert", "norm_bias": "no"}, source="x.json")


def test_bpe_tokenizer_json_same_ids_as_autotokenizer(tmp_path):
    """A byte-level BPE tokenizer.json loads through our tokenizer layer and gives
    transformers.AutoTokenizer's ids on real text (ELTeC novel lines and GLUE
    sentences with accents, digits, punctuation and runs of spaces), with and
    without [CLS] / [SEP] (ours adds them as tokenizer.json's post-processor
    does); decode gives the text back."""
    from bert_jax.data.tokenizer import load_tokenizer
    lines = save_bpe_tokenizer(tmp_path)
    sst = data_path("glue", "SST-2", "dev.tsv").read_text().splitlines()[1:200]
    texts = [t for t in lines[1000:1400] if t.strip()] + [s.split("\t")[0] for s in sst]
    texts += ["Café naïve — “quoted”   spaces\tand 1,234.5 numbers!", ""]
    ours = load_tokenizer(tmp_path)  # the directory: tokenizer.json is found
    assert ours.kind == "bpe"
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    want = ref(texts, add_special_tokens=False)["input_ids"]
    assert ours.ids_batch(texts) == want
    assert sum(map(len, want)) > 5000
    assert [e.ids for e in ours.encode_batch(texts)] == ref(texts)["input_ids"]
    assert ours.encode(texts[0], texts[1]).ids == ref(texts[0], texts[1])["input_ids"]
    assert (ours.pad_id, ours.mask_id) == (ref.pad_token_id, ref.mask_token_id)
    assert ours.decode(ours.ids_batch([texts[-2]])[0]) == texts[-2]


def test_training_step_gradients_match_torch(mlm, ours):
    """Gradients of the MLM loss (mean cross-entropy over labelled tokens of a
    padded batch) w.r.t. every parameter agree with torch autograd through
    ModernBertForMaskedLM (the tied decoder's gradient lands on the embedding)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bert_jax.convert import hf_format
    from bert_jax.model.params import flat_params
    _, d, _, (ids, mask), _ = mlm
    cfg, _, model = ours
    rng = np.random.default_rng(5)
    labels = np.where((rng.random(ids.shape) < 0.3) & (mask > 0), ids, -100)
    ref = transformers.ModernBertForMaskedLM.from_pretrained(d, attn_implementation="eager")
    ref.train()  # every dropout rate is 0: train mode only enables autograd paths
    loss_t = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 labels=torch.tensor(labels)).loss
    loss_t.backward()
    want = {k: p.grad.numpy() for k, p in ref.named_parameters()}

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        logits = nnx.merge(graphdef, params, rest)(jnp.asarray(ids), None,
                                                   jnp.asarray(mask))["mlm_logits"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        y = jnp.asarray(labels)
        nll = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[..., None], axis=-1)[..., 0]
        w = (y >= 0).astype(jnp.float32)
        return (nll * w).sum() / w.sum()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert abs(float(loss) - loss_t.item()) <= 1e-5
    got = hf_format.to_hf(flat_params(grads, scanned=False), cfg.architecture)
    assert got.keys() == want.keys()
    worst = max(float(np.abs(got[k] - want[k]).max() / (np.abs(want[k]).max() + 1e-6))
                for k in want)
    print("max relative gradient difference", worst)
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("packed", [False, True])
def test_splash_local_window_equals_reference(packed):
    """Splash attention with a LocalMask (interpret mode on CPU) equals the
    reference path's banded dense mask, forward and gradients, on padded and on
    packed rows whose sequences are longer than the window."""
    import jax
    import jax.numpy as jnp

    from bert_jax.model.attention import attention_mask, dot_product_attention
    from bert_jax.model.modern import local_mask
    b, s, n, h, window = 2, 128, 2, 32, 16  # splash needs blocks of 128
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(b, s, n, h)), jnp.float32) for _ in range(3))
    am = np.ones((b, s), np.int32)
    am[1, 90:] = 0
    seg = np.zeros((b, s), np.int32)
    seg[:, :50], seg[:, 50:] = 1, 2
    seg[am == 0] = 0
    mask = local_mask(attention_mask(jnp.asarray(am), jnp.asarray(seg) if packed else None),
                      window)

    def loss(impl):
        def f(q, k, v):
            out = dot_product_attention(q, k, v, mask, impl=impl, window=window)
            return jnp.sum(jnp.where(jnp.asarray(am)[:, :, None, None] > 0, out, 0.0) ** 2)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    (ref, ref_g), (got, got_g) = loss("reference"), loss("splash")
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for g, w in zip(got_g, ref_g):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)
    # The window matters here: without it the output differs.
    full = attention_mask(jnp.asarray(am), jnp.asarray(seg) if packed else None)
    wide = dot_product_attention(q, k, v, full)
    assert np.abs(np.asarray(wide) - np.asarray(dot_product_attention(q, k, v, mask))).max() > 1e-2


def test_flops_count_modern_matmuls():
    """flops.py for ModernBERT against a count from the model's own kernels
    (6 x tokens x matmul parameters) plus attention over the band by hand."""
    import math

    from flax import nnx

    from bert_jax.model import flops
    from bert_jax.model.config import BertConfig
    from bert_jax.model.heads import abstract_model
    from bert_jax.model.params import pure_to_flat
    cfg = BertConfig(architecture="modernbert", **SHAPES["nobias"])
    t, m = 40, 6
    shapes = {k: v.shape for k, v in pure_to_flat(nnx.to_pure_dict(
        nnx.state(abstract_model(cfg, "pretraining"), nnx.Param))).items()}
    enc = sum(math.prod(s) for k, s in shapes.items()
              if k.startswith("bert/encoder/") and k.endswith("/kernel"))
    head = math.prod(shapes["head/dense/kernel"]) + math.prod(
        shapes["bert/embeddings/word_embeddings/embedding"])
    # layers 0 and 2 global (every 2), layer 1 local: window 8 -> 9 keys per query.
    attention = 12 * t * cfg.hidden_size * (2 * t + 1 * 9)
    assert flops.train_flops_per_sequence(cfg, t, m) == 6 * t * enc + attention + 6 * m * head
    assert flops.finetune_flops_per_sequence(cfg, t, "classification", 3) == (
        6 * t * enc + attention + 6 * (32 * 32 + 32 * 3))


def test_bad_modernbert_dirs_name_file_and_parameter(mlm, tmp_path):
    """A fused Wqkv of the wrong size, or a config value we cannot run, is a
    one-line error naming the dir / file and the parameter, and nothing is written."""
    from safetensors.numpy import load_file, save_file

    from bert_jax.convert import formats as convert
    _, d, _, _, _ = mlm
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.attn.Wqkv.weight"] = t["model.layers.1.attn.Wqkv.weight"][:-3]
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"bad: parameter model\.layers\.1\.attn\.Wq.*fused Wqkv"):
        convert.convert(bad, tmp_path / "out", "bert_jax")
    cfg = json.loads((d / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_activation": "silu"}))
    with pytest.raises(ValueError, match=r"config\.json: hidden_activation='silu'"):
        convert.convert(bad, tmp_path / "out", "bert_jax")
    assert not (tmp_path / "out").exists()


def test_segment_positions_restart():
    from bert_jax.model.modern import segment_positions
    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(segment_positions(seg)),
                                  [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])


def test_scan_matches_layer_loop(mlm, ours):
    """scan_layers=True with remat (one uniform layer scanned over, kinds as scanned flags,
    layer 0's unused attention norm left out of the canonical names) gives the
    unrolled model's logits and hidden states; parameters move both ways."""
    from flax import nnx

    from bert_jax.model.heads import build_model
    from bert_jax.model.params import assign_params, flat_params
    shape, _, _, (ids, mask), _ = mlm
    if shape != "biases":
        pytest.skip("one shape suffices: 'biases' has layers G, L, L, G and every bias")
    cfg, _, loop = ours
    # remat too: the layer function (and its Context argument) under nnx.remat.
    scan = build_model(cfg.replace(scan_layers=True, remat_policy="dots"), "pretraining",
                       seed=9)
    assert flat_params(scan).keys() == flat_params(loop).keys()
    assign_params(scan, flat_params(loop), strict=True)

    def run(m, a, b):
        out = m.bert(a, None, b, output_hidden_states=True)
        return out["hidden_states"], m.mlm_logits(out["last_hidden_state"])
    hs_a, la = nnx.jit(run)(loop, ids, mask)
    hs_b, lb = nnx.jit(run)(scan, ids, mask)
    assert _max_diff(la, lb, mask) <= 2e-5
    assert max(_max_diff(a, b, mask) for a, b in zip(hs_a, hs_b)) <= 2e-5
    back = build_model(cfg, "pretraining", seed=10)
    assign_params(back, flat_params(scan), strict=True)
    got = flat_params(back)
    for k, v in flat_params(loop).items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_new_task_head_keeps_prediction_head(mlm):
    """A classifier started from a ModernBERT MLM checkpoint keeps the encoder and
    the shared prediction head (head/), as transformers' from_pretrained does;
    only the classifier starts fresh."""
    from bert_jax.convert import formats as convert
    from bert_jax.model.params import flat_params
    _, d, _, _, _ = mlm
    _, _, src = convert.read_any(d)
    model, _, missing = convert.load_model(d, head="classification", num_labels=2)
    assert sorted(missing) == ["classifier/bias", "classifier/kernel"]
    got = flat_params(model)
    for k in ("head/dense/kernel", "head/norm/scale", "bert/final_norm/scale"):
        np.testing.assert_array_equal(got[k], src[k], err_msg=k)


def test_sharded_on_mesh_equals_unsharded():
    """Parameters sharded by their logical axes on a (data 2, fsdp 2, tensor 2) mesh
    (heads, GeGLU halves' intermediate axis and vocabulary split over tensor) give
    the unsharded logits, packed rows with local windows included."""
    import jax
    from flax import nnx

    from bert_jax.model import sharding
    from bert_jax.model.config import BertConfig
    from bert_jax.model.heads import build_model
    cfg = BertConfig(architecture="modernbert", vocab_size=96, hidden_size=32,
                     num_attention_heads=4, num_hidden_layers=3, intermediate_size=48,
                     local_attention=4, global_attn_every_n_layers=2)
    model = build_model(cfg, "pretraining", seed=3)
    ids, mask = _batch(96, [16, 12, 9, 16], 16, seed=4)
    seg = np.where(np.arange(16) < 7, 1, 2)[None].repeat(4, 0) * mask
    fwd = nnx.jit(lambda m, a, b, s: m(a, None, b, segment_ids=s)["mlm_logits"])
    want = np.asarray(fwd(model, ids, mask, seg))
    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh)))
        got = np.asarray(fwd(model, ids, mask, seg))
    assert model.bert.encoder.layers[1].intermediate.kernel.value.sharding.spec == \
        jax.sharding.PartitionSpec("fsdp", None, "tensor")
    assert _max_diff(got, want, mask) <= 2e-5
