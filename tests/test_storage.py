"""bert_jax.storage.paths: local paths as before, gs:// against the local GCS server."""

import os
import threading

import pytest

from bert_jax.storage import paths


def test_local_paths_behave_as_before(tmp_path):
    d = paths.join(tmp_path, "a", "b")
    assert d == str(tmp_path / "a" / "b")
    paths.makedirs(d)
    f = paths.join(d, "x.json")
    paths.write_text(f, "one")
    paths.write_text(f, "two")
    assert (tmp_path / "a" / "b" / "x.json").read_text() == "two"
    assert paths.listdir(d) == ["x.json"]  # no temp file left behind
    paths.rename(f, paths.join(d, "y.json"))
    assert paths.listdir(d) == ["y.json"] and paths.isfile(paths.join(d, "y.json"))
    assert paths.local_copy(d) == tmp_path / "a" / "b"
    paths.remove(paths.join(tmp_path, "a"))
    assert not paths.exists(tmp_path / "a") and paths.listdir(tmp_path / "a") == []


def test_failed_dir_write_leaves_nothing_even_when_late_writes_land(tmp_path):
    """orbax can fail on one array (a full disk) while tensorstore still
    finishes another, recreating the temp dir's subdirectories after the
    failure: write_dir_atomic must still leave nothing beside the destination
    (CI saw a `.model.*` dir left by exactly this)."""
    from bert_jax.storage import outputs
    late = []

    def writer(tmp):
        def straggler():
            threading.Event().wait(0.3)
            os.makedirs(tmp / "params" / "d", exist_ok=True)
            (tmp / "params" / "d" / "chunk").write_bytes(b"x" * 1000)
        t = threading.Thread(target=straggler)
        t.start()
        late.append(t)
        (tmp / "params").mkdir()
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        outputs.write_dir_atomic(tmp_path / "model", writer)
    late[0].join()
    assert list(tmp_path.iterdir()) == []


def test_gs_objects(gcs):
    root = paths.join(gcs.bucket, "unit")
    assert paths.join("gs://b/", "x", "y.txt") == "gs://b/x/y.txt"
    f = paths.join(root, "d", "x.txt")
    paths.makedirs(root)  # a bucket that exists: nothing to do
    paths.write_text(f, "hello")
    assert paths.read_text(f) == "hello"
    assert paths.exists(f) and paths.isfile(f) and paths.isdir(paths.join(root, "d"))
    # The object is on the server's disk, where fake-gcs-server keeps it.
    assert (gcs.root / "data" / "bert-jax-test" / "unit" / "d" / "x.txt").read_text() == "hello"
    assert paths.listdir(root) == ["d"] and paths.listdir(paths.join(root, "d")) == [
        "x.txt"]
    paths.rename(paths.join(root, "d"), paths.join(root, "e"))
    assert paths.listdir(root) == ["e"]
    paths.remove(root)
    assert paths.listdir(root) == [] and not paths.exists(paths.join(root, "e", "x.txt"))


def test_missing_bucket_is_a_one_line_error(gcs):
    with pytest.raises(paths.StorageError) as e:
        paths.makedirs("gs://no-such-bucket-17/run")
    assert str(e.value) == "gs://no-such-bucket-17/run: bucket gs://no-such-bucket-17 does " \
        "not exist"


def test_rewrite_is_seen_whole_or_not_at_all(gcs):
    """Readers polling an object while it is rewritten (8 MiB, several upload
    chunks) see the old or the new content, never a mix or a prefix: the
    object is written once under its final name, with no rename."""
    f = paths.join(gcs.bucket, "unit-atomic", "big.bin")
    old, new = b"a" * (8 << 20), b"b" * (8 << 20)
    paths.write_bytes(f, old)
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            seen.add(paths.read_bytes(f))
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        paths.write_bytes(f, new)
        paths.write_bytes(f, old)
    finally:
        done.set()
        reader.join()
    assert seen and seen <= {old, new}
    assert paths.listdir(paths.join(gcs.bucket, "unit-atomic")) == ["big.bin"]


def test_local_copy_is_cached_and_follows_changes(gcs):
    d = paths.join(gcs.bucket, "unit-cache")
    paths.write_text(paths.join(d, "vocab.txt"), "v1")
    paths.write_text(paths.join(d, "sub", "x.npy"), "x")
    tree = paths.local_copy(d, key="fp1")
    assert (tree / "vocab.txt").read_text() == "v1" and (tree / "sub" / "x.npy").exists()
    assert paths.local_copy(d, key="fp1") == tree  # reused, not fetched again
    one = paths.local_copy(paths.join(d, "vocab.txt"))
    assert one.name == "vocab.txt" and one.read_text() == "v1"
    paths.write_text(paths.join(d, "vocab.txt"), "v2")
    assert paths.local_copy(paths.join(d, "vocab.txt")).read_text() == "v2"



def test_bucket_lock_one_holder_takeover_of_a_dead_one(gcs, capsys):
    """The workdir lock in a bucket: the server's create-if-absent lets one run
    in; a second is refused naming the holder; a lock left by a dead process
    (kill -9) is taken over with a warning; a clean release deletes it."""
    import json
    import subprocess

    from bert_jax.storage import workdir_lock
    wd = paths.join(gcs.bucket, "unit-lock")
    first = workdir_lock.WorkdirLock(wd)
    first.acquire()
    obj = paths.join(wd, workdir_lock.LOCK_NAME)
    rec = json.loads(paths.read_text(obj))
    assert rec["pid"] == os.getpid() and "heartbeat" in rec
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()} on "):
        workdir_lock.WorkdirLock(wd).acquire()
    first.release()
    assert not paths.exists(obj)
    # A holder that died without releasing: a pid that has exited, on this host.
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.write_text(obj, json.dumps({**rec, "pid": dead.pid}))
    second = workdir_lock.WorkdirLock(wd)
    second.acquire()
    assert f"taking over from a run that ended without releasing it (pid {dead.pid}" in \
        capsys.readouterr().err
    assert json.loads(paths.read_text(obj))["pid"] == os.getpid()
    # A record whose heartbeat stopped long ago (a VM that went away) is stale too.
    second.release()
    paths.write_text(obj, json.dumps({**rec, "pid": 1, "host": "elsewhere",
                                      "heartbeat": 0.0}))
    third = workdir_lock.WorkdirLock(wd)
    third.acquire()
    third.release()
    assert not paths.exists(obj)


def test_gs_destinations_are_checked_and_written_whole(gcs, tmp_path):
    """outputs on gs://: a prefix holding another command's object is refused
    (and kept), with --overwrite too; an earlier output of the command is
    replaced; a bucket root is never a destination; a directory is written
    from a local staging dir, so a writer that fails leaves the bucket
    untouched, and a rewrite deletes only the old objects it does not replace."""
    from bert_jax.storage import outputs
    dst = paths.join(gcs.bucket, "unit-out", "model")
    own = outputs.only_entries(lambda n: n in ("a.txt", "sub"))
    outputs.check_destination(dst, is_own=own)  # absent: fine
    paths.write_text(paths.join(dst, "notes.txt"), "keep me")
    with pytest.raises(outputs.OutputError, match="is not empty and is not this command"):
        outputs.check_destination(dst, is_own=own)
    assert paths.read_text(paths.join(dst, "notes.txt")) == "keep me"
    with pytest.raises(outputs.OutputError, match="lies inside the source"):
        outputs.check_destination(paths.join(dst, "x"), sources=[dst], overwrite=True)

    def boom(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError):
        outputs.write_dir_atomic(dst, boom)
    assert paths.listdir(dst) == ["notes.txt"]

    def write(tmp):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        (tmp / "a.txt").write_text("a")
    with pytest.raises(outputs.OutputError, match="holds files this command did not write "
                       r"\(notes.txt\)"):
        outputs.check_destination(dst, is_own=own, overwrite=True)
    assert paths.read_text(paths.join(dst, "notes.txt")) == "keep me"
    for root in (gcs.bucket, gcs.bucket + "/"):
        with pytest.raises(outputs.OutputError, match="is a bucket root"):
            outputs.check_destination(root, is_own=own, overwrite=True)
    paths.remove(paths.join(dst, "notes.txt"))  # the user moves their file away
    paths.write_text(paths.join(dst, "a.txt"), "old a")
    paths.write_text(paths.join(dst, "sub", "old.txt"), "old")
    outputs.check_destination(dst, is_own=own, overwrite=True)
    outputs.write_dir_atomic(dst, write)
    assert paths.listdir(dst) == ["a.txt", "sub"]
    assert paths.listdir(paths.join(dst, "sub")) == ["b.txt"]
    assert paths.read_text(paths.join(dst, "a.txt")) == "a"
    assert paths.read_text(paths.join(dst, "sub", "b.txt")) == "b"
    outputs.check_destination(dst, is_own=own)  # its own output now: no flag needed
    f = paths.join(gcs.bucket, "unit-out", "x.npz")
    outputs.write_file_atomic(f, lambda tmp: tmp.write_bytes(b"npz"), suffix=".npz")
    assert paths.read_bytes(f) == b"npz"
    with pytest.raises(outputs.OutputError, match="exists and is not this command"):
        outputs.check_destination(f, kind="file")
