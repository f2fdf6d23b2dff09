"""Fine-tuning GLUE, SQuAD and CoNLL-2003 in the one training loop
(`bert_jax/train/loop.py`, the same as pretraining): `FinetuneJob` is what a task
brings to it (its data, head, loss and metrics: `bert_jax/finetune/task.py`).

Outputs under workdir: checkpoints/ (state + epoch and position in it: a
rerun resumes exactly), metrics.jsonl, tb/, eval/epoch_<k>/<split>/... and
eval/step_<n>/<split>/... (config.eval_every), best/ while training (the best
evaluation's model dir), the fine-tuned model dir in model/ (with label names
and task config, read by `python -m bert_jax.predict`), summary.json, and
test-set predictions where the task has them (GLUE submission files in
test_predictions/).
"""
from __future__ import annotations

import contextlib
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bert_jax.convert import formats, model_dir
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.finetune import checks
from bert_jax.finetune import task as tasks
from bert_jax.model import flops, sharding
from bert_jax.model.heads import build_model, dropout_overrides, encoder_params, get_head
from bert_jax.model.params import pure_to_flat, unstack_layers
from bert_jax.storage import paths
from bert_jax.train import checkpointing, loop, run_identity
from bert_jax.train.loop import Evaluation
from bert_jax.train.optim import build_optimizer
from bert_jax.train.step import (
    Objective,
    dropout_key,
    global_batch,
    init_state,
    jit_train_step,
    rng_impl,
    state_spec,
)

# Keys of a batch the model never sees.
_AUX_KEYS = ("feature_index",)


def objective_for(head: str) -> Objective:
    """The training objective of the `head` (its loss, per labelled example or token)."""
    h = get_head(head)

    def forward(model, batch, rng):
        # Packed batches (config.packing) carry these; which keys exist is static.
        packed = {k: batch[k] for k in ("segment_ids", "position_ids", "cls_positions")
                  if k in batch}
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     dropout_rng=rng, **packed)

    def sums(model, batch, rng):
        return h.loss_sums(forward(model, batch, rng), batch)

    def totals(batch):
        return {"n": h.loss_count(batch)}

    def loss(s, t):
        return s["loss"] / jnp.maximum(t["n"], 1.0)

    return Objective(sums, totals, loss)


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process builds the same global batch; each feeds its own rows."""
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    b = next(iter(batch.values())).shape[0]
    if b % n:
        raise ValueError(f"batch size {b} is not a multiple of {n} processes")
    k = b // n
    return {key: v[p * k:(p + 1) * k] for key, v in batch.items()}


def make_predict_fn(graphdef, params_sharding, mesh):
    """jitted forward on a batch dict -> dict of host numpy outputs."""

    # Replicated outputs: with several processes every host can then read the
    # whole batch's logits (a batch-sharded result is not fully addressable).
    @functools.partial(jax.jit, in_shardings=(params_sharding, None),
                       out_shardings=NamedSharding(mesh, PartitionSpec()))
    def forward(params, batch):
        model = nnx.merge(graphdef, params)
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])

    def predict(params, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model_in = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        out = jax.device_get(forward(params, global_batch(_local_rows(model_in), mesh)))
        out = {k: np.asarray(v) for k, v in out.items()}
        for k in (*_AUX_KEYS, "example_weights"):
            if k in batch:
                out[k] = batch[k]
        return out
    return predict


def init_weights(config):
    """(BertConfig, encoder params, vocab path, its casing: True / False as the
    checkpoint records it, None to infer it from the vocabulary) from
    config.init_checkpoint."""
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required: a bert_jax model dir or workdir, "
                         "a HF dir or a TF1 dir")
    if not paths.exists(config.init_checkpoint):
        raise FileNotFoundError(f"config.init_checkpoint={config.init_checkpoint}: no such "
                                "checkpoint")
    cfg, meta, flat = formats.read_any(config.init_checkpoint)
    own = meta.get("vocab") or model_dir.vocab_path(config.init_checkpoint)
    vocab = config.get("vocab") or own
    if not vocab:
        raise ValueError(f"{config.init_checkpoint}: no vocab.txt inside; set config.vocab")
    if own and config.get("vocab"):
        try:
            model_dir.checked_tokenizer(config.init_checkpoint, config.vocab,
                                        config.get("allow_vocab_mismatch", False))
        except ValueError as e:
            raise ValueError(str(e).replace("--vocab=", "config.vocab=").replace(
                "drop --vocab, or pass --allow_vocab_mismatch",
                "unset config.vocab, or set config.allow_vocab_mismatch=True")) from None
    return cfg, encoder_params(cfg, flat), str(vocab), meta.get("do_lower_case")


def run_identity_of(config, cfg, task, tokenizer, vocab, task_cls) -> dict:
    """What a fine-tuning workdir is (bert_jax.train.run_identity): the task, the
    checkpoint's architecture with this task's head and labels, the
    vocabulary, and the training data (its file's size and hash, or its TFDS
    name, and the settings that select or cut its examples)."""
    kind = task_cls.kind
    model = run_identity.model_identity(cfg, task.head, task.num_labels, task.label_names)
    data: dict = {"data.num_train_examples": task.num_train_examples()}
    for field in ("max_seq_length", "max_train_examples", "version", "doc_stride",
                  "max_query_length", "article_split", "synthesize_v2",
                  "unanswerable_fraction", "entity_types"):
        if field in config:
            v = config[field]
            data[f"data.{field}"] = list(v) if isinstance(v, (tuple, list)) else v
    where = {}
    tfds = config.get("tfds")
    if tfds not in (None, False, "", "false", "False", "0"):
        data["data.tfds"] = str(tfds)
    else:
        train = task_cls.train_file(config)
        if train:
            f = run_identity.file_identity(train)
            data["data.train_file"] = f"sha256 {f['sha256']}, {f['size']} bytes"
            where["data.train_file"] = train
    return run_identity.make(f"{kind}:{task.name}", model, (tokenizer.fingerprint, vocab), data,
                             where)


def evaluate_task(task, predict, params, out_dir, eval_batch_size) -> dict[str, dict]:
    results = {}
    for split in task.eval_splits:
        outputs = [predict(params, b) for b in task.eval_batches(split, eval_batch_size)]
        results[split] = task.evaluate(split, outputs, out_dir=out_dir)
    return results


def runtime_overrides(config, cfg) -> dict:
    """BertConfig fields from config.model that change how the checkpoint's
    architecture `cfg` runs (None: as the checkpoint was saved); the dropout
    rates, named as BERT names them, set the fields of `cfg`'s architecture."""
    def given(k):
        return "model" in config and config.model.get(k) is not None
    run = {k: config.model[k] for k in ("dtype", "attention_impl", "scan_layers",
                                        "remat_policy") if given(k)}
    rates = {k: config.model[k] for k in ("hidden_dropout_prob",
                                          "attention_probs_dropout_prob") if given(k)}
    return {**run, **dropout_overrides(cfg, rates)}


def main_metric(task) -> tuple[str, str]:
    """(split, metric) that picks the best model: GLUE the task's score (its
    headline metric, or their mean), SQuAD and CoNLL F1, on the first dev split."""
    return task.eval_splits[0], task.main_metric


class FinetuneJob:
    """What a fine-tuning task brings to `bert_jax.train.loop`. The batches of step s
    are batch s % steps_per_epoch of `task.train_batches(B, seed, epoch)`, a
    pure function of (seed, epoch): the saved position is (epoch, batches
    consumed), and a resumed run regenerates that epoch and skips ahead."""

    def __init__(self, config, workdir, task, predict, saver, steps_per_epoch, seq_flops,
                 rows_per_step):
        self.config, self.workdir, self.task, self.predict = config, workdir, task, predict
        self.saver = saver
        # Rows of a training batch: global_batch_size, or with config.packing
        # the rows that carry about that many examples (task.train_rows_per_step).
        self.rows_per_step = rows_per_step
        self.steps_per_epoch, self.seq_flops = steps_per_epoch, seq_flops
        self.name = f"finetune {task.name}"
        self.num_steps = steps_per_epoch * config.num_epochs
        self.metric = main_metric(task)

    def batches(self, start_step):
        B, spe = self.rows_per_step, self.steps_per_epoch
        first_epoch, skip = divmod(start_step, spe)
        for epoch in range(first_epoch, self.config.num_epochs):
            n = 0
            for batch in self.task.train_batches(B, self.config.seed, epoch):
                n += 1
                if n <= skip:
                    continue
                model_batch = {k: v for k, v in batch.items() if k not in _AUX_KEYS}
                rows, length = batch["input_ids"].shape
                yield _local_rows(model_batch), {
                    "padded_tokens": rows * length,
                    # Real examples (a packed row holds several, filler rows none).
                    "examples": int(np.sum(batch["example_weights"] > 0)),
                    "flops": rows * self.seq_flops(length)}
            if n != spe:
                raise RuntimeError(f"{self.task.name}: epoch {epoch} gave {n} batches, "
                                   f"planned {spe}")
            skip = 0

    def data_state(self, step):
        epoch, consumed = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batches": consumed, **self._identity()}

    def _identity(self):
        ident = {"steps_per_epoch": self.steps_per_epoch,
                 "global_batch_size": self.config.global_batch_size, "seed": self.config.seed,
                 "num_train_examples": self.task.num_train_examples()}
        if self.rows_per_step != self.config.global_batch_size:
            ident["rows_per_step"] = self.rows_per_step  # packed (older states: unpacked)
        return ident

    def check_data_state(self, state):
        for k, v in self._identity().items():
            if state.get(k) != v:
                raise ValueError(f"{self.workdir}: its checkpoint was trained with {k}="
                                 f"{state.get(k)}, this run has {v}; rerun with the settings "
                                 "it started with, or use a new --workdir")

    def train_record(self, sums, steps, step):
        rec = {"epoch": (step - 1) // self.steps_per_epoch}
        if "correct" in sums:
            rec["accuracy"] = sums["correct"] / max(sums["weight"], 1.0)
        return rec

    def eval_label(self, step):
        if step % self.steps_per_epoch == 0:
            return f"epoch_{step // self.steps_per_epoch}"
        every = self.config.get("eval_every") or 0
        return f"step_{step}" if every and step % every == 0 else None

    def evaluate(self, params, step, label):
        # Every process runs the (collective) forward passes; one writes files.
        with contextlib.ExitStack() as stack:
            out_dir = stack.enter_context(paths.staged_dir(paths.join(
                self.workdir, "eval", label))) if jax.process_index() == 0 else None
            results = evaluate_task(self.task, self.predict, params, out_dir,
                                    self.config.eval_batch_size)
        flat = {f"{split}_{k}": v for split, res in results.items() for k, v in res.items()
                if isinstance(v, (int, float))}
        split, key = self.metric
        return Evaluation(flat, score=results.get(split, {}).get(key), detail=results)

    def save_best(self, params, step):
        self.saver(paths.join(self.workdir, "best"), params, step)


def finetune(config, workdir) -> dict:
    """Fine-tune `config.init_checkpoint` on `config.task` into `workdir`, or
    resume the run there from its newest checkpoint.

    Evaluates at every epoch end (and every config.eval_every steps), then
    writes test predictions (where the task has them), the model dir
    `workdir/model` (the best evaluation's parameters, or the last with
    config.export="last") and summary.json. A workdir whose run finished is
    not run again. Every process must call this (the steps and forward passes
    are collective).

    Returns:
      The summary ({'task', 'steps', 'train_time_sec' (with the evaluations),
      'train_loop_sec' (without), 'train_tokens_processed', 'final': {'epoch',
      'step', <split>: metrics} of the last evaluation, 'history', 'model':
      {'export', 'step', 'metric', 'score', <split>: metrics} of model/}, and
      'preempted_at' when a signal stopped the run after saving); {} on the
      processes other than 0.
    """
    workdir = str(workdir)
    is_main = jax.process_index() == 0

    # ---- Checks before anything is loaded or compiled --------------------------------
    checks.check_config(config)
    rng_impl(config)
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    checks.check_batch_split(config, mesh)
    done = finished_summary(workdir)
    if done is not None:
        if is_main:
            print(f"nothing to do: {workdir} finished at step {done.get('steps')}", flush=True)
        return done if is_main else {}

    # ---- Data + task ------------------------------------------------------------------
    cfg, encoder, vocab, lowercase = init_weights(config)
    checks.check_model_fit(config, cfg)
    # config.model may override how the checkpoint's architecture runs (and its
    # dropout rates, as HF's from_pretrained(..., hidden_dropout_prob=...) does).
    cfg = cfg.replace(**runtime_overrides(config, cfg))
    tokenizer = load_tokenizer(vocab, lowercase=lowercase)
    task_cls = tasks.get(config.task)
    task = task_cls.build(config, tokenizer)
    head, num_labels = task.head, task.num_labels
    input_report = checks.read_all_splits(task)
    if is_main and input_report:
        tqdm.write(checks.format_report(input_report))
    identity = run_identity_of(config, cfg, task, tokenizer, vocab, task_cls)
    run_identity.check(workdir, identity)  # another model, vocab, task or data: refused
    paths.makedirs(workdir)  # only now that the inputs are known good

    # ---- Model, optimizer -------------------------------------------------------------
    # global_batch_size counts examples per step; packed rows hold several, so
    # the task says how many rows carry that many on average.
    B = task.train_rows_per_step(config.global_batch_size,
                                 config.get("packed_rows_per_step", 0) or 0)
    checks.check_rows_split(B, mesh)
    steps_per_epoch = task.train_steps_per_epoch(B)
    if is_main and B != config.global_batch_size:
        n = task.num_train_examples()
        tqdm.write(f"packing: {B} rows of <= {config.packing} examples a step, "
                   f"{n / steps_per_epoch:.1f} examples a step on average "
                   f"(global_batch_size={config.global_batch_size}), "
                   f"{steps_per_epoch} steps an epoch")
    optimizer, schedule = build_optimizer(config.optim, steps_per_epoch * config.num_epochs)

    def model_fn(key):
        return build_model(cfg, head, num_labels, seed=key)

    task_meta = {"kind": task_cls.kind,
                 "config": json.loads(config.to_json_best_effort())}
    export_cfg = cfg.replace(scan_layers=False)
    # A HF tokenizer.json (ModernBERT's BPE) travels with its config files.
    tok_files = (model_dir.tokenizer_files(vocab.rsplit("/", 1)[0])
                 if vocab.endswith("tokenizer.json") else [])

    def save(path, params, step):
        flat = _host_params(params, spec.scanned)  # every process: may gather
        if is_main:
            try:
                model_dir.save_model_dir(path, export_cfg, flat, head, num_labels,
                                         list(task.label_names), {**task_meta, "step": int(step)},
                                         vocab, tokenizer.lowercase, tokenizer=tok_files)
            except Exception as e:
                if not checkpointing.is_disk_full(e):
                    raise
                # The model dir is written beside its place and swapped in
                # whole: nothing half-written is left, the checkpoints stay.
                raise OSError(f"{path}: writing the model of step {step} failed: no space "
                              "left on device; the run's checkpoints are kept: free space and "
                              "rerun the same command to write it") from None

    peak = flops.device_peak_flops()  # before set_mesh: on CPU it runs a one-device matmul
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = state_spec(model_fn, optimizer, mesh)
        step_fn = jit_train_step(spec, mesh, objective_for(head), optimizer, schedule)
        predict = make_predict_fn(spec.graphdef, spec.shardings["params"], mesh)
        job = FinetuneJob(config, workdir, task, predict, save, steps_per_epoch,
                          functools.partial(flops.finetune_flops_per_sequence, cfg, head=head,
                                            num_labels=num_labels), B)
        summary, state = loop.run(
            job, config, workdir, mesh=mesh, spec=spec, step_fn=step_fn,
            init_state=lambda: init_state(spec, model_fn, optimizer, config.seed,
                                                   init_params=encoder),
            rng=dropout_key(config), peak_flops=peak,
            started=lambda step: run_identity.record(workdir, identity))
        summary = _finetune_summary(summary, task, input_report, job)
        if "preempted_at" not in summary:
            _write_test_predictions(task, predict, state["params"], workdir, config)
            summary["model"] = _export(config, workdir, summary, state, save)
    loop.write_summary(workdir, summary)
    if is_main:
        return summary
    # The others stop with process 0 (a sweep must not start the next run).
    return {"preempted_at": summary["preempted_at"]} if "preempted_at" in summary else {}


def _finetune_summary(summary: dict, task, input_report, job) -> dict:
    """The loop's summary in fine-tuning's terms (history per evaluation with
    its epoch, what bench/ and sweeps read)."""
    history = []
    for h in summary.pop("history"):
        entry = {"step": h["step"], "label": h["label"], **(h["detail"] or {})}
        if h["label"].startswith("epoch_"):
            entry["epoch"] = int(h["label"].removeprefix("epoch_"))
        history.append(entry)
    processed = summary.pop("processed")
    out = {"task": task.name, "steps": summary["final_step"], "input": input_report,
           "train_time_sec": summary["wall_time_sec"],
           "train_loop_sec": summary["wall_time_sec"] - summary["eval_time_sec"],
           "train_tokens_processed": processed.get("padded_tokens", 0),
           "final": history[-1] if history else {}, "history": history,
           "main_metric": "/".join(job.metric), **summary}
    return out


def _write_test_predictions(task, predict, params, workdir, config) -> None:
    for split in task.test_splits:
        try:
            outputs = [predict(params, b)
                       for b in task.eval_batches(split, config.eval_batch_size)]
        except FileNotFoundError:
            continue
        if jax.process_index() == 0:
            with paths.staged_dir(paths.join(workdir, "test_predictions")) as d:
                task.write_test_predictions(split, outputs, d)


def _export(config, workdir, summary, state, save) -> dict:
    """model/: the best evaluation's parameters (kept in best/ as the run went)
    or, with config.export="last" or no scored evaluation, the last ones."""
    best = summary.get("best")
    model, kept = paths.join(workdir, "model"), paths.join(workdir, "best")
    if config.export == "best" and best is not None:
        entry = next(h for h in summary["history"] if h["step"] == best["step"])
        if jax.process_index() == 0:
            if paths.exists(kept):
                _publish(kept, model)
            elif not paths.exists(model):
                raise FileNotFoundError(f"{kept}: the best model (step {best['step']}) is "
                                        "missing")
        return {"export": "best", "step": best["step"], "metric": summary["main_metric"],
                "score": best["score"], **{k: v for k, v in entry.items()
                                           if k not in ("step", "label", "epoch")}}
    save(model, state["params"], summary["steps"])
    if jax.process_index() == 0:
        paths.remove(kept)
    last = summary["final"]
    split, key = summary["main_metric"].split("/")
    return {"export": "last", "step": summary["steps"], "metric": summary["main_metric"],
            "score": last.get(split, {}).get(key),
            **{k: v for k, v in last.items() if k not in ("step", "label", "epoch")}}


def _publish(kept, model) -> None:
    """best/ becomes model/: locally one rename; in a bucket (no rename) it is
    written again as a model dir from its parameters."""
    paths.remove(model)
    if not paths.is_url(model):
        paths.rename(kept, model)
        return
    cfg, meta, flat = formats.load_flat(kept)
    model_dir.save_model_dir(model, cfg, flat, meta["head"], meta.get("num_labels", 0),
                             meta.get("label_names"),
                             meta.get("task"), paths.join(kept, "vocab.txt"),
                             meta.get("do_lower_case"), tokenizer=model_dir.tokenizer_files(kept))
    paths.remove(kept)


def finished_summary(workdir) -> dict | None:
    """The summary of a run that finished in `workdir` (model/ exported), else None."""
    path = paths.join(str(workdir), "summary.json")
    try:
        if not paths.exists(path):
            return None
        summary = json.loads(paths.read_text(path))
    except (OSError, ValueError):
        return None
    if "preempted_at" in summary or "model" not in summary:
        return None
    return summary


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host. A parameter sharded over devices of other
    processes (fsdp across hosts) is gathered; every process must call this."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _host_params(params, scanned: bool) -> dict[str, np.ndarray]:
    flat = {k: _to_host(v) for k, v in pure_to_flat(params).items()}
    return unstack_layers(flat) if scanned else flat
