"""What a checkpoint save to object storage costs the training loop: step
times around each save to a local GCS server (fake-gcs-server on 127.0.0.1,
the `bert_jax.devtools.gcs_emulator`) against the median step, with orbax's
asynchronous saving (the default) and, for contrast, synchronous saving.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_gcs_checkpoint.py --size=small --steps=60 --save_every=15

The loop is pretraining's: the real sharded state (params + AdamW moments),
the jitted train step with its donated state and `checkpointing.Checkpointer`
saving into gs://bench/run, on random token batches (the data pipeline's
shapes; data loading is not what is measured). Each step is timed until its
state is ready, the save call included, so a step "around a save" is the
save step and the two after it (where the background upload competes with
training for the host). Prints a markdown table.

--split_cores models an accelerator host, where the step runs on the device
and the checkpoint upload on host cores the step does not use: XLA's compute
threads are pinned to all cores but the last, and everything else (this
Python thread and the threads it starts: orbax's, TensorStore's, gcsfs's;
the GCS server process) to the last core. Without it (the default) the step
and the upload share every core, as in CPU-only training.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from common import load_average, markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "small", "Model size (bert_config.BertConfig.named).")
flags.DEFINE_integer("batch", 32, "Global batch (sequences).")
flags.DEFINE_integer("seq", 128, "Sequence length.")
flags.DEFINE_integer("steps", 60, "Training steps per mode.")
flags.DEFINE_integer("save_every", 15, "Steps between checkpoint saves.")
flags.DEFINE_list("modes", ["async", "sync"], "Checkpoint modes to time.")
flags.DEFINE_bool("split_cores", False, "XLA's compute on all cores but the last, the "
                  "save's host work and the GCS server on the last (an accelerator host).")
AROUND = 3  # the save step and the two after it


def random_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int, preds: int):
    return {
        "input_ids": rng.integers(5, vocab, (batch, seq), dtype=np.int32),
        "token_type_ids": np.repeat((np.arange(seq) >= seq // 2)[None].astype(np.int32),
                                    batch, 0),
        "attention_mask": np.ones((batch, seq), np.int32),
        "masked_positions": np.sort(rng.choice(seq, (batch, preds)), axis=1).astype(np.int32),
        "masked_ids": rng.integers(5, vocab, (batch, preds), dtype=np.int32),
        "masked_weights": np.ones((batch, preds), np.float32),
        "nsp_labels": rng.integers(0, 2, (batch,), dtype=np.int32),
    }


def time_mode(async_save: bool, url: str) -> dict:
    from flax import nnx

    from bert_jax.model import sharding
    from bert_jax.model.config import BertConfig
    from bert_jax.model.heads import BertForPreTraining
    from bert_jax.train import checkpointing, pretrain_job
    from bert_jax.train.optim import build_optimizer
    from bert_jax.train.step import global_batch, init_state, jit_train_step, state_spec
    from configs.pretrain import bert_tiny

    config = bert_tiny.get_config()
    cfg = BertConfig.named(FLAGS.size, vocab_size=30522, dtype="float32")
    optimizer, schedule = build_optimizer(config.optim, FLAGS.steps)
    mesh = sharding.make_mesh((-1, 1, 1))
    objective = pretrain_job.pretraining_objective(nsp=True, gathered=True)

    def model_fn(key):
        return BertForPreTraining(cfg, rngs=nnx.Rngs(params=key))

    rng = np.random.default_rng(0)
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = state_spec(model_fn, optimizer, mesh)
        state = init_state(spec, model_fn, optimizer, 0)
        step_fn = jit_train_step(spec, mesh, objective, optimizer, schedule)
        ckpt = checkpointing.Checkpointer(url, FLAGS.save_every, keep=2, async_save=async_save)
        key = jax.random.key(1)
        times, saved_at, save_calls = [], [], []
        t_total = time.perf_counter()
        for step in range(FLAGS.steps):
            batch = global_batch(random_batch(rng, FLAGS.batch, FLAGS.seq, 30522, 20),
                                          mesh)
            t0 = time.perf_counter()
            state, _ = step_fn(state, batch, key)
            jax.block_until_ready(state)
            if ckpt.should_save(step + 1):
                t_save = time.perf_counter()
                ckpt.save(step + 1, state, {"step": step + 1})
                save_calls.append(time.perf_counter() - t_save)
                saved_at.append(step)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ckpt.close()
        tail = time.perf_counter() - t0
        total = time.perf_counter() - t_total
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    around = {s + k for s in saved_at for k in range(AROUND)} & set(range(FLAGS.steps))
    warm = set(range(2))  # compilation
    plain = [t for i, t in enumerate(times) if i not in around | warm]
    med = statistics.median(plain)
    near = [times[i] for i in sorted(around)]
    return {"params": n_params, "median": med, "near_max": max(near), "plain_max": max(plain),
            "near_mean": statistics.fmean(near), "saves": len(saved_at), "tail": tail,
            "total": total, "per_save": [times[s] for s in saved_at],
            "save_call": statistics.median(save_calls)}


def thread_cores() -> dict[str, set[str]]:
    """{thread name: the CPU lists its threads may run on} for this process."""
    out: dict[str, set[str]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = pathlib.Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            status = pathlib.Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        cpus = next(x.split()[1] for x in status.splitlines()
                    if x.startswith("Cpus_allowed_list"))
        out.setdefault(comm, set()).add(cpus)
    return out


def main(argv):
    del argv
    from bert_jax.devtools import gcs_emulator
    from bert_jax.storage import paths
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_gcs_"))
    cores = sorted(os.sched_getaffinity(0))
    if FLAGS.split_cores:
        if len(cores) < 2:
            raise app.UsageError("--split_cores needs at least 2 cores")
        # Threads inherit the affinity of the thread that starts them (and the
        # server that of this thread when it is spawned): the server and, after
        # XLA's pool exists, every later thread of this process go to `host`.
        device, host = set(cores[:-1]), {cores[-1]}
        for tid in os.listdir("/proc/self/task"):  # threads started at import
            os.sched_setaffinity(int(tid), host)
    with gcs_emulator.GcsEmulator(root, buckets=("bench",)) as emu:
        if FLAGS.split_cores:
            os.sched_setaffinity(0, device)
            jax.devices()  # creates the CPU client and its compute threads here
            os.sched_setaffinity(0, host)
        os.environ.update(emu.env())
        paths.configure()
        rows = []
        for mode in FLAGS.modes:
            r = time_mode(mode == "async", f"gs://bench/run-{mode}")
            rows.append([mode, f"{r['params'] / 1e6:.1f}M", f"{r['median'] * 1e3:.0f}",
                         f"{r['near_mean'] * 1e3:.0f}", f"{r['near_max'] * 1e3:.0f}",
                         f"**{r['near_max'] / r['median']:.2f}x**",
                         f"{r['plain_max'] / r['median']:.2f}x",
                         ", ".join(f"{t * 1e3:.0f}" for t in r["per_save"]),
                         f"{r['save_call'] * 1e3:.0f}",
                         f"{r['tail']:.1f}"])
        placement = thread_cores()
        placement["fake-gcs-server (process)"] = {
            ",".join(map(str, sorted(os.sched_getaffinity(emu.proc.pid))))}
    print(f"{FLAGS.size}, batch {FLAGS.batch} x seq {FLAGS.seq}, {FLAGS.steps} steps, save every "
          f"{FLAGS.save_every}; {jax.device_count()} {jax.devices()[0].platform} device(s); "
          f"load average {load_average()}")
    print("threads on cores: " + "; ".join(
        f"{name} {','.join(sorted(c))}" for name, c in sorted(placement.items())))
    print(markdown_table(
        ["checkpointing", "params", "median step ms", f"mean of {AROUND} steps from a save ms",
         "max of those ms", "max / median", "max / median, steps far from saves", "save steps ms", "save() call ms (median)",
         "wait at close s"], rows))


if __name__ == "__main__":
    app.run(main)
