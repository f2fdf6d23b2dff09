"""CPU training-step throughput: ours vs HF transformers BERT (PyTorch and Flax).

    .venv/bin/python bench/bench_cpu_train.py [--sizes=tiny,small] [--batches=8,32]
        [--rounds=5] [--variants=ours,ours_dense,torch,flax] [--set attention_impl=xla ...]

Every contender runs a full BERT pretraining step (MLM + NSP forward, loss,
backward, global-norm clipping 1.0, AdamW) at seq 128 in fp32 on the same
random batch (20 masked positions per sequence, vocab 30522, dropout 0.1):

  ours        train_step jitted by jit_train_step with
              pretraining_objective: the MLM head runs on the 20 gathered
              masked positions only (Google BERT's max_predictions_per_seq).
  ours_dense  the same step with the MLM head at all 128 positions and dense
              labels (-100 elsewhere): the work HF does.
  torch       transformers BertForPreTraining, labels -100 except the masked
              positions, torch.optim.AdamW(fused=True) (HF Trainer's default for
              torch >= 2.8) and clip_grad_norm_, torch threads = 2.
  flax        transformers FlaxBertForPreTraining (Flax linen), the MLM loss of
              HF's run_mlm_flax.py (logits at every position, label mask) + NSP,
              optax clip + adamw, jitted with donated buffers.

The contenders take turns within each round (A, B, C, A, B, C, ...); the
table reports the median step time over rounds, tokens/s and the ratios.
Compile time is lower().compile() of the step, before any step runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common import alternate, load_average, markdown_table, median, spread  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from bert_jax.convert import hf_format  # noqa: E402
from bert_jax.model import sharding  # noqa: E402
from bert_jax.model.config import BertConfig  # noqa: E402
from bert_jax.model.heads import BertForPreTraining  # noqa: E402
from bert_jax.train.optim import build_optimizer  # noqa: E402
from bert_jax.train.pretrain_job import pretraining_objective  # noqa: E402
from bert_jax.train.step import init_state, jit_train_step, state_spec  # noqa: E402

SEQ_LEN = 128
MASKED = 20
LR = 1e-4
OPTIM = dict(name="adamw", lr=LR, warmup_steps=0, weight_decay=0.01, b1=0.9, b2=0.999,
             eps=1e-6, clip_norm=1.0)
VARIANTS = ("ours", "ours_dense", "torch", "flax")


def make_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One random pretraining batch in both label layouts: gathered
    (masked_positions/ids/weights) and dense (mlm_labels, -100 elsewhere)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(999, 30522, (batch_size, SEQ_LEN), dtype=np.int32)
    ids[:, 0] = 101                                     # [CLS]
    type_ids = np.zeros_like(ids)
    type_ids[:, SEQ_LEN // 2:] = 1
    positions = np.sort(np.stack([rng.choice(np.arange(1, SEQ_LEN - 1), MASKED, replace=False)
                                  for _ in range(batch_size)]), axis=1).astype(np.int32)
    masked_ids = rng.integers(999, 30522, (batch_size, MASKED), dtype=np.int32)
    labels = np.full(ids.shape, -100, np.int32)
    np.put_along_axis(labels, positions, masked_ids, axis=1)
    return {"input_ids": ids, "token_type_ids": type_ids,
            "attention_mask": np.ones_like(ids),
            "masked_positions": positions, "masked_ids": masked_ids,
            "masked_weights": np.ones((batch_size, MASKED), np.float32),
            "mlm_labels": labels,
            "nsp_labels": rng.integers(0, 2, (batch_size,), dtype=np.int32)}


# ---- Contenders: each returns (step fn that blocks, compile seconds or None, cleanup) ----


def setup_ours(cfg: BertConfig, batch: dict, gathered: bool):
    optimizer, schedule = build_optimizer(ConfigDict(OPTIM), 10_000)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])

    def model_fn(key):
        return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

    keys = (("masked_positions", "masked_ids", "masked_weights") if gathered
            else ("mlm_labels",))
    keys += ("input_ids", "token_type_ids", "attention_mask", "nsp_labels")
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = state_spec(model_fn, optimizer, mesh)
        holder = {"state": init_state(spec, model_fn, optimizer, seed=0)}
        step = jit_train_step(spec, mesh, pretraining_objective(True, gathered),
                                       optimizer, schedule)
        dev_batch = jax.device_put({k: jnp.asarray(batch[k]) for k in keys})
        rng = jax.random.key(1)
        t0 = time.perf_counter()
        compiled = step.lower(holder["state"], dev_batch, rng).compile()
        compile_s = time.perf_counter() - t0

    def run():
        holder["state"], metrics = compiled(holder["state"], dev_batch, rng)
        jax.block_until_ready((holder["state"], metrics))
    return run, compile_s, holder.clear


def hf_config(cfg: BertConfig):
    import transformers
    return transformers.BertConfig.from_dict(hf_format.hf_config_dict(cfg, "pretraining"))


def setup_torch(cfg: BertConfig, batch: dict, threads: int):
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(hf_config(cfg)).train()
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999), eps=1e-6, fused=True)
    inputs = {"input_ids": torch.from_numpy(batch["input_ids"]).long(),
              "token_type_ids": torch.from_numpy(batch["token_type_ids"]).long(),
              "attention_mask": torch.from_numpy(batch["attention_mask"]).long(),
              "labels": torch.from_numpy(batch["mlm_labels"]).long(),
              "next_sentence_label": torch.from_numpy(batch["nsp_labels"]).long()}

    def run():
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def cleanup():
        nonlocal model, opt
        model = opt = None
    return run, None, cleanup


def setup_flax(cfg: BertConfig, batch: dict):
    from transformers import FlaxBertForPreTraining
    model = FlaxBertForPreTraining(hf_config(cfg), seed=0, dtype=jnp.float32)

    def decay_mask(params):
        # Like run_mlm_flax.py: no weight decay on biases and LayerNorm scales.
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) not in ("bias", "scale"), params)

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                                        mask=decay_mask))

    def loss_fn(params, b, rng):
        out = model(b["input_ids"], attention_mask=b["attention_mask"],
                    token_type_ids=b["token_type_ids"], params=params, dropout_rng=rng,
                    train=True)
        # run_mlm_flax.py: cross-entropy at every position, averaged over labels != -100.
        labels = b["mlm_labels"]
        w = (labels != -100).astype(jnp.float32)
        mlm = optax.softmax_cross_entropy_with_integer_labels(out.prediction_logits,
                                                              jnp.where(w > 0, labels, 0))
        nsp = optax.softmax_cross_entropy_with_integer_labels(out.seq_relationship_logits,
                                                              b["nsp_labels"])
        return jnp.sum(mlm * w) / jnp.sum(w) + jnp.mean(nsp)

    def train_step(params, opt_state, b, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, b, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels")
    dev_batch = jax.device_put({k: jnp.asarray(batch[k]) for k in keys})
    holder = {"params": model.params}
    holder["opt"] = optimizer.init(holder["params"])
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        holder["params"], holder["opt"], dev_batch, rng).compile()
    compile_s = time.perf_counter() - t0

    def run():
        holder["params"], holder["opt"], loss = compiled(holder["params"], holder["opt"],
                                                         dev_batch, rng)
        jax.block_until_ready((holder["params"], loss))
    return run, compile_s, holder.clear


# ---- Main -------------------------------------------------------------------------------


def bench_one(size: str, batch_size: int, variants, rounds: int, threads: int,
              overrides: dict) -> dict:
    cfg = BertConfig.named(size, vocab_size=30522).replace(**overrides)
    batch = make_batch(batch_size)
    steps, compile_s, cleanups = {}, {}, []
    for v in variants:
        print(f"  setting up {v} ({size}, batch {batch_size})", file=sys.stderr, flush=True)
        if v in ("ours", "ours_dense"):
            run, c, done = setup_ours(cfg, batch, gathered=(v == "ours"))
        elif v == "torch":
            run, c, done = setup_torch(cfg, batch, threads)
        else:
            run, c, done = setup_flax(cfg, batch)
        steps[v], compile_s[v] = run, c
        cleanups.append(done)
    times = alternate(steps, rounds, desc=f"{size} b{batch_size}")
    for done in cleanups:
        done()
    gc.collect()
    return {"size": size, "batch": batch_size, "times": times, "compile": compile_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small,base")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--out", default="", help="also append one JSON line per row here")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a BertConfig field of ours, e.g. attention_impl=xla, "
                         "scan_layers=true (for experiments; HF always runs its default)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown {v!r}; expected some of {VARIANTS}")
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        default = getattr(BertConfig(), field, None)
        if default is None or not value:
            ap.error(f"--set {item!r}: expected FIELD=VALUE with a BertConfig field")
        overrides[field] = (value.lower() in ("1", "true", "yes") if isinstance(default, bool)
                            else type(default)(value))

    load_before = load_average()
    t_start = time.perf_counter()
    ratios = [(a, b) for a, b in (("ours", "torch"), ("ours", "flax"), ("ours_dense", "torch"),
                                  ("ours_dense", "flax")) if a in variants and b in variants]
    header = (["model", "batch"] + [f"{v} tok/s" for v in variants]
              + [f"{a}/{b}" for a, b in ratios] + ["spread", "compile s", "load"])
    rows = []
    for size in args.sizes.split(","):
        for b in args.batches.split(","):
            r = bench_one(size, int(b), variants, args.rounds, args.torch_threads, overrides)
            rows.append(table_row(r, variants, ratios))
            # Print as we go: a long run that dies still leaves its finished rows.
            print(markdown_table(header, rows[-1:]).splitlines()[-1], file=sys.stderr,
                  flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**r, "overrides": overrides, "load": load_average(),
                                        "rounds": args.rounds}) + "\n")
    wall = time.perf_counter() - t_start
    print()
    print(markdown_table(header, rows))
    print(f"\nseq {SEQ_LEN}, fp32, {MASKED} masked positions, {args.rounds} alternating rounds, "
          f"median step time; spread = (max-min)/median step time per contender; compile = "
          f"lower+compile of {', '.join(v for v in variants if v != 'torch')}; load = 1-min "
          f"load average after the row.")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs, "
          f"torch threads {args.torch_threads}; overrides of ours: {overrides or 'none'}")
    print(f"load average before: {load_before}, after: {load_average()}; wall {wall:.0f} s")


def table_row(r: dict, variants, ratios) -> list:
    tok = {v: r["batch"] * SEQ_LEN / median(r["times"][v]) for v in variants}
    row = [f"bert_{r['size']}", r["batch"]] + [f"{tok[v]:,.0f}" for v in variants]
    row += [f"{tok[a] / tok[b]:.2f}x" for a, b in ratios]
    row.append(" ".join(f"{spread(r['times'][v]):.0%}" for v in variants))
    row.append(", ".join(f"{r['compile'][v]:.0f}" for v in variants
                         if r["compile"][v] is not None))
    row.append(load_average().split()[0])
    return row


if __name__ == "__main__":
    main()
