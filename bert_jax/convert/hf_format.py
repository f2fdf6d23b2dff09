"""HuggingFace BERT state-dict names <-> canonical names, and HF directory I/O.

Kernels are stored [in..., out...] here and [out, in] in PyTorch, so every
dense weight is reshaped to 2-D and transposed; embeddings and norms copy.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from bert_jax.model.config import BertConfig

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
_COMPILED = [(re.compile(f"^{pat}$"), tmpl) for pat, tmpl in _TABLE]

# HF keys that carry no parameter of their own (buffers, tied copies).
_IGNORED = re.compile(r"(position_ids$|cls\.predictions\.decoder\.(weight|bias)$)")

ARCHITECTURES = {
    "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
    "regression": "BertForSequenceClassification",
    "span": "BertForQuestionAnswering",
    "tagging": "BertForTokenClassification",
    "encoder": "BertModel",
}


def hf_name(name: str) -> str:
    for pat, tmpl in _COMPILED:
        m = pat.match(name)
        if m:
            leaf = _LEAF.get(name.rsplit("/", 1)[-1], "bias")
            return m.expand(tmpl.replace("{leaf}", leaf))
    raise KeyError(f"no HF name for parameter {name}")


def _normalize_hf_key(key: str) -> str:
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                     "LayerNorm.bias")
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
        key = "bert." + key  # BertModel checkpoints have no `bert.` prefix
    return key


def to_hf(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in flat.items():
        key = hf_name(name)
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "kernel":
            # query/key/value kernels are [H, N, D] (1 input axis); attention_output
            # is [N, D, H] (2 input axes).
            n_in = 2 if "attention.output.dense" in key else 1
            out[key] = np.ascontiguousarray(value.reshape(int(np.prod(value.shape[:n_in])), -1).T)
        else:
            out[key] = np.ascontiguousarray(value.reshape(-1) if leaf == "bias" else value)
    return out


def from_hf(hf: dict[str, np.ndarray], target_shapes: dict[str, tuple[int, ...]],
            source: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """HF tensors -> canonical names shaped like `target_shapes`; returns
    (params, unexpected HF keys)."""
    by_hf = {}
    for name in target_shapes:
        by_hf[hf_name(name)] = name
    params, unexpected = {}, []
    for raw_key, value in hf.items():
        key = _normalize_hf_key(raw_key)
        if key not in by_hf:
            if not _IGNORED.search(key):
                unexpected.append(raw_key)
            continue
        name = by_hf[key]
        shape = tuple(target_shapes[name])
        value = np.asarray(value)
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
    from bert_jax.storage import json_input
    raw_cfg = json_input.read(path / "config.json")
    if not isinstance(raw_cfg, dict):
        raise ValueError(f"{path / 'config.json'}: expected a JSON object")
    if raw_cfg.get("model_type", "bert") != "bert":
        raise ValueError(f"{path / 'config.json'}: model_type {raw_cfg.get('model_type')!r} is "
                         "not bert")
    cfg = BertConfig.from_dict(raw_cfg, source=str(path / "config.json"))
    if (path / "model.safetensors").exists():
        from safetensors.numpy import load_file
        tensors = load_file(str(path / "model.safetensors"))
    else:
        try:
            import torch
        except ImportError:
            raise SystemExit(f"{path / 'pytorch_model.bin'}: reading .bin needs PyTorch "
                             "(pip install torch), or convert it to model.safetensors") from None
        sd = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                   for k, v in sd.items()}
    return cfg, tensors, raw_cfg


def hf_config_dict(cfg: BertConfig, head: str, label_names: list[str] | None = None) -> dict:
    d = cfg.to_hf_dict()
    d["architectures"] = [ARCHITECTURES[head]]
    if head in ("classification", "tagging") and label_names:
        d["id2label"] = {str(i): n for i, n in enumerate(label_names)}
        d["label2id"] = {n: i for i, n in enumerate(label_names)}
    if head == "regression":
        d["num_labels"] = 1
        d["problem_type"] = "regression"
    return d


def write_hf_dir(out: pathlib.Path, cfg: BertConfig, flat: dict[str, np.ndarray], head: str,
                 label_names: list[str] | None = None) -> None:
    from safetensors.numpy import save_file
    tensors = to_hf(flat)
    if head == "encoder":  # BertModel checkpoints carry no `bert.` prefix
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    if head == "pretraining":
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
    from bert_jax.storage import json_input
    obj = json_input.read(f)
    value = obj.get("do_lower_case") if isinstance(obj, dict) else None
    return value if isinstance(value, bool) else None
