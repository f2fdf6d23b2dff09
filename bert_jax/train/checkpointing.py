"""Thin orbax wrapper: train state + data-iterator state under workdir/checkpoints.

Items per step: `state` (params, opt_state, step; restored onto whatever mesh
the current run uses) and `data` (the input pipeline's small JSON state).
Orbax finalizes a step by an atomic rename (locally) or by writing
`commit_success.txt` last (on gs://, where there is no rename), so a save
interrupted by a crash is never listed.

Restoring tells three failures apart (`restore_latest`):
- a step whose tree or shapes do not fit the model (another config): a
  one-line `CheckpointMismatch`, nothing moved;
- a storage error that may pass (a bucket unreachable, a timeout, a local
  error other than a missing file): a one-line `paths.StorageError`, nothing
  moved, the rerun tries again;
- real damage (a file of the step truncated, missing or corrupt): a warning,
  the step is set aside in checkpoints_unreadable/ and the previous one is
  restored; when no step restores, a one-line `NoReadableCheckpoint` and
  nothing moved (starting over is the user's call: a new workdir).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bert_jax.model.params import unnest, unstack_layers
from bert_jax.storage import paths


def _dir(workdir):
    return paths.orbax_path(paths.join(workdir, "checkpoints"))


class CheckpointMismatch(ValueError):
    """A checkpoint whose tree or shapes are not the model's: a config error."""


class NoReadableCheckpoint(ValueError):
    """Every checkpoint of the workdir is damaged."""


# Words of errors that may pass (tensorstore status codes, HTTP statuses, the
# transport): such a restore failure says nothing about the checkpoint.
_TRANSIENT = ("unavailable", "deadline_exceeded", "deadline exceeded", "resource_exhausted",
              "connection", "timed out", "timeout", "temporarily", "service unavailable",
              "too many requests", "status_code=429", "status_code=5", "http 5",
              "internal server error", "bad gateway", "aborted:", "cancelled")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(e: BaseException) -> bool:
    """Whether a restore failure may be the storage's, not the checkpoint's: any
    StorageError / connection error / timeout, an OSError other than a missing
    file, or a message with a transient status. Unsure means transient: the
    run stops with nothing moved, which loses nothing."""
    for x in _chain(e):
        if isinstance(x, (paths.StorageError, ConnectionError, TimeoutError)):
            return True
        if isinstance(x, OSError) and not isinstance(x, (FileNotFoundError,
                                                         IsADirectoryError,
                                                         NotADirectoryError)):
            return True
        text = f"{type(x).__name__}: {x}".lower()
        if any(w in text for w in _TRANSIENT):
            return True
    return False


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC anywhere in the chain, as Python or tensorstore reports it."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return True
        text = str(x)
        if "No space left on device" in text or "os_error_code='28'" in text:
            return True
    return False


class _BackgroundFailureFilter(logging.Filter):
    """Orbax logs a failed background save with its traceback (from each thread
    it passes through), then raises the same error to the caller, who reports
    it in one line (`_writing`): drop those tracebacks, and asyncio's "Task
    exception was never retrieved" for the same error in orbax's write tasks
    (logged when the task is collected, after or before the line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"
        return not (record.levelno >= logging.ERROR and record.exc_info and (
            orbax in record.pathname
            or record.name == "asyncio" and orbax in record.getMessage()))


def _quiet_background_failures() -> None:
    for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
        if not any(isinstance(f, _BackgroundFailureFilter) for f in logger.filters):
            logger.addFilter(_BackgroundFailureFilter())
    if not getattr(sys.excepthook, "_bert_jax_closed_loop", False):
        previous = sys.excepthook

        def hook(kind, value, tb):
            # After a failed save, tensorstore completes the write futures it
            # still holds on orbax's event loop, closed by then, and prints
            # each RuntimeError: noise after the error was reported.
            if kind is RuntimeError and str(value) == "Event loop is closed":
                return
            previous(kind, value, tb)
        hook._bert_jax_closed_loop = True
        sys.excepthook = hook
    if not getattr(sys.unraisablehook, "_bert_jax_closed_loop", False):
        previous_unraisable = sys.unraisablehook

        def unraisable(u):
            if u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed":
                return
            previous_unraisable(u)
        unraisable._bert_jax_closed_loop = True
        sys.unraisablehook = unraisable


def _normal(path) -> tuple[str, ...]:
    """A tree path as strings: dict keys, sequence indices and attribute names
    alike (orbax's metadata has dicts and lists where the state has optax's
    named tuples)."""
    out = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return {_normal(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def _warn_unreadable(step: int, e: Exception) -> None:
    first = _first_line(e)
    print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}: {first}); "
          "falling back to the previous one", file=sys.stderr, flush=True)


class Checkpointer:
    def __init__(self, workdir, save_every: int, keep: int = 3, keep_every: int | None = None,
                 async_save: bool = True):
        self.every = max(int(save_every), 1)
        _quiet_background_failures()
        if jax.process_count() == 1:
            # Replica-parallel saving cuts every replicated array into one slice
            # per device so that several hosts share the writing; with a single
            # host it only adds a slice op per array and device to every save.
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                override=True)
        # cleanup_tmp_directories: a save cut short by a crash leaves a
        # `<step>.orbax-checkpoint-tmp-*` directory that is never listed as a
        # step; remove it on the next start.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None,
            save_interval_steps=self.every, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True)
        self.directory = _dir(workdir)
        self._in_flight: int | None = None   # the last step handed to orbax
        self._starting: int | None = None    # the step being handed over
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        self._starting = step
        with self._writing():
            saved = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                force=force)
        self._in_flight = step if saved else self._in_flight
        return saved

    @contextlib.contextmanager
    def _writing(self):
        """In a bucket, a failed (asynchronous) save surfaces here as whatever
        the HTTP client raised: turn it into one line naming the URL and step.
        The step is never committed (no commit_success.txt), so the next run
        resumes from the previous one."""
        try:
            yield
        except paths.StorageError:
            raise
        except Exception as e:
            step = f"step {self._in_flight}" if self._in_flight is not None else "a step"
            if is_disk_full(e):
                # Orbax finalizes a step by a rename, so the failed one is
                # never listed (its temp dir goes at the next start).
                kept = self._finalized()
                failed = [s for s in (self._in_flight, self._starting)
                          if s is not None and s not in kept]
                step = f"step {max(failed)}" if failed else "a step"
                raise OSError(f"{self.directory}: saving checkpoint {step} failed: no space "
                              f"left on device; checkpoints kept: {kept or 'none'}; free "
                              "space and rerun the same command to continue"
                              + (f" from step {kept[-1]}" if kept else "")) from None
            if not paths.is_url(self.directory):
                raise
            first = (str(e).splitlines() or [""])[0][:200]
            raise paths.StorageError(f"{self.directory}: saving checkpoint {step} failed "
                                     f"({type(e).__name__}: {first})") from None

    def _finalized(self) -> list[int]:
        try:
            self.manager.reload()
            return sorted(self.manager.all_steps())
        except Exception:  # noqa: BLE001 - only for the message
            return []

    def should_save(self, step: int) -> bool:
        """Every `save_every` steps. (Orbax's own policy would also save the first
        step of a fresh run and needs a preemption sync point per call.)"""
        return step % self.every == 0

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def restore_latest(self, abstract_state):
        """(step, state, data_state) from the newest step that restores cleanly,
        or None when there is none. Newer steps that are damaged are set aside
        (after the restore that succeeded, so nothing moves when it raises).

        Raises:
          CheckpointMismatch: a step's tree or shapes are not `abstract_state`'s.
          paths.StorageError: reading failed in a way that may pass.
          NoReadableCheckpoint: every step is damaged (nothing moved).
        """
        unreadable, first_error = [], None
        found = None
        for step in reversed(self.steps()):
            try:
                self._check_fits(step, abstract_state)
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                found = step, out["state"], out["data"]
                break
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - sorted into transient or damage
                if is_transient(e):
                    raise paths.StorageError(
                        f"{self.directory}: reading checkpoint step {step} failed "
                        f"({type(e).__name__}: {_first_line(e)}); nothing was moved, rerun "
                        "to try again") from None
                _warn_unreadable(step, e)
                unreadable.append(step)
                first_error = first_error or f"{type(e).__name__}: {_first_line(e)}"
        if unreadable and found is None:
            # Starting over would drop the run's history (metrics.jsonl) for
            # files that may yet be read (another orbax, a disk remounted):
            # the user decides.
            raise NoReadableCheckpoint(
                f"{self.directory}: no checkpoint restores (steps {sorted(unreadable)}; newest: "
                f"{first_error}); nothing was moved: rerun once they are readable, or start a "
                "new run with a new --workdir")
        if unreadable:
            self._set_aside(unreadable)
        return found

    def _check_fits(self, step: int, abstract_state) -> None:
        """Compare the step's saved tree and shapes (its metadata) with the
        model's. Unreadable metadata is damage (raised as read)."""
        # orbax's path type: only checkpoint paths need it
        from etils import epath
        handler = ocp.PyTreeCheckpointHandler()
        try:
            meta = handler.metadata(epath.Path(os.fspath(self.directory / str(step) / "state")))
        finally:
            handler.close()
        saved, want = _shapes(getattr(meta, "tree", meta)), _shapes(abstract_state)
        if not saved:
            raise ValueError(f"step {step}: no arrays in its metadata")
        where = f"{paths.parent(os.fspath(self.directory))}: checkpoint step {step}"
        how = ("; rerun with the config it was saved with, or use a new --workdir to start "
               "a new run")
        for k in sorted(want, key=lambda k: (k[0] != "params", k)):  # parameters first
            if k not in saved:
                raise CheckpointMismatch(f"{where} does not fit this model: it has no "
                                         f"{'/'.join(k)}{how}")
            if saved[k] != want[k]:
                raise CheckpointMismatch(f"{where} does not fit this model: {'/'.join(k)} "
                                         f"has shape {saved[k]}, this model's is {want[k]}{how}")
        extra = sorted(set(saved) - set(want))
        if extra:
            raise CheckpointMismatch(f"{where} does not fit this model: it has "
                                     f"{'/'.join(extra[0])}, which this model lacks{how}")

    def _set_aside(self, steps: list[int]) -> None:
        """Move unreadable steps to workdir/checkpoints_unreadable/ (kept for a
        post-mortem): the run will save those step numbers again, which orbax
        refuses while the old directories exist."""
        if jax.process_index() == 0:
            directory = os.fspath(self.directory)
            dest = paths.join(paths.parent(directory), "checkpoints_unreadable")
            paths.makedirs(dest)
            for step in steps:
                target = paths.join(dest, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                paths.rename(paths.join(directory, str(step)), target)
                print(f"warning: moved unreadable checkpoint step {step} to {target}",
                      file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("bert_jax_checkpoints_set_aside")
        self.manager.reload()

    def wait(self):
        with self._writing():
            self.manager.wait_until_finished()

    def close(self):
        with self._writing():
            self.manager.wait_until_finished()
        self.manager.close()


def _host_manager(workdir) -> ocp.CheckpointManager:
    ckdir = _dir(workdir)
    if not paths.exists(os.fspath(ckdir)):
        raise FileNotFoundError(f"{workdir}: no checkpoints/ directory")
    # Handlers named up front: without them the manager cannot read metadata.
    return ocp.CheckpointManager(ckdir, item_names=("state", "data"), item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})


def _restore_on_host(manager: ocp.CheckpointManager, step: int,
                     keys: tuple[str, ...]) -> dict:
    meta = manager.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    target = {k: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[k],
                              is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
              for k in keys}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target))))
    return restored["state"]


def load_state_on_host(workdir, step: int,
                       keys: tuple[str, ...] = ("step", "params", "opt_state")) -> dict:
    """The saved train state of `step` as nested dicts of numpy arrays (any mesh;
    optimizer state in orbax's dict form)."""
    manager = _host_manager(workdir)
    try:
        return _restore_on_host(manager, step, keys)
    finally:
        manager.close()


def load_latest_params(workdir, step: int | None = None) -> dict[str, np.ndarray]:
    """Canonical flat params of the newest readable checkpoint (or of `step`) for
    conversion, fine-tuning init and inference, on the host."""
    manager = _host_manager(workdir)
    try:
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        for s in steps:
            try:
                params = _restore_on_host(manager, s, ("params",))["params"]
                return unstack_layers(unnest(params))
            except Exception as e:  # noqa: BLE001 - any unreadable file means "skip this step"
                if step is not None:
                    raise
                _warn_unreadable(s, e)
        raise FileNotFoundError(f"{workdir}: no readable checkpoint")
    finally:
        manager.close()
