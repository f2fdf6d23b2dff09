"""What made a training workdir, so that a rerun with another model, vocabulary,
task or data is refused instead of silently starting something else there.

A workdir's `run_identity.json` holds a flat record:
  task              'pretraining', 'glue:sst2', 'squad:squad_v1.1', 'conll:conll2003'
  model.<field>     every BertConfig field that changes parameter shapes or the
                    math (all but RUNTIME_FIELDS: sizes, layers, heads, vocab size,
                    positions, activation, layer-norm epsilon...), the head and
                    its labels
  vocab             the vocabulary file's fingerprint
  data...           the training data: a prepared corpus's fingerprint, or a
                    fine-tuning train file's size and SHA-256, and the settings
                    that select or cut its examples
and, under `where`, the paths those came from (shown in messages, never
compared: a moved data directory with the same content still resumes).

The record is compared before anything is written to the workdir (no lock, no
metrics, no checkpoint touched) and written once the run has restored (or
started) its state. Workdirs made before this record existed still resume:
a pretraining workdir's bert_jax.json then stands in for it (architecture,
task and vocabulary), and a checkpoint that does not fit the model is refused
at restore (`checkpointing.CheckpointMismatch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax

from bert_jax.convert import model_dir
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.storage import paths

RECORD = "run_identity.json"
FORMAT = "bert_jax.run_identity/1"

# BertConfig fields that say how a run executes the model, not what it is:
# every other field (sizes, layers, heads, vocab size, positions, activation,
# layer-norm epsilon, and any architecture field added later) is compared.
# Dropout rates may be set per run (fine-tuning's runtime overrides), the
# initializer range acts only at step 0, and a change of scan_layers is
# caught at restore (another parameter tree).
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "scan_layers", "remat_policy",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")


class RerunMismatch(ValueError):
    """The config of a rerun is not the one the workdir was made with."""


def model_identity(cfg, head: str, num_labels: int = 0,
                   label_names=()) -> dict:
    """model.* entries of a BertConfig (or its dict in bert_jax.json) and head."""
    d = dict(cfg) if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    # Through JSON: tuples read back as lists, so a record compares equal to itself.
    out = {f"model.{k}": json.loads(json.dumps(v)) for k, v in sorted(d.items())
           if k not in RUNTIME_FIELDS}
    out.update({"model.head": head, "model.num_labels": int(num_labels),
                "model.label_names": list(label_names or [])})
    return out


def file_identity(path) -> dict:
    """{'size', 'sha256'} of a file (a URL is read through the local cache)."""
    local = paths.local_copy(path) if paths.is_url(path) else path
    h = hashlib.sha256()
    size = 0
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()[:16]}


def make(task: str, model: dict, vocab: tuple[str, str], data: dict,
         where: dict | None = None) -> dict:
    """The record: `vocab` is (fingerprint, path); `data` flat entries, each
    key starting with 'data'; `where` paths by key (shown, not compared)."""
    return {"format": FORMAT, "task": task, **model, "vocab": vocab[0], **data,
            "where": {"vocab": str(vocab[1]), **{k: str(v) for k, v in (where or {}).items()}}}


def read(workdir) -> dict | None:
    """The workdir's record, its stand-in for an older pretraining workdir, or
    None (a new workdir, or an older one with nothing to tell)."""
    path = paths.join(workdir, RECORD)
    if paths.exists(path):
        try:
            record = json.loads(paths.read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return record
    return _legacy(workdir)


def _legacy(workdir) -> dict | None:
    """What an older pretraining workdir's bert_jax.json and vocabulary say."""
    if not paths.exists(paths.join(workdir, model_dir.META_FILE)):
        return None
    meta = model_dir.read_meta(workdir)
    kind = (meta.get("task") or {}).get("kind")
    if kind != "pretraining" or not isinstance(meta.get("config"), dict):
        return None
    model = model_identity(meta["config"], "pretraining")
    record = {"task": kind, **{k: v for k, v in model.items()
                               if k not in ("model.num_labels", "model.label_names")}}
    vocab = model_dir.vocab_path(workdir)
    if vocab is not None:
        record["vocab"] = load_tokenizer(vocab).fingerprint
        record["where"] = {"vocab": str(vocab)}
    return record


def differences(old: dict, new: dict) -> list[str]:
    """'key old -> new' for every compared entry both records have that differs."""
    out = []
    for k, v in new.items():
        if k in ("format", "where") or k not in old or old[k] == v:
            continue
        before, after = old[k], v
        where_old, where_new = (old.get("where") or {}).get(k), (new.get("where") or {}).get(k)
        if where_old or where_new:
            before, after = f"{before} ({where_old})", f"{after} ({where_new})"
        out.append(f"{k} {before} -> {after}")
    return out


def check(workdir, identity: dict) -> None:
    """Raise RerunMismatch (one line) when `workdir` was made by a run with
    another model, vocabulary, task or data than `identity`."""
    if not paths.isdir(workdir):
        return
    old = read(workdir)
    if old is None:
        return
    diff = differences(old, identity)
    if diff:
        raise RerunMismatch(
            f"{workdir}: this workdir was made by another run ({'; '.join(diff)}); rerun with "
            "the config it was made with, or give a new --workdir to start a new run")


def record(workdir, identity: dict) -> None:
    """Write the record (process 0; the caller has checked it matches)."""
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, RECORD), json.dumps(identity, indent=2))
