"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX."""

import glob
import importlib.util
import os

__version__ = "0.1.0"


def _quiet_libtpu_without_tpu() -> None:
    """With the `tpu` extra installed (libtpu, for `bert_jax.aot`) on a machine
    with no TPU, JAX's first backend start loads libtpu, which prints several
    lines of "could not determine TPU accelerator type" to stderr before JAX
    falls back to the CPU. When this host has no Google TPU on its PCI bus
    (the check JAX itself makes, jax/_src/hardware_utils.py), name the
    platforms that are here, so libtpu is never loaded. Runs before JAX is
    imported (JAX reads JAX_PLATFORMS once); a user's own JAX_PLATFORMS wins."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x1ae0":  # Google: a TPU chip is here
                    return
        except OSError:
            continue
    gpu = any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")) and \
        any(importlib.util.find_spec(m) is not None
            for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if gpu else "cpu"


_quiet_libtpu_without_tpu()
