"""Task heads on top of BertModel: pretraining (MLM + NSP), sequence
classification / regression, span QA and token classification.

All logits come out in fp32 whatever the compute dtype. With
cfg.architecture="modernbert" each head is ModernBERT's (transformers'
ModernBertFor*): MLM only (no NSP), and task classifiers on the prediction head
(dense, activation, norm) over the pooled ([CLS] or mean) or per-token states.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.model import losses
from bert_jax.model.config import BertConfig
from bert_jax.model.encoder import BertModel
from bert_jax.model.layers import Dense, LayerNorm, activation, dropout, gather_positions
from bert_jax.model.modern import ModernHead, pool
from bert_jax.model.params import flat_into_pure, pure_to_flat


def _modern_head(cfg: BertConfig, rngs: nnx.Rngs):
    """ModernBERT's prediction head under a task classifier; None for BERT."""
    if not cfg.modern:
        return None
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


def _logits(out, batch):
    return out["logits"]


@dataclasses.dataclass(frozen=True)
class Head:
    """What is on top of the encoder, as one object: its model (parameters and
    outputs), the labels a training batch carries for it and its loss, what
    `predict` prints, and its name in HF and TF1 checkpoints. Code asks the
    head instead of comparing head names; a new head is one more `Head`.

    name:        stored in model dirs (meta "head") and the convert --head flag
    model:       the nnx module class (built by `build`)
    num_labels:  fixed output width (regression 1, span 2), None: the task's
    outputs:     keys of the model's output dict
    per_token:   one prediction per token (span, tagging): flops and batches
    task:        a fine-tuning head (not pretraining / the bare encoder)
    hf_class:    transformers' class name after `Bert` / `ModernBert`
    problem_type: HF config's problem_type (regression) or None
    labels:      {batch key: (per-token?, dtype)} that training batches carry
    """
    name: str
    model: type
    num_labels: int | None = None
    outputs: tuple[str, ...] = ("logits",)
    per_token: bool = False
    task: bool = True
    hf_class: str = ""
    problem_type: str | None = None
    labels: tuple[tuple[str, bool, str], ...] = ()
    named_labels: bool = False   # label_names map output ids (HF id2label)
    sized: bool = False          # the model class takes num_labels
    loss: Callable[[dict, dict], dict] | None = None   # (outputs, batch) -> sums
    printer: Callable[[dict, str], str] = lambda r, line: json.dumps(r)

    def width(self, num_labels: int) -> int:
        return self.num_labels if self.num_labels is not None else num_labels

    def build(self, cfg: BertConfig, num_labels: int, rngs: nnx.Rngs) -> nnx.Module:
        if self.sized:
            return self.model(cfg, self.width(num_labels), rngs=rngs)
        return self.model(cfg, rngs=rngs)

    def label_spec(self, batch: int, length: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """{key: (shape, dtype)} of the labels in a [batch, length] training batch."""
        return {k: ((batch, length) if tok else (batch,), dt) for k, tok, dt in self.labels}

    def loss_sums(self, out: dict, batch: dict) -> dict:
        """Loss (and metric) sums of a batch from the model outputs."""
        if self.loss is None:
            raise ValueError(f"the {self.name} head is not fine-tuned")
        return self.loss(out, batch)

    def loss_count(self, batch: dict) -> jax.Array:
        """What the loss sums are divided by: labelled tokens (per-token
        labels) or real examples."""
        per_token = [k for k, tok, _ in self.labels if tok]
        if per_token:
            valid = (batch[per_token[0]] != -100) & (_row_weights(batch)[:, None] > 0)
            return jnp.sum(valid).astype(jnp.float32)
        return jnp.sum(batch["example_weights"]).astype(jnp.float32)

    def format(self, record: dict, line: str) -> str:
        """The plain-text line(s) `predict` prints for one record of `line`."""
        return self.printer(record, line)


def _row_weights(batch):
    """float [B]: a row's weight for per-token losses; packed rows carry one
    weight per example slot [B, K] (0 on empty slots), any of which makes the
    row real (its padding tokens are already -100)."""
    w = batch["example_weights"]
    return w if w.ndim == 1 else jnp.max(w, axis=-1)


def _classification_loss(out, batch):
    return losses.classification_sums(out["logits"], batch["labels"], batch["example_weights"])


def _regression_loss(out, batch):
    return losses.regression_sums(out["logits"][..., 0], batch["labels"],
                                  batch["example_weights"])


def _span_loss(out, batch):
    return losses.span_sums(out["start_logits"], out["end_logits"], batch["start_positions"],
                            batch["end_positions"], batch["example_weights"])


def _tagging_loss(out, batch):
    return losses.tagging_sums(out["logits"], batch["label_ids"], _row_weights(batch))


def _print_label(r, line):
    return f"{r['label']}\t{r['score']:.4f}\t{line}"


def _print_score(r, line):
    return f"{r['score']:.4f}\t{line}"


def _print_answer(r, line):
    return f"{r['id']}\t{r['answer']}\t{r['score']:.3f}\t[{r['start']}, {r['end']})"


def _print_entities(r, line):
    return "\n".join([line] + [f"  {e['entity_group']}\t{e['word']}\t{e['score']:.3f}\t"
                                f"[{e['start']}, {e['end']})" for e in r["entities"]])


_HEAD_LIST = (
    Head("pretraining", BertForPreTraining, outputs=("mlm_logits", "nsp_logits"), task=False,
         hf_class="ForPreTraining"),
    Head("classification", BertForSequenceClassification, hf_class="ForSequenceClassification",
         labels=(("labels", False, "int32"),), named_labels=True, sized=True,
         loss=_classification_loss, printer=_print_label),
    Head("regression", BertForSequenceClassification, num_labels=1,
         hf_class="ForSequenceClassification", problem_type="regression", sized=True,
         labels=(("labels", False, "float32"),), loss=_regression_loss,
         printer=_print_score),
    Head("span", BertForQuestionAnswering, num_labels=2, outputs=("start_logits", "end_logits"),
         per_token=True, hf_class="ForQuestionAnswering",
         labels=(("start_positions", False, "int32"), ("end_positions", False, "int32")),
         loss=_span_loss, printer=_print_answer),
    Head("tagging", BertForTokenClassification, per_token=True,
         hf_class="ForTokenClassification", labels=(("label_ids", True, "int32"),),
         named_labels=True, sized=True, loss=_tagging_loss, printer=_print_entities),
    Head("encoder", BertEncoderModel, outputs=("last_hidden_state", "pooled"), task=False,
         hf_class="Model"),
)
HEADS: dict[str, Head] = {h.name: h for h in _HEAD_LIST}


def get_head(name: str) -> Head:
    """The `Head` called `name`; an unknown name is a ValueError listing them."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name]


def build_model(cfg: BertConfig, head: str = "pretraining", num_labels: int = 0,
                seed: int | jax.Array = 0) -> nnx.Module:
    """`seed` is an int or a PRNG key (inside jit, for sharded init)."""
    return get_head(head).build(cfg, num_labels, nnx.Rngs(params=seed))


def abstract_model(cfg: BertConfig, head: str = "pretraining", num_labels: int = 0) -> nnx.Module:
    """The unrolled `head` model with ShapeDtypeStruct leaves: no initializer
    runs (an eager build runs every one op by op, seconds of start-up)."""
    return nnx.eval_shape(lambda: build_model(cfg.replace(scan_layers=False), head, num_labels))


def restore_model(cfg: BertConfig, head: str, num_labels: int, flat: dict, source: str):
    """(graphdef, state) of the `head` model filled from canonical `flat`, built
    abstractly. A parameter `flat` lacks or has in another shape is a ValueError
    naming `source`."""

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


# ---- What fine-tuning takes from a checkpoint, per architecture -----------------------

# Parameters a task model starts from (the rest start fresh): the encoder, and
# for ModernBERT its prediction head (dense, activation, norm), which
# transformers' ModernBertFor{Sequence,Token}Classification / QuestionAnswering
# keep from ModernBertForMaskedLM.
ENCODER_PREFIXES = {"bert": ("bert/",), "modernbert": ("bert/", "head/")}

# config.model's dropout rates, named as BERT (and HF's from_pretrained kwargs)
# name them, -> the fields of each architecture they set. ModernBERT drops out
# after the embeddings and in the MLP (hidden), and on attention (probs).
DROPOUT_FIELDS = {
    "bert": {"hidden_dropout_prob": ("hidden_dropout_prob",),
             "attention_probs_dropout_prob": ("attention_probs_dropout_prob",)},
    "modernbert": {"hidden_dropout_prob": ("embedding_dropout", "mlp_dropout"),
                   "attention_probs_dropout_prob": ("attention_dropout",)},
}


def encoder_params(cfg: BertConfig, flat: dict) -> dict:
    """The parameters of `flat` (canonical names) a fine-tuned model starts from."""
    keep = ENCODER_PREFIXES[cfg.architecture]
    return {k: v for k, v in flat.items() if k.startswith(keep)}


def dropout_overrides(cfg: BertConfig, rates: dict[str, float]) -> dict[str, float]:
    """BertConfig fields of `cfg`'s architecture for the BERT-named `rates`."""
    table = DROPOUT_FIELDS[cfg.architecture]
    return {field: v for name, v in rates.items() for field in table[name]}
