"""BertConfig: the architecture (every field of Google's `bert_config.json` and
HF's `config.json`) plus how to run it (dtypes, attention backend, scan, remat).

The model never sees ml_collections: configs are turned into this frozen
dataclass at the boundary.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")
ATTENTION_IMPLS = ("reference", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Dropout RNGs a run may use (config.rng_impl); here, not in training.py, so
# config validation can check it without importing JAX.
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")

# Fields that define the checkpoint (saved in Google / HF JSON).
_ARCH_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # How to run it (not part of the checkpoint).
    dtype: str = "float32"          # compute dtype: float32 or bfloat16
    param_dtype: str = "float32"    # storage / master weights
    attention_impl: str = "reference"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act={self.hidden_act!r}; expected one of {HIDDEN_ACTS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        if self.attention_impl == "splash" and self.attention_probs_dropout_prob > 0:
            # Splash has no dropout on attention probabilities; falling back to the
            # reference path (as xla/cudnn do) would silently train another program.
            raise ValueError(
                f"attention_impl='splash' has no attention-probability dropout: set "
                f"attention_probs_dropout_prob=0 (is {self.attention_probs_dropout_prob}; "
                f"MosaicBERT and NVIDIA's fused-attention BERT train with 0)")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected float32 or bfloat16")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw) -> BertConfig:
        return dataclasses.replace(self, **kw)

    # ---- JSON formats -------------------------------------------------------------

    def to_google_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ARCH_FIELDS}

    def to_hf_dict(self) -> dict[str, Any]:
        d = self.to_google_dict()
        d.update(model_type="bert", architectures=["BertForPreTraining"], pad_token_id=0,
                 position_embedding_type="absolute", layer_norm_eps=self.layer_norm_eps)
        return d

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> BertConfig:
        """From Google's bert_config.json, HF's config.json or our own dict.

        Unknown keys (HF adds many) are ignored; a value of the wrong type is an error
        naming the field.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            # Only the architecture comes from a file: HF configs carry their own
            # 'dtype' (a torch dtype or None) and much else we do not use.
            if k not in _ARCH_FIELDS:
                continue
            default = fields[k].default
            if isinstance(default, bool):
                ok = isinstance(v, bool)
            elif isinstance(default, int):
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif isinstance(default, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                v = float(v) if ok else v
            else:
                ok = isinstance(v, str)
            if not ok:
                raise ValueError(f"{source}: field {k!r} has invalid value {v!r}")
            kw[k] = v
        act = d.get("hidden_act")
        if act == "gelu_fast":
            kw["hidden_act"] = "gelu_new"
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: only absolute position embeddings are supported")
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        from bert_jax.storage import json_input
        d = json_input.read(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    @classmethod
    def named(cls, size: str, **kw) -> BertConfig:
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
        return cls(**{**SIZES[size], **kw})


def _size(layers, hidden):
    return dict(num_hidden_layers=layers, hidden_size=hidden,
                num_attention_heads=max(hidden // 64, 1), intermediate_size=4 * hidden)


# Turc et al. 2019 ("Well-Read Students Learn Better") sizes plus the paper's two.
SIZES: dict[str, dict[str, int]] = {
    "tiny": _size(2, 128),
    "mini": _size(4, 256),
    "small": _size(4, 512),
    "medium": _size(8, 512),
    "base": _size(12, 768),
    "large": _size(24, 1024),
}
