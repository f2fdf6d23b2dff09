"""Training FLOPs per sequence and MFU.

Per token, a matmul with P parameters costs 2P FLOPs forward and 4P backward,
so training costs 6P. Per layer the matmul parameters are 4H^2 (Q, K, V,
output) + 2HI (FFN). Attention scores and the weighted sum cost 2*2*T*H per
token per layer forward (T = sequence length), 12*L*T*H for training. The MLM
head (transform H^2 + tied decoder H*V) is counted only at the positions where
it is computed: max_predictions_per_seq with the gathered head, T without.
The pooler + NSP (H^2 + 2H) run once per sequence. Embedding lookups and
LayerNorms are not matmuls and are left out, as in the PaLM/MaxText convention.

    flops/seq = 6*T*L*(4H^2 + 2HI) + 12*L*T^2*H + 6*M*(H^2 + H*V) + 6*(H^2 + 2H)

with M = MLM positions computed per sequence.

ModernBERT (cfg.architecture="modernbert"): the GeGLU MLP has 3HI matmul
parameters (Wi: H x 2I, Wo: I x H); a local layer's query attends to at most
local_attention + 1 keys (the band a block-sparse kernel computes, the useful
work); no pooler, NSP or learned positions; task heads add the prediction
head's H^2 where they run (once per sequence, or per token for span/tagging).

    flops/seq = 6*T*L*(4H^2 + 3HI) + 12*T*H*(G*T + (L-G)*min(T, W+1)) + 6*M*(H^2 + H*V)

with G global layers and W = local_attention.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from bert_jax.model.config import BertConfig
from bert_jax.model.heads import get_head

# Dense peak FLOP/s per chip for the compute dtype we train in (bf16), vendor specs.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,   # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,   # SXM; PCIe is 756e12
    "NVIDIA H200": 989e12,
}


def train_flops_per_sequence(cfg: BertConfig, seq_len: int, mlm_positions: int) -> float:
    h, layers, inter, v, t = (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size,
                              cfg.vocab_size, seq_len)
    if cfg.modern:
        glob = sum(cfg.is_global_layer(i) for i in range(layers))
        band = min(t, cfg.local_attention + 1)
        dense = 6 * t * layers * (4 * h * h + 3 * h * inter)
        attention = 12 * t * h * (glob * t + (layers - glob) * band)
        return float(dense + attention + 6 * mlm_positions * (h * h + h * v))
    dense = 6 * t * layers * (4 * h * h + 2 * h * inter)
    attention = 12 * layers * t * t * h
    mlm = 6 * mlm_positions * (h * h + h * v)
    nsp = 6 * (h * h + 2 * h)
    return float(dense + attention + mlm + nsp)


def finetune_flops_per_sequence(cfg: BertConfig, seq_len: int, head: str,
                                num_labels: int) -> float:
    """Training FLOPs of one fine-tuning sequence: the encoder (no MLM head),
    the pooler only for sequence heads, and the head's own matmul."""
    h = cfg.hidden_size
    per_token = get_head(head).per_token
    enc = train_flops_per_sequence(cfg, seq_len, 0)
    if cfg.modern:
        per = seq_len if per_token else 1
        return enc + 6 * per * (h * h + h * num_labels)
    if per_token:
        return enc - 6 * (h * h + 2 * h) + 6 * seq_len * h * num_labels
    return enc - 6 * 2 * h + 6 * h * num_labels


def device_peak_flops(device=None, measure_cpu: bool = True) -> float | None:
    """Peak FLOP/s of one device: the vendor table, or on CPU a measured fp32
    matmul rate (so CPU MFU is relative to what this machine actually does)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak
    if device.platform == "cpu" and measure_cpu:
        return measured_matmul_flops(device)
    return None


_CPU_PEAK: dict = {}


def measured_matmul_flops(device=None, n: int = 1024, seconds: float = 0.1) -> float:
    # The fastest of a few matmuls, not the mean over a longer window: the peak
    # is what the machine can do, and every run (each test's CLI run too) pays
    # this at start-up.
    key = str(device)
    if key in _CPU_PEAK:
        return _CPU_PEAK[key]
    x = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best, start = float("inf"), time.perf_counter()
    while best == float("inf") or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    _CPU_PEAK[key] = 2 * n ** 3 / best
    return _CPU_PEAK[key]
