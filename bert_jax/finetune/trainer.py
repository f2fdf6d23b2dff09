"""The fine-tuning loop shared by GLUE, SQuAD and CoNLL-2003.

It reuses the pretraining machinery (mesh, sharded state, the pure jitted
train step, optax, orbax model dirs, metrics.jsonl + TensorBoard); a task
brings only its data, head, loss and metrics (`bert_jax/finetune/task.py`).

Outputs under workdir: metrics.jsonl, tb/, eval/epoch_<k>/<split>/..., the
final fine-tuned model dir in model/ (with label names and task config, read by
`python -m bert_jax.predict`), summary.json, and test-set predictions where the
task has them (GLUE submission files in test_predictions/).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bert_jax import losses, model_dir, sharding, storage, training
from bert_jax.finetune import checks
from bert_jax.heads import build_model
from bert_jax.optim import build_optimizer

# Keys of a batch the model never sees.
_AUX_KEYS = ("feature_index",)


def task_module(config):
    from bert_jax.finetune import conll, glue, squad
    task = str(config.task).lower()
    if task == "squad":
        return squad
    if task in ("conll2003", "conll"):
        return conll
    return glue


def _row_weights(batch):
    """float [B]: a row's weight for per-token losses; packed rows carry one
    weight per example slot [B, K] (0 on empty slots), any of which makes the
    row real (its padding tokens are already -100)."""
    w = batch["example_weights"]
    return w if w.ndim == 1 else jnp.max(w, axis=-1)


def objective_for(head: str) -> training.Objective:
    def forward(model, batch, rng):
        # Packed batches (config.packing) carry these; which keys exist is static.
        packed = {k: batch[k] for k in ("segment_ids", "position_ids", "cls_positions")
                  if k in batch}
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     dropout_rng=rng, **packed)

    if head == "classification":
        def sums(model, batch, rng):
            return losses.classification_sums(forward(model, batch, rng)["logits"],
                                              batch["labels"], batch["example_weights"])
    elif head == "regression":
        def sums(model, batch, rng):
            return losses.regression_sums(forward(model, batch, rng)["logits"][..., 0],
                                          batch["labels"], batch["example_weights"])
    elif head == "span":
        def sums(model, batch, rng):
            out = forward(model, batch, rng)
            return losses.span_sums(out["start_logits"], out["end_logits"],
                                    batch["start_positions"], batch["end_positions"],
                                    batch["example_weights"])
    elif head == "tagging":
        def sums(model, batch, rng):
            return losses.tagging_sums(forward(model, batch, rng)["logits"], batch["label_ids"],
                                       _row_weights(batch))
    else:
        raise ValueError(f"unknown head {head!r}")

    def totals(batch):
        if head == "tagging":
            valid = (batch["label_ids"] != -100) & (_row_weights(batch)[:, None] > 0)
            return {"n": jnp.sum(valid).astype(jnp.float32)}
        return {"n": jnp.sum(batch["example_weights"]).astype(jnp.float32)}

    def loss(s, t):
        return s["loss"] / jnp.maximum(t["n"], 1.0)

    return training.Objective(sums, totals, loss)


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
        out = jax.device_get(forward(params, training.global_batch(_local_rows(model_in), mesh)))
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
    from bert_jax import convert
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required: a bert_jax model dir or workdir, "
                         "a HF dir or a TF1 dir")
    if not storage.exists(config.init_checkpoint):
        raise FileNotFoundError(f"config.init_checkpoint={config.init_checkpoint}: no such "
                                "checkpoint")
    cfg, meta, flat = convert.read_any(config.init_checkpoint)
    own = meta.get("vocab") or model_dir.vocab_path(config.init_checkpoint)
    vocab = config.get("vocab") or own
    if not vocab:
        raise ValueError(f"{config.init_checkpoint}: no vocab.txt inside; set config.vocab")
    if own and config.get("vocab"):
        from bert_jax.embed import checked_tokenizer
        try:
            checked_tokenizer(config.init_checkpoint, config.vocab,
                              config.get("allow_vocab_mismatch", False))
        except ValueError as e:
            raise ValueError(str(e).replace("--vocab=", "config.vocab=").replace(
                "drop --vocab, or pass --allow_vocab_mismatch",
                "unset config.vocab, or set config.allow_vocab_mismatch=True")) from None
    encoder = {k: v for k, v in flat.items() if k.startswith("bert/")}
    return cfg, encoder, str(vocab), meta.get("do_lower_case")


def evaluate_task(task, predict, params, out_dir, eval_batch_size) -> dict[str, dict]:
    results = {}
    for split in getattr(task, "eval_splits", ("dev",)):
        outputs = [predict(params, b) for b in task.eval_batches(split, eval_batch_size)]
        results[split] = task.evaluate(split, outputs, out_dir=out_dir)
    return results


def runtime_overrides(config) -> dict:
    """config.model fields that change how a checkpoint's architecture runs."""
    return {k: config.model[k] for k in ("dtype", "attention_impl", "scan_layers",
                                         "remat_policy", "hidden_dropout_prob",
                                         "attention_probs_dropout_prob")
            if "model" in config and k in config.model}


def optimizer_config(config) -> dict:
    """The `build_optimizer` fields of a fine-tuning config (also compiled by bert_jax.aot)."""
    return {"name": config.get("optimizer", "adamw"), "lr": config.learning_rate,
            "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay,
            "eps": config.get("adam_eps", 1e-6), "clip_norm": config.get("clip_norm", 1.0)}


def finetune(config, workdir) -> dict:
    """Fine-tune `config.init_checkpoint` on `config.task` into `workdir`.

    Evaluates at every epoch end, then writes test predictions (where the task
    has them), the model dir `workdir/model` and summary.json. Every process
    must call this (the steps and forward passes are collective).

    Returns:
      On process 0 the summary ({'task', 'steps', 'train_time_sec' (with the
      evaluations), 'train_loop_sec' (without), 'train_tokens_processed',
      'final': {'epoch', 'step', <split>: metrics},
      'history': [per epoch]}); {} on the other processes.
    """
    workdir = str(workdir)
    is_main = jax.process_index() == 0
    from bert_jax.data.tokenizer import load_tokenizer

    # ---- Checks before anything is loaded or compiled --------------------------------
    checks.check_config(config)
    training.rng_impl(config)
    mesh_shape = tuple(config.mesh.shape) if "mesh" in config else (-1, 1, 1)
    mesh = sharding.make_mesh(mesh_shape)
    checks.check_batch_split(config, mesh)

    # ---- Data + task ------------------------------------------------------------------
    cfg, encoder, vocab, lowercase = init_weights(config)
    checks.check_model_fit(config, cfg)
    # config.model may override how the checkpoint's architecture runs (and its
    # dropout rates, as HF's from_pretrained(..., hidden_dropout_prob=...) does).
    cfg = cfg.replace(**runtime_overrides(config))
    tokenizer = load_tokenizer(vocab, lowercase=lowercase)
    module = task_module(config)
    task = module.build_task(config, tokenizer)
    head, num_labels = task.head, task.num_labels
    input_report = checks.read_all_splits(task)
    if is_main and input_report:
        tqdm.write(checks.format_report(input_report))
    storage.makedirs(workdir)  # only now that the inputs are known good

    # ---- Model, optimizer -------------------------------------------------------------
    batch_size = config.batch_size
    steps_per_epoch = (task.train_steps_per_epoch(batch_size)
                       if hasattr(task, "train_steps_per_epoch")
                       else math.ceil(task.num_train_examples() / batch_size))
    total_steps = steps_per_epoch * config.num_epochs
    from ml_collections import ConfigDict
    optimizer, schedule = build_optimizer(ConfigDict(optimizer_config(config)), total_steps)
    model_head = head

    def model_fn(key):
        return build_model(cfg, model_head, num_labels, seed=key)

    objective = objective_for(head)
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = training.state_spec(model_fn, optimizer, mesh)
        state = training.init_state(spec, model_fn, optimizer, config.seed,
                                    init_params=encoder)
        step_fn = training.jit_train_step(spec, mesh, objective, optimizer, schedule)
        predict = make_predict_fn(spec.graphdef, spec.shardings["params"], mesh)
        writer = training.MetricWriter(workdir)
        rng = training.dropout_key(config)
        bar = tqdm(total=total_steps, disable=not is_main, unit="step", dynamic_ncols=True,
                   desc=f"finetune {task.name}")
        log_every = config.get("log_every", 50)
        window: dict[str, float] = {}
        # Throughput counts only the steps after the first (which compiles) and
        # not the evaluations between epochs.
        n_window, timed_steps, timed_sec, tokens, examples = 0, 0, 0.0, 0, 0
        t_start = time.perf_counter()
        history = []
        step = 0
        total_tokens = 0  # padded tokens the model processed (what bucketing saves)
        loop_sec = 0.0  # the training loops alone (compiles included, evaluations not)
        for epoch in range(config.num_epochs):
            t_prev = t_epoch = time.perf_counter()
            for batch in task.train_batches(batch_size, config.seed, epoch):
                model_batch = {k: v for k, v in batch.items() if k not in _AUX_KEYS}
                gb = training.global_batch(_local_rows(model_batch), mesh)
                state, metrics = step_fn(state, gb, rng)
                total_tokens += int(batch["input_ids"].size)
                m = jax.device_get(metrics)
                t_now = time.perf_counter()
                if step > 0:
                    timed_steps, timed_sec = timed_steps + 1, timed_sec + t_now - t_prev
                    tokens += int(batch["input_ids"].size)
                    # Real examples (a packed row holds several, filler rows none).
                    examples += int(np.sum(batch["example_weights"] > 0))
                t_prev = t_now
                if not m["finite"]:
                    raise FloatingPointError(f"non-finite loss or gradient at step {step + 1}")
                for k, v in m.items():
                    window[k] = window.get(k, 0.0) + float(v)
                n_window += 1
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == total_steps:
                    rec = {"epoch": epoch, "loss": window["loss"] / n_window,
                           "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"])}
                    if timed_steps:
                        rec.update(steps_per_sec=timed_steps / timed_sec,
                                   examples_per_sec=examples / timed_sec,
                                   padded_tokens_per_sec=tokens / timed_sec)
                    if "correct" in window:
                        rec["accuracy"] = window["correct"] / max(window["weight"], 1.0)
                    writer.write(step, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
                    window.clear()
                    n_window, timed_steps, timed_sec, tokens, examples = 0, 0, 0.0, 0, 0
            loop_sec += time.perf_counter() - t_epoch
            # ---- Evaluate at each epoch end ----------------------------------------------
            # Every process runs the (collective) forward passes; one writes files.
            with contextlib.ExitStack() as stack:
                out_dir = stack.enter_context(storage.staged_dir(storage.join(
                    workdir, "eval", f"epoch_{epoch + 1}"))) if is_main else None
                results = evaluate_task(task, predict, state["params"], out_dir,
                                        config.eval_batch_size)
            for split, res in results.items():
                writer.write(step, {k: v for k, v in res.items()
                                    if isinstance(v, (int, float))}, prefix=f"eval_{split}_")
            history.append({"epoch": epoch + 1, "step": step, **results})
            if is_main:
                tqdm.write(f"epoch {epoch + 1}: " + json.dumps(results, default=float)[:400])
        bar.close()
        writer.close()
        train_time = time.perf_counter() - t_start

        # ---- Test predictions + final model ------------------------------------------
        if hasattr(task, "write_test_predictions"):
            for split in getattr(task, "test_splits", ()):
                try:
                    outputs = [predict(state["params"], b)
                               for b in task.eval_batches(split, config.eval_batch_size)]
                except FileNotFoundError:
                    continue
                if is_main:
                    with storage.staged_dir(storage.join(workdir, "test_predictions")) as d:
                        task.write_test_predictions(split, outputs, d)
        flat = _host_params(state["params"], spec.scanned)
    if is_main:
        task_meta = {"kind": module.__name__.rsplit(".", 1)[-1],
                     "config": json.loads(config.to_json_best_effort())}
        model_dir.save_model_dir(storage.join(workdir, "model"), cfg.replace(scan_layers=False),
                                 flat, model_head, num_labels, list(task.label_names),
                                 task_meta, vocab, tokenizer.lowercase)
        summary = {"task": task.name, "steps": step, "input": input_report,
                   "train_time_sec": train_time,
                   "train_loop_sec": loop_sec,
                   "train_tokens_processed": total_tokens,
                   "final": history[-1] if history else {}, "history": history}
        storage.write_text(storage.join(workdir, "summary.json"),
                           json.dumps(_strict_json(summary), indent=2))
        return summary
    return {}


def _strict_json(obj):
    """`obj` with numpy scalars as Python numbers and NaN / inf as None (null),
    as the GLUE eval_results.json writes an undefined metric."""
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj.item() if isinstance(obj, np.generic) else obj


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host. A parameter sharded over devices of other
    processes (fsdp across hosts) is gathered; every process must call this."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _host_params(params, scanned: bool) -> dict[str, np.ndarray]:
    from bert_jax.params import pure_to_flat, unstack_layers
    flat = {k: _to_host(v) for k, v in pure_to_flat(params).items()}
    return unstack_layers(flat) if scanned else flat
