"""The collectives of a compiled program, read from its HLO text: each
all-reduce / all-gather / reduce-scatter / all-to-all / collective-permute
with the bytes it moves, loop bodies counted once per trip."""

from __future__ import annotations

import re

import numpy as np

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Bumped when the HLO reading changes: reports carry it, so tables can tell.
COLLECTIVES_VERSION = 3
_COMP_HEAD = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"=\s*(\(?[^=]*?\)?)\s+([a-z][a-z0-9\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_CALLS = re.compile(r"\b(body|condition|calls|to_apply)=%?([\w.\-]+)|"
                    r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_COND = re.compile(r"\bcondition=%?([\w.\-]+)")
_CONST = re.compile(r"%([\w.\-]+)\s*=\s*s32\[\][^=]*constant\((\d+)\)")
_LT = re.compile(r"compare\([^)]*%([\w.\-]+)\),\s*direction=LT")


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
    """Trips of a while loop: XLA's known_trip_count where the backend config
    has one (XLA:CPU), else the bound of the condition `i < N` with a constant N
    (scan's lowering, counting from 0; what the TPU compiler leaves)."""
    m = _TRIP.search(line)
    if m:
        return int(m.group(1))
    c = _COND.search(line)
    body = comps.get(c.group(1), []) if c else []
    consts = {name: int(v) for ln in body for name, v in _CONST.findall(ln)}
    for ln in body:
        lt = _LT.search(ln)
        if lt and lt.group(1) in consts:
            return consts[lt.group(1)]
    return 1


def _arrays_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            total += n * _DTYPE_BYTES[dtype]
    return total


def _top_level(shape: str) -> list[str]:
    """The top-level elements of a tuple shape ('(a, (b, c))' -> ['a', '(b, c)'])."""
    shape = re.sub(r"/\*.*?\*/", "", re.sub(r"\{[^{}]*\}", "", shape)).strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, cur = [], 0, ""
    for ch in shape[1:-1]:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += (ch in "([") - (ch in ")]")
        cur += ch
    return parts + [cur]


def _shape_bytes(op: str, shape: str) -> int:
    """Bytes a collective moves, from its HLO result shape: every buffer of a
    combined op (a tuple of outputs) counts; the async starts of all-gather and
    collective-permute return (operands, outputs), of which the outputs count."""
    parts = _top_level(shape)
    if op in ("all-gather-start", "collective-permute-start") and len(parts) == 2:
        return _arrays_bytes(parts[1])
    return _arrays_bytes(shape)


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """Count and bytes of each collective in an HLO module, each op weighted by
    how often its computation runs (a while body `known_trip_count` times)."""
    comps: dict[str, list[str]] = {}
    entry = None
    name = None
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # /*index=5*/ in tuple shapes
        m = _COMP_HEAD.match(line.strip())
        if m and ("->" in line or line.lstrip().startswith("ENTRY")):
            name = m.group(1)
            comps[name] = []
            if line.lstrip().startswith("ENTRY"):
                entry = name
            continue
        if name is not None:
            if line.strip() == "}":
                name = None
            else:
                comps[name].append(line)
    calls: dict[str, list[tuple[str, int]]] = {c: [] for c in comps}
    ops: dict[str, list[tuple[str, int]]] = {c: [] for c in comps}
    for c, lines in comps.items():
        for line in lines:
            m = _INSTR.search(line)
            if m:
                op = m.group(2)
                base = op[:-6] if op.endswith("-start") else op
                if base in COLLECTIVES and not op.endswith("-done"):
                    ops[c].append((base, _shape_bytes(op, m.group(1))))
            for kind, one, _, many in _CALLS.findall(line):
                targets = one or many
                n = _trip_count(line, comps) if kind == "body" else 1
                for t in re.split(r",\s*", targets):
                    t = t.lstrip("%")
                    if t in comps:
                        calls[c].append((t, n))
    times: dict[str, int] = {}

    def visit(c, n):
        times[c] = times.get(c, 0) + n
        for callee, k in calls[c]:
            visit(callee, n * k)
    if entry is not None:
        visit(entry, 1)
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for c, lst in ops.items():
        for op, nbytes in lst:
            out[op]["count"] += times.get(c, 0)
            out[op]["bytes"] += times.get(c, 0) * nbytes
    return out
