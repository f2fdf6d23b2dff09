"""ModernBERT's pieces of the encoder (cfg.architecture="modernbert"), the math of
`transformers.ModernBertModel`: normed token embeddings, pre-norm layers (layer 0
has no attention norm: the embedding norm precedes it) with rotary positions,
sliding-window attention on all but every n-th layer, a GeGLU MLP, and the
prediction head (dense, activation, norm) its MLM and task heads share.

Parameter names reuse BERT's where the parameter plays the same part
(word_embeddings, query/key/value, attention_output, intermediate, output,
output_bias), so sharding rules and the rest of the framework apply unchanged;
convert/hf_format.py maps them to ModernBERT's (Wqkv, Wo, Wi, ...).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.model import sharding
from bert_jax.model.attention import Mask, dot_product_attention
from bert_jax.model.config import BertConfig
from bert_jax.model.layers import Dense, Embed, LayerNorm, activation, dropout, gather_positions


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 where the segment id changes (packed rows):
    [[1,1,1,2,2,0]] -> [[0,1,2,0,1,0]]."""
    t = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    prev = jnp.concatenate([jnp.full_like(segment_ids[..., :1], -1), segment_ids[..., :-1]], -1)
    starts = jnp.where(segment_ids != prev, idx, 0)
    return idx - jax.lax.cummax(starts, axis=segment_ids.ndim - 1)


def rotary_tables(position_ids: jax.Array, head_dim: int, theta: float):
    """cos, sin [B,T,head_dim] in fp32: HF's default rope, frequencies
    theta^(-2i/d) repeated over both halves (the rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B,T,N,D] rotated by position (computed in fp32, as transformers does)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x32 * cos + rotated * sin).astype(x.dtype)


def local_mask(mask: Mask, window: int) -> Mask:
    """`mask` restricted to keys within +-window//2 of the query (HF:
    |i - j| <= local_attention // 2). Packed sequences are contiguous, so the
    band of the row is the band of each sequence; the segment mask keeps
    windows from crossing a boundary."""
    t = mask.dense.shape[-1]
    i = jnp.arange(t)
    band = jnp.abs(i[:, None] - i[None, :]) <= window // 2
    return Mask(mask.dense & band, mask.segments)


class Context(NamedTuple):
    """What every layer attends with: the masks and rotary tables of global and
    of local layers. An unrolled layer picks its kind statically; under
    scan_layers `kind` holds the scanned layer's (is_global, is_first) flags."""

    global_mask: Mask
    local_mask: Mask
    global_rope: tuple[jax.Array, jax.Array]
    local_rope: tuple[jax.Array, jax.Array]
    kind: tuple[jax.Array, jax.Array] | None = None

    @classmethod
    def make(cls, cfg: BertConfig, mask: Mask, position_ids: jax.Array) -> Context:
        d = cfg.head_dim
        return cls(mask, local_mask(mask, cfg.local_attention),
                   rotary_tables(position_ids, d, cfg.global_rope_theta),
                   rotary_tables(position_ids, d, cfg.local_rope_theta))


def layer_kinds(cfg: BertConfig) -> tuple[jax.Array, jax.Array]:
    """(is_global [L], is_first [L]) bools, what a scanned uniform layer reads."""
    n = cfg.num_hidden_layers
    return (jnp.asarray([cfg.is_global_layer(i) for i in range(n)]),
            jnp.arange(n) == 0)


class ModernEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.word_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg,
                                     rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, cfg, cfg.norm_eps, cfg.norm_bias)

    def __call__(self, input_ids, token_type_ids, position_ids, dropout_rng):
        # No learned positions (rotary, in the layers) and no token types.
        x = self.norm(self.word_embeddings(input_ids))
        return dropout(x, self.cfg.embedding_dropout, dropout_rng)


class ModernLayer(nnx.Module):
    """Pre-norm block: x += Wo(Attn(rope(norm(x)))); x += Wo(act(a) * g), with
    [a, g] = Wi(norm(x)). `intermediate` is [H, 2, I]: index 0 is the half the
    activation applies to (HF's first chunk), 1 the gate."""

    def __init__(self, cfg: BertConfig, index: int | None, *, rngs: nnx.Rngs):
        """index None: the uniform layer of a scanned stack (its kind is read
        from Context.kind; it has an attention norm, unused in layer 0)."""
        h, n, d, i = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
        self.cfg = cfg
        self.is_global = cfg.is_global_layer(index) if index is not None else None
        norm = dict(cfg=cfg, eps=cfg.norm_eps, use_bias=cfg.norm_bias)
        # Layer 0 reads the embedding norm's output directly (HF: nn.Identity).
        self.attn_norm = LayerNorm(h, **norm) if index != 0 else None
        qkv = dict(logical_in=("embed",), logical_out=("heads", "kv"), cfg=cfg, rngs=rngs,
                   use_bias=cfg.attention_bias)
        self.query = Dense((h,), (n, d), **qkv)
        self.key = Dense((h,), (n, d), **qkv)
        self.value = Dense((h,), (n, d), **qkv)
        self.attention_output = Dense((n, d), (h,), ("heads", "kv"), ("embed",), cfg, rngs=rngs,
                                      use_bias=cfg.attention_bias)
        self.mlp_norm = LayerNorm(h, **norm)
        self.intermediate = Dense((h,), (2, i), ("embed",), (None, "mlp"), cfg, rngs=rngs,
                                  use_bias=cfg.mlp_bias)
        self.output = Dense((i,), (h,), ("mlp",), ("embed",), cfg, rngs=rngs,
                            use_bias=cfg.mlp_bias)

    def __call__(self, x: jax.Array, ctx: Context, rng: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
        if ctx.kind is None:
            mask, (cos, sin) = ((ctx.global_mask, ctx.global_rope) if self.is_global
                                else (ctx.local_mask, ctx.local_rope))
            h = self.attn_norm(x) if self.attn_norm is not None else x
        else:  # scanned: select by this layer's flags
            is_global, is_first = ctx.kind
            mask = Mask(jnp.where(is_global, ctx.global_mask.dense, ctx.local_mask.dense),
                        ctx.global_mask.segments)
            cos, sin = (jnp.where(is_global, g, loc) for g, loc in zip(ctx.global_rope,
                                                                      ctx.local_rope))
            h = jnp.where(is_first, x, self.attn_norm(x))
        spec = ("batch", "length", "act_heads", None)
        q = sharding.constrain(apply_rotary(self.query(h), cos, sin), spec)
        k = sharding.constrain(apply_rotary(self.key(h), cos, sin), spec)
        v = sharding.constrain(self.value(h), spec)
        attend = functools.partial(dot_product_attention, impl=cfg.attention_impl,
                                   dropout_rate=cfg.attention_dropout, dropout_rng=rngs[0])
        if ctx.kind is None:
            a = attend(q, k, v, mask, window=None if self.is_global else cfg.local_attention)
        elif cfg.attention_impl == "splash":  # two kernels (full, local); the flag picks one
            a = jax.lax.cond(ctx.kind[0], lambda *t: attend(*t, mask),
                             lambda *t: attend(*t, mask, window=cfg.local_attention), q, k, v)
        else:  # the dense mask already holds the band of local layers
            a = attend(q, k, v, mask)
        x = x + dropout(self.attention_output(a), cfg.attention_dropout, rngs[1])
        y = self.intermediate(self.mlp_norm(x))
        y = activation(cfg.hidden_activation)(y[..., 0, :]) * y[..., 1, :]
        y = sharding.constrain(y, ("batch", "length", "act_mlp"))
        x = x + dropout(self.output(y), cfg.mlp_dropout, rngs[2])
        return sharding.constrain(x, ("batch", "length", "act_embed"))


class ModernHead(nnx.Module):
    """HF ModernBertPredictionHead: norm(act(dense(x))), under the MLM decoder and
    before every task classifier."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.cfg = cfg
        self.dense = Dense((h,), (h,), ("embed",), ("mlp",), cfg, rngs=rngs,
                           use_bias=cfg.classifier_bias)
        self.norm = LayerNorm(h, cfg, cfg.norm_eps, cfg.norm_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(activation(self.cfg.classifier_activation)(self.dense(x)))


def pool(cfg: BertConfig, hidden: jax.Array, attention_mask: jax.Array,
         segment_ids: jax.Array | None = None,
         cls_positions: jax.Array | None = None) -> jax.Array:
    """classifier_pooling: 'cls' (the first token) or 'mean' (over real tokens).
    hidden [B,T,H] -> [B,H]; packed rows (cls_positions [B,K]) -> [B,K,H], the
    mean taken over each [CLS]'s own sequence."""
    if cfg.classifier_pooling == "cls":
        return hidden[:, 0] if cls_positions is None else gather_positions(hidden, cls_positions)
    real = attention_mask.astype(jnp.float32)
    if cls_positions is None:
        w = real[:, :, None]                                           # [B,T,1]
    else:
        seg = jnp.take_along_axis(segment_ids, cls_positions.astype(jnp.int32), axis=1)
        w = (segment_ids[:, :, None] == seg[:, None, :]) * real[:, :, None]  # [B,T,K]
    total = jnp.einsum("btk,bth->bkh", w, hidden.astype(jnp.float32))
    mean = total / jnp.maximum(w.sum(axis=1), 1.0)[..., None]
    mean = mean.astype(hidden.dtype)
    return mean[:, 0] if cls_positions is None else mean
