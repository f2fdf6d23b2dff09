"""The pieces the one training loop (`bert_jax.train.loop`, which holds the
loop itself) is built from: the `Objective`, the sharded train state
(`state_spec`, `init_state`), the pure jitted train and eval steps, the
dropout key and host-to-global batches, and the loop's helpers for metrics
files (`MetricWriter`), SIGTERM / Ctrl-C (`PreemptionFlag`) and timing.

Pretraining and the fine-tuning tasks differ only in an `Objective`: how to
run the model on a batch into metric sums, which denominators normalize them,
and how the sums combine into the scalar loss.

State is a plain pytree {'step', 'params' (nnx pure dict), 'opt_state'}; the
model graph is static. `train_step(state, batch, rng) -> (state, metrics)` is
pure: dropout keys are `fold_in(rng, step)`, so a resumed run replays the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax.model import sharding
from bert_jax.model.config import RNG_IMPLS
from bert_jax.model.params import flat_into_pure
from bert_jax.storage import paths

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Objective:
    """sums(model, batch, dropout_rng) -> dict of metric sums;
    totals(batch) -> dict of global denominators (computed on the whole batch, so
    micro-batching does not change the loss); loss(sums, totals) -> scalar,
    linear in `sums`."""

    sums: Callable[[nnx.Module, dict, jax.Array | None], dict]
    totals: Callable[[dict], dict]
    loss: Callable[[dict, dict], jax.Array]


# ---- Sharded state ------------------------------------------------------------------


def _pure_specs(abs_state: nnx.State, mesh, rules) -> dict:
    specs = sharding.state_specs(abs_state, rules)
    flat = {"/".join(map(str, p)): NamedSharding(mesh, s)
            for p, s in nnx.to_flat_state(specs)}
    pure = nnx.to_pure_dict(abs_state)

    def build(tree, prefix=""):
        return {k: build(v, f"{prefix}{k}/") if isinstance(v, dict) else flat[f"{prefix}{k}"]
                for k, v in tree.items()}
    return build(pure)


@dataclasses.dataclass
class StateSpec:
    graphdef: Any
    abstract: PyTree      # ShapeDtypeStructs with shardings
    shardings: PyTree     # NamedShardings, same structure as the state
    scanned: bool


def state_spec(model_fn: Callable[[jax.Array], nnx.Module], optimizer, mesh,
               rules=sharding.DEFAULT_RULES) -> StateSpec:
    abstract_model = nnx.eval_shape(lambda: model_fn(jax.random.key(0)))
    graphdef, abs_params = nnx.split(abstract_model, nnx.Param)
    param_sh = _pure_specs(abs_params, mesh, rules)
    pure_abs = nnx.to_pure_dict(abs_params)
    abs_opt = jax.eval_shape(optimizer.init, pure_abs)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sh = _opt_shardings(abs_opt, pure_abs, param_sh, replicated)
    shardings = {"step": replicated, "params": param_sh, "opt_state": opt_sh}
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": pure_abs, "opt_state": abs_opt},
        shardings)
    scanned = bool(getattr(getattr(abstract_model, "cfg", None), "scan_layers", False))
    return StateSpec(graphdef, abstract, shardings, scanned)


def _opt_shardings(abs_opt, abs_params, param_sh, replicated):
    """Optimizer-state shardings: every subtree shaped like the parameters (Adam's
    mu and nu, LAMB's moments) takes the parameters' shardings, anything else
    (step counts) is replicated. Purely structural, so nothing runs eagerly: on
    the devices of a TPU topology with no TPU attached (`bert_jax.aot`) an eager
    op fails, and `optax.tree_map_params` calls `optimizer.init` eagerly."""
    treedef = jax.tree.structure(abs_params)

    def shaped_like_params(x):
        return isinstance(x, dict) and jax.tree.structure(x) == treedef

    return jax.tree.map(lambda x: param_sh if shaped_like_params(x) else replicated, abs_opt,
                        is_leaf=shaped_like_params)


def init_state(spec: StateSpec, model_fn, optimizer, seed: int,
               init_params: dict[str, np.ndarray] | None = None) -> PyTree:
    """Parameters are born sharded: the whole init runs inside jit with the
    state's out_shardings. `init_params` (canonical names, host arrays) then
    replaces the matching leaves, placed straight onto their shardings."""

    @functools.partial(jax.jit, out_shardings=spec.shardings)
    def init(key):
        params = nnx.to_pure_dict(nnx.state(model_fn(key), nnx.Param))
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": optimizer.init(params)}

    state = init(jax.random.key(seed))
    if init_params:
        given = flat_into_pure(spec.abstract["params"], init_params, spec.scanned,
                               keep_missing=False)
        params = jax.tree.map(
            lambda cur, new, sh, abs_: cur if new is None else jax.make_array_from_callback(
                abs_.shape, sh, lambda idx, n=new: np.asarray(n, abs_.dtype)[idx]),
            state["params"], given, spec.shardings["params"], spec.abstract["params"],
            is_leaf=lambda x: x is None)
        state = {**state, "params": params, "opt_state": jax.jit(
            optimizer.init, out_shardings=spec.shardings["opt_state"])(params)}
    return state


# ---- Steps --------------------------------------------------------------------------


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def train_step(state, batch, rng, *, graphdef, objective: Objective, optimizer, schedule,
               accum_steps: int = 1):
    """One optimizer step on the global batch, averaged over `accum_steps`
    micro-batches. A non-finite loss or gradient leaves the state unchanged and
    reports finite=0, so no NaN ever reaches a checkpoint."""
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    totals = objective.totals(batch)

    def loss_fn(params, micro, key):
        sums = objective.sums(nnx.merge(graphdef, params), micro, key)
        return objective.loss(sums, totals), sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params = state["params"]
    if accum_steps == 1:
        (_, sums), grads = grad_fn(params, batch, rng)
    else:
        # Micro-batch j takes rows j, j+k, j+2k, ...: every device's contiguous
        # block of the batch contributes to every micro-batch, so no resharding.
        def split(x):
            return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]),
                                0, 1)
        micro = jax.tree.map(split, batch)
        sums_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro),
                                                    rng)[0][1])
        zeros = (jax.tree.map(jnp.zeros_like, params),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))

        def body(carry, xs):
            mb, i = xs
            (_, s), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (g, s)), None
        (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
    loss = objective.loss(sums, totals)
    grad_norm = optax.global_norm(grads)
    updates, new_opt = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    update_norm = optax.global_norm(updates)
    # The update too: finite gradients times an overflowing learning rate would
    # otherwise put inf into the parameters one step before the loss shows it.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    new_state = {"step": step + 1,
                 "params": _tree_where(finite, new_params, params),
                 "opt_state": _tree_where(finite, new_opt, state["opt_state"])}
    metrics = {**sums, **{f"total_{k}": v for k, v in totals.items()}, "loss": loss,
               "grad_norm": grad_norm, "param_norm": optax.global_norm(new_params),
               "update_norm": update_norm, "lr": schedule(step),
               "finite": finite.astype(jnp.float32)}
    return new_state, metrics


def eval_step(params, batch, *, graphdef, objective: Objective):
    return objective.sums(nnx.merge(graphdef, params), batch, None)


def jit_train_step(spec: StateSpec, mesh, objective, optimizer, schedule, accum_steps=1):
    fn = functools.partial(train_step, graphdef=spec.graphdef, objective=objective,
                           optimizer=optimizer, schedule=schedule, accum_steps=accum_steps)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(spec.shardings, None, replicated),
                   out_shardings=(spec.shardings, replicated), donate_argnums=0)


def jit_eval_step(spec: StateSpec, mesh, objective):
    fn = functools.partial(eval_step, graphdef=spec.graphdef, objective=objective)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(spec.shardings["params"], None), out_shardings=replicated)




def rng_impl(config) -> str:
    impl = config.get("rng_impl", "threefry2x32")
    if impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl={impl!r}; expected one of {', '.join(RNG_IMPLS)}")
    return impl


def dropout_key(config) -> jax.Array:
    """The dropout key of a run: `config.seed + 1` with `config.rng_impl`."""
    return jax.random.key(config.seed + 1, impl=rng_impl(config))


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's rows (sharded over data x fsdp)."""
    out = {}
    for k, v in local.items():
        sh = sharding.batch_sharding(mesh, v.ndim)
        shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sh, v, shape)
    return out


# ---- Logging ------------------------------------------------------------------------


class MetricWriter:
    """metrics.jsonl (one object per logged step) + TensorBoard events (tensorboardX,
    no TensorFlow), written by process 0 only. On resume from step s, entries
    after s are dropped so every step appears exactly once.

    Locally the file is appended to and flushed line by line. In a bucket an
    append is a rewrite of the object: the lines are kept in memory and the
    whole object is rewritten at each write (log steps), so it always holds
    whole lines. TensorBoard events are written to a local temp dir and
    uploaded to workdir/tb/ at the same moments (tensorboardX has no gs://
    writer that honours the emulator or our credentials)."""

    def __init__(self, workdir, resume_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = paths.join(workdir, "metrics.jsonl")
        self.remote = paths.is_url(workdir)
        self._tb = None
        if not self.enabled:
            return
        paths.makedirs(workdir)
        kept = []
        if paths.exists(self.path):
            for line in paths.read_text(self.path).splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
            paths.write_text(self.path, "".join(x + "\n" for x in kept))
        self._tb_remote = paths.join(workdir, "tb")
        self._tb_dir = (tempfile.mkdtemp(prefix="bert_jax_tb_") if self.remote
                        else str(pathlib.Path(workdir) / "tb"))
        self._tb = _summary_writer_class()(self._tb_dir, purge_step=resume_step + 1)
        if self.remote:
            self._lines = kept
        else:
            self._f = open(self.path, "a")

    def write(self, step: int, metrics: dict[str, float], prefix: str = ""):
        if not self.enabled:
            return
        rec = {"step": int(step), **{f"{prefix}{k}": _jsonable(v) for k, v in metrics.items()}}
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(f"{prefix}{k}", v, step)
        if self.remote:
            self._lines.append(json.dumps(rec))
            paths.write_text(self.path, "".join(x + "\n" for x in self._lines))
            self._upload_tb()
        else:
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()

    def _upload_tb(self):
        self._tb.flush()
        paths.upload_tree(self._tb_dir, self._tb_remote)

    def close(self):
        if self.enabled:
            if self.remote:
                self._tb.close()
                paths.upload_tree(self._tb_dir, self._tb_remote)
                shutil.rmtree(self._tb_dir, ignore_errors=True)
            else:
                self._f.close()
                self._tb.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports
    torch (2-3 s, ~1 GB) when present only to accept torch tensors; we log floats."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        # ~3 s to import; only a run writing TensorBoard logs needs it
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        # ~3 s to import; only a run writing TensorBoard logs needs it
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _jsonable(v):
    v = float(v) if isinstance(v, (np.floating, np.integer, jax.Array)) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# ---- Preemption ---------------------------------------------------------------------


class PreemptionFlag:
    """Whether to save and stop now: SIGTERM (what schedulers and spot VMs send
    before killing us) or a first Ctrl-C (SIGINT). A second Ctrl-C exits at
    once with status 130 (the last complete checkpoint stays; orbax never lists
    a half-written one).

    One process: our handlers set `set` (and `reason`). Several processes:
    JAX's preemption service (started by `jax.distributed.initialize`) catches
    SIGTERM on any process and picks one step at which all of them stop
    together; a per-process flag would let one process leave while the others
    wait in a collective, so no Python handler is installed there (Ctrl-C then
    stops the processes without saving). Call `reached(step)` once per step on
    every process.
    """

    SIGNALS = {signal.SIGTERM: "preemption", signal.SIGINT: "interrupted"}

    def __init__(self):
        self.set = False
        self.reason = ""
        self._old = {}
        if jax.process_count() > 1:
            return
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.set:
            print("\naborted: second Ctrl-C; exiting without saving (the newest complete "
                  "checkpoint is kept)", file=sys.stderr, flush=True)
            os._exit(130)  # cli.EXIT_ABORTED: at once, not after the step in flight
        if not self.set:
            self.reason = self.SIGNALS[signum]
            if signum == signal.SIGINT:
                print("\ninterrupted: saving a checkpoint after this step, then exiting "
                      "(Ctrl-C again aborts at once)", file=sys.stderr, flush=True)
        self.set = True

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.set
        try:
            if multihost_utils.reached_preemption_sync_point(step):
                self.reason = "preemption"
                return True
            return False
        except RuntimeError:  # jax_enable_preemption_service=False
            return False

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def timed(it: Iterator) -> Iterator[tuple[float, Any]]:
    """Yield (seconds spent waiting for the item, item)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t0, item
