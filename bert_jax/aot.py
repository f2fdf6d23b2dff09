r"""Compile the real training step for a TPU slice ahead of time, with no TPU.

    python -m bert_jax.aot --config=configs/pretrain/bert.py:size=large,phase=1 \
        --topology=v5p-1024 --config.mesh.shape=1,-1,1 [--find_batch] [--out=report.json]
    python -m bert_jax.aot --config=configs/finetune/squad.py --topology=v5e:4x4 \
        --model_size=base

libtpu (the `tpu` extra: `pip install -e ".[tpu]"`) carries the TPU compiler;
`jax.experimental.topologies` gives the devices of any slice (v4, v5e, v5p,
v6e; many hosts) to compile against on this CPU. The step is the one
`bert_jax.pretrain` (or the fine-tuning trainer) runs: `train.pretrain_job.build` /
`finetune.trainer.objective_for` with the same model config, shardings,
objective, optimizer, grad accumulation, dtype, remat, scan, attention
implementation and packing; state, batch and RNG are abstract
(ShapeDtypeStructs with shardings), so nothing is allocated or run.

The report: devices and hosts, mesh, HBM per device, the compiled program's
bytes per device (arguments, outputs, temporaries, aliased; peak) and whether
they fit, FLOPs per step from XLA's cost analysis beside `flops.py`'s formula,
the compiler's step-time estimate and the MFU it implies (an estimate, not a
measurement), the collectives of the compiled program with their bytes (loop
bodies counted once per trip), and the per-host input batch.

XLA's cost analysis counts a loop body once, so a step with scan over layers or
grad accumulation takes its FLOPs and time estimate from a second compile of
the same step unrolled at the micro-batch (`cost_source` says which).
`optimal_seconds` is the TPU compiler's own estimate; where it is absent or not
positive the time is a roofline max(FLOPs / peak, bytes / HBM bandwidth)
(`estimate_kind` says which).
"""

from __future__ import annotations

import os

# Before jax is imported: eager work stays on the CPU, and libtpu does not ask a
# GCE metadata server what TPU this is (there is none; we name the topology).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# libtpu takes /tmp/libtpu_lockfile so two processes never drive one TPU; with no
# TPU attached that only stops two compiles at once (pytest -n 2, parallel plans).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")
# A persistent compilation cache (JAX_COMPILATION_CACHE_DIR, as the test suite
# sets) would store each TPU program and then fail to load it: the compile-only
# TPU client cannot deserialize executables (a warning, then a recompile).
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from ml_collections import config_flags

from bert_jax import cli
from bert_jax.convert import formats
from bert_jax.data.pipeline import batch_spec
from bert_jax.data.token_cache import open_prepared
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.finetune import task as tasks
from bert_jax.finetune.trainer import objective_for, runtime_overrides
from bert_jax.model import flops, sharding
from bert_jax.model.config import BertConfig
from bert_jax.model.heads import build_model, get_head
from bert_jax.storage import json_input, outputs
from bert_jax.tpu.hlo import COLLECTIVES_VERSION, collectives
from bert_jax.tpu.report_text import format_find_batch, format_report, gib
from bert_jax.tpu.topology import CHIPS, topology_devices
from bert_jax.train import pretrain_job
from bert_jax.train.optim import build_optimizer
from bert_jax.train.step import dropout_key, jit_train_step, state_spec

# ---- Building the step abstractly ---------------------------------------------------


@dataclasses.dataclass
class Program:
    """A step to compile: jitted fn, abstract args, and what the report needs."""

    fn: Any
    args: tuple
    global_batch: int
    seq_len: int
    formula_flops: float      # flops.py, whole step
    per_host_rows: int
    per_host_bytes: int
    model: str
    num_layers: int
    dtype: str = ""           # "compute X, params Y": what the memory depends on


def _abstract_batch(spec: dict[str, tuple[tuple[int, ...], np.dtype]], mesh) -> dict:
    return {k: jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=sharding.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in spec.items()}


def _rng(config, mesh):
    key = jax.eval_shape(lambda: dropout_key(config))
    return jax.ShapeDtypeStruct(key.shape, key.dtype,
                                sharding=NamedSharding(mesh, PartitionSpec()))


def _dtypes(cfg) -> str:
    return f"compute {cfg.dtype}, params {cfg.param_dtype}"


def _host_input(spec, num_hosts: int) -> tuple[int, int]:
    rows = next(iter(spec.values()))[0][0] // num_hosts
    per_row = sum(int(np.prod(s[1:])) * np.dtype(d).itemsize for s, d in spec.values())
    return rows, rows * per_row


def is_finetune_config(config) -> bool:
    return "task" in config


def vocab_size_of(config) -> int:
    """Size of the configured vocabulary (vocab.txt, SentencePiece model or
    tokenizer.json), else the paper's: BERT's uncased 30522, ModernBERT's 50368."""
    path = config.data.get("vocab") or ""
    if not path and config.data.get("prepared_dir"):
        path = str(open_prepared(config.data.prepared_dir).vocab_path)
    if not path:
        modern = config.get("model", {}).get("architecture", "bert") == "modernbert"
        return 50368 if modern else 30522
    if str(path).endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            return sum(1 for _ in f)
    return load_tokenizer(path).vocab_size


def pretrain_program(config, mesh, num_hosts: int) -> Program:
    G = config.global_batch_size
    built = pretrain_job.build(config, vocab_size_of(config), mesh)
    spec = batch_spec(config.data, G)
    T = config.data.max_seq_length
    masked = spec["masked_positions"][0][1] if built.gathered else T
    formula = flops.train_flops_per_sequence(built.cfg, T, masked) * G
    rows, nbytes = _host_input(spec, num_hosts)
    return Program(built.step_fn, (built.spec.abstract, _abstract_batch(spec, mesh),
                                       _rng(config, mesh)),
                   G, T, formula, rows, nbytes,
                   f"{'modernbert' if built.cfg.modern else 'bert'}_{config.model.size}",
                   built.cfg.num_hidden_layers, _dtypes(built.cfg))


def finetune_program(config, mesh, num_hosts: int, model_size: str) -> Program:
    """The fine-tuning step of `config.task` at max_seq_length (the largest bucket)."""
    task = str(config.task).lower()
    head, num_labels = tasks.get(task).plan(config)
    if config.get("init_checkpoint"):
        cfg = formats.read_any(config.init_checkpoint)[0]
    else:
        cfg = BertConfig.named(model_size)
    runtime = runtime_overrides(config, cfg)
    if "model" in config and config.model.get("num_layers"):
        runtime["num_hidden_layers"] = config.model.num_layers
    cfg = cfg.replace(**runtime)
    B, T = config.global_batch_size, config.max_seq_length
    optimizer, schedule = build_optimizer(config.optim, 10_000)

    def model_fn(key):
        return build_model(cfg, head, num_labels, seed=key)

    spec = state_spec(model_fn, optimizer, mesh)
    step = jit_train_step(spec, mesh, objective_for(head), optimizer, schedule)
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    bspec = {"input_ids": ((B, T), i32), "token_type_ids": ((B, T), i32),
             "attention_mask": ((B, T), i32), "example_weights": ((B,), f32)}
    bspec.update({k: (shape, np.dtype(dt))
                  for k, (shape, dt) in get_head(head).label_spec(B, T).items()})
    enc = flops.finetune_flops_per_sequence(cfg, T, head, num_labels)
    rows, nbytes = _host_input(bspec, num_hosts)
    return Program(step, (spec.abstract, _abstract_batch(bspec, mesh), _rng(config, mesh)), B, T,
                   enc * B, rows, nbytes, f"{task} head on {cfg.num_hidden_layers}L/H{cfg.hidden_size}",
                   cfg.num_hidden_layers, _dtypes(cfg))


# ---- Reading the compiled program ---------------------------------------------------

def _is_oom(e: Exception) -> bool:
    s = str(e)
    return "RESOURCE_EXHAUSTED" in s or "Ran out of memory" in s or "exceeds" in s and "hbm" in s.lower()


def compile_program(prog: Program, mesh) -> dict:
    """Lower + compile; memory and cost analyses. OOM is a result, not an error."""
    t0, c0 = time.perf_counter(), time.process_time()
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        lowered = prog.fn.lower(*prog.args)
    t1, c1 = time.perf_counter(), time.process_time()
    timing = {"lower_seconds": t1 - t0, "lower_cpu_seconds": c1 - c0}
    try:
        compiled = lowered.compile()
    except Exception as e:
        if _is_oom(e):
            first = next((ln for ln in str(e).splitlines() if ln.strip()), str(e))
            return {"oom": True, "oom_message": first[:300],
                    "compile_seconds": time.perf_counter() - t0, **timing}
        raise
    secs = time.perf_counter() - t0
    timing.update(xla_compile_seconds=time.perf_counter() - t1,
                  xla_compile_cpu_seconds=time.process_time() - c1)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    b = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
         "temporaries": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes,
         "generated_code": mem.generated_code_size_in_bytes}
    b["peak"] = b["arguments"] + b["outputs"] - b["aliased"] + b["temporaries"]
    return {"oom": False, "bytes_per_device": b, "compile_seconds": secs, **timing,
            "flops_per_device": float(cost.get("flops", 0.0)),
            "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
            "optimal_seconds": float(cost.get("optimal_seconds", -1.0)),
            "collectives": collectives(compiled.as_text())}


# ---- The whole report ---------------------------------------------------------------


def _mesh_for(config, devices):
    shape = tuple(config.mesh.shape) if "mesh" in config else (-1, 1, 1)
    return sharding.make_mesh(shape, devices=devices)


def _program(config, mesh, num_hosts, model_size):
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        if is_finetune_config(config):
            return finetune_program(config, mesh, num_hosts, model_size)
        return pretrain_program(config, mesh, num_hosts)


def _cost_variant(config, layers: int):
    """The same step unrolled, with `layers` layers, at the micro-batch: XLA's
    cost analysis counts a loop body once, so the cost of the real step is
    extrapolated from two loop-free compiles of 1 and 2 layers (cost is linear
    in the layer count), which also compile in seconds."""
    c = config.copy_and_resolve_references()
    accum = int(c.get("grad_accum_steps", 1))
    with c.unlocked():
        if "model" not in c:
            c.model = {}
        c.model.scan_layers = False
        c.model.num_layers = layers
        if "grad_accum_steps" in c:
            c.grad_accum_steps = 1
        if "global_batch_size" in c:
            c.global_batch_size = c.global_batch_size // accum
    return c, accum


def report(config, topology: str, model_size: str = "base",
           hbm_bytes: int | None = None) -> dict:
    """The compiled step's report; `hbm_bytes` replaces the chip's HBM per
    device as the limit it must fit in (a smaller budget, or a what-if)."""
    gen, devices = topology_devices(topology)
    chip = CHIPS[gen]
    if hbm_bytes:
        chip = dataclasses.replace(chip, hbm_bytes=int(hbm_bytes))
    mesh = _mesh_for(config, devices)
    num_hosts = len({d.process_index for d in devices})
    prog = _program(config, mesh, num_hosts, model_size)
    res = compile_program(prog, mesh)
    n = len(devices)
    out: dict[str, Any] = {
        "topology": topology, "device_kind": devices[0].device_kind, "num_devices": n,
        "num_hosts": num_hosts, "devices_per_host": n // num_hosts,
        "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
        "model": prog.model, "dtype": prog.dtype, "seq_len": prog.seq_len, "global_batch_size": prog.global_batch,
        "per_host_batch_rows": prog.per_host_rows, "per_host_batch_bytes": prog.per_host_bytes,
        "hbm_bytes_per_device": chip.hbm_bytes, "peak_flops_per_device": chip.peak_flops,
        "compile_seconds": res["compile_seconds"], "collectives_version": COLLECTIVES_VERSION,
    }
    if res["oom"]:
        out.update(fits=False, oom_message=res["oom_message"], bytes_per_device=None)
        return out
    peak = res["bytes_per_device"]["peak"]
    out.update(bytes_per_device=res["bytes_per_device"], fits=peak <= chip.hbm_bytes,
               headroom_bytes=chip.hbm_bytes - peak, collectives=res["collectives"])
    m = config.get("model", {})
    accum = int(config.get("grad_accum_steps", 1))
    if not m.get("scan_layers", False) and accum == 1:
        cost, cost_source = res, "this compile"
    else:
        # Loops: cost from two small loop-free compiles (see _cost_variant).
        (c1, accum), (c2, _) = _cost_variant(config, 1), _cost_variant(config, 2)
        r1 = compile_program(_program(c1, mesh, num_hosts, model_size), mesh)
        r2 = compile_program(_program(c2, mesh, num_hosts, model_size), mesh)
        layers = prog.num_layers
        cost_source = (f"1- and 2-layer unrolled compiles extrapolated to {layers} layers"
                       + (f", x{accum} micro-batches of {prog.global_batch // accum}"
                          if accum > 1 else ""))
        out["cost_compile_seconds"] = r1["compile_seconds"] + r2["compile_seconds"]
        if r1["oom"] or r2["oom"]:
            out.update(cost_source=cost_source + ": did not fit, no cost analysis")
            return out
        cost = {k: r1[k] + (layers - 1) * (r2[k] - r1[k])
                for k in ("flops_per_device", "bytes_accessed_per_device")}
        # The compiler's time estimate only where both small compiles gave one.
        cost["optimal_seconds"] = (r1["optimal_seconds"] + (layers - 1) * (
            r2["optimal_seconds"] - r1["optimal_seconds"])
            if min(r1["optimal_seconds"], r2["optimal_seconds"]) > 0 else -1.0)
    flops_dev = cost["flops_per_device"] * accum
    out.update(flops_per_step_xla=flops_dev * n, flops_per_device_xla=flops_dev,
               flops_per_step_formula=prog.formula_flops,
               flops_xla_over_formula=flops_dev * n / prog.formula_flops,
               bytes_accessed_per_device=cost["bytes_accessed_per_device"] * accum,
               cost_source=cost_source)
    out["compiler_optimal_seconds"] = cost["optimal_seconds"] * accum
    if cost["optimal_seconds"] > 0:
        t, kind = cost["optimal_seconds"] * accum, "TPU compiler optimal_seconds"
    else:
        t = max(flops_dev / chip.peak_flops,
                cost["bytes_accessed_per_device"] * accum / chip.hbm_bandwidth)
        kind = "roofline max(FLOPs/peak, bytes/HBM bandwidth)"
    out.update(estimated_step_seconds=t, estimate_kind=kind,
               estimated_mfu=prog.formula_flops / (n * chip.peak_flops * t),
               estimated_sequences_per_second=prog.global_batch / t)
    return out


def memory_line(points: dict[int, int]) -> dict | None:
    """Least-squares line peak bytes = a + b * batch through the compiles that
    gave a memory analysis (None below two distinct batches). Peak memory is
    the parameters, optimizer state and code (a) plus activations and input
    per row (b); `max_residual_bytes` says how straight it is."""
    if len(points) < 2:
        return None
    x = np.array(sorted(points), dtype=np.float64)
    y = np.array([points[int(b)] for b in x], dtype=np.float64)
    b, a = np.polyfit(x, y, 1)
    return {"a_bytes": float(a), "b_bytes_per_row": float(b),
            "max_residual_bytes": float(np.max(np.abs(a + b * x - y))),
            "points": len(points)}


def line_limit(line: dict | None, hbm: int, unit: int) -> int | None:
    """The largest multiple of `unit` the line puts at or under `hbm`."""
    if not line or line["b_bytes_per_row"] <= 0:
        return None
    return int((hbm - line["a_bytes"]) / line["b_bytes_per_row"]) // unit * unit


def batch_unit(config, mesh, num_hosts: int) -> int:
    """Valid global batches are the multiples of this: every micro-batch
    (global / grad_accum_steps) splits over data x fsdp, and every host reads
    the same number of rows."""
    accum = int(config.get("grad_accum_steps", 1))
    return math.lcm(sharding.batch_shards(mesh) * accum, num_hosts)


def find_batch(config, topology: str, model_size: str = "base", hbm_bytes: int | None = None,
               max_compiles: int = 16, max_batch: int = 1 << 20,
               log=None) -> tuple[int, dict]:
    """Largest valid global batch whose compiled step fits in `hbm_bytes` per
    device (the chip's HBM unless given).

    From the config's batch (rounded to a valid one) the batch doubles until a
    compile does not fit (an out-of-memory compile, or a peak over the limit);
    where the memory line of the last two compiles predicts a limit further out,
    the step jumps there (a little past it, so it brackets), at most 16x at
    once and never past `max_batch`. Then the bracket [largest fit, smallest
    non-fit] closes: each probe is the prediction of the secant through the
    compiles nearest the limit, kept inside the bracket, until two such probes
    have each left more than half of it; from then on the midpoint (memory
    that steps, as the compiler pads or changes a layout, bisects in log2
    compiles; the line is a model, the compiles decide). The line reported is the least-squares one through
    all compiles. The answer is exact: answer
    fits and answer + unit does not (both compiled), unless `max_batch` or
    `max_compiles` stopped the search (`stopped` says which). `log(line)`
    hears of each compile as it ends (they take minutes for a large model)."""
    gen, devices = topology_devices(topology)
    hbm = int(hbm_bytes) if hbm_bytes else CHIPS[gen].hbm_bytes
    mesh = _mesh_for(config, devices)
    num_hosts = len({d.process_index for d in devices})
    unit = batch_unit(config, mesh, num_hosts)
    cap = max_batch // unit * unit or unit
    known: dict[int, int | None] = {}   # batch -> peak bytes, None = out of memory
    order: list[int] = []
    dtype = [""]

    def measure(b):
        c = config.copy_and_resolve_references()
        with c.unlocked():
            c.global_batch_size = b
        prog = _program(c, mesh, num_hosts, model_size)
        dtype[0] = prog.dtype
        r = compile_program(prog, mesh)
        known[b] = None if r["oom"] else r["bytes_per_device"]["peak"]
        order.append(b)
        if log:
            log(f"compile {len(order)}: batch {b}: "
                + ("out of memory" if known[b] is None else
                   f"peak {gib(known[b])} -> {'fits' if fits(b) else 'does NOT fit'}")
                + f" ({r['compile_seconds']:.1f} s)")
        return fits(b)

    def fits(b):
        return known.get(b) is not None and known[b] <= hbm

    def line():
        return memory_line({b: m for b, m in known.items() if m is not None})

    def local_line():
        """The secant through the compiled points nearest the limit: the largest
        fit and the smallest compiled batch above it (else the fit below):
        memory that bends or steps is linear enough locally."""
        pts = sorted(b for b, m in known.items() if m is not None)
        if lo not in pts:
            return None
        i = pts.index(lo)
        near = pts[i:i + 2] if i + 1 < len(pts) else pts[max(i - 1, 0):i + 1]
        return memory_line({b: known[b] for b in near})

    def up(x):
        return max(unit, -(-int(x) // unit) * unit)

    def down(x):
        return int(x) // unit * unit

    stopped = None
    lo, hi = 0, None                     # largest fit, smallest non-fit
    b = min(up(config.global_batch_size), cap)
    # Downwards from a start that does not fit: halve until one does.
    while not measure(b):
        hi = b
        if b == unit:
            break
        b = up(b // 2) if up(b // 2) < b else b - unit
    if fits(b):
        lo = b
    # Upwards: double (or jump by the line) until a compile does not fit.
    while hi is None and lo:
        if lo >= cap:
            stopped = f"max_batch {max_batch}"
            break
        if len(known) >= max_compiles:
            stopped = f"max_compiles {max_compiles}"
            break
        nxt = 2 * lo
        pred = line_limit(local_line(), hbm, unit)
        if pred is not None and pred > nxt:
            nxt = min(max(up(pred * 1.05), pred + unit), 16 * lo)
        nxt = min(nxt, cap)
        if measure(nxt):
            lo = nxt
        else:
            hi = nxt
    # Inside the bracket: the line's prediction, or the midpoint when it stalls.
    stalls = 0
    while lo and hi is not None and hi - lo > unit:
        if len(known) >= max_compiles:
            stopped = f"max_compiles {max_compiles}"
            break
        width = hi - lo
        pred = line_limit(local_line(), hbm, unit)
        use_line = stalls < 2 and pred is not None
        cand = min(max(pred, lo + unit), hi - unit) if use_line else \
            min(max(down(lo + width // 2), lo + unit), hi - unit)
        if measure(cand):
            lo = cand
        else:
            hi = cand
        stalls += use_line and hi - lo > width / 2
    fitted = line()
    info = {"unit": unit, "hbm_bytes": hbm, "dtype": dtype[0], "compiles": len(order),
            "order": order, "tried": {str(k): known[k] for k in sorted(known)},
            "bracket": [lo, hi], "stopped": stopped, "memory_line": fitted,
            "line_limit": line_limit(fitted, hbm, unit)}
    return lo, info


# What an aot --out report records about itself (storage/outputs.py).
AOT_RECORD = {"command": "aot", "kind": "compile report"}


def _is_aot_report(path) -> bool:
    """An --out file an earlier `aot` wrote (rewriting it loses nothing)."""
    try:
        obj = json_input.read(path)
    except (ValueError, OSError):
        return False
    return isinstance(obj, dict) and obj.get("written_by") == AOT_RECORD


def main(argv=None) -> int:
    fl = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Pretraining or fine-tuning config file.",
                                    flag_values=fl, lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice: v5e:4x4, v5p:8x8x8, v5p-1024, ...",
                        flag_values=fl)
    flags.DEFINE_bool("find_batch", False, "Find the largest global batch that fits.",
                      flag_values=fl)
    flags.DEFINE_string("out", "", "Write the report as JSON here.", flag_values=fl)
    flags.DEFINE_float("hbm_gib", None, "Memory per device to fit in, GiB (default: the "
                       "chip's HBM); e.g. to leave room for something else.", flag_values=fl)
    flags.DEFINE_integer("max_batch", 1 << 20, "--find_batch: largest global batch to try.",
                         flag_values=fl)
    flags.DEFINE_string("model_size", "base", "Fine-tuning configs without "
                        "init_checkpoint: the architecture (tiny ... large).", flag_values=fl)
    flags.DEFINE_bool("overwrite", False, "Replace an --out file that is not an earlier aot "
                      "report.", flag_values=fl)
    argv = sys.argv if argv is None else argv
    cli.maybe_help(argv, fl)
    cli.configs_importable()
    try:
        fl(argv)
        if fl.config is None or not fl.topology:
            raise ValueError("--config and --topology are required")
        if fl.out:  # before the compile: a path we must not write stops it now
            outputs.check_destination(fl.out, kind="file", overwrite=fl.overwrite,
                                      is_own=_is_aot_report, what="--out file")
        if fl.hbm_gib is not None and not fl.hbm_gib > 0:
            raise ValueError(f"--hbm_gib={fl.hbm_gib}: expected a positive number of GiB")
        if fl.max_batch < 1:
            raise ValueError(f"--max_batch={fl.max_batch}: expected >= 1")
        hbm = int(fl.hbm_gib * 2**30) if fl.hbm_gib else None
        config = fl.config
        if fl.find_batch:
            best, info = find_batch(config, fl.topology, fl.model_size, hbm_bytes=hbm,
                                    max_batch=fl.max_batch,
                                    log=lambda s: print(s, file=sys.stderr, flush=True))
            print(format_find_batch(best, info), flush=True)
            if not best:
                raise ValueError(f"not even the smallest batch ({info['unit']}) fits on "
                                 f"{fl.topology}: try remat, fsdp or a larger slice")
            config = config.copy_and_resolve_references()
            with config.unlocked():
                config.global_batch_size = best
        r = report(config, fl.topology, fl.model_size, hbm_bytes=hbm)
        if fl.find_batch:
            r["find_batch"] = info
    except (ValueError, OSError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if fl.out:  # before printing: the report survives a closed stdout
        rec = {outputs.RECORD_KEY: AOT_RECORD, **r}
        outputs.write_file_atomic(fl.out, lambda tmp: tmp.write_text(
            json.dumps(rec, indent=2, default=float) + "\n"))
    print(format_report(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
