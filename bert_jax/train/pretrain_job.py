"""Pretraining as a job of the one loop (`bert_jax.train.loop`): the MLM + NSP
(or MLM-only: data.nsp=False, always for model.architecture='modernbert')
objective, the model config from the pretraining config, `build` (the
sharded state and jitted step, also what `bert_jax.aot` compiles for a TPU
topology), the held-out evaluation and `PretrainJob` (batches and their
position from the resumable pipeline). `bert_jax.pretrain` is the command:
it checks the config, inputs and workdir, takes the lock and calls `run`.

JAX, Flax and orbax are imported inside the functions, so the command can
report a bad config before those imports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.convert import model_dir
from bert_jax.data.pipeline import PretrainingPipeline
from bert_jax.data.tokenizer import hf_special_token_files
from bert_jax.model import flops, losses, sharding
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import BertForPreTraining
from bert_jax.storage import paths
from bert_jax.train import loop, run_identity
from bert_jax.train.loop import Evaluation
from bert_jax.train.optim import build_optimizer
from bert_jax.train.step import (
    Objective,
    dropout_key,
    global_batch,
    init_state,
    jit_eval_step,
    jit_train_step,
    rng_impl,
    state_spec,
)

if TYPE_CHECKING:
    from bert_jax.train.step import Objective, StateSpec


def pretraining_objective(nsp: bool, gathered: bool) -> Objective:


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


# ModernBERT fields a pretraining config may set under config.model (HF
# ModernBertConfig's names); BERT configs have none of them.
MODERN_FIELDS = ("local_attention", "global_attn_every_n_layers", "global_rope_theta",
                 "local_rope_theta", "attention_dropout", "embedding_dropout", "mlp_dropout",
                 "hidden_activation", "norm_eps", "classifier_pooling")


def special_token_ids(tokenizer) -> dict[str, int]:
    """The token ids a ModernBERT config records (its config.json's *_token_id),
    from the run's tokenizer: an HF export then pads and frames with our ids."""
    return {"pad_token_id": tokenizer.pad_id, "cls_token_id": tokenizer.cls_id,
            "sep_token_id": tokenizer.sep_id, "bos_token_id": tokenizer.cls_id,
            "eos_token_id": tokenizer.sep_id}


def bert_config(config, vocab_size: int, special: dict[str, int] | None = None) -> BertConfig:
    """The model config: the named size, then any explicit model.* overrides;
    model.architecture='modernbert' adds ModernBERT's fields (MODERN_FIELDS)
    and `special` (special_token_ids of the tokenizer)."""
    m = config.model
    arch = {name: m.get(key, 0) for key, name in (
        ("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"))}
    modern = {}
    if m.get("architecture", "bert") == "modernbert":
        modern = {"architecture": "modernbert", **(special or {}),
                  **{k: m[k] for k in MODERN_FIELDS if k in m}}
    return BertConfig.named(
        m.size, **{k: v for k, v in arch.items() if v}, vocab_size=vocab_size, dtype=m.dtype,
        attention_impl=m.attention_impl,
        scan_layers=m.scan_layers, remat_policy=m.remat_policy,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        max_position_embeddings=m.max_position_embeddings, **modern)


def identity(config, pipe) -> dict:
    """What a pretraining workdir is (bert_jax.train.run_identity): the
    architecture, the vocabulary and the prepared corpus."""
    tok = pipe.tokenizer
    cfg = bert_config(config, tok.vocab_size, special_token_ids(tok))
    return run_identity.make(
        "pretraining", run_identity.model_identity(cfg, "pretraining"),
        (tok.fingerprint, tok.vocab_file), {"data": pipe.corpus.data_fingerprint},
        where={"data": config.data.prepared_dir})


def check_rerun(config, workdir, pipe) -> None:
    """Refuse (one line) a rerun whose model, vocabulary or data is not the one
    `workdir` was made with; before the workdir is locked or written."""
    run_identity.check(workdir, identity(config, pipe))


def _copy_bpe_tokenizer(tokenizer, workdir) -> None:
    """A tokenizer.json travels with the special-token files beside it; where
    it has none (a prepared dir holds only tokenizer.json) they are written,
    so HF exports of the workdir load in transformers knowing [PAD] and [MASK]."""
    beside = paths.parent(tokenizer.vocab_file)
    model_dir.copy_tokenizer_files(
        [paths.join(beside, n) for n in model_dir.TOKENIZER_FILES
         if paths.exists(paths.join(beside, n))], workdir)
    for name, text in hf_special_token_files(tokenizer).items():
        if not paths.exists(paths.join(workdir, name)):
            paths.write_text(paths.join(workdir, name), text)


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


def build(config, vocab_size: int, mesh, special: dict[str, int] | None = None) -> Built:
    """Model config, objective, optimizer, abstract sharded state and the jitted
    step. Abstract end to end (nothing is allocated or run), so it also works on
    the devices of a TPU topology with no TPU attached. Call it under
    `jax.set_mesh(mesh)` and `sharding.axis_rules`."""

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
    cfg = bert_config(config, vocab_size, special)
    if cfg.modern and config.data.nsp:
        # ModernBERT's head has no NSP classifier (and its recipe no NSP task).
        raise ValueError("config.model.architecture='modernbert' is MLM-only: set "
                         "config.data.nsp=False")
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


def open_pipeline(data_cfg, batch_size):
    return PretrainingPipeline.from_config(data_cfg, global_batch_size=batch_size,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count())


def evaluate(eval_step, state, pipe, num_batches: int, mesh) -> dict[str, float]:
    acc: dict[str, float] = {}
    for i in range(num_batches):
        sums = jax.device_get(eval_step(state["params"], global_batch(pipe.batch(i),
                                                                               mesh)))
        for k, v in sums.items():
            acc[k] = acc.get(k, 0.0) + float(v)
    return summarize(acc)


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
        return Evaluation(evaluate(self.eval_fn, {"params": params}, self.eval_pipe,
                                   self.config.eval_batches, self.mesh))

    def save_best(self, params, step):
        pass


def run(config, workdir, pipe, eval_pipe, init_params) -> dict:
    """Build the sharded step and state on the mesh, write the workdir's model
    description, and run `PretrainJob` through the one loop."""

    is_main = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh.shape)
    tokenizer = pipe.tokenizer
    peak = flops.device_peak_flops()  # before set_mesh: on CPU it runs a one-device matmul

    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        built = build(config, tokenizer.vocab_size, mesh, special_token_ids(tokenizer))
        cfg, spec, gathered = built.cfg, built.spec, built.gathered

        def started(step):
            """The workdir's description, written once its checkpoint (if any)
            restored: a rerun refused at restore leaves it as it was."""
            run_identity.record(workdir, identity(config, pipe))
            if is_main:
                model_dir.write_meta(workdir, cfg, "pretraining", task={"kind": "pretraining"},
                                     do_lower_case=tokenizer.lowercase)
                model_dir.copy_vocab(tokenizer.vocab_file, workdir)
                if tokenizer.kind == "bpe":
                    _copy_bpe_tokenizer(tokenizer, workdir)
                paths.write_text(paths.join(workdir, "config.json"),
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
                              peak_flops=peak, started=started)
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
