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

In a bucket (`gs://` workdir) flock cannot work: `BucketLock` creates the
lock object only if it is absent (the server checks the precondition
ifGenerationMatch=0, so of two runs exactly one creates it), holding the same
record plus a heartbeat time that a thread of the holder rewrites every
HEARTBEAT_S seconds. A lock whose holder is a dead process on this host, or
whose heartbeat is older than STALE_S (the holder was killed or its VM went
away), is taken over: deleted only if still at the generation read (so two
runs taking over at once cannot both win), then created again. A clean exit
deletes it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
import threading
import time

from bert_jax import storage

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


def WorkdirLock(workdir):  # noqa: N802 - a factory standing for the two classes
    """The lock for `workdir`: flock locally, a lock object in a bucket."""
    if storage.is_url(workdir):
        return BucketLock(workdir)
    return FileLock(workdir)


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


class _Lock:
    """`with lock:` acquires and releases."""

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class BucketLock(_Lock):
    HEARTBEAT_S = 30.0
    STALE_S = 150.0

    def __init__(self, workdir):
        self.workdir = os.fspath(workdir)
        self.path = storage.join(self.workdir, LOCK_NAME)
        self._gen = None
        self._stop = threading.Event()
        self._thread = None
        self._rec = None

    def _payload(self) -> bytes:
        return (json.dumps({**self._rec, "heartbeat": time.time()}) + "\n").encode()

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:
            return True  # unreadable record: a write cut short
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and \
                pid != os.getpid() and not _alive_here(pid):
            return True
        beat = holder.get("heartbeat")
        return not isinstance(beat, (int, float)) or time.time() - beat > self.STALE_S

    def acquire(self) -> None:
        self._rec = _record()
        for _ in range(3):
            if storage.create_exclusive(self.path, self._payload()):
                self._gen = storage.generation(self.path)
                break
            gen = storage.generation(self.path)
            if gen is None:
                continue  # released meanwhile: try again
            try:
                holder = json.loads(storage.read_text(self.path))
                holder = holder if isinstance(holder, dict) else None
            except (FileNotFoundError, json.JSONDecodeError):
                holder = None
            if not self._stale(holder):
                raise WorkdirLocked(
                    f"{self.workdir}: in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('started')}); wait for it to "
                    f"finish or stop it (lock object {self.path}, taken over once its "
                    f"heartbeat is {self.STALE_S:.0f} s old)")
            if storage.remove_generation(self.path, gen):
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                       f"{holder.get('started')}" if holder else "an unreadable record")
                print(f"warning: {self.workdir}: taking over from a run that ended without "
                      f"releasing it ({who})", file=sys.stderr, flush=True)
        else:
            raise WorkdirLocked(f"{self.workdir}: could not take the lock object {self.path} "
                                "(other runs keep taking it); try again")
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name="bert_jax-lock-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                if storage.generation(self.path) != self._gen:
                    print(f"warning: {self.path}: the workdir lock was taken by another "
                          "run", file=sys.stderr, flush=True)
                    return
                storage.write_bytes(self.path, self._payload())
                self._gen = storage.generation(self.path)
            except OSError:
                pass  # a storage hiccup: the next beat tries again

    def release(self) -> None:
        if self._gen is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            storage.remove_generation(self.path, self._gen)
        except OSError:
            pass  # left behind: its heartbeat stops, so the next run takes it over
        self._gen = None


class FileLock(_Lock):
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
        f.write(json.dumps(_record()) + "\n")
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
