"""The workdir lifecycle and its lock (bert_jax/storage/run_dir.py, workdir_lock.py):

- two real processes started at the same moment on the same new workdir, 20
  times: exactly one runs; the other exits 1 with the one-line "in use" error
  and removes nothing; while the winner runs no third process can lock it;
  afterwards the winner's files and lock file are there;
- a run that fails before its first step removes what it created (the
  workdir it made), and only that (what an existing workdir held stays);
- a lock file that is a symlink is refused with one line, its target untouched;
- in a bucket the heartbeat is a conditional write: another writer rewriting
  the lock object, or heartbeats failing for too long, lose the lock, and the
  training loop then stops with one line, saving nothing more.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

from bert_jax.storage import paths, run_dir, workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]

# A command with the workdir lifecycle around a trivial job (no JAX, so a
# start costs a fraction of a second). `race N ROOT` forks two children per
# round, after the imports, that spin on a barrier file and then run the
# command on the same new workdir ROOT/<round>/w; the parent, a third process,
# tries to lock the workdir while the winner runs and records what it saw.
SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from absl import app  # noqa: F401 - imported once, before the children fork
    from bert_jax import cli
    from bert_jax.storage import run_dir, workdir_lock

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.0005)

    def listing(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else None

    def main(argv):
        workdir, barrier, release = argv[1:4]
        wait_for(barrier)
        with run_dir.claim(workdir, has_progress=lambda w: False):
            with open(os.path.join(workdir, f"ran-{os.getpid()}"), "w") as f:
                f.write("winner")
            if release == "fail":
                raise ValueError("the job failed before its first step")
            wait_for(release)
        return 0

    def child(rnd, k):
        err = os.open(os.path.join(rnd, f"child{k}.err"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(err, 2)
        open(os.path.join(rnd, f"ready{k}"), "w").close()
        sys.argv = ["workdir_cmd", os.path.join(rnd, "w"), os.path.join(rnd, "go"),
                    os.path.join(rnd, "release")]
        try:
            cli.run(main)
        except SystemExit as e:
            os._exit(e.code or 0)
        os._exit(0)

    def race(n, root):
        for i in range(n):
            rnd = os.path.join(root, str(i))
            os.mkdir(rnd)
            kids = []
            for k in range(2):
                pid = os.fork()
                if pid == 0:
                    child(rnd, k)
                kids.append(pid)
            for k in range(2):
                wait_for(os.path.join(rnd, f"ready{k}"))
            open(os.path.join(rnd, "go"), "w").close()   # both start now
            done, rc = os.wait()                          # the loser, or a bug
            rcs = {done: os.waitstatus_to_exitcode(rc)}
            w = os.path.join(rnd, "w")
            deadline = time.time() + 10
            while not any(e.startswith("ran-") for e in listing(w) or []) and \\
                    time.time() < deadline:
                time.sleep(0.01)
            during = listing(w)
            try:
                workdir_lock.WorkdirLock(w).acquire()
                third = "locked it"
            except (ValueError, OSError) as e:
                third = str(e)
            open(os.path.join(rnd, "release"), "w").close()
            for pid in kids:
                if pid not in rcs:
                    rcs[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            print(json.dumps({"round": i, "rc": {str(p): rcs[p] for p in kids},
                              "first_exit": done, "during": during, "third": third,
                              "after": listing(w)}), flush=True)

    if __name__ == "__main__":
        if sys.argv[1] == "race":
            race(int(sys.argv[2]), sys.argv[3])
        else:
            cli.run(main)
''')


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> pathlib.Path:
    p = tmp_path_factory.mktemp("cmd") / "workdir_cmd.py"
    p.write_text(SCRIPT)
    return p


def run_script(script, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_start_up_race_one_runs_the_loser_removes_nothing(script, tmp_path):
    proc = run_script(script, "race", 20, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rounds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rounds) == 20
    for r in rounds:
        rnd = tmp_path / str(r["round"])
        loser, winner = str(r["first_exit"]), next(p for p in r["rc"] if p != str(
            r["first_exit"]))
        assert r["rc"] == {loser: 1, winner: 0}, r
        err = (rnd / f"child{list(r['rc']).index(loser)}.err").read_text()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: {rnd / 'w'}: in use by another run (pid {winner} on "), (r, err)
        assert (rnd / f"child{list(r['rc']).index(winner)}.err").read_text() == ""
        # While the winner ran: its file and lock there, a third run refused.
        assert r["during"] == [workdir_lock.LOCK_NAME, f"ran-{winner}"], r
        assert r["third"].startswith(f"{rnd / 'w'}: in use by another run (pid {winner}"), r
        # Afterwards: both still there, the record emptied by its holder.
        assert r["after"] == [workdir_lock.LOCK_NAME, f"ran-{winner}"], r
        assert (rnd / "w" / f"ran-{winner}").read_text() == "winner"
        assert (rnd / "w" / workdir_lock.LOCK_NAME).read_text() == ""


def test_failure_before_first_step_removes_only_what_it_created(script, tmp_path):
    """A new workdir (and its new parent) made by the failed run go; in a
    workdir that existed, only the entries that appeared after the lock go."""
    (tmp_path / "go").touch()
    new = tmp_path / "parent" / "w"
    proc = run_script(script, new, tmp_path / "go", "fail")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: the job failed before its first step"
    assert not (tmp_path / "parent").exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    proc = run_script(script, old, tmp_path / "go", "fail")
    assert proc.returncode == 1
    assert sorted(p.name for p in old.iterdir()) == [workdir_lock.LOCK_NAME, "notes.txt"]
    assert (old / "notes.txt").read_text() == "mine"


def test_progress_this_process_noted_keeps_the_workdir_without_asking_storage(tmp_path):
    """A failure after the loop noted progress (a logged step, a resume) keeps
    what the run wrote without calling has_progress (storage may be what
    failed); a sweep's run counts for its parent. A later claim of the same
    workdir in the same process starts knowing nothing: its own failure
    before any progress removes what it created."""
    workdir = tmp_path / "w"

    asked = []
    for noted in (workdir, workdir / "lr1e-5_seed0"):
        with pytest.raises(RuntimeError), run_dir.claim(
                workdir, has_progress=lambda w: asked.append(w) or False):
            (workdir / "metrics.jsonl").write_text("{}\n")
            run_dir.note_progress(noted)
            raise RuntimeError("storage went away")
        assert (workdir / "metrics.jsonl").is_file()
    assert asked == []
    with pytest.raises(RuntimeError), run_dir.claim(workdir, has_progress=lambda w: False):
        (workdir / "half_written").write_text("")
        raise RuntimeError("failed before its first step")
    assert sorted(p.name for p in workdir.iterdir() if p.name != workdir_lock.LOCK_NAME) == [
        "metrics.jsonl"]


def test_lock_file_symlink_is_refused_target_untouched(script, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (workdir / workdir_lock.LOCK_NAME).symlink_to(target)
    (tmp_path / "go").touch()
    proc = run_script(script, workdir, tmp_path / "go", tmp_path / "release")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {workdir / workdir_lock.LOCK_NAME}: the workdir "
                                   "lock file is a symbolic link; remove it (nothing follows it)")
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in workdir.iterdir()) == [workdir_lock.LOCK_NAME]
    # A hard link would let the holder truncate the other name's content.
    (workdir / workdir_lock.LOCK_NAME).unlink()
    os.link(target, workdir / workdir_lock.LOCK_NAME)
    with pytest.raises(workdir_lock.LockFileError, match="is a hard link"):
        workdir_lock.WorkdirLock(workdir).acquire()
    assert target.read_text() == "keep me\n"


def wait_until(cond, timeout=20.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def fast(lock, beat=0.05, stale=0.5):
    lock.HEARTBEAT_S, lock.STALE_S = beat, stale
    return lock


def test_bucket_heartbeat_is_conditional_a_rewrite_loses_the_lock(gcs):
    wd = paths.join(gcs.bucket, "lost-lock")
    obj = paths.join(wd, workdir_lock.LOCK_NAME)
    lock = fast(workdir_lock.WorkdirLock(wd))
    lock.acquire()
    try:
        g0 = paths.generation(obj)
        wait_until(lambda: paths.generation(obj) != g0)  # the heartbeat lands
        workdir_lock.check_held(paths.join(wd, "lr1e-5_seed0"))  # still ours: no error
        paths.write_text(obj, json.dumps({"pid": 1, "host": "elsewhere", "started": "x",
                                          "heartbeat": time.time()}))
        theirs = paths.generation(obj)
        wait_until(lambda: lock.lost() is not None)
        with pytest.raises(workdir_lock.LockLost) as e:
            workdir_lock.check_held(wd)
        assert str(e.value) == (f"{wd}: lost the workdir lock (the lock object {obj} was "
                                "rewritten or deleted by someone else); stopped so that this "
                                "run writes nothing more there")
        time.sleep(0.2)  # no more heartbeats over the other writer's object
        assert paths.generation(obj) == theirs
        assert json.loads(paths.read_text(obj))["host"] == "elsewhere"
    finally:
        lock.release()
    assert paths.generation(obj) == theirs  # released: not ours to delete
    paths.remove(obj)


def test_bucket_heartbeat_storage_errors_lose_the_lock(gcs, monkeypatch):
    wd = paths.join(gcs.bucket, "failing-beat")
    lock = fast(workdir_lock.WorkdirLock(wd), beat=0.05, stale=0.4)
    lock.acquire()

    def down(path, data, gen):
        raise paths.StorageError(f"{path}: conditional write failed (ServerDisconnected)")
    monkeypatch.setattr(paths, "write_if_generation", down)
    try:
        t0 = time.time()
        wait_until(lambda: lock.lost() is not None)
        # Given up before a reader could call the last beat stale (STALE_S).
        assert time.time() - t0 < 0.4 + 0.2
        assert lock.beat_failures >= 3
        with pytest.raises(workdir_lock.LockLost, match=r"^gs://bert-jax-test/failing-beat: "
                           r"lost the workdir lock \(\d+ heartbeats failed over \d+ s, the "
                           r"last: .*ServerDisconnected\)"):
            workdir_lock.check_held(wd)
    finally:
        monkeypatch.undo()
        lock.release()


def test_bucket_release_does_not_wait_out_a_beat_stuck_in_retries(gcs, monkeypatch):
    """Release while a heartbeat hangs in the storage client's retries (a
    server that stopped answering): it returns after RELEASE_WAIT_S instead of
    waiting for the beat and then retrying the delete as long, and leaves the
    object (whose beats stop) to the next run; the stuck beat, once it
    returns, writes nothing more. A release with no beat in flight deletes."""
    wd = paths.join(gcs.bucket, "stuck-beat")
    obj = paths.join(wd, workdir_lock.LOCK_NAME)
    lock = fast(workdir_lock.WorkdirLock(wd), beat=0.05, stale=10.0)
    monkeypatch.setattr(lock, "RELEASE_WAIT_S", 0.3)
    lock.acquire()
    entered, unblock, writes = threading.Event(), threading.Event(), []
    real = paths.write_if_generation

    def hanging(path, data, gen):
        entered.set()
        unblock.wait(30)
        writes.append(path)
        raise paths.StorageError(f"{path}: conditional write failed (ClientConnectorError)")
    monkeypatch.setattr(paths, "write_if_generation", hanging)
    wait_until(entered.is_set)
    t0 = time.time()
    lock.release()
    assert time.time() - t0 < 0.3 + 1.0
    assert paths.exists(obj)  # left for the next run to take over
    unblock.set()
    wait_until(lambda: writes)
    time.sleep(0.2)
    assert len(writes) == 1  # the stuck beat was the last one
    monkeypatch.setattr(paths, "write_if_generation", real)
    paths.remove(obj)
    lock = workdir_lock.WorkdirLock(wd)
    lock.acquire()
    lock.release()
    assert not paths.exists(obj)


class _CountingJob:
    """A loop.Job over a scalar 'model': enough for the loop to log and checkpoint."""
    name = "lock"
    num_steps = 10

    def __init__(self, at_step, lose):
        self.at_step, self.lose = at_step, lose

    def batches(self, start_step):
        for s in range(start_step, self.num_steps):
            if s == self.at_step:
                self.lose()
            yield {"x": np.ones((8,), np.float32)}, {}

    def data_state(self, step):
        return {"step": step}

    def check_data_state(self, state):
        pass

    def train_record(self, sums, steps, step):
        return {}

    def eval_label(self, step):
        return None

    def evaluate(self, params, step, label):
        raise AssertionError("no evaluation")

    def save_best(self, params, step):
        raise AssertionError("no best")


def run_loop_losing_the_lock(workdir, lose, at_step=5):
    """loop.run of a 10-step scalar job under run_dir.claim; `lose(claim)` is
    called when the batch of step `at_step` (0-based) is made. Returns the
    LockLost it must raise."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from bert_jax.model import sharding
    from bert_jax.train import loop

    def step_fn(state, batch, rng):
        m = {"loss": jnp.mean(batch["x"]), "finite": jnp.array(True), "lr": 0.0,
             "grad_norm": 0.0, "param_norm": 0.0, "update_norm": 0.0}
        return {"step": state["step"] + 1, "params": state["params"]}, m

    config = ml_collections.ConfigDict({"log_every": 1, "checkpoint": {
        "every": 2, "keep": 10, "keep_every": None, "async_save": False}})
    with pytest.raises(workdir_lock.LockLost) as e:
        with run_dir.claim(workdir, has_progress=loop.has_progress) as held:
            loop.run(_CountingJob(at_step, lambda: lose(held)), config, str(workdir),
                     mesh=sharding.make_mesh((-1, 1, 1)),
                     spec=types.SimpleNamespace(abstract=None), step_fn=jax.jit(step_fn),
                     init_state=lambda: {"step": jnp.int32(0), "params": jnp.float32(0)},
                     rng=None, peak_flops=None)
    # Steps 2 and 4 saved while the lock was held; none after step 5 lost it.
    ckpts = paths.join(workdir, "checkpoints")
    assert sorted(int(n) for n in paths.listdir(ckpts) if n.isdigit()) == [2, 4]
    logged = paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()
    assert [json.loads(x)["step"] for x in logged] == [1, 2, 3, 4, 5]
    return e.value


def test_loop_stops_when_the_lock_is_lost(tmp_path):
    """Someone removes the lock file under a running run (and a new run could
    lock a new one): the loop raises LockLost before its next step, and no
    checkpoint is saved after that."""
    workdir = tmp_path / "w"
    lock_file = workdir / workdir_lock.LOCK_NAME

    def lose(held):  # what `rm -rf w` followed by a new run's lock would leave
        held.lock.CHECK_EVERY_S = 0.0
        lock_file.rename(tmp_path / "old.lock")
        lock_file.write_text("")

    e = run_loop_losing_the_lock(workdir, lose)
    assert str(e) == (f"{workdir}: lost the workdir lock (its lock file {lock_file} "
                      "was removed or replaced by someone else); stopped so that this "
                      "run writes nothing more there")
    assert lock_file.read_text() == ""  # the new file is not ours: left as it was


def test_loop_stops_when_the_bucket_lock_is_lost(gcs, monkeypatch):
    """The same in a bucket: another writer rewrites the lock object; the
    holder's conditional heartbeat fails, and the loop stops with one line."""
    monkeypatch.setattr(workdir_lock.BucketLock, "HEARTBEAT_S", 0.05)
    workdir = paths.join(gcs.bucket, "loop-lost-lock")
    obj = paths.join(workdir, workdir_lock.LOCK_NAME)

    def lose(held):
        paths.write_text(obj, json.dumps({"pid": 1, "host": "elsewhere", "started": "x",
                                          "heartbeat": time.time()}))
        wait_until(lambda: held.lock.lost() is not None)

    e = run_loop_losing_the_lock(workdir, lose)
    assert str(e) == (f"{workdir}: lost the workdir lock (the lock object {obj} was "
                      "rewritten or deleted by someone else); stopped so that this run "
                      "writes nothing more there")
    assert json.loads(paths.read_text(obj))["host"] == "elsewhere"  # theirs, kept
    paths.remove(workdir)
