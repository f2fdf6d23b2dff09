"""BertConfig: the architecture (every field of Google's `bert_config.json` and
HF's `config.json`, or of HF ModernBERT's `config.json` when
architecture="modernbert") plus how to run it (dtypes, attention backend, scan,
remat).

The model never sees ml_collections: configs are turned into this frozen
dataclass at the boundary.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bert_jax.storage import json_input

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")
ATTENTION_IMPLS = ("reference", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Dropout RNGs a run may use (config.rng_impl); here, not in training.py, so
# config validation can check it without importing JAX.
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
ARCHITECTURES = ("bert", "modernbert")
POOLINGS = ("cls", "mean")

# Fields that define the checkpoint (saved in Google / HF JSON).
_ARCH_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps")
# ModernBERT's, under the names its config.json uses (HF ModernBertConfig).
# The BERT-only fields above (hidden_act, layer_norm_eps, the dropouts,
# type_vocab_size) are not read by a modernbert model.
_MODERN_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_activation", "max_position_embeddings", "initializer_range", "norm_eps",
    "norm_bias", "attention_bias", "mlp_bias", "attention_dropout", "embedding_dropout",
    "mlp_dropout", "global_rope_theta", "local_rope_theta", "local_attention",
    "global_attn_every_n_layers", "classifier_pooling", "classifier_activation",
    "classifier_bias", "classifier_dropout", "decoder_bias", "pad_token_id", "bos_token_id",
    "eos_token_id", "cls_token_id", "sep_token_id")


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
    # "bert" (post-LN, learned positions, NSP) or "modernbert" (the fields below;
    # defaults are HF ModernBertConfig's).
    architecture: str = "bert"
    hidden_activation: str = "gelu"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    local_attention: int = 128          # window in tokens in all: +-local_attention//2
    global_attn_every_n_layers: int = 3  # layer i is global iff i % n == 0
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    classifier_bias: bool = False
    classifier_dropout: float = 0.0
    decoder_bias: bool = True
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r}; expected one of {ARCHITECTURES}")
        if self.modern:
            self._check_modern()
        elif self.attention_impl == "splash" and self.attention_probs_dropout_prob > 0:
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

    def _check_modern(self):
        for name in ("hidden_activation", "classifier_activation"):
            if getattr(self, name) not in HIDDEN_ACTS:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {HIDDEN_ACTS}")
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(
                f"classifier_pooling={self.classifier_pooling!r}; expected one of {POOLINGS}")
        if self.local_attention < 2 or self.local_attention % 2:
            raise ValueError(f"local_attention={self.local_attention}: the total window, a "
                             "positive even number of tokens (+-local_attention/2 each side)")
        if self.global_attn_every_n_layers < 1:
            raise ValueError(
                f"global_attn_every_n_layers={self.global_attn_every_n_layers}; must be >= 1")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} is odd: rotary embeddings rotate "
                             "pairs of dimensions")
        if self.attention_impl == "splash" and self.attention_dropout > 0:
            raise ValueError(
                f"attention_impl='splash' has no attention-probability dropout: set "
                f"attention_dropout=0 (is {self.attention_dropout})")

    @property
    def modern(self) -> bool:
        return self.architecture == "modernbert"

    def is_global_layer(self, i: int) -> bool:
        """ModernBERT: layer i attends globally iff i % global_attn_every_n_layers == 0."""
        return not self.modern or i % self.global_attn_every_n_layers == 0

    @property
    def head_dropout(self) -> float:
        """Dropout before a task head's classifier."""
        return self.classifier_dropout if self.modern else self.hidden_dropout_prob

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw) -> BertConfig:
        return dataclasses.replace(self, **kw)

    # ---- JSON formats -------------------------------------------------------------

    def to_google_dict(self) -> dict[str, Any]:
        """The architecture fields (what bert_jax.json records); BERT's are
        Google's bert_config.json, unchanged."""
        if self.modern:
            return {"architecture": "modernbert", **{k: getattr(self, k) for k in _MODERN_FIELDS}}
        return {k: getattr(self, k) for k in _ARCH_FIELDS}

    def to_hf_dict(self) -> dict[str, Any]:
        if self.modern:
            # transformers 4.x's flat form; 5.x reads it too (global_rope_theta,
            # local_rope_theta and global_attn_every_n_layers are its legacy keys).
            d = {k: getattr(self, k) for k in _MODERN_FIELDS}
            d.update(model_type="modernbert", architectures=["ModernBertForMaskedLM"],
                     tie_word_embeddings=True)
            return d
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
        arch = d.get("architecture", "modernbert" if d.get("model_type") == "modernbert"
                     else "bert")
        if arch not in ARCHITECTURES:
            raise ValueError(f"{source}: architecture {arch!r}; expected one of {ARCHITECTURES}")
        known = _MODERN_FIELDS if arch == "modernbert" else _ARCH_FIELDS
        if arch == "modernbert":
            d = _modern_flat(d, source)
        kw = {"architecture": arch}
        for k, v in d.items():
            # Only the architecture comes from a file: HF configs carry their own
            # 'dtype' (a torch dtype or None) and much else we do not use.
            if k not in known or (v is None and k.endswith("_token_id")):
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
        if arch == "modernbert":
            try:
                return cls(**kw)
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from None
        if act == "gelu_fast":
            kw["hidden_act"] = "gelu_new"
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: only absolute position embeddings are supported")
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        d = json_input.read(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    @classmethod
    def named(cls, size: str, **kw) -> BertConfig:
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
        return cls(**{**SIZES[size], **kw})


def _modern_flat(d: dict[str, Any], source: str) -> dict[str, Any]:
    """A ModernBERT config.json in transformers 4.x's flat form. transformers 5
    writes `layer_types` (one of full_attention / sliding_attention per layer)
    and `rope_parameters` ({layer type: {rope_type, rope_theta}}) instead of
    global_attn_every_n_layers, global_rope_theta and local_rope_theta."""
    d = dict(d)
    rope = d.get("rope_parameters")
    if isinstance(rope, dict):
        for kind, key in (("full_attention", "global_rope_theta"),
                          ("sliding_attention", "local_rope_theta")):
            p = rope.get(kind) or {}
            if p.get("rope_type", "default") != "default":
                raise ValueError(f"{source}: rope_parameters.{kind}.rope_type "
                                 f"{p['rope_type']!r}; only 'default' rotary embeddings are "
                                 "supported")
            if "rope_theta" in p:
                d[key] = p["rope_theta"]
    elif rope is not None:
        raise ValueError(f"{source}: field 'rope_parameters' has invalid value {rope!r}")
    if d.get("rope_scaling"):
        raise ValueError(f"{source}: rope_scaling {d['rope_scaling']!r} is not supported")
    types = d.get("layer_types")
    if types is not None:
        kinds = ("full_attention", "sliding_attention")
        if not isinstance(types, list) or any(t not in kinds for t in types) or not types:
            raise ValueError(f"{source}: field 'layer_types' has invalid value {types!r}")
        # Our encoder places global layers every n (layer 0 global), as 4.x did.
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        n = full[1] if len(full) > 1 else len(types)
        if [i % n == 0 for i in range(len(types))] != [t == "full_attention" for t in types]:
            raise ValueError(f"{source}: layer_types {types} is not 'full_attention every n "
                             "layers from layer 0'; only that pattern is supported")
        d["global_attn_every_n_layers"] = n
    if d.get("local_rope_theta", 0) is None:  # 4.x: None means the global theta
        d["local_rope_theta"] = d.get("global_rope_theta", 160000.0)
    return d


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
