"""gs:// workdirs and data against a local GCS server (fake-gcs-server on a
loopback port, the `gcs` fixture): the same CLI runs as tests/test_pretrain.py,
with the workdir and the prepared data in a bucket, compared bit for bit with
the local reference run of that file's `straight` fixture."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import test_pretrain
from test_pretrain import REPO, STEPS, assert_bitwise_equal, numbers

from bert_jax import checkpointing, storage

# The local tests' fixtures: the CLI runner and the uninterrupted local run.
cli, straight = test_pretrain.cli, test_pretrain.straight


def gs_records(url):
    return [json.loads(line) for line in storage.read_text(storage.join(url, "metrics.jsonl"))
            .splitlines()]


def gs_steps(url):
    return sorted(int(n) for n in storage.listdir(storage.join(url, "checkpoints"))
                  if n.isdigit())


def assert_same_gs_metrics(url, reference):
    """Every step logged exactly once in the bucket's metrics.jsonl, with the
    local reference run's numbers."""
    got = gs_records(url)
    assert [r["step"] for r in got if "loss" in r] == list(range(1, STEPS + 1))
    ref = {(r["step"], "loss" in r): numbers(r) for r in
           (json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines())}
    for r in got:
        assert numbers(r) == ref[(r["step"], "loss" in r)]


@pytest.fixture(scope="module")
def gs_data(gcs, tiny_pretraining_data):
    """The tiny prepared corpora uploaded to the bucket."""
    out = {}
    for name in ("train", "heldout"):
        out[name] = storage.join(gcs.bucket, "prepared", name)
        storage.upload_tree(tiny_pretraining_data[name], out[name])
    return out


@pytest.fixture(scope="module")
def gs_cli(cli, gcs, gs_data):
    """cli() with the emulator's variables and both prepared dirs in the bucket."""
    data = (f"--config.data.prepared_dir={gs_data['train']}",
            f"--config.eval_data.prepared_dir={gs_data['heldout']}")

    def run(workdir, *overrides, hook=None, devices=8, expect_rc=0, trace=None):
        env = cli.env(devices, STORAGE_EMULATOR_HOST=gcs.url,
                      BERT_JAX_CACHE=os.environ["BERT_JAX_CACHE"])
        command = cli.command(workdir, *data, *overrides, hook=hook)
        if trace:  # every connect() of the process tree, to check where it went
            command = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect",
                       "-e", "signal=none", "-o", str(trace), *command]
        proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == expect_rc, proc.stderr[-4000:]
        return proc
    return run


def inet_peers(trace) -> set[str]:
    """The IPv4/IPv6 addresses connected to in an strace -e trace=connect log."""
    text = trace.read_text()
    return set(re.findall(r'inet_addr\("([^"]+)"\)', text)) | set(
        re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', text))


@pytest.fixture(scope="module")
def gs_resumed(gs_cli, gcs):
    """Workdir and prepared data in the bucket: SIGTERM after step 7 (saves step
    8, exit 0), rerun SIGKILLed while the step-15 save is in flight, rerun to
    the end. Returns (url, outputs of the three runs, checkpoint steps after
    the first run)."""
    url = storage.join(gcs.bucket, "run-resume")
    first = gs_cli(url, hook={"term_at": 7})
    steps_after_first = gs_steps(url)
    second = gs_cli(url, hook={"kill_in_save": 15}, expect_rc=-9)
    logged = [r["step"] for r in gs_records(url) if "loss" in r]
    third = gs_cli(url)
    return url, (first, second, third), steps_after_first, logged


def test_gs_workdir_preempted_killed_resumes_exactly(gs_resumed, gcs, straight):
    """The preempted, then killed, then rerun bucket workdir ends bitwise equal
    to the uninterrupted local run, each step logged once in the bucket."""
    reference, _ = straight
    url, (first, second, third), steps_after_first, logged = gs_resumed
    assert "preemption: saved step 8" in first.stderr + first.stdout
    assert steps_after_first == [5, 8]
    assert f"resumed from {url} at step 8" in second.stdout
    assert logged == list(range(1, 16))
    resumed = int(third.stdout.split(f"resumed from {url} at step ")[1].split()[0])
    assert resumed in (10, 15)  # 15 only if its save finished before the kill
    assert gs_steps(url) == [5, 8, 10, 15, 20]
    assert json.loads(storage.read_text(storage.join(url, "summary.json")))["start_step"] == \
        resumed
    assert_bitwise_equal(checkpointing.load_state_on_host(url, STEPS),
                         checkpointing.load_state_on_host(reference, STEPS))
    assert_same_gs_metrics(url, reference)
    for name in ("bert_jax.json", "vocab.txt", "config.json", "summary.json"):
        assert storage.exists(storage.join(url, name)), name
    assert any(n.startswith("events.out.tfevents.") for n in storage.listdir(
        storage.join(url, "tb")))
    # Objects land where the server keeps them (ROOT/bucket/key): a real server.
    assert (gcs.root / "data" / "bert-jax-test" / "run-resume" / "metrics.jsonl").is_file()
    # curves.png from the bucket's metrics.jsonl, into the bucket.
    proc = subprocess.run([sys.executable, "-m", "bert_jax.plot", url], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert storage.read_bytes(storage.join(url, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_damaged_newest_checkpoint_in_bucket_falls_back(gs_cli, gs_resumed, gcs, straight,
                                                        tmp_path):
    """Step 20's b-tree object in the bucket cut to half: the rerun warns, moves
    step 20 aside, resumes from 15 and redoes 16..20 bitwise equal to the local
    run. The whole process tree connects to nothing but the loopback server."""
    import fsspec
    reference, _ = straight
    fs = fsspec.filesystem("gs")
    url = storage.join(gcs.bucket, "run-damaged")
    fs.copy(gs_resumed[0] + "/", url + "/", recursive=True)
    [victim] = fs.glob(f"{url}/checkpoints/{STEPS}/state/d/*")
    data = fs.cat_file(victim)
    fs.pipe_file(victim, data[: len(data) // 2])

    trace = tmp_path / "connect.strace"
    has_strace = shutil.which("strace") is not None
    proc = gs_cli(url, trace=trace if has_strace else None)
    assert f"warning: checkpoint step {STEPS} is unreadable" in proc.stderr
    assert f"resumed from {url} at step 15" in proc.stdout
    assert_bitwise_equal(checkpointing.load_state_on_host(url, STEPS),
                         checkpointing.load_state_on_host(reference, STEPS))
    assert_same_gs_metrics(url, reference)
    [aside] = storage.listdir(storage.join(url, "checkpoints_unreadable"))
    assert aside.startswith(f"{STEPS}-")
    assert storage.exists(storage.join(url, "checkpoints_unreadable", aside, "state",
                                       "manifest.ocdbt"))
    if has_strace:
        peers = inet_peers(trace)
        assert "127.0.0.1" in peers and peers <= {"127.0.0.1", "::1"}, peers
