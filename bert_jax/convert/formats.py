"""Reading any checkpoint format we know (our model dir or a training
workdir, a HuggingFace dir, a Google TF1 dir) into canonical parameters
(`read_any`), building a model from one (`load_model`) and converting
between them (`convert`, the work of `python -m bert_jax.convert`).

The input format is detected: a HF dir (config.json + model.safetensors or
pytorch_model.bin), a bert_jax model dir or training workdir (bert_jax.json),
or a Google TF1 dir (bert_config.json + bert_model.ckpt.*, needs the `tf` extra).
Parameters the source lacks (a pooler, the MLM/NSP heads) are initialized fresh
and listed. Output goes to a temp dir and is renamed into place on success.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from bert_jax.cli import optional
from bert_jax.convert import bounds, hf_format, model_dir, tf1_format
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import abstract_model, build_model, get_head
from bert_jax.model.params import assign_params, flat_params, pure_to_flat
from bert_jax.storage import outputs, paths


def target_shapes(cfg: BertConfig, head: str, num_labels: int) -> dict[str, tuple]:
    """{canonical name: shape} of the `head` model (built abstractly)."""

    state = nnx.state(abstract_model(cfg, head, num_labels), nnx.Param)
    return {k: tuple(v.shape) for k, v in pure_to_flat(nnx.to_pure_dict(state)).items()}


def fresh_values(cfg: BertConfig, head: str, num_labels: int, seed: int,
                 names: list[str]) -> dict[str, np.ndarray]:
    """The model's own initialization of `names` (built only when needed)."""
    if not names:
        return {}
    fresh = flat_params(build_model(cfg.replace(scan_layers=False), head, num_labels, seed=seed))
    return {k: fresh[k] for k in names}


def load_flat(path: str | os.PathLike) -> tuple[BertConfig, dict[str, Any], dict[str, np.ndarray]]:
    """(config, meta, canonical params) from a model dir or a training workdir
    (its newest readable checkpoint, read by train.checkpointing)."""
    if not paths.is_url(path):
        path = pathlib.Path(path)
    if not model_dir.is_model_dir(path):
        raise FileNotFoundError(f"{path}: not a bert_jax model dir (no {model_dir.META_FILE})")
    meta = model_dir.read_meta(path)
    cfg = BertConfig.from_dict(meta["config"], source=paths.join(path, model_dir.META_FILE))
    bounds.check_fields(cfg, paths.join(path, model_dir.META_FILE))
    if paths.exists(paths.join(path, "params")):
        return cfg, meta, model_dir.load_params(paths.join(path, "params"))
    # orbax and JAX, which only a training workdir needs: `convert --help` and a
    # bad argument stay fast.
    from bert_jax.train import checkpointing
    return cfg, meta, checkpointing.load_latest_params(path)


def is_tf1_dir(path: pathlib.Path) -> bool:
    return (path / "bert_config.json").exists() and any(path.glob("*.ckpt*.index"))


def read_any(path: str | os.PathLike, head: str | None = None, seed: int = 0,
             report: list[str] | None = None, fill_missing: bool = True
             ) -> tuple[BertConfig, dict[str, Any], dict[str, np.ndarray]]:
    """(config, meta, canonical params) from any supported checkpoint.

    For HF / TF1 sources the head is the richest the source has (pretraining
    when it has MLM/NSP weights or when asked); parameters it lacks are filled
    with a fresh init (unless `fill_missing` is False: then they are absent)
    and their names appended to `report`.
    """
    if not paths.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    # A bert_jax dir in a bucket is read in place (orbax reads gs://); HF and
    # TF1 dirs through the local cache.
    p = path if paths.is_url(path) and model_dir.is_model_dir(path) else \
        paths.local_copy(path)
    if model_dir.is_model_dir(p):
        cfg, meta, flat = load_flat(p)  # checks the sizes before reading params
        have = sum(int(np.size(v)) for v in flat.values())
        if head is None or head == meta.get("head"):
            return cfg, meta, flat
        # Another head than the one trained: keep the encoder (and the pretraining
        # heads where asked for and present), start the rest fresh, as for HF.
        h = get_head(head)
        num_labels = h.width(0) if h.sized else 0
        target = target_shapes(cfg, head, num_labels)
        unexpected = sorted(k for k in flat if k not in target)
        flat = {k: v for k, v in flat.items() if k in target}
        meta = {**meta, "head": head, "num_labels": num_labels, "label_names": []}
    elif hf_format.is_hf_dir(p):
        cfg, tensors, raw_cfg = hf_format.read_hf_dir(p)
        bounds.check_fields(cfg, p / "config.json")
        have = sum(int(np.size(v)) for v in tensors.values())
        src_head = hf_format.source_head(raw_cfg, cfg.architecture)
        labels = [raw_cfg["id2label"][str(i)] for i in range(len(raw_cfg.get("id2label", {})))]
        head = head or ("pretraining" if src_head == "encoder" else src_head)
        h = get_head(head)
        num_labels = h.width(len(labels)) if h.sized else len(labels)
        target = target_shapes(cfg, head, num_labels)
        flat, unexpected = hf_format.from_hf(tensors, target, str(p), cfg.architecture)
        meta = {"format": "hf", "head": head, "num_labels": num_labels, "label_names": labels}
    elif is_tf1_dir(p):
        cfg, flat, unexpected = tf1_format.read_tf1_dir(p)
        have = sum(int(np.size(v)) for v in flat.values())
        src_head = tf1_format.source_head(flat)
        head = head or src_head
        num_labels = flat["classifier/kernel"].shape[-1] if "classifier/kernel" in flat else 0
        target = target_shapes(cfg, head, num_labels)
        # Weights of a head other than the one asked for are left out, as for HF.
        unexpected += sorted(k for k in flat if k not in target)
        flat = {k: v for k, v in flat.items() if k in target}
        meta = {"format": "tf1", "head": head, "num_labels": num_labels, "label_names": []}
    else:
        raise ValueError(f"{p}: not a HF dir (config.json + model.safetensors/pytorch_model.bin), "
                         "a bert_jax dir (bert_jax.json) or a TF1 dir (bert_config.json + "
                         "bert_model.ckpt.*)")
    for k, shape in target.items():
        if k in flat and tuple(flat[k].shape) != shape:
            raise ValueError(f"{p}: parameter {k} has shape {tuple(flat[k].shape)}, the "
                             f"config implies {shape}")
    missing = sorted(set(target) - set(flat))
    # Fresh values are built at the config's sizes: bounded by what the source holds.
    bounds.check_total(target, have, p, "the checkpoint")
    if fill_missing:
        flat.update(fresh_values(cfg, head, meta["num_labels"], seed, missing))
    if report is not None:
        report.extend(f"initialized fresh: {k}" for k in missing)
        report.extend(f"ignored (unused by the model): {k}" for k in unexpected)
    vocab = model_dir.vocab_path(p)
    meta["vocab"] = str(vocab) if vocab else None
    if meta.get("do_lower_case") is None and not model_dir.is_model_dir(p):
        casing = hf_format.read_casing(p)
        if casing is not None:
            meta["do_lower_case"] = casing
    return cfg, meta, flat


# What a conversion records about itself (storage/outputs.py): a conversion
# replaces an earlier conversion (any format) without --overwrite, never the
# output of another command (a fine-tuned model, a pretraining workdir).
RECORD = outputs.record("convert", "conversion")


# Names of the entries each output format holds: a destination holding only
# such entries is an earlier conversion, which a rerun may replace.
def _own_entry(to: str) -> Callable[[str], bool]:
    def allowed(name: str) -> bool:
        if name in ("vocab.txt", *model_dir.TOKENIZER_FILES, outputs.RECORD_FILE) or \
                name.endswith(".model"):
            return True
        if to == "bert_jax":
            return name in (model_dir.META_FILE, "params")
        if to == "hf":
            return name in ("config.json", "model.safetensors", "tokenizer_config.json",
                            "special_tokens_map.json")
        return name in ("bert_config.json", "checkpoint") or name.startswith("bert_model.ckpt")
    return allowed


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, head: str | None = None,
            seed: int = 0, overwrite: bool = False) -> list[str]:
    """Convert `src` into format `to` at `dst`; returns the report lines.

    `dst` must be new, empty or an earlier conversion (its record says so).
    `overwrite` also replaces a dir holding only the files a conversion into
    `to` writes (one written before records existed, or interrupted); never
    another command's output, a dir holding anything else, or the source."""
    if to not in ("bert_jax", "hf", "tf1"):
        raise ValueError(f"--to={to!r}; expected bert_jax, hf or tf1")
    if not paths.exists(src):
        raise FileNotFoundError(f"{src}: no such checkpoint")
    if to == "tf1":  # before reading the source: the write would fail at the end
        optional.require("tensorflow", "--to=tf1 (writing a TF1 checkpoint)")
    outputs.check_destination(dst, overwrite=overwrite, sources=[src], what="destination",
                              is_own=outputs.only_entries(_own_entry(to)), record=RECORD)
    report: list[str] = []
    cfg, meta, flat = read_any(src, head=head, seed=seed, report=report)
    head = meta["head"]
    labels = meta.get("label_names", [])
    vocab = meta.get("vocab") or model_dir.vocab_path(src)
    # The casing travels with the vocabulary: recorded, else inferred from it.
    lowercase = meta.get("do_lower_case")
    tokenizer = model_dir.tokenizer_of(src, meta) if vocab else None
    if tokenizer is not None:
        lowercase = tokenizer.lowercase
    tok_files = model_dir.tokenizer_files(src)
    if tokenizer is None and not tok_files:
        report.append("no vocabulary in the source: the output has none either")

    def add_vocab(tmp):
        model_dir.copy_vocab(vocab, tmp)
        model_dir.copy_tokenizer_files(tok_files, tmp)
        if tokenizer is not None and tokenizer.kind == "wordpiece":
            hf_format.write_tokenizer_files(tmp, lowercase, cfg.max_position_embeddings)

    if to == "bert_jax":
        model_dir.save_model_dir(dst, cfg, flat, head, meta.get("num_labels", 0), labels,
                                 meta.get("task"), vocab, lowercase, tok_files, written_by=RECORD)
    elif to == "hf":
        def write(tmp):
            hf_format.write_hf_dir(tmp, cfg, flat, head, labels)
            add_vocab(tmp)
            outputs.write_record(tmp, RECORD)
        outputs.write_dir_atomic(dst, write)
    elif to == "tf1":

        def write(tmp):
            tf1_format.write_tf1_dir(tmp, cfg, flat)
            add_vocab(tmp)
            outputs.write_record(tmp, RECORD)
        outputs.write_dir_atomic(dst, write)
    return report


def load_model(path: str | os.PathLike, head: str | None = None, num_labels: int | None = None,
               seed: int = 0, **runtime) -> tuple[Any, dict[str, Any], list[str]]:
    """Build a model from a checkpoint we can read (our dir, a workdir, a HF dir,
    a TF1 dir). `head` defaults to the checkpoint's; a different head keeps the
    encoder and initializes the new head fresh. Returns (model, meta, missing)."""

    cfg, meta, flat = read_any(path)
    cfg = cfg.replace(**runtime)
    head = head or meta.get("head", "pretraining")
    if num_labels is None:
        num_labels = meta.get("num_labels", 0) if head == meta.get("head") else 0
    model = build_model(cfg, head, num_labels, seed=seed)
    if head != meta.get("head"):
        # Keep only the encoder: a new task head starts fresh. ModernBERT's
        # prediction head (head/) is shared by its MLM and task models and kept,
        # as transformers' from_pretrained keeps it.
        keep = ("bert/", "head/") if cfg.modern else ("bert/",)
        flat = {k: v for k, v in flat.items() if k.startswith(keep)}
    missing, _ = assign_params(model, flat, source=str(path))
    return model, meta, missing
