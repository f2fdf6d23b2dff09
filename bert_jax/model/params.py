"""Canonical flat parameter names: the bridge between NNX state, our saved
model dirs and the HF / TF1 rename tables.

A canonical name is the NNX attribute path joined by '/', with scanned
(stacked) layers expanded to one entry per layer, e.g.
`bert/encoder/layers/3/query/kernel`. So a checkpoint saved from a scanned
model loads into an unscanned one and back.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

_LAYER = re.compile(r"^(.*?/encoder/layers)/(.*)$")
# Per-layer parameters that layer 0 lacks: ModernBERT's layer 0 has no attention
# norm (the embedding norm precedes it). A scanned stack is uniform, so it holds
# an unused slot there, which canonical names leave out (and fill on stacking).
_ABSENT = re.compile(r"/encoder/layers/0/attn_norm/")


def _stack(keys: list[str], flat: dict, current=None):
    """np.stack of flat[k] over layers; an _ABSENT slot takes `current`'s
    value there, else the norm's init value (ones for a scale, zeros for a bias)."""
    like = next(flat[k] for k in keys if not _ABSENT.search(k))
    return np.stack([flat[k] if not _ABSENT.search(k) else
                     (np.asarray(jax.device_get(current[i])) if current is not None else
                      (np.ones_like if k.endswith("/scale") else np.zeros_like)(like))
                     for i, k in enumerate(keys)])


def _is_scanned(model: nnx.Module) -> bool:
    cfg = getattr(model, "cfg", None)
    return bool(cfg is not None and cfg.scan_layers)


def flat_params(state_or_model, scanned: bool | None = None) -> dict[str, np.ndarray]:
    """nnx.State / Module -> {canonical name: array} (host numpy)."""
    if isinstance(state_or_model, nnx.Module):
        scanned = _is_scanned(state_or_model) if scanned is None else scanned
        state = nnx.state(state_or_model, nnx.Param)
    else:
        state = state_or_model
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(state):
        value = np.asarray(jax.device_get(var.value if isinstance(var, nnx.Variable) else var))
        name = "/".join(str(p) for p in path)
        m = _LAYER.match(name)
        if scanned and m and not m.group(2).split("/")[0].isdigit():
            for i in range(value.shape[0]):
                key = f"{m.group(1)}/{i}/{m.group(2)}"
                if not _ABSENT.search(key):
                    out[key] = value[i]
        else:
            out[name] = value
    return out


def assign_params(model: nnx.Module, flat: dict[str, np.ndarray], source: str = "checkpoint",
                  strict: bool = False) -> tuple[list[str], list[str]]:
    """Copy `flat` into the model's params in place.

    Returns (missing, unexpected): names the model has but `flat` lacks (left as
    initialized) and names in `flat` the model does not have. A shape mismatch is
    a one-line error naming the parameter.
    """
    scanned = _is_scanned(model)
    state = nnx.state(model, nnx.Param)
    target = flat_params(state, scanned=scanned)
    missing = sorted(set(target) - set(flat))
    unexpected = sorted(set(flat) - set(target))
    if strict and (missing or unexpected):
        raise ValueError(f"{source}: missing parameters {missing[:5]}, unexpected {unexpected[:5]}")
    for name, want in target.items():
        if name in flat and tuple(flat[name].shape) != tuple(want.shape):
            hint = " (vocabulary size differs)" if "word_embeddings" in name else ""
            raise ValueError(f"{source}: parameter {name} has shape {tuple(flat[name].shape)}, "
                             f"model expects {tuple(want.shape)}{hint}")
    merged = {k: (flat[k] if k in flat else v) for k, v in target.items()}
    new_leaves = []
    for path, var in nnx.to_flat_state(state):
        name = "/".join(str(p) for p in path)
        m = _LAYER.match(name)
        if scanned and m and not m.group(2).split("/")[0].isdigit():
            n = var.value.shape[0]
            # (var.value is indexed only at an _ABSENT slot: no whole-stack copy.)
            value = _stack([f"{m.group(1)}/{i}/{m.group(2)}" for i in range(n)], merged,
                           var.value)
        else:
            value = merged[name]
        new_leaves.append((path, np.asarray(value, dtype=var.value.dtype)))
    for path, value in new_leaves:
        node = model
        for p in path[:-1]:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        leaf = getattr(node, path[-1]) if not isinstance(path[-1], int) else node[path[-1]]
        leaf.value = jax.numpy.asarray(value)
    return missing, unexpected


def unstack_layers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expand scanned (stacked) layer entries `.../encoder/layers/<name>` into one
    canonical entry per layer; already-canonical names pass through."""
    out = {}
    for name, value in flat.items():
        m = _LAYER.match(name)
        if m and not m.group(2).split("/")[0].isdigit():
            for i in range(value.shape[0]):
                key = f"{m.group(1)}/{i}/{m.group(2)}"
                if not _ABSENT.search(key):
                    out[key] = value[i]
        else:
            out[name] = value
    return out


def pure_to_flat(tree, prefix: str = "") -> dict:
    """Nested pure dict (nnx.to_pure_dict) -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(pure_to_flat(v, name + "/"))
        else:
            out[name] = v
    return out


def flat_into_pure(tree, flat: dict, scanned: bool, prefix: str = "",
                   keep_missing: bool = True) -> dict:
    """A copy of `tree` with leaves replaced from canonical `flat` (stacking layers
    when the tree is scanned); leaves absent from `flat` are kept, or None with
    keep_missing=False (the shape of a partial restore)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        missing = v if keep_missing else None
        if isinstance(v, dict):
            out[k] = flat_into_pure(v, flat, scanned, name + "/", keep_missing)
            continue
        m = _LAYER.match(name)
        if scanned and m and not m.group(2).split("/")[0].isdigit():
            keys = [f"{m.group(1)}/{i}/{m.group(2)}" for i in range(v.shape[0])]
            present = all(x in flat for x in keys if not _ABSENT.search(x))
            out[k] = _stack(keys, flat) if present else missing
        else:
            out[k] = flat.get(name, missing)
    return out


def nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def unnest(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """`pure_to_flat` with numpy leaves (what orbax restores into)."""
    return {k: np.asarray(v) for k, v in pure_to_flat(tree, prefix).items()}
