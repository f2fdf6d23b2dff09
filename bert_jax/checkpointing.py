"""Thin orbax wrapper: train state + data-iterator state under workdir/checkpoints.

Items per step: `state` (params, opt_state, step; restored onto whatever mesh
the current run uses) and `data` (the input pipeline's small JSON state).
Orbax finalizes a step by an atomic rename, so a save interrupted by a crash
is never listed; a finalized step whose files were later truncated or deleted
fails to restore and we fall back to the previous one with a warning.
"""

from __future__ import annotations

import logging
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _dir(workdir) -> pathlib.Path:
    return pathlib.Path(os.path.abspath(workdir)) / "checkpoints"


class Checkpointer:
    def __init__(self, workdir, save_every: int, keep: int = 3, keep_every: int | None = None,
                 async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None,
            save_interval_steps=max(int(save_every), 1),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(_dir(workdir), options=options,
                                             item_names=("state", "data"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def restore_latest(self, abstract_state):
        """(step, state, data_state) from the newest step that restores cleanly,
        or None when there is none."""
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                return step, out["state"], out["data"]
            except Exception as e:  # noqa: BLE001 - any unreadable file means "skip this step"
                log.warning("checkpoint step %d is unreadable (%s: %s); falling back to the "
                            "previous one", step, type(e).__name__, str(e).splitlines()[0][:200])
                print(f"warning: checkpoint step {step} is unreadable "
                      f"({type(e).__name__}); falling back to the previous one", flush=True)
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_latest_params(workdir) -> dict[str, np.ndarray]:
    """Canonical flat params of the newest readable checkpoint (for conversion,
    fine-tuning init and inference), on the host."""
    from bert_jax.model_dir import unnest
    ckdir = _dir(workdir)
    if not ckdir.exists():
        raise FileNotFoundError(f"{workdir}: no checkpoints/ directory")
    manager = ocp.CheckpointManager(ckdir, item_names=("state", "data"))
    try:
        for step in reversed(sorted(manager.all_steps())):
            try:
                meta = manager.item_metadata(step)["state"]
                tree = getattr(meta, "tree", meta)
                target = jax.tree.map(
                    lambda m: np.zeros(m.shape, m.dtype), tree["params"],
                    is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item={"params": target},
                        restore_args=jax.tree.map(
                            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), {"params": target}),
                        partial_restore=True)))
                from bert_jax.params import unstack_layers
                return unstack_layers(unnest(restored["state"]["params"]))
            except Exception as e:  # noqa: BLE001
                print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); "
                      "falling back to the previous one", flush=True)
        raise FileNotFoundError(f"{workdir}: no readable checkpoint")
    finally:
        manager.close()
