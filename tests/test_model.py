"""Model invariants: scan == loop, remat == no remat, fast attention == reference,
packed sequences == separate sequences, config JSON formats, sharding rules."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_jax.model import sharding
from bert_jax.model.config import SIZES, BertConfig
from bert_jax.model.heads import build_model
from bert_jax.model.params import assign_params, flat_params

CFG = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64)
# 2 layers suffice for scan-vs-loop (a carry between layers) and keep compiles short.


def _inputs(b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(5, 97, (b, t)), jnp.int32)
    types = jnp.asarray(np.arange(t)[None].repeat(b, 0) >= t // 2, jnp.int32)
    mask = np.ones((b, t), np.int32)
    mask[-1, t - 4:] = 0
    return ids, types, jnp.asarray(mask)


def _run(model, *args, **kw):
    return nnx.jit(lambda m, *a: m(*a, **kw))(model, *args)


def test_scan_matches_layer_loop_and_params_transfer():
    loop = build_model(CFG, "pretraining", seed=1)
    scan = build_model(CFG.replace(scan_layers=True), "pretraining", seed=2)
    assign_params(scan, flat_params(loop), strict=True)
    a = _run(loop, *_inputs())
    b = _run(scan, *_inputs())
    np.testing.assert_allclose(a["mlm_logits"], b["mlm_logits"], atol=2e-5)
    np.testing.assert_allclose(a["nsp_logits"], b["nsp_logits"], atol=2e-5)
    # Canonical names are identical whichever layout the model uses.
    assert flat_params(scan).keys() == flat_params(loop).keys()


def test_dropout_same_keys_scan_and_loop():
    loop = build_model(CFG, "encoder", seed=1)
    scan = build_model(CFG.replace(scan_layers=True), "encoder", seed=3)
    assign_params(scan, flat_params(loop), strict=True)
    key = jax.random.key(7)
    a = _run(loop, *_inputs(), dropout_rng=key)["last_hidden_state"]
    b = _run(scan, *_inputs(), dropout_rng=key)["last_hidden_state"]
    c = _run(loop, *_inputs())["last_hidden_state"]
    np.testing.assert_allclose(a, b, atol=2e-5)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # dropout did something


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_same_gradients(policy):
    base = build_model(CFG, "pretraining", seed=4)
    remat = build_model(CFG.replace(remat_policy=policy), "pretraining", seed=5)
    assign_params(remat, flat_params(base), strict=True)

    def grads(model):
        def loss(m):
            return jnp.sum(m(*_inputs())["mlm_logits"] ** 2)
        return nnx.jit(nnx.grad(loss))(model)
    ga = flat_params(grads(base))
    gb = flat_params(grads(remat))
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_xla_attention_matches_reference():
    ref = build_model(CFG, "encoder", seed=6)
    fast = build_model(CFG.replace(attention_impl="xla"), "encoder", seed=7)
    assign_params(fast, flat_params(ref), strict=True)
    ids, types, mask = _inputs()
    a = _run(ref, ids, types, mask)
    b = _run(fast, ids, types, mask)
    m = np.asarray(mask)[..., None].astype(bool)
    np.testing.assert_allclose(np.where(m, a["last_hidden_state"], 0),
                               np.where(m, b["last_hidden_state"], 0), atol=2e-5)


def test_packed_sequences_equal_separate_ones():
    """Two examples packed in one row (segment_ids, restarted positions) give the
    same states as each run alone: attention never crosses examples."""
    model = build_model(CFG, "encoder", seed=8)
    rng = np.random.default_rng(1)
    x1, x2 = rng.integers(5, 97, 7), rng.integers(5, 97, 5)
    packed = jnp.asarray(np.concatenate([x1, x2, [0, 0]])[None], jnp.int32)
    seg = jnp.asarray([[1] * 7 + [2] * 5 + [0, 0]], jnp.int32)
    pos = jnp.asarray([list(range(7)) + list(range(5)) + [0, 0]], jnp.int32)
    mask = (seg > 0).astype(jnp.int32)
    out = _run(model, packed, None, mask, segment_ids=seg, position_ids=pos)
    h = np.asarray(out["last_hidden_state"][0])
    a = np.asarray(_run(model, jnp.asarray(x1[None], jnp.int32))["last_hidden_state"][0])
    b = np.asarray(_run(model, jnp.asarray(x2[None], jnp.int32))["last_hidden_state"][0])
    np.testing.assert_allclose(h[:7], a, atol=2e-5)
    np.testing.assert_allclose(h[7:12], b, atol=2e-5)


def test_bf16_compute_keeps_fp32_params_and_logits():
    model = build_model(CFG.replace(dtype="bfloat16"), "pretraining", seed=9)
    assert all(v.dtype == np.float32 for v in flat_params(model).values())
    out = _run(model, *_inputs())
    assert out["mlm_logits"].dtype == jnp.float32 and out["nsp_logits"].dtype == jnp.float32


def test_config_json_formats_round_trip(tmp_path):
    cfg = BertConfig.named("mini", vocab_size=1234, hidden_act="gelu_new")
    google = tmp_path / "bert_config.json"
    google.write_text(json.dumps(cfg.to_google_dict()))
    assert BertConfig.from_json_file(google) == cfg
    hf = cfg.to_hf_dict()
    assert hf["model_type"] == "bert" and hf["hidden_act"] == "gelu_new"
    assert BertConfig.from_dict(hf) == cfg
    import transformers
    t = transformers.BertConfig(**hf)
    assert BertConfig.from_dict(t.to_dict()) == cfg


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"hidden_size": "768"}))
    with pytest.raises(ValueError, match="hidden_size"):
        BertConfig.from_json_file(bad)
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"c\.json: invalid JSON at line 1"):
        BertConfig.from_json_file(bad)


def test_named_sizes_match_turc_et_al():
    assert {k: (v["num_hidden_layers"], v["hidden_size"]) for k, v in SIZES.items()} == {
        "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
        "base": (12, 768), "large": (24, 1024)}
    base = BertConfig.named("base")
    assert (base.num_attention_heads, base.intermediate_size) == (12, 3072)
    large = BertConfig.named("large")
    assert (large.num_attention_heads, large.intermediate_size) == (16, 4096)


def test_every_param_has_logical_axes_and_rules_map_them():
    model = build_model(CFG.replace(scan_layers=True), "pretraining")
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None, path
    spec = sharding.logical_to_spec(("embed", "heads", "kv"))
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("batch", "length", "act_embed")) == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    specs = sharding.state_specs(state)
    # Scanned layers get a leading replicated 'layers' axis.
    q = specs["bert"]["encoder"]["layers"]["query"]["kernel"]
    assert q == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)


def test_mesh_shapes_and_errors():
    assert dict(sharding.make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh((3, 2, 1))
    with pytest.raises(ValueError, match="does not divide"):
        sharding.make_mesh((-1, 3, 1))
