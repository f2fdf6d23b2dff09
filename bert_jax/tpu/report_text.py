"""`bert_jax.aot`'s report and batch search as the lines it prints."""

from __future__ import annotations


def gib(x):
    return f"{x / 2**30:.2f} GiB"


def format_find_batch(best: int, info: dict) -> str:
    """What the search did, and the answer beside the line fitted from its compiles."""
    def cell(b):
        m = info["tried"][str(b)]
        return f"{b}: {'OOM' if m is None else gib(m)}"
    lines = [f"largest global batch that fits: {best} (multiples of {info['unit']}; "
             f"{info['compiles']} compiles; {info['dtype']}; limit "
             f"{gib(info['hbm_bytes'])} per device)",
             "compiles in order: " + ", ".join(cell(b) for b in info["order"])]
    line = info["memory_line"]
    if line:
        lines.append(f"memory line from {line['points']} compiles: peak = "
                     f"{line['a_bytes'] / 2**20:.2f} MiB + {line['b_bytes_per_row'] / 2**20:.4f} "
                     f"MiB x batch (max residual {line['max_residual_bytes'] / 2**20:.2f} MiB): "
                     f"it puts the limit at batch {info['line_limit']}")
    lo, hi = info["bracket"]
    if info["stopped"]:
        lines.append(f"stopped by {info['stopped']}: {lo} fits"
                     + (f", {hi} does not" if hi else ", nothing larger was tried"))
    elif hi is not None:
        lines.append(f"bracket closed: {lo} fits, {hi} does not")
    return "\n".join(lines)


def format_report(r: dict) -> str:
    lines = [f"{r['model']} ({r['dtype']}) seq {r['seq_len']}, global batch {r['global_batch_size']} on "
             f"{r['topology']}: {r['num_devices']} x {r['device_kind']} on {r['num_hosts']} "
             f"host(s), mesh {r['mesh']}",
             f"per-host input batch: {r['per_host_batch_rows']} rows "
             f"({r['per_host_batch_bytes'] / 2**20:.2f} MiB)"]
    if r.get("bytes_per_device") is None:
        lines.append(f"does NOT fit: the TPU compiler ran out of memory ({r.get('oom_message')})")
        return "\n".join(lines)
    b = r["bytes_per_device"]
    lines.append(f"memory per device: peak {gib(b['peak'])} of {gib(r['hbm_bytes_per_device'])} "
                 f"HBM -> {'fits' if r['fits'] else 'does NOT fit'}, headroom "
                 f"{gib(r['headroom_bytes'])} (arguments {gib(b['arguments'])}, outputs "
                 f"{gib(b['outputs'])}, temporaries {gib(b['temporaries'])}, aliased "
                 f"{gib(b['aliased'])})")
    if "flops_per_step_xla" in r:
        lines.append(f"FLOPs per step: XLA {r['flops_per_step_xla']:.4g}, formula "
                     f"{r['flops_per_step_formula']:.4g} (ratio "
                     f"{r['flops_xla_over_formula']:.3f}; {r['cost_source']})")
        lines.append(f"compiler's estimate (not a measurement): step "
                     f"{r['estimated_step_seconds'] * 1e3:.2f} ms ({r['estimate_kind']}), "
                     f"MFU {r['estimated_mfu']:.1%}, "
                     f"{r['estimated_sequences_per_second']:.0f} sequences/s")
    coll = ", ".join(f"{k} {v['count']} x ({v['bytes'] / 2**20:.1f} MiB)"
                     for k, v in r["collectives"].items() if v["count"])
    lines.append(f"collectives per step: {coll or 'none'}")
    lines.append(f"compile {r['compile_seconds']:.1f} s")
    return "\n".join(lines)
