"""Google TF1 checkpoints in and out (issue 8, part 2).

The independent reader is transformers' own TF-checkpoint loader,
`load_tf_weights_in_bert`, which walks Google's variable names into
`BertForPreTraining`. The checkpoint is written by our CLI from the real
all-MiniLM-L6-v2 weights (MLM/NSP heads random), and both readers must give
the same MLM/NSP logits and hidden states on real GLUE sentences.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import data_path
from test_hf_parity import minilm_dir

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bert_jax.convert import formats as convert  # noqa: E402
from bert_jax.convert import tf1_format  # noqa: E402
from bert_jax.model.config import BertConfig  # noqa: E402

TOL = 1e-5


def google_names(num_layers: int) -> set[str]:
    """Variable names of a pretraining checkpoint as google-research/bert's
    modeling.py (variable scopes bert/embeddings, bert/encoder/layer_%d,
    bert/pooler; tf.layers.dense -> dense/{kernel,bias}; layer_norm ->
    LayerNorm/{gamma,beta}) and run_pretraining.py (cls/predictions,
    cls/seq_relationship) create them, spelled out here independently of the
    rename table."""
    ln = ("gamma", "beta")
    dense = ("kernel", "bias")
    names = {f"bert/embeddings/{t}_embeddings" for t in ("word", "token_type", "position")}
    names |= {f"bert/embeddings/LayerNorm/{x}" for x in ln}
    for i in range(num_layers):
        p = f"bert/encoder/layer_{i}"
        names |= {f"{p}/attention/self/{q}/{x}" for q in ("query", "key", "value") for x in dense}
        names |= {f"{p}/attention/output/dense/{x}" for x in dense}
        names |= {f"{p}/attention/output/LayerNorm/{x}" for x in ln}
        names |= {f"{p}/intermediate/dense/{x}" for x in dense}
        names |= {f"{p}/output/dense/{x}" for x in dense}
        names |= {f"{p}/output/LayerNorm/{x}" for x in ln}
    names |= {f"bert/pooler/dense/{x}" for x in dense}
    names |= {f"cls/predictions/transform/dense/{x}" for x in dense}
    names |= {f"cls/predictions/transform/LayerNorm/{x}" for x in ln}
    names |= {"cls/predictions/output_bias", "cls/seq_relationship/output_weights",
              "cls/seq_relationship/output_bias"}
    return names


def read_ckpt(prefix) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def tf1_dir(tmp_path_factory):
    """all-MiniLM-L6-v2 (HF) -> TF1 through the CLI a user runs."""
    src = minilm_dir()
    out = tmp_path_factory.mktemp("tf1") / "minilm_tf1"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "bert_jax.convert", str(src), str(out),
                        "--to", "tf1"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


@pytest.fixture(scope="module")
def batch(tf1_dir):
    """16 SST-2 dev sentences and 8 RTE dev pairs, tokenized with the vocab.txt
    the conversion copied next to the checkpoint."""
    from bert_jax.data.tokenizer import load_tokenizer
    out, _ = tf1_dir
    tok = load_tokenizer(out / "vocab.txt")
    sst = data_path("glue", "SST-2", "dev.tsv").read_text().splitlines()[1:17]
    rte = data_path("glue", "RTE", "dev.tsv").read_text().splitlines()[1:9]
    texts = [line.split("\t")[0] for line in sst] + [line.split("\t")[1] for line in rte]
    pairs = [None] * len(sst) + [line.split("\t")[2] for line in rte]
    encs = tok.encode_batch(texts, pairs, max_length=128)
    t = max(len(e) for e in encs)
    ids, types, mask = (np.zeros((len(encs), t), np.int32) for _ in range(3))
    for i, e in enumerate(encs):
        ids[i, :len(e)], types[i, :len(e)], mask[i, :len(e)] = e.ids, e.type_ids, 1
    return ids, types, mask


@pytest.fixture(scope="module")
def transformers_model(tf1_dir):
    """BertForPreTraining filled by transformers' TF1 loader. Every parameter
    starts as NaN, so one the loader skipped (it skips unknown names silently)
    cannot pass for a loaded one."""
    out, _ = tf1_dir
    config = transformers.BertConfig.from_json_file(str(out / "bert_config.json"))
    model = transformers.BertForPreTraining(config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    transformers.load_tf_weights_in_bert(model, config, str(out / "bert_model.ckpt"))
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert bad == [], f"not loaded from the TF1 checkpoint: {bad}"
    return model.eval()


@pytest.fixture(scope="module")
def transformers_outputs(transformers_model, batch):
    ids, types, mask = (torch.tensor(a, dtype=torch.long) for a in batch)
    with torch.no_grad():
        return transformers_model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                                  output_hidden_states=True)


@pytest.fixture(scope="module")
def ours_dir(tf1_dir, tmp_path_factory):
    out, _ = tf1_dir
    dst = tmp_path_factory.mktemp("ours") / "from_tf1"
    report = convert.convert(out, dst, "bert_jax")
    return dst, report


def test_cli_writes_google_layout(tf1_dir):
    out, stdout = tf1_dir
    assert "initialized fresh: seq_relationship/kernel" in stdout
    # Google's layout, plus the casing of the (uncased) vocabulary, which
    # Google's dirs leave to a flag, and the record that `convert` wrote it.
    assert sorted(p.name for p in out.iterdir()) == [
        "bert_config.json", "bert_jax_output.json", "bert_model.ckpt.data-00000-of-00001",
        "bert_model.ckpt.index", "special_tokens_map.json", "tokenizer_config.json",
        "vocab.txt"]
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    shapes = dict(tf.train.list_variables(str(out / "bert_model.ckpt")))
    assert set(shapes) == google_names(6)
    assert shapes["cls/seq_relationship/output_weights"] == [2, 384]  # [out, in]
    assert shapes["bert/encoder/layer_5/attention/self/query/kernel"] == [384, 384]
    assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == [384, 1536]
    assert shapes["cls/predictions/output_bias"] == [30522]
    reader = tf.train.load_checkpoint(str(out / "bert_model.ckpt"))
    assert set(reader.get_variable_to_dtype_map().values()) == {tf.float32}


def test_encoder_weights_equal_hf_source(tf1_dir):
    """The encoder tensors in the TF1 checkpoint are the HF weights bit for bit
    (kernel = weight.T), mapped by HF's own names."""
    from safetensors.numpy import load_file
    out, _ = tf1_dir
    hf = load_file(str(minilm_dir() / "model.safetensors"))
    ckpt = read_ckpt(out / "bert_model.ckpt")
    np.testing.assert_array_equal(ckpt["bert/embeddings/word_embeddings"],
                                  hf["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(ckpt["bert/encoder/layer_3/attention/self/value/kernel"],
                                  hf["encoder.layer.3.attention.self.value.weight"].T)
    np.testing.assert_array_equal(ckpt["bert/encoder/layer_2/attention/output/LayerNorm/gamma"],
                                  hf["encoder.layer.2.attention.output.LayerNorm.weight"])
    np.testing.assert_array_equal(ckpt["bert/pooler/dense/kernel"], hf["pooler.dense.weight"].T)


@pytest.fixture(scope="module")
def ours_outputs(ours_dir, batch):
    """Our model from the bert_jax dir converted from TF1: MLM/NSP logits and
    the hidden states (embeddings + each layer), one compilation."""
    import jax.numpy as jnp
    from flax import nnx

    dst, _ = ours_dir
    model, meta, missing = convert.load_model(dst)
    assert meta["head"] == "pretraining" and missing == []

    @nnx.jit
    def run(m, ids, types, mask):
        return m(ids, types, mask), m.bert(ids, types, mask, output_hidden_states=True)

    heads, enc = run(model, *(jnp.asarray(a) for a in batch))
    return {"mlm": np.asarray(heads["mlm_logits"]), "nsp": np.asarray(heads["nsp_logits"]),
            "hidden": [np.asarray(h) for h in enc["hidden_states"]]}


def test_transformers_tf_loader_and_ours_agree(ours_dir, ours_outputs, transformers_outputs,
                                               batch):
    """Must show: the TF1 checkpoint read by transformers' loader and by ours
    gives the same MLM / NSP logits and hidden states within 1e-5. The weights
    are bit-identical (next test); what differs is fp32 rounding in torch vs
    XLA, which the MLM head (LayerNorm, then a 384-term dot per vocab entry)
    grows to ~1.2e-5 absolute (each side alone is ~1e-5 from a float64 run of
    transformers), so MLM logits are held to 1e-5 of their scale (max |logit|,
    ~8 here)."""
    _, report = ours_dir
    assert not any(line.startswith(("initialized fresh", "ignored")) for line in report), report
    ref = transformers_outputs
    real = batch[2].astype(bool)
    ref_mlm = ref.prediction_logits.numpy()[real]
    mlm = np.abs(ours_outputs["mlm"][real] - ref_mlm)
    nsp = np.abs(ours_outputs["nsp"] - ref.seq_relationship_logits.numpy())
    assert len(ours_outputs["hidden"]) == len(ref.hidden_states) == 7
    hid = np.stack([np.abs(a - b.numpy())[real]
                    for a, b in zip(ours_outputs["hidden"], ref.hidden_states)])
    print(f"\nmax |diff| over {real.sum()} real tokens: mlm {mlm.max():.2e} "
          f"(max |logit| {np.abs(ref_mlm).max():.1f}), nsp {nsp.max():.2e}, "
          f"hidden states {hid.max():.2e}")
    assert mlm.max() <= TOL * max(1.0, np.abs(ref_mlm).max()), mlm.max()
    assert nsp.max() <= TOL and hid.max() <= TOL
    # Not vacuous: real text gives varied predictions from the random heads.
    assert np.std(ours_outputs["nsp"]) > 1e-3 and np.std(ref_mlm) > 0.1


def test_both_readers_give_identical_weights(ours_dir, transformers_model):
    """The parameters our reader produced equal, bit for bit, those transformers'
    TF loader put into BertForPreTraining (compared in HF layout)."""
    from bert_jax.convert import hf_format
    from bert_jax.convert.formats import load_flat
    dst, _ = ours_dir
    model = transformers_model
    theirs = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = hf_format.to_hf(load_flat(dst)[2])
    assert set(ours) == {k for k in theirs if not k.endswith(("position_ids", "decoder.weight",
                                                              "decoder.bias"))}
    for k, v in ours.items():
        np.testing.assert_array_equal(v, theirs[k], err_msg=k)


def test_tf1_ours_tf1_round_trip_bit_exact(tf1_dir, ours_dir, tmp_path):
    out, _ = tf1_dir
    dst, _ = ours_dir
    back = tmp_path / "back"
    convert.convert(dst, back, "tf1")
    a, b = read_ckpt(out / "bert_model.ckpt"), read_ckpt(back / "bert_model.ckpt")
    assert set(a) == set(b)
    for k, v in a.items():
        assert b[k].dtype == v.dtype and b[k].shape == v.shape, k
        np.testing.assert_array_equal(b[k], v, err_msg=k)
    assert (back / "vocab.txt").read_bytes() == (out / "vocab.txt").read_bytes()
    assert BertConfig.from_json_file(back / "bert_config.json") == BertConfig.from_json_file(
        out / "bert_config.json")


def test_run_classifier_checkpoint_converts_as_classifier(tf1_dir, tmp_path):
    """A checkpoint as run_classifier.py leaves it (bert/* plus root
    output_weights [num_labels, hidden] / output_bias, no cls/*), built from the
    real weights: convert reads it as a 3-label classifier with nothing fresh."""
    out, _ = tf1_dir
    ckpt = {k: v for k, v in read_ckpt(out / "bert_model.ckpt").items()
            if not k.startswith("cls/")}
    rng = np.random.default_rng(0)
    ckpt["output_weights"] = rng.standard_normal((3, 384)).astype(np.float32)
    ckpt["output_bias"] = rng.standard_normal(3).astype(np.float32)
    d = tmp_path / "run_classifier"
    d.mkdir()
    tf.compat.v1.train.Saver(var_list={k: tf.Variable(v) for k, v in ckpt.items()}).save(
        None, str(d / "model.ckpt-2000"), write_meta_graph=False)  # with a `checkpoint` file
    (d / "bert_config.json").write_bytes((out / "bert_config.json").read_bytes())
    report = []
    _, meta, flat = convert.read_any(d, report=report)
    assert meta["head"] == "classification" and meta["num_labels"] == 3 and report == []
    np.testing.assert_array_equal(flat["classifier/kernel"], ckpt["output_weights"].T)
    np.testing.assert_array_equal(flat["classifier/bias"], ckpt["output_bias"])
    np.testing.assert_array_equal(flat["bert/encoder/layers/4/value/kernel"].reshape(384, 384),
                                  ckpt["bert/encoder/layer_4/attention/self/value/kernel"])


# ---- small checkpoints: fine-tuned heads, training checkpoints, bad input --------------

TINY = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=24)


def tiny_params(head="pretraining", num_labels=0) -> dict[str, np.ndarray]:
    """Random canonical params for TINY, drawn with numpy: the model's shapes
    come from an abstract (eval_shape) model, so no JAX init compiles here."""
    rng = np.random.default_rng(len(head) + num_labels)
    return {k: rng.standard_normal(shape).astype(np.float32)
            for k, shape in tf1_format.model_shapes(TINY, head, num_labels).items()}


def tiny_tf1(tmp_path, head="pretraining", num_labels=0, extra=None):
    """A tiny random model written as TF1; `extra` variables are added with a
    plain Saver, as a training run's checkpoint would carry them."""
    flat = tiny_params(head, num_labels)
    d = tmp_path / f"tf1_{head}"
    d.mkdir()
    tf1_format.write_tf1_dir(d, TINY, flat)
    if extra:
        variables = {k: tf.Variable(v) for k, v in read_ckpt(d / "bert_model.ckpt").items()}
        variables.update({k: tf.Variable(v) for k, v in extra.items()})
        tf.compat.v1.train.Saver(var_list=variables).save(
            None, str(d / "bert_model.ckpt"), write_meta_graph=False, write_state=False)
    return d, flat


@pytest.mark.parametrize("head,num_labels,google", [
    ("classification", 3, ("output_weights", (3, 32))),      # run_classifier.py
    ("span", 0, ("cls/squad/output_weights", (2, 32))),      # run_squad.py
])
def test_finetuned_heads_round_trip(tmp_path, head, num_labels, google):
    d, flat = tiny_tf1(tmp_path, head, num_labels)
    kernel = "classifier/kernel" if head == "classification" else "qa_outputs/kernel"
    ckpt = read_ckpt(d / "bert_model.ckpt")
    assert ckpt[google[0]].shape == google[1]
    np.testing.assert_array_equal(ckpt[google[0]], flat[kernel].T)
    cfg, back, unexpected = tf1_format.read_tf1_dir(d)
    assert cfg == TINY and unexpected == [] and tf1_format.source_head(back) == head
    assert set(back) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_training_checkpoint_slots_skipped_unknown_reported(tmp_path):
    """A run_pretraining.py output dir: model.ckpt-N with a `checkpoint` state
    file, Adam slots and global_step, plus one foreign variable."""
    extra = {"bert/encoder/layer_0/output/dense/kernel/adam_m": np.zeros((48, 32), np.float32),
             "bert/encoder/layer_0/output/dense/kernel/adam_v": np.zeros((48, 32), np.float32),
             "global_step": np.int64(1000), "probe/weights": np.ones(3, np.float32)}
    d, flat = tiny_tf1(tmp_path, extra=extra)
    for f in d.glob("bert_model.ckpt.*"):
        f.rename(d / f.name.replace("bert_model.ckpt", "model.ckpt-1000"))
    (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1000"\n')
    _, back, unexpected = tf1_format.read_tf1_dir(d)
    assert unexpected == ["probe/weights"]
    assert set(back) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_bad_input_one_line_errors(tmp_path):
    d, _ = tiny_tf1(tmp_path)
    cfg_file = d / "bert_config.json"
    good = cfg_file.read_text()
    cfg_file.write_text(good.replace('"vocab_size": 97', '"vocab_size": 98'))
    with pytest.raises(ValueError) as e:
        tf1_format.read_tf1_dir(d)
    msg = str(e.value)
    assert "\n" not in msg and "bert/embeddings/word_embeddings" in msg
    assert "vocabulary size differs" in msg and str(cfg_file) in msg
    cfg_file.write_text(good.replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    with pytest.raises(ValueError, match=r"missing encoder variables \['bert/encoder/layer_2/"):
        tf1_format.read_tf1_dir(d)
    cfg_file.write_text(good)
    (d / "bert_model.ckpt.data-00000-of-00001").write_bytes(b"not a tensor bundle")
    with pytest.raises(ValueError, match=r"bert_model\.ckpt: cannot read (TF1 checkpoint|variable bert/)"):
        tf1_format.read_tf1_dir(d)


def test_without_tensorflow_one_line_hint(tf1_dir, tmp_path, monkeypatch):
    out, _ = tf1_dir
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    with pytest.raises(ValueError, match=r"needs tensorflow, which is not installed: pip "
                       r"install 'bert_jax\[tf\]'"):
        tf1_format.read_tf1_dir(out)
    with pytest.raises(ValueError, match=r"needs tensorflow, which is not installed: pip "
                       r"install 'bert_jax\[tf\]'"):
        tf1_format.write_tf1_dir(tmp_path, TINY, tiny_params())
    # The CLI prints the hint alone, no traceback.
    code = ("import sys; sys.modules['tensorflow'] = None; from absl import app; "
            "from bert_jax.convert import command; app.run(command.main)")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x"), "--to",
                        "bert_jax"], capture_output=True, text=True,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: reading or writing a TF1 checkpoint needs tensorflow, which is not installed: "
        "pip install 'bert_jax[tf]'")
    assert not (tmp_path / "x").exists()
