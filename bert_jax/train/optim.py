"""optax optimizers as BERT used them.

AdamW: b1 0.9, b2 0.999, eps 1e-6, decoupled weight decay 0.01 on kernels and
embeddings only (Google's BERT excludes biases and LayerNorm), linear warmup then
linear decay to 0, global-norm clipping 1.0. LAMB for large batches (You et al.
2019), with the same decay mask. schedule="wsd" is ModernBERT's
warmup-stable-decay ("trapezoidal") learning rate instead: linear warmup, a
constant stretch, then a decay over the last `decay_steps` (linear, or 1-sqrt
as in Hägele et al. 2024 and ModernBERT).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def wsd_schedule(peak: float, total_steps: int, warmup_steps: int, decay_steps: int,
                 shape: str = "sqrt", end_value: float = 0.0) -> optax.Schedule:
    """Warmup-stable-decay: 0 -> peak linearly over warmup_steps, peak until
    step total - decay_steps, then down to end_value at total_steps, linearly
    or as 1-sqrt (lr = end + (peak - end) * (1 - sqrt(frac))). decay_steps=0:
    no decay (ModernBERT's phase 1 ends on the stable stretch)."""
    if shape not in ("linear", "sqrt"):
        raise ValueError(f"config.optim.decay_shape={shape!r}: expected linear or sqrt")
    warmup_steps, decay_steps = max(int(warmup_steps), 0), max(int(decay_steps), 0)
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(f"config.optim: warmup ({warmup_steps}) + decay ({decay_steps}) steps "
                         f"exceed num_train_steps={total_steps}")
    decay_start = int(total_steps) - decay_steps

    def decay(count):
        frac = jnp.clip(count / max(decay_steps, 1), 0.0, 1.0)
        down = frac if shape == "linear" else jnp.sqrt(frac)
        return end_value + (peak - end_value) * (1.0 - down)

    parts, bounds = [], []
    if warmup_steps:
        parts.append(optax.linear_schedule(0.0, peak, warmup_steps))
        bounds.append(warmup_steps)
    parts.append(optax.constant_schedule(peak))
    if decay_steps:
        bounds.append(decay_start)
        parts.append(decay)
    return parts[0] if len(parts) == 1 else optax.join_schedules(parts, bounds)


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
    eps, clip_norm; schedule (linear|wsd) and, for wsd, decay_steps or
    decay_ratio, decay_shape, end_lr_ratio."""
    warmup = cfg.get("warmup_steps", 0) or int(round(cfg.get("warmup_ratio", 0.0) * total_steps))
    kind = cfg.get("schedule", "linear")
    if kind == "wsd":
        decay = (cfg.get("decay_steps", 0)
                 or int(round(cfg.get("decay_ratio", 0.0) * total_steps)))
        schedule = wsd_schedule(cfg.lr, total_steps, warmup, decay,
                                cfg.get("decay_shape", "sqrt"),
                                cfg.lr * cfg.get("end_lr_ratio", 0.0))
    elif kind == "linear":
        schedule = lr_schedule(cfg.lr, total_steps, warmup)
    else:
        raise ValueError(f"config.optim.schedule={kind!r}; expected linear or wsd")
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
