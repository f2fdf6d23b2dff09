"""One lifecycle for the commands that own a workdir (pretraining, fine-tuning).

    the command: validate the config, check the destination (before JAX)
    with run_dir.claim(workdir, has_progress=...):   # create + lock
        run the job
    # on a failure before the first step: remove what this run created; release

`claim` on process 0: creates the workdir (what "created" means is that
*this* process's mkdir succeeded, never an exists() check that a second run
can race), then locks it (`workdir_lock`), then notes what the workdir held
at that moment. With several processes (jax.distributed) the others create
and lock nothing; process 0's answer is broadcast so that all stop together
when it could not take the workdir.

Nothing is removed by a run that does not hold the lock: the run that loses
a start-up race leaves the winner's workdir alone even if its own mkdir was
the one that made it. A run that holds the lock and fails before its first
step (no `note_progress` from the loop in this process, and
`has_progress(workdir)` false) removes only the entries that appeared
after it took the lock, then the lock file and the directories it made (each
only if empty). Exit codes are the command's (`bert_jax.cli`).
"""

from __future__ import annotations

import contextlib
import os
import sys

from bert_jax.storage import paths, workdir_lock


def _jax():
    # A process that has not imported JAX cannot have joined a jax.distributed
    # run: it is process 0 of 1 (and small tools need not import JAX for this).
    return sys.modules.get("jax")


def _process_index() -> int:
    jax = _jax()
    return 0 if jax is None else jax.process_index()


def _agree(ok: bool, workdir: str) -> None:
    """With several processes: all learn whether process 0 took the workdir."""
    jax = _jax()
    if jax is None or jax.process_count() == 1:
        return
    # JAX: the fine-tuning command imports this module before its config checks
    import numpy as np
    from jax.experimental import multihost_utils
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(not ok)))
    if failed and ok:
        raise workdir_lock.WorkdirLocked(f"{workdir}: process 0 could not create or lock "
                                         "the workdir (see its error)")


def _mkdirs(path: str) -> list[str]:
    """mkdir -p that returns the directories this call created (outermost
    first): each one's os.mkdir succeeded here, so no other run made it."""
    try:
        os.mkdir(path)
        return [path]
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path}: exists and is not a directory") from None
        return []
    except FileNotFoundError:
        up = os.path.dirname(path)
        if up == path:
            raise
        made = _mkdirs(up)
        try:
            os.mkdir(path)
        except FileExistsError:
            return made
        return [*made, path]


# Workdirs where this process resumed from a checkpoint or logged a step
# (`note_progress`, called by the training loop). After a failure what the
# process knows needs no storage call: the storage may be what failed, and
# each call to a server that stopped answering retries for ~30 s.
_PROGRESS: set[str] = set()


def _key(workdir) -> str:
    w = os.fspath(workdir)
    return w.rstrip("/") if paths.is_url(w) else os.path.abspath(w)


def note_progress(workdir) -> None:
    _PROGRESS.add(_key(workdir))


def _noted_within(workdir) -> set[str]:
    """The noted workdirs that are `workdir` or under it (a sweep's runs)."""
    top = _key(workdir)
    return {k for k in _PROGRESS if k == top or k.startswith(top.rstrip("/") + "/")}


class Claim:
    """Process 0's hold on a workdir: the lock, the directories it made and
    what the workdir held when the lock was taken."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        _PROGRESS.difference_update(_noted_within(workdir))  # an earlier run's, not this one's
        if paths.is_url(workdir):
            paths.check_bucket(workdir)  # object storage has no directories to make
            self.made: list[str] = []
        else:
            self.made = _mkdirs(os.path.abspath(workdir))
        self.lock = workdir_lock.WorkdirLock(workdir)
        self.lock.acquire()  # not ours on failure: nothing is removed
        try:
            self.before = set(paths.listdir(workdir)) - {workdir_lock.LOCK_NAME}
        except BaseException:
            self.lock.release()
            raise

    def release(self) -> None:
        self.lock.release()

    def abandon(self, has_progress) -> None:
        """After a failure: without progress, remove what appeared since the
        lock was taken, then (if this run made the workdir) the lock file and
        the directories; release the lock in any case."""
        try:
            progressed = bool(_noted_within(self.workdir)) or has_progress(self.workdir)
        except Exception:  # noqa: BLE001 - cannot tell: keep everything
            progressed = True
        left = True
        if not progressed:
            try:
                for e in paths.listdir(self.workdir):
                    if e != workdir_lock.LOCK_NAME and e not in self.before:
                        paths.remove(paths.join(self.workdir, e))
                left = bool(set(paths.listdir(self.workdir)) - {workdir_lock.LOCK_NAME})
            except OSError:
                pass  # e.g. the storage server that made the run fail: keep the rest
        made_it = bool(self.made) or (paths.is_url(self.workdir) and not self.before)
        self.lock.release(remove=made_it and not left)
        if not left:
            for d in reversed(self.made):
                try:
                    os.rmdir(d)  # only if empty: never what someone else put there
                except OSError:
                    break


@contextlib.contextmanager
def claim(workdir, *, has_progress):
    """Create and lock `workdir` for the block (see the module docstring).
    has_progress(workdir): whether the run got anywhere (a failure after that
    keeps everything)."""
    workdir = os.fspath(workdir)
    held, err = None, None
    if _process_index() == 0:
        try:
            held = Claim(workdir)
        except (ValueError, OSError) as e:
            err = e
    _agree(err is None, workdir)
    if err is not None:
        raise err
    try:
        yield held
    except BaseException:
        if held is not None:
            held.abandon(has_progress)
            held = None
        raise
    finally:
        if held is not None:
            held.release()
