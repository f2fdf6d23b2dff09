"""The one training loop: pretraining and every fine-tuning task run it.

What differs between them is a `Job` (below): its batches and their
resumable position, the evaluation, and what a metric window reports. The
loop owns the rest: restoring the newest complete orbax checkpoint (train
state + the job's data position + the loop's own best-so-far and evaluation
history), the jitted step with its metrics read one step late (the host never
waits for the step it just dispatched), metric windows summed on the host
every `log_every` steps with throughput and MFU, the tqdm bar, metrics.jsonl +
TensorBoard (`MetricWriter`), evaluations (`job.eval_label`), the best
evaluation's parameters (`job.save_best`), checkpoints every
`checkpoint.every` steps and at the end, SIGTERM / Ctrl-C save-and-stop, the
NaN stop and summary.json.

Dropout keys are `fold_in(key(seed + 1), step)` inside the step and batches
are a pure function of the step (the job's contract), so a run killed at any
point and rerun replays the uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from tqdm import tqdm

from bert_jax.storage import paths, run_dir, workdir_lock

# The loop's own entry in a checkpoint's JSON data item (next to the job's).
LOOP_KEY = "_loop"


@dataclasses.dataclass
class Evaluation:
    metrics: dict[str, float]       # written to metrics.jsonl as eval_<key>
    score: float | None = None      # the main metric (higher is better); None: no best
    detail: Any = None              # JSON-able, kept in the summary's history


class Job(Protocol):
    name: str                       # progress-bar label
    num_steps: int

    def batches(self, start_step: int) -> Iterator[tuple[dict, dict[str, float]]]:
        """(this process's rows of the batch of step s, host counts such as
        {'sequences': 32, 'flops': ...}) for s = start_step, start_step + 1, ..."""
        ...

    def data_state(self, step: int) -> dict:
        """JSON-able position of the batches before `step` (saved with the state)."""
        ...

    def check_data_state(self, state: dict) -> None:
        """Raise a one-line ValueError when a checkpoint's position is not this data's."""
        ...

    def train_record(self, sums: dict[str, float], steps: int, step: int) -> dict:
        """Task metrics of a window from the summed step metrics."""
        ...

    def eval_label(self, step: int) -> str | None:
        """The name of the evaluation to run after `step`, or None."""
        ...

    def evaluate(self, params, step: int, label: str) -> Evaluation:
        ...

    def save_best(self, params, step: int) -> None:
        """Keep `params` as the best so far (called on every new best score)."""
        ...


def run(job: Job, config, workdir: str, *, mesh, spec, step_fn,
        init_state: Callable[[], Any], rng, peak_flops: float | None,
        started: Callable[[int], None] | None = None) -> tuple[dict, Any]:
    """Train `job` from the newest checkpoint in workdir (or `init_state()`) to
    `job.num_steps`. Reads config.log_every and config.checkpoint.*. Call under
    the mesh. `started(start_step)` runs once the checkpoint restored and its
    data position checked, before the loop writes anything (a run refused at
    restore leaves the workdir's files as they were). Returns (summary, final
    state); summary has 'preempted_at' when a signal stopped the run (after
    saving)."""
    # JAX: the fine-tuning command imports this module before its config checks
    import jax

    # JAX: the fine-tuning command imports this module before its config checks
    from bert_jax.train import checkpointing
    from bert_jax.train.step import MetricWriter, PreemptionFlag, global_batch

    is_main = jax.process_index() == 0
    c = config.checkpoint
    ckpt = checkpointing.Checkpointer(workdir, c.every, c.keep, c.get("keep_every") or None,
                                      c.get("async_save", True))
    start_step, state, loop_state = _restore(ckpt, job, workdir, spec, init_state, started,
                                             is_main)
    if start_step:
        run_dir.note_progress(workdir)
    best = loop_state.get("best")          # {'step', 'score', 'label'} or None
    history = list(loop_state.get("history", []))

    n_steps = job.num_steps
    writer = MetricWriter(workdir, resume_step=start_step)
    preempt = PreemptionFlag()
    n_dev = jax.device_count()
    bar = tqdm(total=n_steps, initial=start_step, disable=not is_main, unit="step",
               dynamic_ncols=True, desc=job.name)
    window: dict[str, float] = {}
    counts: dict[str, float] = {}
    totals: dict[str, float] = {}
    window_steps, window_t0 = 0, time.perf_counter()
    pending = None   # (step, metrics, counts) of the step in flight: read one step late
    first_log = True
    summary: dict = {"start_step": start_step}
    eval_sec = 0.0
    t_start = time.perf_counter()

    def consume(item):
        nonlocal window_steps
        s, m, n = item
        m = jax.device_get(m)
        if not m["finite"]:
            raise FloatingPointError(
                f"non-finite loss, gradient or update at step {s + 1} "
                f"(loss={m['loss']}, grad_norm={m['grad_norm']}, "
                f"update_norm={m['update_norm']}); stopped, the parameters of that step "
                f"were not applied; checkpoints kept: {ckpt.steps()}")
        summary.update(final_loss=float(m["loss"]), final_loss_step=s + 1)
        for k, v in m.items():
            window[k] = window.get(k, 0.0) + float(v)
        for k, v in n.items():
            counts[k] = counts.get(k, 0.0) + v
            totals[k] = totals.get(k, 0.0) + v
        window_steps += 1
        return m

    def log(done, last):
        nonlocal window_steps, window_t0, first_log
        jax.block_until_ready(state["step"])
        dt = max(time.perf_counter() - window_t0, 1e-9)
        rec = {"loss": window["loss"] / window_steps,
               **job.train_record(window, window_steps, done),
               "lr": float(last["lr"]), "grad_norm": float(last["grad_norm"]),
               "param_norm": float(last["param_norm"]),
               "update_norm": float(last["update_norm"]),
               "steps_per_sec": window_steps / dt, "step_time": dt / window_steps}
        for k, v in counts.items():
            if k != "flops":
                rec[f"{k}_per_sec"] = v / dt
        if peak_flops and counts.get("flops"):
            rec["mfu"] = counts["flops"] / dt / (peak_flops * n_dev)
        if first_log:
            rec["includes_compile"] = True  # the first window includes compilation
            first_log = False
        writer.write(done, rec)
        run_dir.note_progress(workdir)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
        summary["train"] = rec
        window.clear()
        counts.clear()
        window_steps, window_t0 = 0, time.perf_counter()

    def evaluate(done, label):
        nonlocal best, eval_sec, window_t0
        t0 = time.perf_counter()
        ev = job.evaluate(state["params"], done, label)
        writer.write(done, ev.metrics, prefix="eval_")
        history.append({"step": done, "label": label, "metrics": _strict(ev.metrics),
                        "detail": _strict(ev.detail)})
        if is_main:
            tqdm.write(f"step {done} ({label}): eval " + ", ".join(
                f"{k}={v:.4f}" for k, v in ev.metrics.items()
                if isinstance(v, (int, float)))[:400])
        score = ev.score
        if score is not None and math.isfinite(score) and (best is None
                                                           or score > best["score"]):
            best = {"step": done, "score": float(score), "label": label}
            job.save_best(state["params"], done)
        dt = time.perf_counter() - t0
        eval_sec += dt
        window_t0 += dt  # throughput counts training only

    multi = jax.process_count() > 1
    try:
        batches = job.batches(start_step) if start_step < n_steps else iter(())
        for step, (local, n) in enumerate(batches, start_step):
            if step >= n_steps:
                break
            if not multi:
                workdir_lock.check_held(workdir)  # a lost workdir lock stops the run (one line)
            batch = global_batch(local, mesh)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = step_fn(state, batch, rng)
            if pending is not None:
                consume(pending)
            pending = (step, metrics, n)
            done = step + 1
            bar.update(1)
            must_log = done % config.log_every == 0 or done == n_steps
            must_save = ckpt.should_save(done) or done == n_steps
            label = job.eval_label(done)
            stop = preempt.reached(done)
            last = None
            if must_log or must_save or label or stop:
                last = consume(pending)
                pending = None
            if must_log and window_steps:
                log(done, last)
            if label:
                evaluate(done, label)
            if must_save or stop:
                _check_lock(workdir, multi, is_main)  # never save into a workdir no longer ours
                ckpt.save(done, state, {**job.data_state(done), LOOP_KEY: {
                    "best": best, "history": history}}, force=True)
            if stop:
                ckpt.wait()
                if is_main:
                    tqdm.write(f"{preempt.reason}: saved step {done}; rerun the same "
                               "command to continue")
                summary["preempted_at"] = done
                break
        if pending is not None:
            consume(pending)
        _check_lock(workdir, multi, is_main)  # what the caller writes next goes there too
    finally:
        bar.close()
        preempt.restore()
        ckpt.close()
        writer.close()
    summary.update(final_step=int(jax.device_get(state["step"])),
                   wall_time_sec=time.perf_counter() - t_start, eval_time_sec=eval_sec,
                   num_devices=n_dev, num_processes=jax.process_count(),
                   processed={k: v for k, v in totals.items() if k != "flops"},
                   best=best, history=history)
    return summary, state


def _restore(ckpt, job: Job, workdir: str, spec, init_state: Callable[[], Any],
             started: Callable[[int], None] | None, is_main: bool) -> tuple[int, Any, dict]:
    """(start step, state, the loop's own saved state) from the newest
    checkpoint, its data position checked by the job, else step 0 and
    `init_state()`; then `started(start_step)`. Closes `ckpt` if any of it
    fails."""
    try:
        restored = ckpt.restore_latest(spec.abstract)
        if restored is not None:
            start_step, state, saved = restored
            loop_state = saved.pop(LOOP_KEY, {})
            job.check_data_state(saved)
            if is_main:
                print(f"resumed from {workdir} at step {start_step}", flush=True)
        else:
            start_step, state, loop_state = 0, init_state(), {}
        if started is not None:
            started(start_step)
    except BaseException:
        ckpt.close()  # nothing was saved: this only stops orbax's threads
        raise
    return start_step, state, loop_state


def _check_lock(workdir, multi: bool, is_main: bool) -> None:
    """Raise workdir_lock.LockLost when the workdir lock (held by process 0)
    was lost; with several processes process 0's answer is broadcast, so that
    all stop at the same step instead of the others waiting in a collective."""
    if not multi:
        workdir_lock.check_held(workdir)
        return
    # JAX: the fine-tuning command imports this module before its config checks
    import numpy as np
    from jax.experimental import multihost_utils
    why = None
    if is_main:
        try:
            workdir_lock.check_held(workdir)
        except workdir_lock.LockLost as e:
            why = str(e)
    if int(multihost_utils.broadcast_one_to_all(np.int32(why is not None))):
        raise workdir_lock.LockLost(why or "process 0 lost the workdir lock (see its error)")


def has_checkpoint(workdir) -> bool:
    return any(p.isdigit() for p in paths.listdir(paths.join(workdir, "checkpoints")))


def has_progress(workdir) -> bool:
    """Whether a run in workdir got anywhere (a checkpoint or a logged step):
    a run that fails before that removes the workdir it created."""
    try:
        if has_checkpoint(workdir):
            return True
        m = paths.join(workdir, "metrics.jsonl")
        return paths.exists(m) and bool(paths.read_bytes(m).strip())
    except OSError:
        return True  # cannot tell: keep it


def write_summary(workdir: str, summary: dict) -> None:
    # JAX: the fine-tuning command imports this module before its config checks
    import jax

    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "summary.json"),
                         json.dumps(_strict(summary), indent=2))


def _strict(obj):
    """`obj` with numpy scalars as Python numbers and NaN / inf as None (null),
    so summary.json and the checkpoint's JSON stay strict JSON."""
    # JAX: the fine-tuning command imports this module before its config checks
    import numpy as np
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj.item() if isinstance(obj, np.generic) else obj
