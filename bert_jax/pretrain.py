"""BERT pretraining (MLM + NSP): `python -m bert_jax.pretrain --config=... --workdir=...`.

The command: config validation, the workdir (what may be written into), the
inputs checked before anything is built, then the workdir created and locked
(`storage.run_dir`, the lifecycle fine-tuning shares) around one call to
`bert_jax.train.pretrain_job.run` (the job the one training loop runs). JAX,
Flax and orbax are imported inside functions, so that a bad config or workdir
is reported in a fraction of a second, before those imports (and long before
any compile).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax import cli
from bert_jax.convert import formats, model_dir
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.model.config import RNG_IMPLS, SIZES, BertConfig
from bert_jax.storage import outputs, paths, run_dir, workdir_lock
from bert_jax.train import distributed, loop, pretrain_job, train_config

# What a pretraining workdir holds: a workdir with anything else (a fine-tuning
# run, a model dir, someone's files) is not ours to write into.
WORKDIR_ENTRIES = ("bert_jax.json", "vocab.txt", "config.json", "checkpoints",
                   "checkpoints_unreadable", "metrics.jsonl", "metrics.jsonl.tmp", "tb",
                   "summary.json", "summary.json.tmp", "bert_jax.json.tmp", "curves.png",
                   workdir_lock.LOCK_NAME, "run_identity.json")


def _is_pretraining_workdir(path) -> bool:
    if not all(e in WORKDIR_ENTRIES or e.endswith(".model") for e in paths.listdir(path)):
        return False
    if paths.exists(paths.join(path, model_dir.META_FILE)):
        try:
            meta = model_dir.read_meta(path)
        except ValueError:
            return False
        return meta.get("task", {}).get("kind") == "pretraining"
    return True


def validate_config(config) -> None:
    """Values out of range, as one-line errors naming the config field (before
    any data is read or anything compiles)."""
    def need(ok: bool, field: str, value, allowed: str):
        if not ok:
            raise ValueError(f"config.{field}={value!r}: expected {allowed}")
    G = config.global_batch_size
    need(isinstance(G, int) and G >= 1, "global_batch_size", G, "an integer >= 1")
    need(config.grad_accum_steps >= 1, "grad_accum_steps", config.grad_accum_steps, ">= 1")
    if G % config.grad_accum_steps:
        raise ValueError(f"global_batch_size={G} is not a multiple of "
                         f"grad_accum_steps={config.grad_accum_steps}")
    need(config.num_train_steps >= 1, "num_train_steps", config.num_train_steps, ">= 1")
    need(config.get("rng_impl", "threefry2x32") in RNG_IMPLS, "rng_impl",
         config.get("rng_impl"), "one of " + ", ".join(RNG_IMPLS))
    train_config.check_optim(config.optim)
    for field in ("log_every", "eval_every", "checkpoint.every"):
        v = config[field] if "." not in field else config.checkpoint.every
        need(v >= 1, field, v, ">= 1")
    m = config.model
    need(m.size in SIZES, "model.size", m.size, "one of " + ", ".join(SIZES))
    need(m.mlm_head in ("gathered", "dense"), "model.mlm_head", m.mlm_head, "gathered or dense")
    arch = m.get("architecture", "bert")
    need(arch in ("bert", "modernbert"), "model.architecture", arch, "bert or modernbert")
    if arch == "modernbert" and config.data.nsp:
        raise ValueError("config.model.architecture='modernbert' is MLM-only: set "
                         "config.data.nsp=False")
    if m.mlm_head == "dense" and not config.data.dense_labels:
        raise ValueError("model.mlm_head=dense needs data.dense_labels=True")
    need(m.dtype in ("float32", "bfloat16", "float16"), "model.dtype", m.dtype,
         "float32, bfloat16 or float16")
    L = config.data.max_seq_length
    if L > m.max_position_embeddings:
        raise ValueError(
            f"config.data.max_seq_length={L} exceeds config.model.max_position_embeddings="
            f"{m.max_position_embeddings}; to train a model with {L} positions set "
            f"--config.model.max_position_embeddings={L} (a new model only: a checkpoint's "
            "position table keeps its size)")
    need(config.data.max_predictions_per_seq >= 1, "data.max_predictions_per_seq",
         config.data.max_predictions_per_seq, ">= 1")
    if not config.data.prepared_dir:
        raise ValueError("config.data.prepared_dir is empty: give the directory "
                         "`python -m bert_jax.data.prepare --out=...` wrote")


def check_workdir(workdir) -> None:
    """A new or empty dir, or this command's earlier workdir (it resumes)."""
    # Its record (bert_jax.json's written_by) keeps out another command's
    # output; an unrecorded workdir of older runs resumes (resume=True).
    outputs.check_destination(workdir, sources=(), what="workdir", flag="a new --workdir",
                              is_own=_is_pretraining_workdir, resume=True,
                              record=outputs.record("pretrain", "pretraining workdir"))


def check_init_from(config, cfg: BertConfig, tokenizer) -> dict[str, np.ndarray]:
    """The canonical params of config.init_from, after checking that every one
    the model has fits its shape and that it was trained with our vocabulary."""
    src = config.init_from
    if not paths.exists(src):
        raise FileNotFoundError(f"config.init_from={src}: no such checkpoint")
    _, meta, flat = formats.read_any(src)
    target = formats.target_shapes(cfg, "pretraining", 0)
    for k, v in flat.items():
        if k in target and tuple(v.shape) != target[k]:
            raise ValueError(f"config.init_from={src}: parameter {k} has shape "
                             f"{tuple(v.shape)}, this model's is {target[k]}")
    check_same_vocab(src, meta.get("vocab") or model_dir.vocab_path(src), tokenizer,
                     config.get("allow_vocab_mismatch", False),
                     "config.allow_vocab_mismatch=True")
    return flat


def check_same_vocab(checkpoint, ckpt_vocab, tokenizer, allowed: bool, how: str) -> None:
    """A checkpoint trained with one vocabulary, used with another of the same
    size, gives silently wrong embeddings: an error unless asked for."""
    if not ckpt_vocab or allowed:
        return
    theirs = load_tokenizer(ckpt_vocab)
    if theirs.fingerprint != tokenizer.fingerprint:
        raise ValueError(f"{checkpoint}: trained with the vocabulary {ckpt_vocab} (fingerprint "
                         f"{theirs.fingerprint}, {theirs.vocab_size} tokens), this run uses "
                         f"{tokenizer.vocab_file} ({tokenizer.fingerprint}, "
                         f"{tokenizer.vocab_size} tokens); set {how} to use it anyway")


def check(config, workdir) -> None:
    """Everything about the command line that is known before JAX starts."""
    validate_config(config)
    check_workdir(workdir)


def train(config, workdir: str) -> dict:
    """`check`, then `_train`: for callers other than the command (which
    checks before the processes join)."""
    check(config, workdir)
    return _train(config, str(workdir))


def _train(config, workdir: str) -> dict:
    G = config.global_batch_size

    # ---- Data -------------------------------------------------------------------------
    pipe = pretrain_job.open_pipeline(config.data, G)
    tokenizer = pipe.tokenizer
    eval_pipe = None
    if config.eval_data.prepared_dir:
        eval_cfg = config.data.copy_and_resolve_references()
        eval_cfg.prepared_dir = config.eval_data.prepared_dir
        eval_pipe = pretrain_job.open_pipeline(eval_cfg, G)
        if eval_pipe.corpus.vocab_fingerprint != pipe.corpus.vocab_fingerprint:
            raise ValueError(f"eval_data.prepared_dir={config.eval_data.prepared_dir} was "
                             f"prepared with another vocabulary than {config.data.prepared_dir}")
    init_params = None
    if config.init_from and not loop.has_checkpoint(workdir):
        cfg = pretrain_job.bert_config(config, tokenizer.vocab_size,
                                       pretrain_job.special_token_ids(tokenizer))
        init_params = check_init_from(config, cfg, tokenizer)

    pretrain_job.check_rerun(config, workdir, pipe)  # another model, vocab or data: refused

    # ---- Workdir: created and locked only now that the inputs are known good ----------
    with run_dir.claim(workdir, has_progress=loop.has_progress):
        return pretrain_job.run(config, workdir, pipe, eval_pipe, init_params)


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Pretraining config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here.")


def main(argv):
    del argv
    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    if not FLAGS["verbosity"].present:
        # orbax logs every checkpoint step at INFO; the progress bar says enough.
        logging.set_verbosity(logging.WARNING)
    # Before JAX is imported and the processes join: seconds earlier.
    check(FLAGS.config, FLAGS.workdir)
    d = FLAGS.config.distributed
    distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
    summary = _train(FLAGS.config, FLAGS.workdir)
    return cli.EXIT_PREEMPTED if "preempted_at" in summary else cli.EXIT_OK


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    cli.run(main)
