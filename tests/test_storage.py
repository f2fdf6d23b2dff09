"""bert_jax.storage: local paths as before, gs:// against the local GCS server."""

import os
import threading

import pytest

from bert_jax import storage


def test_local_paths_behave_as_before(tmp_path):
    d = storage.join(tmp_path, "a", "b")
    assert d == str(tmp_path / "a" / "b")
    storage.makedirs(d)
    f = storage.join(d, "x.json")
    storage.write_text(f, "one")
    storage.write_text(f, "two")
    assert (tmp_path / "a" / "b" / "x.json").read_text() == "two"
    assert storage.listdir(d) == ["x.json"]  # no temp file left behind
    storage.rename(f, storage.join(d, "y.json"))
    assert storage.listdir(d) == ["y.json"] and storage.isfile(storage.join(d, "y.json"))
    assert storage.local_copy(d) == tmp_path / "a" / "b"
    storage.remove(storage.join(tmp_path, "a"))
    assert not storage.exists(tmp_path / "a") and storage.listdir(tmp_path / "a") == []


def test_gs_objects(gcs):
    root = storage.join(gcs.bucket, "unit")
    assert storage.join("gs://b/", "x", "y.txt") == "gs://b/x/y.txt"
    f = storage.join(root, "d", "x.txt")
    storage.makedirs(root)  # a bucket that exists: nothing to do
    storage.write_text(f, "hello")
    assert storage.read_text(f) == "hello"
    assert storage.exists(f) and storage.isfile(f) and storage.isdir(storage.join(root, "d"))
    # The object is on the server's disk, where fake-gcs-server keeps it.
    assert (gcs.root / "data" / "bert-jax-test" / "unit" / "d" / "x.txt").read_text() == "hello"
    assert storage.listdir(root) == ["d"] and storage.listdir(storage.join(root, "d")) == [
        "x.txt"]
    storage.rename(storage.join(root, "d"), storage.join(root, "e"))
    assert storage.listdir(root) == ["e"]
    storage.remove(root)
    assert storage.listdir(root) == [] and not storage.exists(storage.join(root, "e", "x.txt"))


def test_missing_bucket_is_a_one_line_error(gcs):
    with pytest.raises(storage.StorageError) as e:
        storage.makedirs("gs://no-such-bucket-17/run")
    assert str(e.value) == "gs://no-such-bucket-17/run: bucket gs://no-such-bucket-17 does " \
        "not exist"


def test_rewrite_is_seen_whole_or_not_at_all(gcs):
    """Readers polling an object while it is rewritten (8 MiB, several upload
    chunks) see the old or the new content, never a mix or a prefix: the
    object is written once under its final name, with no rename."""
    f = storage.join(gcs.bucket, "unit-atomic", "big.bin")
    old, new = b"a" * (8 << 20), b"b" * (8 << 20)
    storage.write_bytes(f, old)
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            seen.add(storage.read_bytes(f))
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        storage.write_bytes(f, new)
        storage.write_bytes(f, old)
    finally:
        done.set()
        reader.join()
    assert seen and seen <= {old, new}
    assert storage.listdir(storage.join(gcs.bucket, "unit-atomic")) == ["big.bin"]


def test_local_copy_is_cached_and_follows_changes(gcs):
    d = storage.join(gcs.bucket, "unit-cache")
    storage.write_text(storage.join(d, "vocab.txt"), "v1")
    storage.write_text(storage.join(d, "sub", "x.npy"), "x")
    tree = storage.local_copy(d, key="fp1")
    assert (tree / "vocab.txt").read_text() == "v1" and (tree / "sub" / "x.npy").exists()
    assert storage.local_copy(d, key="fp1") == tree  # reused, not fetched again
    one = storage.local_copy(storage.join(d, "vocab.txt"))
    assert one.name == "vocab.txt" and one.read_text() == "v1"
    storage.write_text(storage.join(d, "vocab.txt"), "v2")
    assert storage.local_copy(storage.join(d, "vocab.txt")).read_text() == "v2"



def test_bucket_lock_one_holder_takeover_of_a_dead_one(gcs, capsys):
    """The workdir lock in a bucket: the server's create-if-absent lets one run
    in; a second is refused naming the holder; a lock left by a dead process
    (kill -9) is taken over with a warning; a clean release deletes it."""
    import json
    import subprocess

    from bert_jax.storage import workdir_lock
    wd = storage.join(gcs.bucket, "unit-lock")
    first = workdir_lock.WorkdirLock(wd)
    first.acquire()
    obj = storage.join(wd, workdir_lock.LOCK_NAME)
    rec = json.loads(storage.read_text(obj))
    assert rec["pid"] == os.getpid() and "heartbeat" in rec
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()} on "):
        workdir_lock.WorkdirLock(wd).acquire()
    first.release()
    assert not storage.exists(obj)
    # A holder that died without releasing: a pid that has exited, on this host.
    dead = subprocess.Popen(["true"])
    dead.wait()
    storage.write_text(obj, json.dumps({**rec, "pid": dead.pid}))
    second = workdir_lock.WorkdirLock(wd)
    second.acquire()
    assert f"taking over from a run that ended without releasing it (pid {dead.pid}" in \
        capsys.readouterr().err
    assert json.loads(storage.read_text(obj))["pid"] == os.getpid()
    # A record whose heartbeat stopped long ago (a VM that went away) is stale too.
    second.release()
    storage.write_text(obj, json.dumps({**rec, "pid": 1, "host": "elsewhere",
                                        "heartbeat": 0.0}))
    third = workdir_lock.WorkdirLock(wd)
    third.acquire()
    third.release()
    assert not storage.exists(obj)


def test_gs_destinations_are_checked_and_written_whole(gcs, tmp_path):
    """outputs on gs://: a prefix holding another command's object is refused
    (and kept), with --overwrite too; an earlier output of the command is
    replaced; a bucket root is never a destination; a directory is written
    from a local staging dir, so a writer that fails leaves the bucket
    untouched, and a rewrite deletes only the old objects it does not replace."""
    from bert_jax.storage import outputs
    dst = storage.join(gcs.bucket, "unit-out", "model")
    own = outputs.only_entries(lambda n: n in ("a.txt", "sub"))
    outputs.check_destination(dst, is_own=own)  # absent: fine
    storage.write_text(storage.join(dst, "notes.txt"), "keep me")
    with pytest.raises(outputs.OutputError, match="is not empty and is not this command"):
        outputs.check_destination(dst, is_own=own)
    assert storage.read_text(storage.join(dst, "notes.txt")) == "keep me"
    with pytest.raises(outputs.OutputError, match="lies inside the source"):
        outputs.check_destination(storage.join(dst, "x"), sources=[dst], overwrite=True)

    def boom(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError):
        outputs.write_dir_atomic(dst, boom)
    assert storage.listdir(dst) == ["notes.txt"]

    def write(tmp):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        (tmp / "a.txt").write_text("a")
    with pytest.raises(outputs.OutputError, match="holds files this command did not write "
                       r"\(notes.txt\)"):
        outputs.check_destination(dst, is_own=own, overwrite=True)
    assert storage.read_text(storage.join(dst, "notes.txt")) == "keep me"
    for root in (gcs.bucket, gcs.bucket + "/"):
        with pytest.raises(outputs.OutputError, match="is a bucket root"):
            outputs.check_destination(root, is_own=own, overwrite=True)
    storage.remove(storage.join(dst, "notes.txt"))  # the user moves their file away
    storage.write_text(storage.join(dst, "a.txt"), "old a")
    storage.write_text(storage.join(dst, "sub", "old.txt"), "old")
    outputs.check_destination(dst, is_own=own, overwrite=True)
    outputs.write_dir_atomic(dst, write)
    assert storage.listdir(dst) == ["a.txt", "sub"]
    assert storage.listdir(storage.join(dst, "sub")) == ["b.txt"]
    assert storage.read_text(storage.join(dst, "a.txt")) == "a"
    assert storage.read_text(storage.join(dst, "sub", "b.txt")) == "b"
    outputs.check_destination(dst, is_own=own)  # its own output now: no flag needed
    f = storage.join(gcs.bucket, "unit-out", "x.npz")
    outputs.write_file_atomic(f, lambda tmp: tmp.write_bytes(b"npz"), suffix=".npz")
    assert storage.read_bytes(f) == b"npz"
    with pytest.raises(outputs.OutputError, match="exists and is not this command"):
        outputs.check_destination(f, kind="file")
