"""Task heads on top of BertModel: pretraining (MLM + NSP), sequence
classification / regression, span QA and token classification.

All logits come out in fp32 whatever the compute dtype. With
cfg.architecture="modernbert" each head is ModernBERT's (transformers'
ModernBertFor*): MLM only (no NSP), and task classifiers on the prediction head
(dense, activation, norm) over the pooled ([CLS] or mean) or per-token states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.model.config import BertConfig
from bert_jax.model.encoder import BertModel
from bert_jax.model.layers import Dense, LayerNorm, activation, dropout, gather_positions


def _modern_head(cfg: BertConfig, rngs: nnx.Rngs):
    """ModernBERT's prediction head under a task classifier; None for BERT."""
    if not cfg.modern:
        return None
    from bert_jax.model.modern import ModernHead
    return ModernHead(cfg, rngs=rngs)


class BertForPreTraining(nnx.Module):
    """Google's `cls/predictions` (transform + tied decoder + output_bias) and
    `cls/seq_relationship` (NSP on the pooled output).

    With masked_positions [B,P] the MLM head runs only there, as Google's BERT
    does with max_predictions_per_seq: ~7x less decoder work at 15% masking.
    Without, it runs at every position (dense labels, fill-mask).
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.cfg = cfg
        self.bert = BertModel(cfg, rngs=rngs)
        bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)),
                         logical_axes=("vocab",))
        if cfg.modern:
            # ModernBertForMaskedLM: head (dense, act, norm), tied decoder with
            # its bias (decoder_bias) and no NSP.
            from bert_jax.model.modern import ModernHead
            self.head = ModernHead(cfg, rngs=rngs)
            self.output_bias = bias if cfg.decoder_bias else None
            return
        self.transform = Dense((h,), (h,), ("embed",), ("mlp",), cfg, rngs=rngs)
        self.transform_LayerNorm = LayerNorm(h, cfg)
        self.output_bias = bias
        self.seq_relationship = Dense((h,), (2,), ("embed",), (None,), cfg, rngs=rngs)

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        if self.cfg.modern:
            logits = self.bert.embeddings.word_embeddings.attend(self.head(hidden))
            if self.output_bias is None:
                return logits
            return logits + self.output_bias.value.astype(jnp.float32)
        x = activation(self.cfg.hidden_act)(self.transform(hidden))
        x = self.transform_LayerNorm(x)
        logits = self.bert.embeddings.word_embeddings.attend(x)
        return logits + self.output_bias.value.astype(jnp.float32)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 masked_positions=None, segment_ids=None, position_ids=None,
                 nsp_positions=None, dropout_rng=None):
        """nsp_positions [B,K]: packed rows, NSP on each instance's [CLS] ->
        nsp_logits [B,K,2] (else [B,2] from position 0)."""
        out = self.bert(input_ids, token_type_ids, attention_mask, segment_ids=segment_ids,
                        position_ids=position_ids, dropout_rng=dropout_rng)
        hidden = out["last_hidden_state"]
        if self.cfg.modern:
            if masked_positions is not None:
                hidden = gather_positions(hidden, masked_positions)
            return {"mlm_logits": self.mlm_logits(hidden)}
        pooled = (out["pooled"] if nsp_positions is None else
                  self.bert.pooler.pool(gather_positions(hidden, nsp_positions)))
        if masked_positions is not None:
            hidden = gather_positions(hidden, masked_positions)
        return {
            "mlm_logits": self.mlm_logits(hidden),
            "nsp_logits": self.seq_relationship(pooled).astype(jnp.float32),
        }


class BertForSequenceClassification(nnx.Module):
    """Dropout + dense on the pooled [CLS]; num_labels=1 is regression (STS-B)."""

    def __init__(self, cfg: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.num_labels = num_labels
        self.bert = BertModel(cfg, rngs=rngs)
        self.head = _modern_head(cfg, rngs)
        self.classifier = Dense((cfg.hidden_size,), (num_labels,), ("embed",), (None,), cfg,
                                rngs=rngs)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 segment_ids=None, position_ids=None, cls_positions=None, dropout_rng=None):
        """cls_positions [B,K]: packed rows, one example per [CLS] -> logits [B,K,C]."""
        head_rng = None
        if dropout_rng is not None:
            dropout_rng, head_rng = jax.random.split(dropout_rng)
        out = self.bert(input_ids, token_type_ids, attention_mask, segment_ids=segment_ids,
                        position_ids=position_ids, dropout_rng=dropout_rng)
        if self.cfg.modern:
            from bert_jax.model.modern import pool
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            pooled = self.head(pool(self.cfg, out["last_hidden_state"], attention_mask,
                                    segment_ids, cls_positions))
        else:
            pooled = (out["pooled"] if cls_positions is None else self.bert.pooler.pool(
                gather_positions(out["last_hidden_state"], cls_positions)))
        pooled = dropout(pooled, self.cfg.head_dropout, head_rng)
        return {"logits": self.classifier(pooled).astype(jnp.float32)}


class BertForQuestionAnswering(nnx.Module):
    """Start / end logits per token (Google's run_squad `cls/squad/output_weights`)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.head = _modern_head(cfg, rngs)
        self.qa_outputs = Dense((cfg.hidden_size,), (2,), ("embed",), (None,), cfg, rngs=rngs)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 segment_ids=None, position_ids=None, dropout_rng=None):
        head_rng = None
        if dropout_rng is not None and self.head is not None:
            dropout_rng, head_rng = jax.random.split(dropout_rng)
        out = self.bert(input_ids, token_type_ids, attention_mask, segment_ids=segment_ids,
                        position_ids=position_ids, dropout_rng=dropout_rng)
        h = out["last_hidden_state"]
        if self.head is not None:  # ModernBertForQuestionAnswering: head, dropout, classifier
            h = dropout(self.head(h), self.cfg.head_dropout, head_rng)
        logits = self.qa_outputs(h).astype(jnp.float32)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


class BertForTokenClassification(nnx.Module):
    def __init__(self, cfg: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.num_labels = num_labels
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.head = _modern_head(cfg, rngs)
        self.classifier = Dense((cfg.hidden_size,), (num_labels,), ("embed",), (None,), cfg,
                                rngs=rngs)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 segment_ids=None, position_ids=None, dropout_rng=None):
        head_rng = None
        if dropout_rng is not None:
            dropout_rng, head_rng = jax.random.split(dropout_rng)
        out = self.bert(input_ids, token_type_ids, attention_mask, segment_ids=segment_ids,
                        position_ids=position_ids, dropout_rng=dropout_rng)
        h = out["last_hidden_state"]
        if self.head is not None:
            h = self.head(h)
        h = dropout(h, self.cfg.head_dropout, head_rng)
        return {"logits": self.classifier(h).astype(jnp.float32)}


class BertEncoderModel(nnx.Module):
    """The bare encoder + pooler (HF `BertModel`), under the same `bert/` names as
    the task models so every checkpoint shares one parameter layout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bert = BertModel(cfg, rngs=rngs)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, **kw):
        return self.bert(input_ids, token_type_ids, attention_mask, **kw)


HEADS = {
    "pretraining": BertForPreTraining,
    "classification": BertForSequenceClassification,
    "regression": BertForSequenceClassification,
    "span": BertForQuestionAnswering,
    "tagging": BertForTokenClassification,
    "encoder": BertEncoderModel,
}


def build_model(cfg: BertConfig, head: str = "pretraining", num_labels: int = 0,
                seed: int | jax.Array = 0) -> nnx.Module:
    """`seed` is an int or a PRNG key (inside jit, for sharded init)."""
    rngs = nnx.Rngs(params=seed)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEADS)}")
    if head in ("classification", "tagging"):
        return HEADS[head](cfg, num_labels, rngs=rngs)
    if head == "regression":
        return HEADS[head](cfg, 1, rngs=rngs)
    return HEADS[head](cfg, rngs=rngs)


def abstract_model(cfg: BertConfig, head: str = "pretraining", num_labels: int = 0) -> nnx.Module:
    """The unrolled `head` model with ShapeDtypeStruct leaves: no initializer
    runs (an eager build runs every one op by op, seconds of start-up)."""
    return nnx.eval_shape(lambda: build_model(cfg.replace(scan_layers=False), head, num_labels))


def restore_model(cfg: BertConfig, head: str, num_labels: int, flat: dict, source: str):
    """(graphdef, state) of the `head` model filled from canonical `flat`, built
    abstractly. A parameter `flat` lacks or has in another shape is a ValueError
    naming `source`."""
    from bert_jax.model.params import flat_into_pure, pure_to_flat

    graphdef, state = nnx.split(abstract_model(cfg, head, num_labels))
    pure = nnx.to_pure_dict(state)
    want = pure_to_flat(pure)
    missing = sorted(set(want) - set(flat))
    if missing:
        raise ValueError(f"{source}: checkpoint lacks {len(missing)} parameters of the "
                         f"{head} model, e.g. {missing[0]}")
    for name, abs_value in want.items():
        if tuple(flat[name].shape) != tuple(abs_value.shape):
            raise ValueError(f"{source}: parameter {name} has shape {tuple(flat[name].shape)}, "
                             f"the model expects {tuple(abs_value.shape)}")
    filled = flat_into_pure(pure, {k: jnp.asarray(v, want[k].dtype) for k, v in flat.items()
                                   if k in want}, scanned=False)
    nnx.replace_by_pure_dict(state, filled)
    return graphdef, state
