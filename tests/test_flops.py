"""flops.train_flops_per_sequence against independent counts: XLA's own cost
analysis of our forward + backward, BERT-base worked out by hand, and the
kernels the model actually holds."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from bert_jax.model import flops
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import BertForPreTraining
from bert_jax.train.pretrain_job import pretraining_objective

SEQ, MASKED, BATCH = 128, 20, 2
# Wide enough that matmuls dominate: XLA also counts every elementwise op
# (LayerNorm, GELU, softmax, Adam-free loss), which the formula leaves out.
SMALL = BertConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=1024)


def _xla_flops(cfg: BertConfig, gathered: bool) -> float:
    """FLOPs XLA's HloCostAnalysis counts for one gradient of the pretraining
    loss (deterministic, so no RNG bit-twiddling is counted), per sequence.
    The lowered module is analysed; nothing is compiled."""
    objective = pretraining_objective(nsp=True, gathered=gathered)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: BertForPreTraining(cfg,
                                                                           rngs=nnx.Rngs(0))),
                                 nnx.Param)
    spec = jax.ShapeDtypeStruct
    batch = {"input_ids": spec((BATCH, SEQ), jnp.int32),
             "token_type_ids": spec((BATCH, SEQ), jnp.int32),
             "attention_mask": spec((BATCH, SEQ), jnp.int32),
             "masked_positions": spec((BATCH, MASKED), jnp.int32),
             "masked_ids": spec((BATCH, MASKED), jnp.int32),
             "masked_weights": spec((BATCH, MASKED), jnp.float32),
             "mlm_labels": spec((BATCH, SEQ), jnp.int32),
             "nsp_labels": spec((BATCH,), jnp.int32)}

    def loss(p, b):
        return objective.loss(objective.sums(nnx.merge(graphdef, p), b, None),
                              objective.totals(b))
    cost = jax.jit(jax.grad(loss)).lower(params, batch).cost_analysis()
    return cost["flops"] / BATCH


@pytest.fixture(scope="module")
def xla_counts():
    return {g: _xla_flops(SMALL, g) for g in (True, False)}


@pytest.mark.parametrize("gathered", [True, False], ids=["gathered", "dense"])
def test_formula_matches_xla_cost_analysis(xla_counts, gathered):
    ours = flops.train_flops_per_sequence(SMALL, SEQ, MASKED if gathered else SEQ)
    xla = xla_counts[gathered]
    # The formula counts matmuls only, so it must not exceed XLA's count, and the
    # elementwise remainder is a few percent here. Dropping the attention term
    # (7% of the total) or counting the MLM head at the wrong positions fails.
    assert ours <= xla <= 1.04 * ours, (ours, xla, xla / ours)


def test_mlm_head_term_matches_xla(xla_counts):
    """The gathered-vs-dense difference isolates the MLM head (transform + tied
    decoder) at T - M positions."""
    ours = (flops.train_flops_per_sequence(SMALL, SEQ, SEQ)
            - flops.train_flops_per_sequence(SMALL, SEQ, MASKED))
    xla = xla_counts[False] - xla_counts[True]
    assert ours <= xla <= 1.03 * ours, (ours, xla)


def test_bert_base_by_hand():
    """BERT-base (L=12, H=768, I=3072, V=30522) at T=128 with M=20 predictions,
    worked out on paper:
      encoder matmuls  6 * 128 * 12 * (4 * 768^2 + 2 * 768 * 3072) = 65,229,815,808
      attention        12 * 12 * 128^2 * 768                        =  1,811,939,328
      MLM head         6 * 20 * (768^2 + 768 * 30522)               =  2,883,686,400
      pooler + NSP     6 * (768^2 + 2 * 768)                        =      3,548,160
    """
    cfg = BertConfig.named("base")
    assert flops.train_flops_per_sequence(cfg, SEQ, MASKED) == 69_928_989_696
    # Dense head: the MLM term at all 128 positions instead of 20.
    assert flops.train_flops_per_sequence(cfg, SEQ, SEQ) == (
        69_928_989_696 + 6 * (SEQ - MASKED) * (768 ** 2 + 768 * 30522))


def test_bert_base_matrices_are_the_models():
    """The 6 x weights x tokens terms cover exactly the matrices our BERT-base
    multiplies by: every kernel (and the tied decoder table), counted from the
    model itself; the encoder's are the 85M of the usual '110M parameters'."""
    cfg = BertConfig.named("base")
    model = nnx.eval_shape(lambda: BertForPreTraining(cfg, rngs=nnx.Rngs(0)))
    sizes = {"/".join(map(str, path)): v.value.size
             for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
             if path[-1] == "kernel"}
    encoder = sum(n for k, n in sizes.items() if k.startswith("bert/encoder/"))
    pooler_nsp = sizes["bert/pooler/dense/kernel"] + sizes["seq_relationship/kernel"]
    head = sizes["transform/kernel"] + cfg.vocab_size * cfg.hidden_size
    assert encoder + pooler_nsp + sizes["transform/kernel"] == sum(sizes.values())
    assert encoder == 84_934_656
    attention = 12 * cfg.num_hidden_layers * SEQ * cfg.hidden_size
    expected = 6 * SEQ * encoder + SEQ * attention + 6 * MASKED * head + 6 * pooler_nsp
    assert flops.train_flops_per_sequence(cfg, SEQ, MASKED) == expected
