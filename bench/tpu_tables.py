"""The docs/tpu.md tables: `bert_jax.aot` reports for BERT-base / BERT-large,
phase 1 and 2, on single-host slices of each TPU generation and on pod slices.

    .venv/bin/python bench/tpu_tables.py --run [--only=SUBSTRING] [--shard=0/2]
    .venv/bin/python bench/tpu_tables.py --table

--run compiles each planned row that the JSONL file does not hold yet (each in a
fresh `python -m bert_jax.aot` process, so a long plan resumes after a stop and
one failure does not end it) and appends its report. --table prints the
markdown tables from the file. Every number is from the TPU compiler (libtpu):
memory from the compiled program, step time and MFU the compiler's estimate.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

from common import REPO, markdown_table

CONFIG = "configs/pretrain/bert.py:size={size},phase={phase}"
# Scan over layers: one layer body to compile. The dropout RNG stays threefry:
# rbg materializes the whole unsharded random tensor on every device (measured
# in docs/tpu.md), which at pod scale needs hundreds of GiB.
TPU = ["--config.model.scan_layers=True"]
SINGLE_HOST = ("v4-8", "v5e-8", "v5p-8", "v6e-8")
MESHES = {"data": "-1,1,1", "fsdp": "1,-1,1", "fsdp x tensor": "1,-1,2"}


def plan() -> list[dict]:
    rows = []

    def add(table, size, phase, topology, mesh="fsdp", remat="none", attn="reference",
            batch=None, find=False):
        flags = [f"--config={CONFIG.format(size=size, phase=phase)}", f"--topology={topology}",
                 f"--config.mesh.shape={MESHES[mesh]}", f"--config.model.remat_policy={remat}",
                 f"--config.model.attention_impl={attn}", *TPU]
        if attn == "splash":
            flags.append("--config.model.attention_probs_dropout_prob=0")
        if batch:
            flags.append(f"--config.global_batch_size={batch}")
        if find:
            flags.append("--find_batch")
        key = f"{table}|{size}|{phase}|{topology}|{mesh}|{remat}|{attn}|{batch}|{find}"
        rows.append({"key": key, "table": table, "size": size, "phase": phase,
                     "topology": topology, "mesh": mesh, "remat": remat, "attn": attn,
                     "flags": flags})

    # In the order they are run: the most informative first (a TPU compile of
    # BERT here costs 10-20 CPU minutes with threefry dropout).
    add("slices", "large", 2, "v5p-8", batch=256)          # also splash's reference row
    add("splash", "large", 2, "v5p-8", attn="splash", batch=256)
    add("slices", "large", 2, "v5e-8", batch=256)
    add("mesh", "large", 2, "v5e-8", mesh="fsdp", remat="full", batch=256)
    add("slices", "base", 1, "v5p-8", batch=256)
    add("slices", "base", 1, "v5e-8", batch=256)
    # Pod slices: BERT-large on v5p-1024 (512 chips, 128 hosts) at the 76-minute
    # recipe's 64K LAMB batch (phase 1) and 32K (phase 2).
    add("pod", "large", 1, "v5p-1024", remat="full", batch=65536)
    add("pod", "large", 2, "v5p-1024", remat="full", batch=32768)
    add("slices", "base", 1, "v6e-8", batch=256)
    add("slices", "base", 1, "v4-8", batch=256)
    add("slices", "large", 2, "v6e-8", batch=256)
    add("slices", "large", 2, "v4-8", batch=256)
    add("mesh", "large", 2, "v5e-8", mesh="data", remat="full", batch=256)
    add("mesh", "large", 2, "v5e-8", mesh="fsdp x tensor", remat="full", batch=256)
    for size, phase in (("base", 2), ("large", 1)):
        for topo in SINGLE_HOST:
            add("slices", size, phase, topo, batch=256)
    add("largest", "large", 2, "v5e-8", remat="full", find=True)
    # The must-show slice without remat, at a batch that splits over 512 chips.
    add("pod", "large", 1, "v5p-1024", batch=4096)
    # BERT-large phase 2 runs out without remat on every single host; with it:
    for topo in ("v4-8", "v6e-8"):
        add("slices", "large", 2, topo, remat="full", batch=256)
    return rows


def run(out: pathlib.Path, only: str, shard: str = "0/1") -> None:
    done = set()
    if out.exists():
        done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line}
    i, n = (int(x) for x in shard.split("/"))
    todo = [r for j, r in enumerate(plan()) if j % n == i]
    todo = [r for r in todo if r["key"] not in done and only in r["key"]]
    for k, row in enumerate(todo):
        tmp = out.with_suffix(f".report{i}.json")
        tmp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        print(f"[{k + 1}/{len(todo)}] {row['key']}", flush=True)
        p = subprocess.run([sys.executable, "-m", "bert_jax.aot", *row["flags"], f"--out={tmp}"],
                           cwd=REPO, capture_output=True, text=True)
        rec = {"key": row["key"], "row": {k: v for k, v in row.items() if k != "flags"},
               "command": "python -m bert_jax.aot " + " ".join(row["flags"]),
               "wall_seconds": time.perf_counter() - t0}
        if p.returncode == 0 and tmp.exists():
            rec["report"] = json.loads(tmp.read_text())
            print("   " + p.stdout.strip().replace("\n", "\n   "), flush=True)
        else:
            rec["error"] = (p.stderr.strip().splitlines() or ["?"])[-1]
            print(f"   failed: {rec['error']}", flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def _gib(b):
    return f"{b / 2**30:.1f}"


def _oom(r: dict) -> str:
    """'OOM (temporaries 97.6G > 95.7G)' from the TPU compiler's message."""
    m = re.search(r"required for ([\w ]+?) \(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)",
                  r.get("oom_message", ""))
    return f"OOM ({m.group(1).replace('HLO ', '')} {m.group(2)} > {m.group(3)})" if m else "OOM"


def table(out: pathlib.Path) -> None:
    recs = [json.loads(line) for line in out.read_text().splitlines() if line]
    by_table: dict[str, list] = {}
    for rec in recs:
        by_table.setdefault(rec["row"]["table"], []).append(rec)
    # The splash table compares against the reference row of the same setting,
    # wherever that row was planned.
    for rec in list(by_table.get("splash", [])):
        r = rec["row"]
        for other in by_table.get("slices", []) + by_table.get("mesh", []):
            o = other["row"]
            if (o["attn"] == "reference" and all(o[k] == r[k] for k in (
                    "size", "phase", "topology", "mesh", "remat"))
                    and other not in by_table["splash"]):
                by_table["splash"].insert(0, other)
    for name, recs in by_table.items():
        rows = []
        for rec in recs:
            row, r = rec["row"], rec.get("report")
            lead = [f"bert_{row['size']}", row["phase"], row["topology"], row["mesh"],
                    row["remat"], row["attn"]]
            if r is None:
                rows.append(lead + ["error: " + rec["error"][:80]] + [""] * 7)
                continue
            mem = r.get("bytes_per_device")
            coll = r.get("collectives") or {}
            coll_s = ", ".join(f"{k} {v['count']}" for k, v in coll.items() if v["count"])
            coll_b = sum(v["bytes"] for v in coll.values()) if coll else 0
            # Reports before aot.COLLECTIVES_VERSION 3 counted one buffer of a
            # combined all-reduce: their counts stand, their bytes do not.
            exact_bytes = r.get("collectives_version", 0) >= 3
            rows.append(lead + [
                f"{r['num_devices']} / {r['num_hosts']}", r["global_batch_size"],
                f"{_gib(mem['peak'])} / {_gib(r['hbm_bytes_per_device'])}" if mem else _oom(r),
                "yes" if r.get("fits") else "no",
                f"{r['estimated_step_seconds'] * 1e3:.1f}" if "estimated_step_seconds" in r
                else "",
                f"{r['estimated_mfu']:.0%}" if "estimated_mfu" in r else "",
                (f"{coll_s} ({coll_b / 2**30:.2f} GiB)" if exact_bytes else coll_s)
                if coll else "",
                f"{r['flops_xla_over_formula']:.3f}" if "flops_xla_over_formula" in r else "",
                f"{rec['wall_seconds']:.0f}"])
        print(f"\n### {name}\n")
        print(markdown_table(["model", "phase", "slice", "mesh", "remat", "attention",
                              "devices / hosts", "global batch", "GiB per device (peak / HBM)",
                              "fits", "est. step ms", "est. MFU", "collectives per step",
                              "XLA / formula FLOPs", "wall s (all compiles)"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--only", default="", help="run only rows whose key holds this")
    # Kept in the repo: the tables are rebuilt from it, and --run resumes the plan.
    ap.add_argument("--out", default=str(REPO / "docs/tpu_rows.jsonl"))
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th planned row from i "
                    "(two processes on two cores)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.run:
        run(out, args.only, args.shard)
    if args.table or not args.run:
        table(out)


if __name__ == "__main__":
    main()
