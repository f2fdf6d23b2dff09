"""optax optimizers as BERT used them.

AdamW: b1 0.9, b2 0.999, eps 1e-6, decoupled weight decay 0.01 on kernels and
embeddings only (Google's BERT excludes biases and LayerNorm), linear warmup then
linear decay to 0, global-norm clipping 1.0. LAMB for large batches (You et al.
2019), with the same decay mask.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx


def lr_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    warmup_steps = max(int(warmup_steps), 0)
    decay_steps = max(int(total_steps) - warmup_steps, 1)
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), decay],
                                [warmup_steps])


def decay_mask(params):
    """True for kernels and embedding tables; False for biases and LayerNorm."""
    def leaf_mask(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return str(name) in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(
        leaf_mask, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def build_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                     optax.Schedule]:
    """cfg: name (adamw|lamb), lr, warmup_steps or warmup_ratio, weight_decay, b1, b2,
    eps, clip_norm."""
    warmup = cfg.get("warmup_steps", 0) or int(round(cfg.get("warmup_ratio", 0.0) * total_steps))
    schedule = lr_schedule(cfg.lr, total_steps, warmup)
    b1, b2, eps = cfg.get("b1", 0.9), cfg.get("b2", 0.999), cfg.get("eps", 1e-6)
    wd = cfg.get("weight_decay", 0.01)
    if cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
    elif cfg.name == "lamb":
        opt = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
    else:
        raise ValueError(f"optim.name={cfg.name!r}; expected adamw or lamb")
    clip = cfg.get("clip_norm", 1.0)
    if clip:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt, schedule
