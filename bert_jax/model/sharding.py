"""Mesh construction and the logical-axis -> mesh-axis rules.

Every parameter carries `logical_axes` metadata (vocab, embed, heads, kv, mlp,
layers); activations are constrained at layer boundaries with (batch, length,
act_embed). One small table maps those names onto the mesh axes
(data, fsdp, tensor). Pure data parallel is `fsdp=1, tensor=1` (the pmap case);
FSDP shards parameters and optimizer state along `embed`; tensor parallelism
splits heads, the MLP and the vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
)

_RULES: contextvars.ContextVar = contextvars.ContextVar("bert_jax_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def axis_rules(rules):
    token = _RULES.set(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def logical_to_spec(logical: Sequence[str | None] | None, rules=None) -> PartitionSpec:
    """('embed', 'mlp') -> PartitionSpec('fsdp', 'tensor'); a mesh axis is used once."""
    if logical is None:
        return PartitionSpec()
    table = dict(_RULES.get() if rules is None else rules)
    used: set[str] = set()
    out = []
    for name in logical:
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*out)


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh; one -1 entry takes the remaining devices."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape} must have 3 entries (data, fsdp, tensor)")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh shape {shape} does not divide {n} devices")
        shape[shape.index(-1)] = n // known
    if int(np.prod(shape)) != n:
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {n}")
    return jax.make_mesh(tuple(shape), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def _has_mesh() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return mesh is not None and not mesh.empty


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op outside a mesh."""
    if not _has_mesh():
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical))


def _var_spec(v: nnx.Variable, rules) -> PartitionSpec:
    logical = v.get_metadata().get("logical_axes")
    if logical is None:
        return PartitionSpec()
    if len(logical) != v.value.ndim:  # e.g. stacked by scan: leading 'layers' axis added
        logical = ("layers",) * (v.value.ndim - len(logical)) + tuple(logical)
    return logical_to_spec(logical, rules)


def state_specs(state, rules=None):
    """PartitionSpecs for an nnx.State (same tree structure, spec leaves)."""
    return jax.tree.map(lambda v: _var_spec(v, rules), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state, mesh, rules=None):
    specs = state_specs(state, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def batch_shards(mesh) -> int:
    """How many ways batch_sharding splits the rows of a batch on `mesh`."""
    axes = batch_sharding(mesh, 1).spec[0] or ()
    axes = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))
