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

import forked_cli
import numpy as np
import pytest
import test_pretrain
from conftest import JAX_CACHE_DIR
from test_pretrain import REPO, STEPS, assert_bitwise_equal, numbers

from bert_jax.storage import paths
from bert_jax.train import checkpointing

# The local tests' fixtures: the CLI runner and the uninterrupted local run.
cli, straight = test_pretrain.cli, test_pretrain.straight


def gs_records(url):
    return [json.loads(line) for line in paths.read_text(paths.join(url, "metrics.jsonl"))
            .splitlines()]


def gs_steps(url, committed=True):
    """Checkpoint step dirs in the bucket; committed: only those orbax finished
    (commit_success.txt, its marker on object storage)."""
    ckpts = paths.join(url, "checkpoints")
    return sorted(int(n) for n in paths.listdir(ckpts) if n.isdigit() and (
        not committed or paths.exists(paths.join(ckpts, n, "commit_success.txt"))))


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
        out[name] = paths.join(gcs.bucket, "prepared", name)
        paths.upload_tree(tiny_pretraining_data[name], out[name])
    return out


@pytest.fixture(scope="module")
def gs_cli(cli, gcs, gs_data):
    """cli() with the emulator's variables and both prepared dirs in the bucket."""
    data = (f"--config.data.prepared_dir={gs_data['train']}",
            f"--config.eval_data.prepared_dir={gs_data['heldout']}")

    def run(workdir, *overrides, hook=None, devices=8, expect_rc=0, trace=None,
            extra_env=None, fork=True):
        env = cli.env(devices, **{"STORAGE_EMULATOR_HOST": gcs.url,
                                  "BERT_JAX_CACHE": os.environ["BERT_JAX_CACHE"],
                                  **(extra_env or {})})
        command = cli.command(workdir, *data, *overrides, hook=hook)
        if trace:  # every connect() of the process tree, to check where it went
            command = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect",
                       "-e", "signal=none", "-o", str(trace), *command]
        if trace or not fork:
            proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=600)
        else:  # forked from a server that imported JAX (tests/forked_cli.py)
            proc = forked_cli.run_argv(command[1:], env, str(REPO), timeout=600)
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
    8, exit 75 "preempted, rerun"), rerun SIGKILLed while the step-15 save is in flight, rerun to
    the end. Returns (url, outputs of the three runs, checkpoint steps after
    the first run)."""
    url = paths.join(gcs.bucket, "run-resume")
    first = gs_cli(url, hook={"term_at": 7}, expect_rc=75)
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
    assert "preemption: saved step 8; rerun the same command to continue" in \
        first.stderr + first.stdout
    assert steps_after_first == [5, 8]
    assert f"resumed from {url} at step 8" in second.stdout
    assert logged == list(range(1, 16))
    resumed = int(third.stdout.split(f"resumed from {url} at step ")[1].split()[0])
    assert resumed in (10, 15)  # 15 only if its save finished before the kill
    assert gs_steps(url) == [5, 8, 10, 15, 20]
    assert json.loads(paths.read_text(paths.join(url, "summary.json")))["start_step"] == \
        resumed
    assert_bitwise_equal(checkpointing.load_state_on_host(url, STEPS),
                         checkpointing.load_state_on_host(reference, STEPS))
    assert_same_gs_metrics(url, reference)
    for name in ("bert_jax.json", "vocab.txt", "config.json", "summary.json"):
        assert paths.exists(paths.join(url, name)), name
    assert any(n.startswith("events.out.tfevents.") for n in paths.listdir(
        paths.join(url, "tb")))
    # Objects land where the server keeps them (ROOT/bucket/key): a real server.
    assert (gcs.root / "data" / "bert-jax-test" / "run-resume" / "metrics.jsonl").is_file()
    # curves.png from the bucket's metrics.jsonl, into the bucket.
    proc = subprocess.run([sys.executable, "-m", "bert_jax.plot", url], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert paths.read_bytes(paths.join(url, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_damaged_newest_checkpoint_in_bucket_falls_back(gs_cli, gs_resumed, gcs, straight,
                                                        tmp_path):
    """Step 20's b-tree object in the bucket cut to half: the rerun warns, moves
    step 20 aside, resumes from 15 and redoes 16..20 bitwise equal to the local
    run. The whole process tree connects to nothing but the loopback server."""
    import fsspec
    reference, _ = straight
    fs = fsspec.filesystem("gs")
    url = paths.join(gcs.bucket, "run-damaged")
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
    [aside] = paths.listdir(paths.join(url, "checkpoints_unreadable"))
    assert aside.startswith(f"{STEPS}-")
    assert paths.exists(paths.join(url, "checkpoints_unreadable", aside, "state",
                                       "manifest.ocdbt"))
    if has_strace:
        peers = inet_peers(trace)
        assert "127.0.0.1" in peers and peers <= {"127.0.0.1", "::1"}, peers


# ---------------------------------------------------------------- fine-tuning


def test_finetune_from_bucket_into_bucket_then_convert_and_predict(gcs, tmp_path):
    """RTE fine-tuned from a gs:// init checkpoint on gs:// GLUE files into a
    gs:// workdir writes the same evaluation and test-prediction files, byte for
    byte, as the same run with local paths; `convert` turns the gs:// model
    into a local HF dir that transformers loads with our weights; `predict`
    reads the gs:// model (and a gs:// input file) and agrees with the local one."""
    import test_finetune_common as common
    from conftest import data_path
    from test_finetune_glue import finetune_cli
    env = dict(common.cli_env(JAX_CACHE_DIR), STORAGE_EMULATOR_HOST=gcs.url,
               BERT_JAX_CACHE=os.environ["BERT_JAX_CACHE"])
    glue = data_path("glue")
    local_init = common.save_tiny_model(tmp_path / "init")
    gs_init = paths.join(gcs.bucket, "ft", "init")
    common.save_tiny_model(gs_init)  # the same seed: the same weights, written by orbax to gs
    gs_glue = paths.join(gcs.bucket, "ft", "glue")
    paths.upload_tree(glue / "RTE", paths.join(gs_glue, "RTE"))
    args = ("--config.max_train_examples=64", "--config.num_epochs=1")
    local, url = tmp_path / "rte", paths.join(gcs.bucket, "ft", "rte")
    finetune_cli("rte", local, local_init, glue, env, *args)
    finetune_cli("rte", url, gs_init, gs_glue, env, *args)
    for rel in ("eval/epoch_1/dev/eval_results.json", "eval/epoch_1/dev/predictions.tsv",
                "test_predictions/RTE.tsv", "model/vocab.txt"):
        assert paths.read_bytes(paths.join(url, rel)) == (local / rel).read_bytes(), rel
    # The model's metadata differs only in the paths its task config names.
    metas = [json.loads(paths.read_text(paths.join(d, "model", "bert_jax.json")))
             for d in (url, local)]
    assert metas[0]["task"]["config"]["init_checkpoint"] == gs_init
    assert [{k: v for k, v in m.items() if k != "task"} for m in metas] == [
        {k: v for k, v in metas[1].items() if k != "task"}] * 2
    assert [r["step"] for r in gs_records(url) if "loss" in r] == [2]

    hf = tmp_path / "hf"
    r = common.run_module("bert_jax.convert", paths.join(url, "model"), str(hf), "--to=hf",
                          env=env)
    common.check_ok(r)
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForSequenceClassification.from_pretrained(hf)
    from bert_jax.convert import formats
    _, meta, flat = formats.load_flat(local / "model")
    assert model.config.id2label == dict(enumerate(meta["label_names"]))
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy(),
                                  flat["classifier/kernel"].T)

    rows = common.read_tsv(glue / "RTE" / "dev.tsv")[1:4]
    pairs = "".join(f"{r[1]}\t{r[2]}\n" for r in rows)
    paths.write_text(paths.join(gcs.bucket, "ft", "pairs.txt"), pairs)
    (tmp_path / "pairs.txt").write_text(pairs)
    outs = []
    for ckpt, inp in ((url, paths.join(gcs.bucket, "ft", "pairs.txt")),
                      (local, tmp_path / "pairs.txt")):
        r = common.run_module("bert_jax.predict", f"--checkpoint={ckpt}", f"--input={inp}",
                              "--json", env=env)
        common.check_ok(r)
        outs.append(r.stdout)
    assert len(outs[0].splitlines()) == 3 and outs[0] == outs[1]


# ---------------------------------------------------------------- data preparation


def test_prepare_from_bucket_into_bucket(gcs, tiny_pretraining_data, tmp_path):
    """`data.prepare` with the corpus, the vocab and --out all in the bucket
    writes the same shards (same data fingerprint, same arrays) as with local
    paths, and the pipeline opens the result from the bucket."""
    from conftest import data_path

    from bert_jax.data import token_cache
    from bert_jax.data.pipeline import PretrainingPipeline
    novel = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[6]
    lines = novel.read_text().splitlines()
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(2):
        (texts / f"{i}.txt").write_text("\n".join(lines[300 * i:300 * i + 250]))
    src = paths.join(gcs.bucket, "prep-src")
    paths.upload_tree(texts, paths.join(src, "texts"))
    paths.copy_file(tiny_pretraining_data["vocab"], paths.join(src, "vocab.txt"))
    out = paths.join(gcs.bucket, "prep-out")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    for corpus, vocab, dst in ((f"raw:{src}/texts", f"{src}/vocab.txt", out),
                               (f"raw:{texts}", str(tiny_pretraining_data["vocab"]),
                                str(tmp_path / "local"))):
        r = subprocess.run([sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus}",
                            f"--vocab={vocab}", f"--out={dst}", "--num_workers=1"], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    remote = json.loads(paths.read_text(paths.join(out, token_cache.MANIFEST)))
    local = json.loads((tmp_path / "local" / token_cache.MANIFEST).read_text())
    assert remote["data_fingerprint"] == local["data_fingerprint"]
    assert remote["totals"] == local["totals"] and len(remote["shards"]) == 2
    a, b = token_cache.open_prepared(out), token_cache.open_prepared(tmp_path / "local")
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(x, y)
    pipe = PretrainingPipeline.from_config(
        {"prepared_dir": out, "max_seq_length": 32, "max_predictions_per_seq": 5},
        global_batch_size=4)
    assert pipe.batch(0)["input_ids"].shape == (4, 32)


# ---------------------------------------------------------------- faults

# Runs the real CLI; SIGKILLs the process `pid` (the GCS server) right after
# the asynchronous save of step `step` has started. TensorStore's GCS retries
# (32 tries, backoff up to 32 s: about a quarter of an hour against a dead
# server) are cut to 3 tries for the test; gcsfs keeps its own (about 30 s).
STOP_SERVER_HOOK = """
import json, os, signal, sys, time
hook = json.loads(sys.argv.pop(1))
from absl import app
from orbax.checkpoint._src.serialization import tensorstore_utils
from bert_jax import pretrain
from bert_jax.train import checkpointing
for ctx in (tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT, tensorstore_utils._BASE_TS_CONTEXT):
    ctx["gcs_request_retries"] = {"max_retries": 3, "initial_delay": "0.2s", "max_delay": "1s"}
# gcsfs's too (metrics, summary, lock): 2 tries instead of 6, whose backoff
# (1 + 2 + 4 + 8 + 16 s) kept the dead server's run waiting ~30 s, half this test.
import gcsfs, gcsfs.retry
for name in ("_request", "_get_file_request", "_get_file_concurrent"):
    method = getattr(gcsfs.GCSFileSystem, name)
    setattr(gcsfs.GCSFileSystem, name, gcsfs.retry.retry_request(retries=2)(method.__wrapped__))
save = checkpointing.Checkpointer.save

def first_object(step_dir, timeout=120):
    # An object the server finished (its metadata attribute set): the kill
    # then lands mid-save with part of the step written, every time.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for dirpath, _, files in os.walk(step_dir):
            for f in files:
                try:
                    if "user.metadata" in os.listxattr(os.path.join(dirpath, f)):
                        return
                except FileNotFoundError:  # renamed or replaced meanwhile
                    pass
        time.sleep(0.005)
    raise SystemExit(f"no object of the save appeared under {step_dir}")

def hooked_save(self, step, *args, **kwargs):
    out = save(self, step, *args, **kwargs)
    if step == hook["step"]:
        first_object(hook["step_dir"])
        os.kill(hook["pid"], signal.SIGKILL)
    return out

checkpointing.Checkpointer.save = hooked_save
from bert_jax import cli
cli.run(pretrain.main)  # as `python -m bert_jax.pretrain` runs it
"""


def test_missing_bucket_stops_before_any_compile(gs_cli, gcs):
    """A workdir or prepared data in a bucket that does not exist: one line
    naming it, exit 1, and no XLA compilation logged (JAX_LOG_COMPILES)."""
    for overrides, bad in (
            (("--workdir=gs://no-such-bucket-17/run",), "gs://no-such-bucket-17/run"),
            (("--config.data.prepared_dir=gs://no-such-bucket-17/prepared",),
             "gs://no-such-bucket-17/prepared")):
        workdir = paths.join(gcs.bucket, "never")
        proc = gs_cli(workdir, *overrides, expect_rc=1, extra_env={"JAX_LOG_COMPILES": "1"})
        assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == [
            f"error: {bad}: bucket gs://no-such-bucket-17 does not exist"]
        assert "Compiling" not in proc.stderr


def test_server_stopped_during_save(cli, gs_cli, straight, tiny_pretraining_data, tmp_path,
                                    monkeypatch):
    """The GCS server dies while step 20 is being saved: the run ends with one
    error line naming the checkpoint URL and step (after the clients' retries);
    with the server back (same data), the rerun resumes from step 15, which the
    failed save did not touch, and logs every step once with the local run's
    numbers."""
    from bert_jax.devtools import gcs_emulator
    reference, _ = straight
    emu = gcs_emulator.GcsEmulator(tmp_path / "gcs").start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
        data = paths.join("gs://bert-jax-test", "prepared")
        for name in ("train", "heldout"):
            paths.upload_tree(tiny_pretraining_data[name], paths.join(data, name))
        url = "gs://bert-jax-test/run"
        hook = tmp_path / "hook.py"
        hook.write_text(STOP_SERVER_HOOK)
        command = cli.command(url, f"--config.data.prepared_dir={data}/train",
                              f"--config.eval_data.prepared_dir={data}/heldout")
        assert command[1:3] == ["-m", "bert_jax.pretrain"]
        step_dir = emu.root / "data" / "bert-jax-test" / "run" / "checkpoints" / str(STEPS)
        command[1:3] = [str(hook), json.dumps({"step": STEPS, "pid": emu.proc.pid,
                                               "step_dir": str(step_dir)})]
        env = cli.env(8, STORAGE_EMULATOR_HOST=emu.url,
                      BERT_JAX_CACHE=str(tmp_path / "cache"))
        proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 1, proc.stderr[-3000:]
        [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: {url}/checkpoints: saving checkpoint step {STEPS} "
                               "failed (")
        emu.stop()
        # Same root and port: the objects written before are served again, less
        # any the kill left half-written (gcs_emulator.drop_unfinished_uploads).
        emu.start()
        # Step 20 was started (some objects exist) but never committed.
        assert gs_steps(url) == [5, 10, 15] and gs_steps(url, committed=False) == [
            5, 10, 15, 20]
        proc = gs_cli(url, f"--config.data.prepared_dir={data}/train",
                      f"--config.eval_data.prepared_dir={data}/heldout",
                      extra_env={"STORAGE_EMULATOR_HOST": emu.url}, fork=False)
        assert f"resumed from {url} at step 15" in proc.stdout
        assert gs_steps(url) == [5, 10, 15, 20]
        assert_same_gs_metrics(url, reference)
    finally:
        emu.stop()


def test_restarted_emulator_drops_half_written_objects(tmp_path, monkeypatch):
    """An object file the killed server wrote without its metadata (what a
    SIGKILL between its two writes leaves) is not served after a restart, as
    an unfinished upload on GCS never becomes an object; the finished objects
    beside it are listed and read as before (without the fix fake-gcs-server
    answers 404 to the whole listing)."""
    from bert_jax.devtools import gcs_emulator
    emu = gcs_emulator.GcsEmulator(tmp_path / "gcs").start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
        base = "gs://bert-jax-test/ckpt"
        for step in (5, 20):
            paths.write_text(paths.join(base, str(step), "a"), f"step {step}")
        paths.write_text(paths.join(base, "20", "b"), "half")
        emu.stop()
        half = emu.root / "data" / "bert-jax-test" / "ckpt" / "20" / "b"
        os.removexattr(half, gcs_emulator.METADATA_XATTR)
        emu.start()
        assert not half.exists()
        assert paths.listdir(base) == ["20", "5"]
        assert paths.listdir(paths.join(base, "20")) == ["a"]
        assert paths.read_text(paths.join(base, "20", "a")) == "step 20"
    finally:
        emu.stop()


# ---------------------------------------------------------------- multi-process


def test_two_processes_into_one_bucket_workdir_and_resume(cli, gcs, gs_data, straight):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1) pretrain into
    one gs:// workdir, both SIGKILLed right after the step-15 save started;
    rerun, they resume from the newest committed step and finish with the
    single-process local run's losses; only process 0 logs, once per step."""
    reference, _ = straight
    url = paths.join(gcs.bucket, "run-2proc")

    def launch(hook=None):
        return test_pretrain.run_two_processes(
            cli, url, f"--config.data.prepared_dir={gs_data['train']}",
            "--config.eval_data.prepared_dir=", hook=hook, STORAGE_EMULATOR_HOST=gcs.url,
            BERT_JAX_CACHE=os.environ["BERT_JAX_CACHE"])

    first = launch(hook={"kill_in_save": 15})
    assert first[0][0] == -9, first[0][2][-3000:]
    assert 10 in gs_steps(url)
    second = launch()
    for rc, _, err in second:
        assert rc == 0, err[-3000:]
    resumed = int(second[0][1].split(f"resumed from {url} at step ")[1].split()[0])
    assert resumed in (10, 15)
    assert gs_steps(url) == [5, 10, 15, 20]
    got = [r for r in gs_records(url) if "loss" in r]
    ref = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    ref = [r for r in ref if "loss" in r]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(got, ref):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    assert json.loads(paths.read_text(paths.join(url, "summary.json")))[
        "num_processes"] == 2
