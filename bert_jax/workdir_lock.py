"""One run per workdir: an exclusive lock file naming its holder.

`workdir/.bert_jax.lock` is locked with flock(2) while a run works there, and
holds {"pid", "host", "started", "command"} of that run. A second run on the
same workdir stops with a one-line error naming the holder. flock is released
by the kernel when its process dies, so the lock of a run killed with
`kill -9` (or of a crashed host) is free: the next run finds the dead
holder's record still in the file, warns and takes the workdir over. A clean
exit empties the file.

On filesystems without flock (some FUSE mounts) every flock succeeds; there a
record naming a live process on this host still counts as held.

Multi-process runs (jax.distributed): only process 0 takes the lock (the
others write nothing at the top of the workdir); see `pretrain.train` for how
its answer reaches the other processes.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys

LOCK_NAME = ".bert_jax.lock"


class WorkdirLocked(ValueError):
    """Another live run holds the workdir."""


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._f = None

    def acquire(self) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError:
            locked = False
        f.seek(0)
        text = f.read()
        try:
            holder = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            holder = {"pid": "?", "host": "?", "started": "?"}
        if holder is not None and not isinstance(holder, dict):
            holder = {"pid": "?", "host": "?", "started": "?"}
        here = socket.gethostname()
        if locked and holder and holder.get("host") == here and isinstance(
                holder.get("pid"), int) and holder["pid"] != os.getpid() and _alive_here(
                holder["pid"]):
            locked = False  # flock unsupported here, and the holder lives
        if not locked:
            f.close()
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                   f"{holder.get('started')}" if holder else "another process")
            raise WorkdirLocked(f"{self.path.parent}: in use by another run ({who}); wait "
                                f"for it to finish or stop it (lock file {self.path})")
        if holder:
            print(f"warning: {self.path.parent}: taking over from a run that ended without "
                  f"releasing it (pid {holder.get('pid')} on {holder.get('host')} since "
                  f"{holder.get('started')})", file=sys.stderr, flush=True)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({
            "pid": os.getpid(), "host": here,
            "started": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}) + "\n")
        f.flush()
        os.fsync(f.fileno())
        self._f = f

    def release(self) -> None:
        if self._f is None:
            return
        try:
            self._f.seek(0)
            self._f.truncate()
            self._f.flush()
        except OSError:
            pass
        finally:
            self._f.close()  # closing releases the flock
            self._f = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
