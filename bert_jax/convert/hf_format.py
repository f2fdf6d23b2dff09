"""HuggingFace BERT / ModernBERT state-dict names <-> canonical names, and HF
directory I/O.

Kernels are stored [in..., out...] here and [out, in] in PyTorch, so every
dense weight is reshaped to 2-D and transposed; embeddings and norms copy.
One rename table per format (`TABLES`); ModernBERT's fused `Wqkv` is split
into our query/key/value on reading and concatenated on writing.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
from safetensors.numpy import load_file, save_file

from bert_jax.model.config import BertConfig
from bert_jax.model.heads import get_head
from bert_jax.storage import json_input

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

# canonical regex -> HF name template; {leaf} is the HF leaf name.
_TABLE = [
    (r"bert/embeddings/(word|position|token_type)_embeddings/(embedding)",
     r"bert.embeddings.\1_embeddings.{leaf}"),
    (r"bert/embeddings/LayerNorm/(scale|bias)", "bert.embeddings.LayerNorm.{leaf}"),
    (r"bert/encoder/layers/(\d+)/(query|key|value)/(kernel|bias)",
     r"bert.encoder.layer.\1.attention.self.\2.{leaf}"),
    (r"bert/encoder/layers/(\d+)/attention_output/(kernel|bias)",
     r"bert.encoder.layer.\1.attention.output.dense.{leaf}"),
    (r"bert/encoder/layers/(\d+)/attention_LayerNorm/(scale|bias)",
     r"bert.encoder.layer.\1.attention.output.LayerNorm.{leaf}"),
    (r"bert/encoder/layers/(\d+)/intermediate/(kernel|bias)",
     r"bert.encoder.layer.\1.intermediate.dense.{leaf}"),
    (r"bert/encoder/layers/(\d+)/output/(kernel|bias)",
     r"bert.encoder.layer.\1.output.dense.{leaf}"),
    (r"bert/encoder/layers/(\d+)/output_LayerNorm/(scale|bias)",
     r"bert.encoder.layer.\1.output.LayerNorm.{leaf}"),
    (r"bert/pooler/dense/(kernel|bias)", "bert.pooler.dense.{leaf}"),
    (r"transform/(kernel|bias)", "cls.predictions.transform.dense.{leaf}"),
    (r"transform_LayerNorm/(scale|bias)", "cls.predictions.transform.LayerNorm.{leaf}"),
    (r"output_bias", "cls.predictions.bias"),
    (r"seq_relationship/(kernel|bias)", "cls.seq_relationship.{leaf}"),
    (r"classifier/(kernel|bias)", "classifier.{leaf}"),
    (r"qa_outputs/(kernel|bias)", "qa_outputs.{leaf}"),
]
# ModernBERT (transformers' ModernBertForMaskedLM / ...ForSequenceClassification).
# `Wq`/`Wk`/`Wv` stand for the three thirds of HF's fused `Wqkv` ([3, N, D] rows).
_MODERN_TABLE = [
    (r"bert/embeddings/word_embeddings/(embedding)", "model.embeddings.tok_embeddings.{leaf}"),
    (r"bert/embeddings/norm/(scale|bias)", "model.embeddings.norm.{leaf}"),
    (r"bert/encoder/layers/(\d+)/attn_norm/(scale|bias)", r"model.layers.\1.attn_norm.{leaf}"),
    (r"bert/encoder/layers/(\d+)/query/(kernel|bias)", r"model.layers.\1.attn.Wq.{leaf}"),
    (r"bert/encoder/layers/(\d+)/key/(kernel|bias)", r"model.layers.\1.attn.Wk.{leaf}"),
    (r"bert/encoder/layers/(\d+)/value/(kernel|bias)", r"model.layers.\1.attn.Wv.{leaf}"),
    (r"bert/encoder/layers/(\d+)/attention_output/(kernel|bias)",
     r"model.layers.\1.attn.Wo.{leaf}"),
    (r"bert/encoder/layers/(\d+)/mlp_norm/(scale|bias)", r"model.layers.\1.mlp_norm.{leaf}"),
    (r"bert/encoder/layers/(\d+)/intermediate/(kernel|bias)", r"model.layers.\1.mlp.Wi.{leaf}"),
    (r"bert/encoder/layers/(\d+)/output/(kernel|bias)", r"model.layers.\1.mlp.Wo.{leaf}"),
    (r"bert/final_norm/(scale|bias)", "model.final_norm.{leaf}"),
    (r"head/dense/(kernel|bias)", "head.dense.{leaf}"),
    (r"head/norm/(scale|bias)", "head.norm.{leaf}"),
    (r"output_bias", "decoder.bias"),
    (r"classifier/(kernel|bias)", "classifier.{leaf}"),
    (r"qa_outputs/(kernel|bias)", "classifier.{leaf}"),  # ModernBertForQuestionAnswering
]
TABLES = {arch: [(re.compile(f"^{pat}$"), tmpl) for pat, tmpl in table]
          for arch, table in (("bert", _TABLE), ("modernbert", _MODERN_TABLE))}

# HF keys that carry no parameter of their own (buffers, tied copies).
_IGNORED = {
    "bert": re.compile(r"(position_ids$|cls\.predictions\.decoder\.(weight|bias)$)"),
    "modernbert": re.compile(r"^decoder\.weight$"),
}
_QKV = re.compile(r"^(model\.layers\.\d+\.attn\.)Wqkv\.(weight|bias)$")

ARCHITECTURES = {
    "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
    "regression": "BertForSequenceClassification",
    "span": "BertForQuestionAnswering",
    "tagging": "BertForTokenClassification",
    "encoder": "BertModel",
}
MODERN_ARCHITECTURES = {
    "pretraining": "ModernBertForMaskedLM",
    "classification": "ModernBertForSequenceClassification",
    "regression": "ModernBertForSequenceClassification",
    "span": "ModernBertForQuestionAnswering",
    "tagging": "ModernBertForTokenClassification",
    "encoder": "ModernBertModel",
}


def architectures(arch: str) -> dict[str, str]:
    return MODERN_ARCHITECTURES if arch == "modernbert" else ARCHITECTURES


def source_head(raw_cfg: dict, arch: str) -> str:
    """Our head for a HF config's `architectures[0]` (encoder when unknown)."""
    names = architectures(arch)
    first = (raw_cfg.get("architectures") or [names["encoder"]])[0]
    head = {v: k for k, v in names.items() if k != "regression"}.get(first, "encoder")
    if head == "classification" and raw_cfg.get("problem_type") == "regression":
        head = "regression"
    return head


def hf_name(name: str, arch: str = "bert") -> str:
    for pat, tmpl in TABLES[arch]:
        m = pat.match(name)
        if m:
            leaf = _LEAF.get(name.rsplit("/", 1)[-1], "bias")
            return m.expand(tmpl.replace("{leaf}", leaf))
    raise KeyError(f"no HF name for parameter {name}")


def _normalize_hf_key(key: str, arch: str = "bert") -> str:
    if arch == "modernbert":
        if key.startswith(("embeddings.", "layers.", "final_norm.")):
            key = "model." + key  # ModernBertModel checkpoints have no `model.` prefix
        return key
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                     "LayerNorm.bias")
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
        key = "bert." + key  # BertModel checkpoints have no `bert.` prefix
    return key


def _kernel_inputs(name: str) -> int:
    # query/key/value kernels are [H, N, D] (1 input axis); attention_output
    # is [N, D, H] (2 input axes); ModernBERT's intermediate is [H, 2, I].
    return 2 if "/attention_output/" in name else 1


def to_hf(flat: dict[str, np.ndarray], arch: str = "bert") -> dict[str, np.ndarray]:
    out = {}
    for name, value in flat.items():
        key = hf_name(name, arch)
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "kernel":
            n_in = _kernel_inputs(name)
            out[key] = np.ascontiguousarray(value.reshape(int(np.prod(value.shape[:n_in])), -1).T)
        else:
            out[key] = np.ascontiguousarray(value.reshape(-1) if leaf == "bias" else value)
    if arch == "modernbert":
        for key in [k for k in out if ".attn.Wq." in k]:
            parts = [out.pop(key.replace(".Wq.", f".{w}.")) for w in ("Wq", "Wk", "Wv")]
            out[key.replace(".Wq.", ".Wqkv.")] = np.ascontiguousarray(np.concatenate(parts, 0))
    return out


def _split_qkv(hf: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """HF ModernBERT's fused Wqkv [3*H(, H)] -> three [H(, H)] tensors Wq, Wk, Wv."""
    out = {}
    for key, value in hf.items():
        m = _QKV.match(key)
        if m:
            value = np.asarray(value)
            if value.shape[0] % 3:
                raise ValueError(f"{source}: parameter {key} has shape {value.shape}: the first axis is "
                                 "not 3 x hidden_size")
            for w, part in zip(("Wq", "Wk", "Wv"), np.split(value, 3, axis=0)):
                out[f"{m.group(1)}{w}.{m.group(2)}"] = part
        else:
            out[key] = value
    return out


def from_hf(hf: dict[str, np.ndarray], target_shapes: dict[str, tuple[int, ...]],
            source: str, arch: str = "bert") -> tuple[dict[str, np.ndarray], list[str]]:
    """HF tensors -> canonical names shaped like `target_shapes`; returns
    (params, unexpected HF keys)."""
    by_hf = {}
    for name in target_shapes:
        by_hf[hf_name(name, arch)] = name
    if arch == "modernbert":
        hf = _split_qkv({_normalize_hf_key(k, arch): v for k, v in hf.items()}, source)
    params, unexpected = {}, []
    for raw_key, value in hf.items():
        key = _normalize_hf_key(raw_key, arch)
        if key not in by_hf:
            if not _IGNORED[arch].search(key):
                unexpected.append(raw_key)
            continue
        name = by_hf[key]
        shape = tuple(target_shapes[name])
        value = np.asarray(value)
        if re.search(r"\.attn\.W[qkv]\.", raw_key):
            raw_key += " (a third of the fused Wqkv)"
        if name.endswith("/kernel"):
            if value.ndim != 2 or value.size != int(np.prod(shape)):
                raise ValueError(f"{source}: parameter {raw_key} has shape {value.shape}, "
                                 f"model expects {shape} (as {name})")
            value = value.T.reshape(shape)
        else:
            if value.size != int(np.prod(shape)) or (value.ndim == 2 and value.shape != shape):
                hint = " (vocabulary size differs)" if "word_embeddings" in key else ""
                raise ValueError(f"{source}: parameter {raw_key} has shape {value.shape}, "
                                 f"model expects {shape}{hint}")
            value = value.reshape(shape)
        params[name] = value
    return params, unexpected


def is_hf_dir(path: pathlib.Path) -> bool:
    return (path / "config.json").exists() and (
        (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists())


def read_hf_dir(path: pathlib.Path) -> tuple[BertConfig, dict[str, np.ndarray], dict]:
    """config + tensors from a HF BERT directory. pytorch_model.bin is read only
    with `torch.load(weights_only=True)` (no general unpickling)."""
    raw_cfg = json_input.read(path / "config.json")
    if not isinstance(raw_cfg, dict):
        raise ValueError(f"{path / 'config.json'}: expected a JSON object")
    if raw_cfg.get("model_type", "bert") not in ("bert", "modernbert"):
        raise ValueError(f"{path / 'config.json'}: model_type {raw_cfg.get('model_type')!r} is "
                         "not bert or modernbert")
    cfg = BertConfig.from_dict(raw_cfg, source=str(path / "config.json"))
    if (path / "model.safetensors").exists():
        tensors = load_file(str(path / "model.safetensors"))
    else:
        try:
            # optional: only a pytorch_model.bin needs torch
            import torch
        except ImportError:
            raise SystemExit(f"{path / 'pytorch_model.bin'}: reading .bin needs PyTorch "
                             "(pip install torch), or convert it to model.safetensors") from None
        sd = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                   for k, v in sd.items()}
    return cfg, tensors, raw_cfg


def hf_config_dict(cfg: BertConfig, head: str, label_names: list[str] | None = None) -> dict:
    if cfg.modern and not 0 <= cfg.pad_token_id < cfg.vocab_size:
        # transformers builds its embedding with padding_idx=pad_token_id and
        # would fail on loading; say so before anything is written.
        raise ValueError(f"pad_token_id={cfg.pad_token_id} is outside the vocabulary "
                         f"(vocab_size={cfg.vocab_size}): set it to the tokenizer's [PAD] id")
    d = cfg.to_hf_dict()
    d["architectures"] = [architectures(cfg.architecture)[head]]
    h = get_head(head)
    if h.named_labels and label_names:
        d["id2label"] = {str(i): n for i, n in enumerate(label_names)}
        d["label2id"] = {n: i for i, n in enumerate(label_names)}
    if h.problem_type is not None:
        d["num_labels"] = h.num_labels
        d["problem_type"] = h.problem_type
    return d


def write_hf_dir(out: pathlib.Path, cfg: BertConfig, flat: dict[str, np.ndarray], head: str,
                 label_names: list[str] | None = None) -> None:
    tensors = to_hf(flat, cfg.architecture)
    if cfg.modern:
        # The tied decoder.weight is left out, as transformers' save_pretrained does.
        if head == "encoder":  # ModernBertModel checkpoints carry no `model.` prefix
            tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    elif head == "encoder":  # BertModel checkpoints carry no `bert.` prefix
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    elif head == "pretraining":
        # The decoder is tied to the word embeddings; HF still lists it as a key.
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg, head, label_names), indent=2))


SPECIAL_TOKENS_MAP = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                      "cls_token": "[CLS]", "mask_token": "[MASK]"}


def write_tokenizer_files(out: pathlib.Path, lowercase: bool, model_max_length: int) -> None:
    """tokenizer_config.json + special_tokens_map.json beside vocab.txt, so that
    `AutoTokenizer.from_pretrained(out)` tokenizes as we do: BERT's basic
    tokenizer with our casing (accents are stripped exactly when lower-casing,
    as our normalizer does with strip_accents unset)."""
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(lowercase),
              "do_basic_tokenize": True, "tokenize_chinese_chars": True, "strip_accents": None,
              "model_max_length": int(model_max_length), "clean_up_tokenization_spaces": False,
              **SPECIAL_TOKENS_MAP}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n")


def read_casing(path: pathlib.Path) -> bool | None:
    """do_lower_case from a dir's tokenizer_config.json, None when it has none."""
    f = path / "tokenizer_config.json"
    if not f.exists():
        return None
    obj = json_input.read(f)
    value = obj.get("do_lower_case") if isinstance(obj, dict) else None
    return value if isinstance(value, bool) else None
