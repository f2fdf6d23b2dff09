"""Losses and metric sums, pure functions in fp32.

Each returns *sums* plus a denominator, never means: the train step divides by
the global denominator, so gradient accumulation over micro-batches and any
sharding of the batch give exactly the loss of the whole batch.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def mlm_sums(logits, ids, weights):
    """logits [B,P,V], ids/weights [B,P] -> loss, correct and weight sums."""
    w = weights.astype(jnp.float32)
    loss = _ce(logits, ids)
    correct = (jnp.argmax(logits, -1) == ids).astype(jnp.float32)
    return {"mlm_loss": jnp.sum(loss * w), "mlm_correct": jnp.sum(correct * w),
            "mlm_weight": jnp.sum(w)}


def dense_mlm_sums(logits, labels):
    """Dense labels [B,T] with -100 where nothing is predicted (HF convention)."""
    w = (labels != -100)
    return mlm_sums(logits, jnp.where(w, labels, 0), w)


def nsp_sums(logits, labels, weights=None):
    w = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    loss = _ce(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"nsp_loss": jnp.sum(loss * w), "nsp_correct": jnp.sum(correct * w),
            "nsp_weight": jnp.sum(w)}


def classification_sums(logits, labels, weights):
    w = weights.astype(jnp.float32)
    loss = _ce(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "weight": jnp.sum(w)}


def regression_sums(preds, labels, weights):
    w = weights.astype(jnp.float32)
    err = jnp.square(preds.reshape(labels.shape).astype(jnp.float32) - labels)
    return {"loss": jnp.sum(err * w), "weight": jnp.sum(w)}


def span_sums(start_logits, end_logits, start_positions, end_positions, weights):
    """Google run_squad: mean of start and end cross-entropies."""
    w = weights.astype(jnp.float32)
    loss = 0.5 * (_ce(start_logits, start_positions) + _ce(end_logits, end_positions))
    return {"loss": jnp.sum(loss * w), "weight": jnp.sum(w)}


def tagging_sums(logits, label_ids, weights):
    """Token classification with -100 = ignored (non-first word pieces etc.)."""
    valid = (label_ids != -100) & (weights[:, None] > 0)
    w = valid.astype(jnp.float32)
    labels = jnp.where(valid, label_ids, 0)
    loss = _ce(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "weight": jnp.sum(w)}
