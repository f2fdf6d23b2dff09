"""Counter-based random numbers: a pure function of (seed, counters...).

The pretraining pipeline needs randomness that depends only on (seed, global
example index, purpose, position), never on which host or batch computes it,
so that a batch is the same whatever the host count and after any resume. A
stateful generator per example costs ~20 us to build; hashing the counters with
the splitmix64 finalizer (Steele et al., "Fast splittable pseudorandom number
generators", 2014) gives the same property vectorized over whole batches, in
the spirit of JAX's threefry keys.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def bits(seed: int, *counters) -> np.ndarray:
    """uint64 hash of (seed, *counters); counters broadcast like numpy arrays."""
    with np.errstate(over="ignore"):
        h = _mix(np.atleast_1d(np.asarray(seed, dtype=np.uint64)) + _GOLDEN)
        for c in counters:
            c = np.asarray(c).astype(np.uint64)
            h = _mix(h ^ _mix(c + _GOLDEN))
    return h


def uniform(seed: int, *counters) -> np.ndarray:
    """float64 in [0, 1) from the top 53 bits of `bits`."""
    return (bits(seed, *counters) >> _S11).astype(np.float64) * (1.0 / (1 << 53))
