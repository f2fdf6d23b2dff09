"""The building blocks every encoder architecture shares: dense and norm
layers carrying `logical_axes` for sharding, the embedding table (also the
tied decoder), activations, dropout with an explicit key, and the gather of
masked positions. BERT's encoder (encoder.py), ModernBERT's pieces (modern.py)
and the heads import them from here, so neither architecture imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.model.config import BertConfig

_ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    return _ACTS[name]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _init(cfg: BertConfig):
    # Google's BERT initializes every weight with a truncated normal.
    return jax.nn.initializers.truncated_normal(stddev=cfg.initializer_range)


class Dense(nnx.Module):
    """y = x . kernel + bias over the trailing `len(in_shape)` axes of x.

    kernel has shape in_shape + out_shape, so attention projections can keep
    heads as their own axis ([embed, heads, kv]) for tensor parallelism.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
                 logical_in: Sequence[str | None], logical_out: Sequence[str | None],
                 cfg: BertConfig, *, rngs: nnx.Rngs, use_bias: bool = True):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        self.n_in = len(in_shape)
        self.dtype = jnp.dtype(cfg.dtype)
        pdt = jnp.dtype(cfg.param_dtype)
        self.kernel = nnx.Param(_init(cfg)(rngs.params(), in_shape + out_shape, pdt),
                                logical_axes=tuple(logical_in) + tuple(logical_out))
        self.bias = (nnx.Param(jnp.zeros(out_shape, pdt), logical_axes=tuple(logical_out))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), self.kernel.value.astype(self.dtype),
                                (axes, ((), ())))
        if self.bias is not None:
            y = y + self.bias.value.astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm with fp32 statistics whatever the compute dtype. `eps` defaults
    to BERT's layer_norm_eps; use_bias=False is ModernBERT's norm_bias=False."""

    def __init__(self, size: int, cfg: BertConfig, eps: float | None = None,
                 use_bias: bool = True):
        pdt = jnp.dtype(cfg.param_dtype)
        self.eps = cfg.layer_norm_eps if eps is None else eps
        self.dtype = jnp.dtype(cfg.dtype)
        self.scale = nnx.Param(jnp.ones((size,), pdt), logical_axes=("embed",))
        self.bias = (nnx.Param(jnp.zeros((size,), pdt), logical_axes=("embed",))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale.value.astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias.value.astype(jnp.float32)
        return y.astype(self.dtype)


class Embed(nnx.Module):
    def __init__(self, num: int, size: int, logical: Sequence[str], cfg: BertConfig, *,
                 rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        self.embedding = nnx.Param(
            _init(cfg)(rngs.params(), (num, size), jnp.dtype(cfg.param_dtype)),
            logical_axes=tuple(logical))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.value, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the table (the tied MLM decoder), accumulated in fp32."""
        return jnp.einsum("...H,VH->...V", x, self.embedding.value.astype(self.dtype),
                          preferred_element_type=jnp.float32)


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
    """x [B,T,H], positions [B,P] -> [B,P,H] (Google's gather_indexes)."""
    return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)
