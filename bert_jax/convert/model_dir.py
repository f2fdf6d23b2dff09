"""Our saved-model directory, and loading a model from any checkpoint we read.

Layout of a bert_jax model dir:
  bert_jax.json   {"format": "bert_jax", "config": BertConfig fields, "head": ...,
                   "num_labels": n, "label_names": [...], "task": {...}}
  params/         orbax checkpoint of the canonical parameter tree
  vocab.txt       (or *.model) the vocabulary the model was trained with

A training workdir is also a model dir: it has bert_jax.json and vocab at the
top and params inside the newest complete `checkpoints/<step>/`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from bert_jax.convert import hf_format
from bert_jax.data.tokenizer import load_tokenizer, vocab_in_dir
from bert_jax.model.config import BertConfig
from bert_jax.model.params import nest, unnest
from bert_jax.storage import json_input, outputs, paths

META_FILE = "bert_jax.json"


def write_meta(path: str | os.PathLike, cfg: BertConfig, head: str, num_labels: int = 0,
               label_names: list[str] | None = None, task: dict | None = None,
               do_lower_case: bool | None = None, written_by: dict | None = None) -> None:
    """`do_lower_case`: the casing the vocabulary was used with (None: unknown,
    readers then infer it from the vocabulary). `written_by`: the command and
    kind of output (storage/outputs.py); by default what `task` implies (a
    pretraining workdir, a fine-tuned model)."""
    meta = {"format": "bert_jax", "config": cfg.to_google_dict(), "head": head,
            "num_labels": num_labels, "label_names": list(label_names or []),
            "task": task or {}}
    rec = written_by or outputs.record_of_task(task)
    if rec is not None:
        meta[outputs.RECORD_KEY] = rec
    if do_lower_case is not None:
        meta["do_lower_case"] = bool(do_lower_case)
    paths.write_text(paths.join(path, META_FILE), json.dumps(meta, indent=2))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    f = paths.join(path, META_FILE)
    meta = json_input.read(f)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{f}: not a bert_jax model description (no \"config\" object)")
    return meta


def save_params(path: str | os.PathLike, flat: dict[str, np.ndarray]) -> None:
    # orbax (~0.4 s to import): only reading or writing parameters needs it
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(paths.orbax_path(path), nest(flat))
        ckptr.wait_until_finished()


def load_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    # orbax (~0.4 s to import): only reading or writing parameters needs it
    import orbax.checkpoint as ocp
    path = paths.orbax_path(path)
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restore_args = __import__("jax").tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return unnest(ckptr.restore(path, restore_args=restore_args))


def copy_vocab(src: str | os.PathLike | None, dst_dir: str | os.PathLike) -> None:
    if src is None:
        return
    if paths.isdir(src):
        src = vocab_path(src)
        if src is None:
            return
    if paths.exists(src):
        base = paths.name(src)
        if base == "tokenizer.json":  # travels with its config files (tokenizer_files)
            return
        paths.copy_file(src, paths.join(dst_dir, base if base.endswith(".model")
                                            else "vocab.txt"))


# A HF tokenizer without a vocab.txt (ModernBERT's byte-level BPE): these
# files travel together through conversions, as vocab.txt does.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_files(path: str | os.PathLike) -> list:
    """The TOKENIZER_FILES a dir holds, when its vocabulary is a tokenizer.json
    (no vocab.txt or *.model; else [])."""
    if not paths.isdir(path):
        return []
    names = paths.listdir(path)
    if "tokenizer.json" not in names or "vocab.txt" in names or any(
            n.endswith(".model") for n in names):
        return []
    return [paths.join(path, n) for n in TOKENIZER_FILES if n in names]


def copy_tokenizer_files(files, dst_dir: str | os.PathLike) -> None:
    for f in files or ():
        paths.copy_file(f, paths.join(dst_dir, paths.name(f)))


def save_model_dir(out: str | os.PathLike, cfg: BertConfig, flat: dict[str, np.ndarray],
                   head: str, num_labels: int = 0, label_names: list[str] | None = None,
                   task: dict | None = None, vocab: str | os.PathLike | None = None,
                   do_lower_case: bool | None = None, tokenizer: list | None = None,
                   written_by: dict | None = None) -> None:
    """Write a complete model dir to a temp dir beside `out`, then rename, so a
    crash never leaves a half-written model behind. `tokenizer`: files of a
    HF tokenizer (`tokenizer_files`) copied beside the params. In a bucket (no
    rename) the dir is written locally first, then uploaded over the old one
    with bert_jax.json last (`outputs.upload_dir`): a dir is a model dir only
    once that marker exists, and only the old objects are deleted.
    The caller has checked the destination (`outputs.check_destination`)."""

    def write(tmp):
        save_params(tmp / "params", flat)
        copy_vocab(vocab, tmp)
        copy_tokenizer_files(tokenizer, tmp)
        write_meta(tmp, cfg, head, num_labels, label_names, task, do_lower_case, written_by)
    outputs.write_dir_atomic(out, write)


def recorded_casing(checkpoint) -> bool | None:
    """do_lower_case as a checkpoint dir records it (bert_jax.json, or a HF /
    TF1 dir's tokenizer_config.json); None when it records none."""
    path = checkpoint if paths.is_url(checkpoint) else pathlib.Path(checkpoint)
    if is_model_dir(path):
        return read_meta(path).get("do_lower_case")
    return hf_format.read_casing(paths.local_copy(path))


def tokenizer_of(checkpoint, meta: dict | None = None, vocab=None):
    """The tokenizer a checkpoint was trained with: its vocabulary (or `vocab`)
    with the casing its metadata records (inferred from the vocabulary when it
    records none)."""
    vocab = vocab or (meta or {}).get("vocab") or vocab_path(checkpoint)
    if vocab is None:
        raise FileNotFoundError(f"{checkpoint}: no vocab.txt or *.model inside")
    return load_tokenizer(vocab, lowercase=(meta or {}).get("do_lower_case"))


def checked_tokenizer(checkpoint, vocab=None, allow_vocab_mismatch: bool = False):
    """The checkpoint's own tokenizer; `vocab` only where it has none, or where
    it is the same vocabulary, or when a mismatch is explicitly allowed (other
    token ids would give silently wrong vectors)."""
    own = vocab_path(checkpoint)
    lowercase = recorded_casing(checkpoint)
    if vocab is None:
        if own is None:
            raise FileNotFoundError(f"{checkpoint}: no vocab.txt inside; pass --vocab")
        return load_tokenizer(own, lowercase=lowercase)
    tok = load_tokenizer(vocab, lowercase=lowercase)
    if own is not None and not allow_vocab_mismatch:
        theirs = load_tokenizer(own)
        if theirs.fingerprint != tok.fingerprint:
            raise ValueError(f"--vocab={vocab}: not the vocabulary the checkpoint was trained "
                             f"with ({own}, fingerprint {theirs.fingerprint} vs "
                             f"{tok.fingerprint}); drop --vocab, or pass "
                             "--allow_vocab_mismatch to use it anyway")
    return tok


def vocab_path(model_dir: str | os.PathLike) -> pathlib.Path | str | None:
    return vocab_in_dir(model_dir)


def is_model_dir(path: str | os.PathLike) -> bool:
    return paths.exists(paths.join(path, META_FILE))
