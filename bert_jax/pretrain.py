"""BERT pretraining (MLM + NSP): `python -m bert_jax.pretrain --config=... --workdir=...`.

This file is kept short: flags, distributed init and one call to `train`.
JAX, Flax and orbax are imported inside the functions that run the model, so
that a bad config or workdir is reported in a fraction of a second, before
those imports (and long before any compile).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax import cli, storage
from bert_jax.convert import model_dir
from bert_jax.model.config import RNG_IMPLS, BertConfig
from bert_jax.storage import outputs, workdir_lock
from bert_jax.train import loop, train_config

if TYPE_CHECKING:
    from bert_jax.train.step import Objective, StateSpec


def pretraining_objective(nsp: bool, gathered: bool) -> Objective:
    import jax.numpy as jnp

    from bert_jax.train import losses
    from bert_jax.train.step import Objective

    # A packed batch (data.packing) carries segment_ids, position_ids and one
    # NSP slot per packed instance; which keys exist is static under jit.
    def sums(model, batch, rng):
        packed = {k: batch[k] for k in ("segment_ids", "position_ids", "nsp_positions")
                  if k in batch}
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                    masked_positions=batch["masked_positions"] if gathered else None,
                    dropout_rng=rng, **packed)
        if gathered:
            s = losses.mlm_sums(out["mlm_logits"], batch["masked_ids"], batch["masked_weights"])
        else:
            s = losses.dense_mlm_sums(out["mlm_logits"], batch["mlm_labels"])
        if nsp:
            s.update(losses.nsp_sums(out["nsp_logits"], batch["nsp_labels"],
                                     batch.get("nsp_weights")))
        return s

    def totals(batch):
        t = {"mlm": (jnp.sum(batch["masked_weights"]) if gathered
                     else jnp.sum(batch["mlm_labels"] != -100).astype(jnp.float32))}
        if nsp:
            t["nsp"] = (jnp.sum(batch["nsp_weights"]) if "nsp_weights" in batch
                        else jnp.float32(batch["nsp_labels"].shape[0]))
        return t

    def loss(s, t):
        value = s["mlm_loss"] / jnp.maximum(t["mlm"], 1.0)
        if nsp:
            value = value + s["nsp_loss"] / t["nsp"]
        return value

    return Objective(sums, totals, loss)


def bert_config(config, vocab_size: int) -> BertConfig:
    """The model config: the named size, then any explicit model.* overrides."""
    m = config.model
    arch = {name: m.get(key, 0) for key, name in (
        ("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"))}
    return BertConfig.named(
        m.size, **{k: v for k, v in arch.items() if v}, vocab_size=vocab_size, dtype=m.dtype,
        attention_impl=m.attention_impl,
        scan_layers=m.scan_layers, remat_policy=m.remat_policy,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        max_position_embeddings=m.max_position_embeddings)


@dataclasses.dataclass
class Built:
    """The pieces of the pretraining step: what `train` runs and what
    `bert_jax.aot` compiles for a TPU topology (one definition for both)."""

    cfg: BertConfig
    objective: Objective
    optimizer: Any
    schedule: Any
    model_fn: Any
    spec: StateSpec
    step_fn: Any          # jitted train step (state, batch, rng) -> (state, metrics)
    gathered: bool


def build(config, vocab_size: int, mesh) -> Built:
    """Model config, objective, optimizer, abstract sharded state and the jitted
    step. Abstract end to end (nothing is allocated or run), so it also works on
    the devices of a TPU topology with no TPU attached. Call it under
    `jax.set_mesh(mesh)` and `sharding.axis_rules`."""
    from flax import nnx

    from bert_jax.model import sharding
    from bert_jax.model.heads import BertForPreTraining
    from bert_jax.train.optim import build_optimizer
    from bert_jax.train.step import jit_train_step, rng_impl, state_spec

    G = config.global_batch_size
    if G % config.grad_accum_steps:
        raise ValueError(f"global_batch_size={G} is not a multiple of "
                         f"grad_accum_steps={config.grad_accum_steps}")
    # Each micro-batch's rows are split over data x fsdp; caught here, the user
    # gets the field and the mesh instead of JAX's sharding error (or, in
    # bert_jax.aot, that error for a 512-chip slice).
    shards = sharding.batch_shards(mesh)
    if (G // config.grad_accum_steps) % shards:
        per = (f" / grad_accum_steps={config.grad_accum_steps}"
               if config.grad_accum_steps > 1 else "")
        raise ValueError(
            f"config.global_batch_size={G}{per}: expected a multiple of {shards}, the batch "
            f"shards of mesh (data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']}) "
            f"on {mesh.size} devices")
    cfg = bert_config(config, vocab_size)
    gathered = config.model.mlm_head == "gathered"
    if not gathered and not config.data.dense_labels:
        raise ValueError("model.mlm_head=dense needs data.dense_labels=True")
    rng_impl(config)  # checked before any compile
    objective = pretraining_objective(config.data.nsp, gathered)
    optimizer, schedule = build_optimizer(config.optim, config.num_train_steps)

    def model_fn(key):
        return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

    spec = state_spec(model_fn, optimizer, mesh, sharding.DEFAULT_RULES)
    step_fn = jit_train_step(spec, mesh, objective, optimizer, schedule,
                                      config.grad_accum_steps)
    return Built(cfg, objective, optimizer, schedule, model_fn, spec, step_fn, gathered)


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Host-side division of metric sums by their denominators."""
    out = {}
    if "mlm_weight" in sums:
        w = max(sums["mlm_weight"], 1.0)
        out["mlm_loss"] = sums["mlm_loss"] / w
        out["mlm_accuracy"] = sums["mlm_correct"] / w
        out["mlm_perplexity"] = math.exp(min(out["mlm_loss"], 50.0))
    if "nsp_weight" in sums:
        w = max(sums["nsp_weight"], 1.0)
        out["nsp_loss"] = sums["nsp_loss"] / w
        out["nsp_accuracy"] = sums["nsp_correct"] / w
    return out


def _open_pipeline(data_cfg, batch_size):
    import jax

    from bert_jax.data.pipeline import PretrainingPipeline
    return PretrainingPipeline.from_config(data_cfg, global_batch_size=batch_size,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count())


def evaluate(eval_step, state, pipe, num_batches: int, mesh) -> dict[str, float]:
    import jax

    from bert_jax.train.step import global_batch
    acc: dict[str, float] = {}
    for i in range(num_batches):
        sums = jax.device_get(eval_step(state["params"], global_batch(pipe.batch(i),
                                                                               mesh)))
        for k, v in sums.items():
            acc[k] = acc.get(k, 0.0) + float(v)
    return summarize(acc)


# What a pretraining workdir holds: a workdir with anything else (a fine-tuning
# run, a model dir, someone's files) is not ours to write into.
WORKDIR_ENTRIES = ("bert_jax.json", "vocab.txt", "config.json", "checkpoints",
                   "checkpoints_unreadable", "metrics.jsonl", "metrics.jsonl.tmp", "tb",
                   "summary.json", "summary.json.tmp", "bert_jax.json.tmp", "curves.png",
                   workdir_lock.LOCK_NAME)


def _is_pretraining_workdir(path) -> bool:
    if not all(e in WORKDIR_ENTRIES or e.endswith(".model") for e in storage.listdir(path)):
        return False
    if storage.exists(storage.join(path, model_dir.META_FILE)):
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
    from bert_jax.model.config import SIZES
    need(m.size in SIZES, "model.size", m.size, "one of " + ", ".join(SIZES))
    need(m.mlm_head in ("gathered", "dense"), "model.mlm_head", m.mlm_head, "gathered or dense")
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
    outputs.check_destination(workdir, sources=(), what="workdir", flag="a new --workdir",
                              is_own=_is_pretraining_workdir)


def check_init_from(config, cfg: BertConfig, tokenizer) -> dict[str, np.ndarray]:
    """The canonical params of config.init_from, after checking that every one
    the model has fits its shape and that it was trained with our vocabulary."""
    from bert_jax import convert
    src = config.init_from
    if not storage.exists(src):
        raise FileNotFoundError(f"config.init_from={src}: no such checkpoint")
    _, meta, flat = convert.read_any(src)
    target = convert._target_shapes(cfg, "pretraining", 0)
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
    from bert_jax.data.tokenizer import load_tokenizer
    theirs = load_tokenizer(ckpt_vocab)
    if theirs.fingerprint != tokenizer.fingerprint:
        raise ValueError(f"{checkpoint}: trained with the vocabulary {ckpt_vocab} (fingerprint "
                         f"{theirs.fingerprint}, {theirs.vocab_size} tokens), this run uses "
                         f"{tokenizer.vocab_file} ({tokenizer.fingerprint}, "
                         f"{tokenizer.vocab_size} tokens); set {how} to use it anyway")


def train(config, workdir: str) -> dict:
    """Validate everything, take the workdir (lock), then `_train`. A run that
    fails before its first step removes the workdir it created."""
    workdir = str(workdir)
    validate_config(config)
    check_workdir(workdir)
    created = not storage.exists(workdir)
    import jax
    try:
        return _train(config, workdir)
    except BaseException:
        if created and jax.process_index() == 0 and not loop.has_progress(workdir):
            try:
                storage.remove(workdir)
            except OSError:
                pass  # e.g. the storage server that made the run fail
        raise


def _take_lock(workdir: str) -> workdir_lock.WorkdirLock | None:
    """Process 0 locks the workdir; with several processes its answer is
    broadcast so that all stop together when the workdir is taken."""
    import jax
    lock, err = None, None
    if jax.process_index() == 0:
        lock = workdir_lock.WorkdirLock(workdir)
        try:
            lock.acquire()
        except workdir_lock.WorkdirLocked as e:
            lock, err = None, e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        taken = int(multihost_utils.broadcast_one_to_all(np.int32(err is not None)))
        if taken and err is None:
            raise workdir_lock.WorkdirLocked(f"{workdir}: in use by another run (see "
                                             "process 0's error)")
    if err is not None:
        raise err
    return lock


def _train(config, workdir: str) -> dict:
    G = config.global_batch_size

    # ---- Data -------------------------------------------------------------------------
    pipe = _open_pipeline(config.data, G)
    tokenizer = pipe.tokenizer
    eval_pipe = None
    if config.eval_data.prepared_dir:
        eval_cfg = config.data.copy_and_resolve_references()
        eval_cfg.prepared_dir = config.eval_data.prepared_dir
        eval_pipe = _open_pipeline(eval_cfg, G)
        if eval_pipe.corpus.vocab_fingerprint != pipe.corpus.vocab_fingerprint:
            raise ValueError(f"eval_data.prepared_dir={config.eval_data.prepared_dir} was "
                             f"prepared with another vocabulary than {config.data.prepared_dir}")
    cfg = bert_config(config, tokenizer.vocab_size)
    gathered = config.model.mlm_head == "gathered"
    if not gathered and not config.data.dense_labels:
        raise ValueError("model.mlm_head=dense needs data.dense_labels=True")
    init_params = None
    resuming = loop.has_checkpoint(workdir)
    if config.init_from and not resuming:
        init_params = check_init_from(config, cfg, tokenizer)

    # ---- Workdir: created and locked only now that the inputs are known good ----------
    storage.makedirs(workdir)
    lock = _take_lock(workdir)
    try:
        return _run(config, workdir, pipe, eval_pipe, cfg, gathered, init_params)
    finally:
        if lock is not None:
            lock.release()


class PretrainJob:
    """What pretraining brings to `bert_jax.train.loop`: the pipeline's batches and
    position, MLM/NSP window metrics, held-out evaluation (no best model:
    pretraining keeps its checkpoints)."""

    def __init__(self, config, pipe, eval_pipe, eval_fn, mesh, seq_flops: float):
        self.name, self.num_steps = "pretrain", config.num_train_steps
        self.config, self.pipe, self.eval_pipe, self.eval_fn = config, pipe, eval_pipe, eval_fn
        self.mesh, self.seq_flops = mesh, seq_flops
        self.data_state, self.check_data_state = pipe.state, pipe.check_state

    def batches(self, start_step):
        import jax
        G, L = self.config.global_batch_size, self.config.data.max_seq_length
        for _, local in self.pipe.iterate(start_step, self.num_steps - start_step):
            real = int(local["attention_mask"].sum()) * jax.process_count()
            yield local, {"sequences": G, "tokens": G * L, "real_tokens": real,
                          "flops": self.seq_flops * G}

    def train_record(self, sums, steps, step):
        return summarize(sums)

    def eval_label(self, step):
        if self.eval_fn is not None and (step % self.config.eval_every == 0
                                         or step == self.num_steps):
            return "held_out"
        return None

    def evaluate(self, params, step, label):
        from bert_jax.train.loop import Evaluation
        return Evaluation(evaluate(self.eval_fn, {"params": params}, self.eval_pipe,
                                   self.config.eval_batches, self.mesh))

    def save_best(self, params, step):
        pass


def _run(config, workdir, pipe, eval_pipe, cfg, gathered, init_params) -> dict:
    import jax

    from bert_jax.model import flops, sharding
    from bert_jax.train.step import dropout_key, init_state, jit_eval_step

    is_main = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh.shape)
    tokenizer = pipe.tokenizer
    peak = flops.device_peak_flops()  # before set_mesh: on CPU it runs a one-device matmul

    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        built = build(config, tokenizer.vocab_size, mesh)
        cfg, spec, gathered = built.cfg, built.spec, built.gathered
        if is_main:
            model_dir.write_meta(workdir, cfg, "pretraining", task={"kind": "pretraining"},
                                 do_lower_case=tokenizer.lowercase)
            model_dir.copy_vocab(tokenizer.vocab_file, workdir)
            storage.write_text(storage.join(workdir, "config.json"),
                               config.to_json_best_effort(indent=2))

        def fresh_state():
            if init_params is not None and is_main:
                print(f"initialized weights from {config.init_from}", flush=True)
            return init_state(spec, built.model_fn, built.optimizer, config.seed, init_params)

        eval_fn = jit_eval_step(spec, mesh, built.objective) if eval_pipe else None
        seq_flops = flops.train_flops_per_sequence(
            cfg, config.data.max_seq_length,
            config.data.max_predictions_per_seq if gathered else config.data.max_seq_length)
        job = PretrainJob(config, pipe, eval_pipe, eval_fn, mesh, seq_flops)
        summary, _ = loop.run(job, config, workdir, mesh=mesh, spec=spec, step_fn=built.step_fn,
                              init_state=fresh_state, rng=dropout_key(config),
                              peak_flops=peak)
    if summary["history"]:
        summary["eval"] = summary["history"][-1]["metrics"]
    if "final_loss" in summary:
        # Every process prints it (multi-host launchers collect each task's output).
        print(f"final loss {summary['final_loss']:.9g} at step {summary['final_loss_step']} "
              f"(process {jax.process_index()} of {jax.process_count()})", flush=True)
    elif is_main:
        print(f"nothing to do: {workdir} is already at step {summary['start_step']} of "
              f"{config.num_train_steps}", flush=True)
    summary.update(model_size=config.model.size, global_batch_size=config.global_batch_size)
    loop.write_summary(workdir, summary)
    return summary


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
    validate_config(FLAGS.config)
    check_workdir(FLAGS.workdir)
    from bert_jax.train import distributed
    d = FLAGS.config.distributed
    distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
    try:
        summary = train(FLAGS.config, FLAGS.workdir)
    except (ValueError, OSError, FloatingPointError) as e:
        cli.error(str(e))
        return cli.EXIT_ERROR
    return cli.EXIT_PREEMPTED if "preempted_at" in summary else cli.EXIT_OK


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    cli.run(main)
