"""One run per workdir: an exclusive lock file naming its holder.

`workdir/.bert_jax.lock` is locked with flock(2) while a run works there, and
holds {"pid", "host", "started", "command"} of that run. A second run on the
same workdir stops with a one-line error naming the holder. flock is released
by the kernel when its process dies, so the lock of a run killed with
`kill -9` (or of a crashed host) is free: the next run finds the dead
holder's record still in the file, warns and takes the workdir over. A clean
exit empties the file; only its holder removes it (`release(remove=True)`,
when a run that created the workdir removes it again). The file is opened
with O_NOFOLLOW and must be a regular file with one link, so a symlink or
hard link planted there never gets its target truncated. A holder that
unlinks the file lets a waiting opener lock the unlinked inode: after flock,
acquire checks that the path still names the inode it locked.

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
deletes it. The heartbeat is a conditional write too (ifGenerationMatch on
the generation the holder last wrote): when it fails because the object
changed, or storage errors keep it from landing until another run could
consider the lock stale, the lock is *lost*: `check_held()` (called by the
training loop at every step) then raises `LockLost`, so the run stops before
it writes another checkpoint into a workdir it no longer owns.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import stat
import sys
import threading
import time
import weakref

from bert_jax.storage import paths

LOCK_NAME = ".bert_jax.lock"


class WorkdirLocked(ValueError):
    """Another live run holds the workdir."""


class LockLost(WorkdirLocked):
    """This run held the workdir and lost it while running."""


class LockFileError(ValueError):
    """The lock path is not a file we may lock (a symlink, a directory...)."""


# The locks this process holds, for `check_held`.
_HELD: weakref.WeakSet = weakref.WeakSet()


def _key(path) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if paths.is_url(path) else os.path.realpath(path)


def check_held(workdir) -> None:
    """Raise LockLost (one line) if the lock this process holds on `workdir`
    (or on a directory above it: a sweep's runs live under its workdir) was
    lost."""
    here = _key(workdir)
    for lock in list(_HELD):
        top = _key(lock.workdir)
        if here == top or here.startswith(top + "/"):
            why = lock.lost()
            if why:
                raise LockLost(why)


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
    if paths.is_url(workdir):
        return BucketLock(workdir)
    return FileLock(workdir)


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


class _Lock:
    """`with lock:` acquires and releases."""

    def lost(self, now: bool = False) -> str | None:
        """Why the lock is no longer ours (one line), or None. `now`: look
        again even if a look was taken a moment ago."""
        return None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class BucketLock(_Lock):
    HEARTBEAT_S = 30.0
    STALE_S = 150.0
    RELEASE_WAIT_S = 5.0

    def __init__(self, workdir):
        self.workdir = os.fspath(workdir)
        self.path = paths.join(self.workdir, LOCK_NAME)
        self._gen = None
        self._stop = threading.Event()
        self._thread = None
        self._rec = None
        self._lost = None           # why the lock was lost (set by the heartbeat thread)
        self.beat_failures = 0      # heartbeats that storage errors kept from landing

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
            if paths.create_exclusive(self.path, self._payload()):
                self._gen = paths.generation(self.path)
                break
            gen = paths.generation(self.path)
            if gen is None:
                continue  # released meanwhile: try again
            try:
                holder = json.loads(paths.read_text(self.path))
                holder = holder if isinstance(holder, dict) else None
            except (FileNotFoundError, json.JSONDecodeError):
                holder = None
            if not self._stale(holder):
                raise WorkdirLocked(
                    f"{self.workdir}: in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('started')}); wait for it to "
                    f"finish or stop it (lock object {self.path}, taken over once its "
                    f"heartbeat is {self.STALE_S:.0f} s old)")
            if paths.remove_generation(self.path, gen):
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                       f"{holder.get('started')}" if holder else "an unreadable record")
                print(f"warning: {self.workdir}: taking over from a run that ended without "
                      f"releasing it ({who})", file=sys.stderr, flush=True)
        else:
            raise WorkdirLocked(f"{self.workdir}: could not take the lock object {self.path} "
                                "(other runs keep taking it); try again")
        self._lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name="bert_jax-lock-heartbeat")
        self._thread.start()
        _HELD.add(self)

    def lost(self, now: bool = False) -> str | None:
        return self._lost

    def _lose(self, why: str) -> None:
        self._lost = f"{self.workdir}: lost the workdir lock ({why}); stopped so that this " \
                     f"run writes nothing more there"
        print(f"warning: {self._lost}", file=sys.stderr, flush=True)

    def _beat(self) -> None:
        last_ok = time.monotonic()
        # Give up while the last beat that landed is still fresh for other runs
        # (STALE_S), so the run stops before anyone may take the workdir over.
        give_up_s = max(self.STALE_S - self.HEARTBEAT_S, self.HEARTBEAT_S)
        while not self._stop.wait(self.HEARTBEAT_S):
            payload = self._payload()
            try:
                gen = paths.write_if_generation(self.path, payload, self._gen)
                if gen is None and paths.read_bytes(self.path) == payload:
                    # a retried upload whose first try had landed: still ours
                    gen = paths.generation(self.path)
            except FileNotFoundError:
                gen = None
            except OSError as e:
                self.beat_failures += 1
                if time.monotonic() - last_ok > give_up_s:
                    self._lose(f"{self.beat_failures} heartbeats failed over "
                               f"{time.monotonic() - last_ok:.0f} s, the last: {e}")
                    return
                continue  # a storage hiccup: the next beat tries again
            if gen is None:
                self._lose(f"the lock object {self.path} was rewritten or deleted by "
                           "someone else")
                return
            self._gen, last_ok = gen, time.monotonic()

    def release(self, remove: bool = False) -> None:
        """Delete the lock object if it is still ours (`remove`: the same; an
        object store has no empty directory to leave behind)."""
        del remove
        if self._gen is None:
            return
        self._stop.set()
        beating = False
        if self._thread is not None:
            # A beat takes well under a second; one still in flight after
            # RELEASE_WAIT_S is retrying against storage that does not answer
            # (gcsfs retries ~30 s). Then the delete would only retry as long
            # and could race that beat: leave the object, whose heartbeat stops
            # now, for the next run to take over.
            self._thread.join(self.RELEASE_WAIT_S)
            beating = self._thread.is_alive()
        _HELD.discard(self)
        if self._lost is None and not beating:  # a lost lock object is someone else's now
            try:
                paths.remove_generation(self.path, self._gen)
            except OSError:
                pass  # left behind: its heartbeat stops, so the next run takes it over
        self._gen = None


class FileLock(_Lock):
    CHECK_EVERY_S = 1.0  # how often `lost` looks at the path (a stat)

    def __init__(self, workdir):
        self.workdir = os.fspath(workdir)
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._f = None
        self._checked = 0.0

    def _open(self):
        """The lock file, opened without following a symlink and without
        blocking on a FIFO; only a regular file with one link is accepted."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LockFileError(f"{self.path}: the workdir lock file is a symbolic link; "
                                    "remove it (nothing follows it)") from None
            if e.errno in (errno.EISDIR, errno.ENXIO):
                raise LockFileError(f"{self.path}: the workdir lock file is not a regular "
                                    "file; remove it") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else \
                f"a hard link ({st.st_nlink} names)"
            raise LockFileError(f"{self.path}: the workdir lock file is {what}; remove it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+")

    def _same_file(self, f) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(f.fileno())
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def acquire(self) -> None:
        for _ in range(10):
            f = self._open()
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError:
                locked = False
            if not locked or self._same_file(f):
                break
            f.close()  # locked a file its holder had just removed: open the new one
        else:
            raise WorkdirLocked(f"{self.path.parent}: could not take the lock file "
                                f"{self.path} (other runs keep replacing it); try again")
        for _ in range(1 if locked else 20):
            f.seek(0)
            text = f.read()
            if text.strip():
                break
            time.sleep(0.01)  # a holder that has just locked writes its record next
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
        self._checked = time.monotonic()
        _HELD.add(self)

    def lost(self, now: bool = False) -> str | None:
        """The lock file was removed or replaced under us (someone deleted the
        workdir): the next run could lock the new file while we still run."""
        if self._f is None or (not now and
                               time.monotonic() - self._checked < self.CHECK_EVERY_S):
            return None
        self._checked = time.monotonic()
        if self._same_file(self._f):
            return None
        return (f"{self.path.parent}: lost the workdir lock (its lock file {self.path} was "
                "removed or replaced by someone else); stopped so that this run writes "
                "nothing more there")

    def release(self, remove: bool = False) -> None:
        """Give the lock up: the file is emptied, or with `remove` deleted (by
        us, the holder, before the flock goes, and only if it is still ours)."""
        if self._f is None:
            return
        _HELD.discard(self)
        try:
            if remove and self._same_file(self._f):
                os.unlink(self.path)
            else:
                self._f.seek(0)
                self._f.truncate()
                self._f.flush()
        except OSError:
            pass
        finally:
            self._f.close()  # closing releases the flock
            self._f = None
