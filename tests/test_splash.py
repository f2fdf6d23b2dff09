"""Pallas splash attention (model.attention_impl='splash') in interpret mode on
CPU equals the reference einsum path: forward and gradients, padded and
packed rows, alone and sharded over a (data, fsdp, tensor) mesh in shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import sharding
from bert_jax.model.attention import attention_mask, dot_product_attention
from bert_jax.model.config import BertConfig

B, S, N, H = 4, 128, 2, 64


def _inputs():
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(B, S, N, H)), jnp.float32) for _ in range(3))
    am = np.ones((B, S), np.int32)
    am[1, 100:] = 0   # padded rows of different lengths
    am[2, 7:] = 0
    am[3, 120:] = 0
    seg = np.zeros((B, S), np.int32)  # packed rows: three examples, then padding
    seg[:, :60], seg[:, 60:90], seg[:, 90:] = 1, 2, 3
    seg[am == 0] = 0
    return q, k, v, jnp.asarray(am), jnp.asarray(seg)


def _loss(impl, am, seg):
    # Only real query positions enter a loss (padding outputs are never read).
    def f(q, k, v):
        out = dot_product_attention(q, k, v, attention_mask(am, seg), impl=impl)
        return jnp.sum(jnp.where(am[:, :, None, None] > 0, out, 0.0) ** 2)
    return jax.value_and_grad(f, argnums=(0, 1, 2))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_splash_equals_reference(packed, mesh_shape):
    q, k, v, am, seg = _inputs()
    seg = seg if packed else None
    ref_val, ref_grads = _loss("reference", am, seg)(q, k, v)
    if mesh_shape is None:
        val, grads = jax.jit(_loss("splash", am, seg))(q, k, v)
    else:
        mesh = sharding.make_mesh(mesh_shape)
        with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
            val, grads = jax.jit(_loss("splash", am, seg))(q, k, v)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-5)


def test_splash_model_outputs_equal_reference():
    from bert_jax.model.heads import build_model
    cfg = BertConfig.named("tiny", vocab_size=300, attention_probs_dropout_prob=0.0)
    ids = np.random.default_rng(1).integers(5, 300, (2, S)).astype(np.int32)
    mask = np.ones((2, S), np.int32)
    mask[1, 50:] = 0
    ref = build_model(cfg, "pretraining", seed=0)(ids, None, mask)
    spl = build_model(cfg.replace(attention_impl="splash"), "pretraining", seed=0)(ids, None, mask)
    np.testing.assert_allclose(spl["nsp_logits"], ref["nsp_logits"], atol=1e-4)
    np.testing.assert_allclose(spl["mlm_logits"][0], ref["mlm_logits"][0], atol=1e-4)
    np.testing.assert_allclose(spl["mlm_logits"][1, :50], ref["mlm_logits"][1, :50], atol=1e-4)


def test_splash_refuses_attention_dropout():
    with pytest.raises(ValueError, match="attention_probs_dropout_prob=0"):
        BertConfig.named("tiny", attention_impl="splash")
