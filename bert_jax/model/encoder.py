"""BERT encoder in Flax NNX: embeddings, post-LN transformer layers, pooler.

Attribute names follow Google's TF1 checkpoint (`bert/embeddings/word_embeddings`,
`layer_N/attention/self/query`, ...) so `convert.py` is a rename table. Every
parameter carries `logical_axes` metadata for `sharding.py`. Dropout takes an
explicit key (`dropout_rng`; None = deterministic) so the train step stays a
pure function of (state, batch, rng).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.model import sharding
from bert_jax.model.attention import attention_mask as make_attention_mask
from bert_jax.model.attention import dot_product_attention
from bert_jax.model.config import BertConfig

# The building blocks live in layers.py (shared with modern.py); re-exported here.
from bert_jax.model.layers import (  # noqa: F401
    Dense,
    Embed,
    LayerNorm,
    _init,
    activation,
    dropout,
)
from bert_jax.model.modern import (
    Context,
    ModernEmbeddings,
    ModernLayer,
    layer_kinds,
    segment_positions,
)

_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.cfg = cfg
        self.word_embeddings = Embed(cfg.vocab_size, h, ("vocab", "embed"), cfg, rngs=rngs)
        self.position_embeddings = Embed(cfg.max_position_embeddings, h, (None, "embed"), cfg,
                                         rngs=rngs)
        self.token_type_embeddings = Embed(cfg.type_vocab_size, h, (None, "embed"), cfg,
                                           rngs=rngs)
        self.LayerNorm = LayerNorm(h, cfg)

    def __call__(self, input_ids, token_type_ids, position_ids, dropout_rng):
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        x = self.LayerNorm(x)
        return dropout(x, self.cfg.hidden_dropout_prob, dropout_rng)


class BertLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h, n, d, i = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
        self.cfg = cfg
        qkv = dict(logical_in=("embed",), logical_out=("heads", "kv"), cfg=cfg, rngs=rngs)
        self.query = Dense((h,), (n, d), **qkv)
        self.key = Dense((h,), (n, d), **qkv)
        self.value = Dense((h,), (n, d), **qkv)
        self.attention_output = Dense((n, d), (h,), ("heads", "kv"), ("embed",), cfg, rngs=rngs)
        self.attention_LayerNorm = LayerNorm(h, cfg)
        self.intermediate = Dense((h,), (i,), ("embed",), ("mlp",), cfg, rngs=rngs)
        self.output = Dense((i,), (h,), ("mlp",), ("embed",), cfg, rngs=rngs)
        self.output_LayerNorm = LayerNorm(h, cfg)

    def __call__(self, x: jax.Array, mask: jax.Array, rng: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
        q = sharding.constrain(self.query(x), ("batch", "length", "act_heads", None))
        k = sharding.constrain(self.key(x), ("batch", "length", "act_heads", None))
        v = sharding.constrain(self.value(x), ("batch", "length", "act_heads", None))
        ctx = dot_product_attention(q, k, v, mask, impl=cfg.attention_impl,
                                    dropout_rate=cfg.attention_probs_dropout_prob,
                                    dropout_rng=rngs[0])
        attn = dropout(self.attention_output(ctx), cfg.hidden_dropout_prob, rngs[1])
        x = self.attention_LayerNorm(x + attn)
        y = activation(cfg.hidden_act)(self.intermediate(x))
        y = sharding.constrain(y, ("batch", "length", "act_mlp"))
        y = dropout(self.output(y), cfg.hidden_dropout_prob, rngs[2])
        x = self.output_LayerNorm(x + y)
        return sharding.constrain(x, ("batch", "length", "act_embed"))


def _layer_fn(cfg: BertConfig):
    def apply(layer, x, mask, rng):
        return layer(x, mask, rng)
    if cfg.remat_policy == "none":
        return apply
    return nnx.remat(apply, policy=_REMAT[cfg.remat_policy])


class BertEncoder(nnx.Module):
    """The layer stack, either a list of layers or (scan_layers) one stacked layer
    scanned over, which compiles once instead of L times."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.num_hidden_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(r):
                if cfg.modern:  # one uniform layer: kinds come per layer in the scan
                    return ModernLayer(cfg, None, rngs=r)
                return BertLayer(cfg, rngs=r)
            self.layers = create(rngs)
        elif cfg.modern:
            self.layers = nnx.List([ModernLayer(cfg, i, rngs=rngs)
                                    for i in range(cfg.num_hidden_layers)])
        else:
            self.layers = nnx.List([BertLayer(cfg, rngs=rngs)
                                    for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask, rng, output_hidden_states: bool = False):
        """`mask`: what each layer attends with (a Mask; for ModernBERT a
        modern.Context: masks and rotary tables of both layer kinds)."""
        n = self.cfg.num_hidden_layers
        keys = jax.random.split(rng, n) if rng is not None else None
        layer_fn = _layer_fn(self.cfg)
        if self.cfg.scan_layers:
            kinds = None
            if self.cfg.modern:  # (is_global, is_first) of each layer, scanned over
                kinds = layer_kinds(self.cfg)

            @nnx.scan(in_axes=(nnx.Carry, 0, None, 0 if keys is not None else None,
                               0 if kinds is not None else None),
                      out_axes=(nnx.Carry, 0))
            def body(h, layer, m, key, kind):
                if kind is not None:
                    m = m._replace(kind=kind)
                h = layer_fn(layer, h, m, key)
                return h, (h if output_hidden_states else None)
            x, hs = body(x, self.layers, mask, keys, kinds)
            hidden = list(hs) if output_hidden_states else []
        else:
            hidden = []
            for i, layer in enumerate(self.layers):
                x = layer_fn(layer, x, mask, None if keys is None else keys[i])
                if output_hidden_states:
                    hidden.append(x)
        return x, hidden


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.dense = Dense((h,), (h,), ("embed",), ("mlp",), cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pool(x[:, 0])

    def pool(self, cls_hidden: jax.Array) -> jax.Array:
        """tanh(dense) of [CLS] hidden states [..., H] (several per row when packed)."""
        return jnp.tanh(self.dense(cls_hidden))


class BertModel(nnx.Module):
    """Encoder + pooler. Returns dict(last_hidden_state [B,T,H], pooled [B,H] and,
    with output_hidden_states, hidden_states: embeddings + each layer (L+1)).

    cfg.architecture="modernbert" chooses ModernBERT's pieces (model/modern.py):
    normed token embeddings (no positions, no token types), pre-norm layers with
    rotary positions, GeGLU and local / global attention, a final norm (applied
    to last_hidden_state, not to hidden_states, as in transformers) and no
    pooler (its task heads pool)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, add_pooler: bool = True):
        self.cfg = cfg
        if cfg.modern:
            self.embeddings = ModernEmbeddings(cfg, rngs=rngs)
            add_pooler = False
        else:
            self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = BertEncoder(cfg, rngs=rngs)
        self.final_norm = (LayerNorm(cfg.hidden_size, cfg, cfg.norm_eps, cfg.norm_bias)
                           if cfg.modern else None)
        self.pooler = BertPooler(cfg, rngs=rngs) if add_pooler else None

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 segment_ids=None, position_ids=None, dropout_rng=None,
                 output_hidden_states: bool = False):
        b, t = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None and segment_ids is not None and self.cfg.modern:
            position_ids = segment_positions(segment_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        emb_rng = enc_rng = None
        if dropout_rng is not None:
            emb_rng, enc_rng = jax.random.split(dropout_rng)
        x = self.embeddings(input_ids, token_type_ids, position_ids, emb_rng)
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        mask = make_attention_mask(attention_mask, segment_ids)
        if self.cfg.modern:
            mask = Context.make(self.cfg, mask, position_ids)
        emb = x
        x, hidden = self.encoder(x, mask, enc_rng, output_hidden_states)
        if self.final_norm is not None:
            x = self.final_norm(x)
        out = {"last_hidden_state": x}
        if self.pooler is not None:
            out["pooled"] = self.pooler(x)
        if output_hidden_states:
            out["hidden_states"] = [emb] + hidden
        return out
