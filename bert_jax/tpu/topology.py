"""TPU chips (peak FLOP/s, HBM, bandwidth) and slices: a slice name
(`v5p:8x8x8`, `v5p-1024`) as `jax.experimental.topologies` takes it, and the
devices of that slice from libtpu, with no TPU attached. `bert_jax.aot` sets
JAX's platform environment before this module (and JAX) is imported."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np
from jax.experimental import topologies

from bert_jax.cli import optional


@dataclasses.dataclass(frozen=True)
class Chip:
    peak_flops: float      # dense bf16 FLOP/s per device (a megacore chip is one device)
    hbm_bytes: int         # per device
    hbm_bandwidth: float   # bytes/s per device
    megacore: bool         # two TensorCores shown as one device


# Google Cloud TPU system-architecture pages (per chip).
CHIPS = {
    "v4": Chip(275e12, 32 * 2**30, 1.2e12, True),
    "v5e": Chip(197e12, 16 * 2**30, 819e9, False),
    "v5p": Chip(459e12, 95 * 2**30, 2.765e12, True),
    "v6e": Chip(918e12, 32 * 2**30, 1.64e12, False),
}
_KIND_TO_CHIP = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
                 "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}

# Cloud names (v5p-1024 = 512 chips; v4/v5p count TensorCores, v5e/v6e chips).
_SHAPES_3D = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8",
              512: "4x8x8", 1024: "8x8x8", 2048: "8x8x16", 4096: "8x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_TOPOLOGY = re.compile(r"^([a-zA-Z0-9_ ]+)[=_:]([0-9x]+)(_twisted|_untwisted)?$")
_CLOUD = re.compile(r"^(v4|v5p|v5e|v5litepod|v6e)-(\d+)$")


def topology_kwargs(name: str) -> tuple[str, dict]:
    """(chip generation, get_topology_desc kwargs) for `v5p:8x8x8` or `v5p-1024`."""
    m = _CLOUD.match(name)
    if m:
        gen, n = m.group(1).replace("v5litepod", "v5e"), int(m.group(2))
        table = _SHAPES_3D if gen in ("v4", "v5p") else _SHAPES_2D
        if n not in table:
            raise ValueError(f"--topology={name}: unknown size {n} for {gen}; "
                             f"known: {', '.join(f'{gen}-{k}' for k in table)}, or give "
                             f"the chip grid as {gen}:AxB[xC]")
        name = f"{gen}:{table[n]}"
    m = _TOPOLOGY.match(name)
    if not m:
        raise ValueError(f"--topology={name!r}: expected e.g. v5e:4x4, v5p:8x8x8 or v5p-1024")
    gen = m.group(1).lower().replace("v5litepod", "v5e")
    if gen == "v5":
        gen = "v5p"
    if gen not in CHIPS:
        raise ValueError(f"--topology={name}: chip {m.group(1)!r}; expected one of "
                         f"{', '.join(CHIPS)}")
    dims = [int(x) for x in m.group(2).split("x")]
    kw: dict[str, Any] = {"topology_name": f"{'v5p' if gen == 'v5p' else gen}:{m.group(2)}"}
    if CHIPS[gen].megacore:
        kw["chip_config_name"] = "megacore"
    if int(np.prod(dims)) == 8 and len(dims) == 2:
        # v5e-8 / v6e-8 are single hosts of 8 chips; pod slices have 4-chip hosts.
        kw["chips_per_host_bounds"] = (2, 4, 1)
    elif int(np.prod(dims)) < 4:
        # Hosts hold 2x2(x1) chips; a smaller slice is one host of its own size.
        kw["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
    return gen, kw


@contextlib.contextmanager
def _libtpu_quiet():
    """libtpu prints warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES
    on load: it looks for the TPU VM it runs on. Compiling for a named topology
    needs neither, so those lines are dropped; anything else is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            noise = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "InitGoogle",
                     "Source Location Trace", "libtpu_init_utils", "Failed to find host bounds")
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not any(n in line for n in noise):
                    print(line, file=sys.stderr)


def topology_devices(name: str) -> tuple[str, list]:
    gen, kw = topology_kwargs(name)
    try:
        with _libtpu_quiet():
            devices = topologies.get_topology_desc(platform="tpu", **kw).devices
    except Exception as e:  # libtpu absent, or a shape it rejects
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not optional.installed("libtpu"):
            msg += f" (the TPU compiler is not installed: {optional.EXTRAS['libtpu']})"
        raise ValueError(f"--topology={name}: {msg}") from None
    return gen, list(devices)
