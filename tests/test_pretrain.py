"""Pretraining end to end through `python -m bert_jax.pretrain`, as a user runs it.

One 20-step run on 8 fake CPU devices (with held-out evaluation) is the
reference. Against it: a run that is SIGTERM'd, rerun, SIGKILL'd while a save
is in flight and rerun again (bitwise equal state, each step logged once); a
run whose batch turns NaN; workdirs whose newest checkpoint was damaged; two
processes x 4 devices joined by jax.distributed; restoring onto another mesh;
plots and fill-mask from the reference workdir. Crashes and signals come from
a test hook (HOOK below) that wraps the real CLI at a chosen step, so each is
deterministic. All runs share the suite's persistent compilation cache
(conftest.py; test_gcs runs the same programs): only the
first run of each device layout compiles (with XLA's backend optimizations
off, which halves compile time; the properties under test do not depend on
codegen).
"""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import forked_cli
import jax
import numpy as np
import pytest
from conftest import JAX_CACHE_DIR

from bert_jax.train import checkpointing

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
# Fields of a metrics.jsonl record that depend on wall time, not on the numbers.
TIMING = {"step_time", "steps_per_sec", "sequences_per_sec", "tokens_per_sec", "real_tokens_per_sec", "mfu",
          "includes_compile"}

# Runs the real CLI with hooks at given steps: kill_in_save (SIGKILL right after
# that step's asynchronous save was started), term_at / int_at (SIGTERM / one
# Ctrl-C = SIGINT after that step's metrics were written), int_twice_at (two
# Ctrl-C there), nan_at (that step's batch gets NaN MLM weights).
HOOK = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    hook = json.loads(sys.argv.pop(1))
    from absl import app
    from bert_jax import pretrain
    from bert_jax.train import checkpointing
    from bert_jax.train.step import MetricWriter, state_spec
    from bert_jax.data.pipeline import PretrainingPipeline

    save, write, batch = (checkpointing.Checkpointer.save, MetricWriter.write,
                          PretrainingPipeline.batch)

    def hooked_save(self, step, *args, **kwargs):
        out = save(self, step, *args, **kwargs)
        rank = int(os.environ.get("BERT_JAX_PROCESS_ID", "0"))
        if step == hook.get("kill_in_save") and rank == hook.get("kill_rank", rank):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def hooked_write(self, step, metrics, prefix=""):
        write(self, step, metrics, prefix)
        if step == hook.get("term_at") and not prefix:
            os.kill(os.getpid(), signal.SIGTERM)
        if step in (hook.get("int_at"), hook.get("int_twice_at")) and not prefix:
            os.kill(os.getpid(), signal.SIGINT)
        if step == hook.get("int_twice_at") and not prefix:
            os.kill(os.getpid(), signal.SIGINT)

    def hooked_batch(self, step):
        b = batch(self, step)
        if step == hook.get("nan_at"):
            b["masked_weights"] = np.full_like(b["masked_weights"], np.nan)
        return b

    checkpointing.Checkpointer.save = hooked_save
    MetricWriter.write = hooked_write
    PretrainingPipeline.batch = hooked_batch
    from bert_jax import cli
    cli.run(pretrain.main)  # as `python -m bert_jax.pretrain` runs it
""")


@pytest.fixture(scope="module")
def cli(tmp_path_factory, tiny_pretrain_args, tiny_pretraining_data):
    """run(workdir, *overrides, hook=None, devices=8, extra_env=None) -> CompletedProcess."""
    tmp = tmp_path_factory.mktemp("pretrain_cli")
    (tmp / "hook.py").write_text(HOOK)
    # XLA's backend optimizations off: half the compile time, and every run
    # compared here is compiled the same way.
    base_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                    JAX_DISABLE_MOST_OPTIMIZATIONS="true",
                    JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    args = [*tiny_pretrain_args,
            f"--config.eval_data.prepared_dir={tiny_pretraining_data['heldout']}",
            "--config.eval_every=10", "--config.eval_batches=2"]

    def command(workdir, *overrides, hook=None):
        head = [str(tmp / "hook.py"), json.dumps(hook)] if hook else ["-m", "bert_jax.pretrain"]
        return [sys.executable, *head, *args, f"--workdir={workdir}", *overrides]

    def env(devices=8, **extra):
        return dict(base_env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                    **extra)

    def run(workdir, *overrides, hook=None, devices=8, expect_rc=0):
        # Forked from a server that imported JAX (tests/forked_cli.py): the run
        # pays for its own work, not for the imports.
        proc = forked_cli.run_argv(command(workdir, *overrides, hook=hook)[1:],
                                   env(devices), str(REPO), timeout=600)
        assert proc.returncode == expect_rc, proc.stderr[-4000:]
        return proc

    run.command, run.env = command, env
    return run


@pytest.fixture(scope="module")
def straight(cli, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    proc = cli(workdir)
    return workdir, proc


def records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text()
            .splitlines()]


def train_records(workdir):
    return [r for r in records(workdir) if "loss" in r]


def numbers(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


def state(workdir, step):
    return checkpointing.load_state_on_host(workdir, step)


def flat(tree):
    """{'a/0/b': array} for any mix of dicts (int or str keys), lists and tuples."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                     for k in path): np.asarray(x) for path, x in leaves}


def assert_bitwise_equal(a, b):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def assert_same_metrics(workdir, reference, steps=range(1, STEPS + 1)):
    """Every step logged exactly once, with the reference run's numbers."""
    got = records(workdir)
    train = [r["step"] for r in got if "loss" in r]
    assert train == list(steps)
    ref = {(r["step"], "loss" in r): numbers(r) for r in records(reference)}
    for r in got:
        assert numbers(r) == ref[(r["step"], "loss" in r)]


# ---------------------------------------------------------------- the reference run


def test_straight_run_outputs(straight):
    workdir, proc = straight
    recs = records(workdir)
    train = train_records(workdir)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    evals = [r for r in recs if "eval_mlm_loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    for r in evals:
        assert 0 <= r["eval_mlm_accuracy"] <= 1 and 0 <= r["eval_nsp_accuracy"] <= 1
        assert r["eval_mlm_perplexity"] == pytest.approx(np.exp(r["eval_mlm_loss"]), rel=1e-9)
    for r in train:
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["nsp_loss"], rel=1e-5)
        assert r["sequences_per_sec"] > 0 and np.isfinite(r["grad_norm"])
    # 20 steps at lr 1e-3 learn something: the MLM loss drops.
    assert np.mean([r["mlm_loss"] for r in train[-5:]]) < np.mean(
        [r["mlm_loss"] for r in train[:5]]) - 0.1
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [5, 10, 15, 20]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == STEPS and summary["num_devices"] == 8
    assert f"final loss {train[-1]['loss']:.9g} at step {STEPS}" in proc.stdout
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    for name in ("bert_jax.json", "vocab.txt", "config.json"):
        assert (workdir / name).exists()


def test_bad_settings_stop_before_training(tiny_pretraining_data, tmp_path):
    """Held-out data prepared with another vocabulary, or a batch that gradient
    accumulation cannot split: one-line errors naming the setting, before any
    compilation."""
    from conftest import data_path

    from bert_jax import pretrain
    from bert_jax.data.prepare import prepare_corpus
    from configs.pretrain import bert_tiny
    novel = sorted(data_path("corpus", "eltec-eng").glob("*.txt"))[5]
    lines = novel.read_text().splitlines()
    for i, name in enumerate(("a.txt", "b.txt")):
        (tmp_path / name).write_text("\n".join(lines[200 * i:200 * i + 150]))
    other = tmp_path / "other_vocab"
    prepare_corpus(f"raw:{tmp_path / 'a.txt'},raw:{tmp_path / 'b.txt'}",
                   data_path("vocab", "bert-base-uncased", "vocab.txt"), other, num_workers=1,
                   progress=False)
    config = bert_tiny.get_config("runlocal")
    config.data.prepared_dir = str(tiny_pretraining_data["train"])
    config.eval_data.prepared_dir = str(other)
    with pytest.raises(ValueError, match=f"eval_data.prepared_dir={other} was prepared with "
                                         "another vocabulary"):
        pretrain.train(config, tmp_path / "w")
    config.eval_data.prepared_dir = ""
    config.grad_accum_steps = 3
    with pytest.raises(ValueError, match="global_batch_size=16 is not a multiple of "
                                         "grad_accum_steps=3"):
        pretrain.train(config, tmp_path / "w")


# ---------------------------------------------------------------- crash, signal, NaN


def test_preempted_then_crashed_run_resumes_exactly(cli, straight, tmp_path):
    """A run preempted (SIGTERM) and then killed (SIGKILL) ends bitwise equal to
    the uninterrupted run, with every step logged once:
    1. SIGTERM after step 7: the step in progress (8) is saved, exit 75
       ("preempted, rerun to continue");
    2. the rerun resumes from 8 and is killed while the step-15 save is in
       flight (step 10's is final);
    3. the rerun resumes from 10, never from the half-written 15, drops the
       log lines after 10 and redoes them."""
    reference, _ = straight
    proc = cli(tmp_path, hook={"term_at": 7}, expect_rc=75)
    assert "preemption: saved step 8" in proc.stderr + proc.stdout
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [5, 8]
    assert json.loads((tmp_path / "summary.json").read_text())["preempted_at"] == 8
    assert int(state(tmp_path, 8)["step"]) == 8

    proc = cli(tmp_path, hook={"kill_in_save": 15}, expect_rc=-9)
    assert f"resumed from {tmp_path} at step 8" in proc.stdout
    assert [r["step"] for r in train_records(tmp_path)] == list(range(1, 16))
    final = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    # Step 15's save was cut short, unless (a scheduling fluke) it finished
    # between save() returning and the kill: then resuming from it is right.
    assert final in ([5, 8, 10], [5, 8, 10, 15])

    proc = cli(tmp_path)
    assert f"resumed from {tmp_path} at step {final[-1]}" in proc.stdout
    assert not list((tmp_path / "checkpoints").glob("*tmp*"))
    assert_bitwise_equal(state(tmp_path, STEPS), state(reference, STEPS))
    assert_same_metrics(tmp_path, reference)


def test_ctrl_c_saves_then_resumes_exactly(cli, straight, tmp_path):
    """Ctrl-C (SIGINT) after step 6 saves the step in flight (7) like SIGTERM and
    exits 75; the rerun ends bitwise equal to the uninterrupted run. Two Ctrl-C
    after step 12 abort at once: exit 130, nothing saved after step 10, and the
    dead run's lock record is taken over (with a warning) by the rerun, which
    also ends bitwise equal."""
    reference, _ = straight
    once, twice = tmp_path / "once", tmp_path / "twice"
    proc = cli(once, hook={"int_at": 6}, expect_rc=75)
    assert "interrupted: saved step 7; rerun the same command" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(int(p.name) for p in (once / "checkpoints").iterdir()) == [5, 7]
    assert json.loads((once / "summary.json").read_text())["preempted_at"] == 7
    assert int(state(once, 7)["step"]) == 7
    proc = cli(once)
    assert f"resumed from {once} at step 7" in proc.stdout
    assert_bitwise_equal(state(once, STEPS), state(reference, STEPS))
    assert_same_metrics(once, reference)

    proc = cli(twice, hook={"int_twice_at": 12}, expect_rc=130)
    assert "aborted: second Ctrl-C" in proc.stderr
    kept = sorted(int(p.name) for p in (twice / "checkpoints").iterdir() if p.name.isdigit())
    # Step 10's asynchronous save may still have been in flight: the abort does
    # not wait for it, and orbax never lists a save cut short.
    assert kept in ([5], [5, 10])
    proc = cli(twice)
    assert f"warning: {twice}: taking over from a run that ended without releasing it" in \
        proc.stderr
    assert f"resumed from {twice} at step {kept[-1]}" in proc.stdout
    assert_bitwise_equal(state(twice, STEPS), state(reference, STEPS))


def test_second_run_on_a_busy_workdir_stops(cli, tmp_path):
    """While a run holds the workdir, a second one stops before compiling with
    one line naming the holder's pid and host; it leaves the workdir as it was."""
    import socket
    workdir = tmp_path / "w"
    workdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bert_jax.storage.workdir_lock import "
         "WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); "
         "time.sleep(120)", str(workdir)],
        env=cli.env(1), cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = cli(workdir, expect_rc=1)
    finally:
        holder.kill()
        holder.wait()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir}: in use by another run (pid {holder.pid} on "
                           f"{socket.gethostname()} since ")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [".bert_jax.lock"]


def test_packed_run_trains_and_resumes_exactly(cli, tmp_path):
    """data.packing=3 through the CLI on 8 devices: packed rows train and
    evaluate (finite losses), and a preempted packed run resumes bitwise equal
    to the straight one (the packed stream is a pure function of the step)."""
    packed = ("--config.data.packing=3", "--config.num_train_steps=10")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli(straight, *packed)
    train = train_records(straight)
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in train)
    evals = [r for r in records(straight) if "eval_mlm_loss" in r]
    assert [r["step"] for r in evals] == [10] and np.isfinite(evals[0]["eval_mlm_loss"])
    proc = cli(resumed, *packed, hook={"term_at": 3}, expect_rc=75)
    assert "preemption: saved step 4" in proc.stderr + proc.stdout
    proc = cli(resumed, *packed)
    assert f"resumed from {resumed} at step 4" in proc.stdout
    assert_bitwise_equal(state(resumed, 10), state(straight, 10))
    assert_same_metrics(resumed, straight, steps=range(1, 11))


def test_nan_stops_naming_the_step_and_keeps_last_good_checkpoint(cli, straight, tmp_path):
    reference, _ = straight
    proc = cli(tmp_path, hook={"nan_at": 6}, expect_rc=1)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    [line] = errors
    assert "non-finite loss, gradient or update at step 7" in line
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [5]
    assert_bitwise_equal(state(tmp_path, 5), state(reference, 5))


# ---------------------------------------------------------------- restore


def abstract_state(workdir, mesh_shape):
    """The sharded abstract train state of the run in `workdir` (rebuilt from its
    config.json) on a mesh of `mesh_shape`."""
    from flax import nnx
    from ml_collections import ConfigDict

    from bert_jax.data.tokenizer import load_tokenizer
    from bert_jax.model import sharding
    from bert_jax.model.heads import BertForPreTraining
    from bert_jax.train import pretrain_job
    from bert_jax.train.optim import build_optimizer
    from bert_jax.train.step import state_spec

    config = ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))
    cfg = pretrain_job.bert_config(config, load_tokenizer(Path(workdir) / "vocab.txt").vocab_size)
    optimizer, _ = build_optimizer(config.optim, config.num_train_steps)
    mesh = sharding.make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
        spec = state_spec(lambda k: BertForPreTraining(cfg, rngs=nnx.Rngs(params=k)),
                                   optimizer, mesh)
    return spec.abstract


def restore_latest(workdir, mesh_shape):
    ckpt = checkpointing.Checkpointer(workdir, save_every=5)
    try:
        return ckpt.restore_latest(abstract_state(workdir, mesh_shape))
    finally:
        ckpt.close()


def test_restore_onto_another_mesh(straight):
    """Saved from a (8, 1, 1) mesh, restored onto (2, 2, 2): sharded there, same values."""
    reference, _ = straight
    step, restored, data_state = restore_latest(reference, (2, 2, 2))
    assert step == STEPS and data_state["step"] == STEPS
    emb = restored["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert emb.sharding.mesh.devices.shape == (2, 2, 2)
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert {s.data.shape for s in emb.addressable_shards} == {(1000, 16)}
    saved = state(reference, STEPS)
    assert_bitwise_equal(restored["params"], saved["params"])
    assert int(restored["step"]) == STEPS


# The OCDBT b-tree file the state's manifest points to, the manifest itself,
# and the data-iterator state: each is read by every restore. (Files under
# ocdbt.process_0/d may be superseded by later writes, so damaging one of
# them need not matter.)
DAMAGE = {
    "truncated b-tree": ("truncate", "state/d/*"),
    "deleted manifest": ("delete", "state/manifest.ocdbt"),
    "deleted data state": ("delete", "data/metadata"),
}


# A failed restore can leave a tensorstore callback on orbax's closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_falls_back(cli, straight, tmp_path, damage, capsys):
    """A truncated or deleted file in the newest checkpoint: restore warns and
    takes the previous complete one."""
    reference, _ = straight
    workdir = tmp_path / "w"
    shutil.copytree(reference, workdir)
    how, pattern = DAMAGE[damage]
    [victim] = (workdir / "checkpoints" / str(STEPS)).glob(pattern)
    if how == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        # Through the CLI: warns, resumes from 15 and redoes 16..20 exactly.
        proc = cli(workdir)
        assert f"warning: checkpoint step {STEPS} is unreadable" in proc.stderr
        assert f"resumed from {workdir} at step 15" in proc.stdout
        assert_bitwise_equal(state(workdir, STEPS), state(reference, STEPS))
        assert_same_metrics(workdir, reference)
    else:
        victim.unlink()
        step, restored, data_state = restore_latest(workdir, (8, 1, 1))
        assert f"warning: checkpoint step {STEPS} is unreadable" in capsys.readouterr().err
        assert step == 15 and data_state["step"] == 15
        assert_bitwise_equal(restored["params"], state(reference, 15)["params"])
    # The damaged step is moved aside (a later save of step 20 needs the name).
    [aside] = (workdir / "checkpoints_unreadable").iterdir()
    assert aside.name.startswith(f"{STEPS}-") and (aside / pattern.split("/")[0]).is_dir()


# ---------------------------------------------------------------- multi-process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(cli, workdir, *overrides, hook=None, **env):
    """The CLI as 2 processes x 4 CPU devices joined by jax.distributed on
    127.0.0.1; [(returncode, stdout, stderr)] per process."""
    port = _free_port()

    def one(rank):
        # Forked like cli() (tests/forked_cli.py): the server never created a
        # backend or joined jax.distributed, so each child does both itself.
        return forked_cli.run_argv(
            cli.command(workdir, *overrides, hook=hook)[1:],
            cli.env(4, BERT_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    BERT_JAX_NUM_PROCESSES="2", BERT_JAX_PROCESS_ID=str(rank), **env),
            str(REPO), timeout=600)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(one, (0, 1)))
    return [(p.returncode, p.stdout, p.stderr) for p in procs]


def test_two_processes_match_one(cli, straight, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed, gloo) = 1 process x 8 devices:
    the same losses at every step; only process 0 logs; checkpoints are written
    collectively and restore."""
    reference, _ = straight
    results = run_two_processes(cli, tmp_path, "--config.eval_data.prepared_dir=")
    outs = [(out, err) for _, out, err in results]
    for rc, _, err in results:
        assert rc == 0, err[-4000:]
    got, ref = train_records(tmp_path), train_records(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # written once
    for a, b in zip(got, ref):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    finals = [re.search(r"final loss (\S+) at step 20 \(process (\d) of 2\)", out)
              for out, _ in outs]
    assert [m.group(2) for m in finals] == ["0", "1"]
    assert finals[0].group(1) == finals[1].group(1)
    assert float(finals[0].group(1)) == pytest.approx(ref[-1]["loss"], rel=1e-5)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [5, 10, 15, 20]
    assert json.loads((tmp_path / "summary.json").read_text())["num_processes"] == 2
    got, ref = flat(state(tmp_path, STEPS)["params"]), flat(state(reference, STEPS)["params"])
    assert got.keys() == ref.keys()
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_dead_peer_stops_the_other_with_one_line_and_both_resume(cli, straight, tmp_path):
    """kill -9 of process 1 in the middle of a run (right after it started saving
    step 10): process 0 stops by itself within the heartbeat timeout with one
    `error:` line (it hung in the checkpoint barrier, or was aborted with a page
    of C++ output), and rerunning both processes resumes and ends as one
    uninterrupted run does."""
    reference, _ = straight
    t = time.monotonic()
    results = run_two_processes(cli, tmp_path, "--config.eval_data.prepared_dir=",
                                hook={"kill_in_save": 10, "kill_rank": 1},
                                BERT_JAX_HEARTBEAT_TIMEOUT_S="10")
    (rc0, _, err0), (rc1, _, _) = results
    assert rc1 == -signal.SIGKILL
    assert rc0 == 1, err0[-3000:]
    errors = [line.strip() for line in re.split(r"[\r\n]", err0)
              if "error" in line.lower() and not line.startswith("[Gloo]")]
    assert errors == ["error: process 1 of 2 stopped (no heartbeat for 10 s); process 0 "
                      "stops too: rerun all 2 processes to resume from the newest checkpoint"]
    assert time.monotonic() - t < 400
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) <= 10
    results = run_two_processes(cli, tmp_path, "--config.eval_data.prepared_dir=")
    for rc, _, err in results:
        assert rc == 0, err[-4000:]
    got, ref = train_records(tmp_path), train_records(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # each step once
    for a, b in zip(got, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]


# ---------------------------------------------------------------- plot and fill-mask


def test_plot_writes_png_of_all_curves(straight, tmp_path):
    import matplotlib.image

    from bert_jax import plot
    reference, _ = straight
    out = tmp_path / "curves.png"
    drawn = plot.plot_curves(plot.read_metrics(reference / "metrics.jsonl"), out)
    assert {"loss", "mlm_loss", "nsp_loss", "eval_mlm_loss", "eval_nsp_loss"} <= set(
        drawn["loss"])
    assert {"mlm_accuracy", "nsp_accuracy", "eval_mlm_accuracy", "eval_nsp_accuracy"} <= set(
        drawn["accuracy"])
    assert drawn["throughput"] == ["sequences_per_sec"] and drawn["learning rate"] == ["lr"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape == (800, 1200, 4) and image[..., :3].std() > 0.05
    assert not list(tmp_path.glob(".*tmp"))


def test_plot_cli_and_bad_input(straight, tmp_path):
    reference, _ = straight
    workdir = tmp_path / "w"
    workdir.mkdir()
    lines = (reference / "metrics.jsonl").read_text().splitlines()
    # A run killed mid-line leaves a cut last line: still plotted.
    (workdir / "metrics.jsonl").write_text("\n".join(lines[:5] + [lines[5][:17]]))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *a: subprocess.run([sys.executable, "-m", "bert_jax.plot", *a], env=env,
                                    capture_output=True, text=True, timeout=120)
    proc = run(str(workdir))
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (workdir / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", lines[1]]))
    proc = run(str(workdir), f"--out={tmp_path / 'x.png'}")
    assert proc.returncode == 1 and not (tmp_path / "x.png").exists()
    assert proc.stderr.strip() == f"error: {workdir / 'metrics.jsonl'}:2: not a JSON object " \
        "(Expecting property name enclosed in double quotes)"
    proc = run(str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "metrics.jsonl: no such file" in proc.stderr


TEXTS = ["It was a dark and stormy [MASK], and the rain fell in torrents.",
         "She opened the [MASK] and looked out at the [MASK] garden."]


def test_fill_mask_matches_transformers(straight, tmp_path):
    """Our checkpoint exported to HF: transformers' BertForMaskedLM gives the same
    softmax at every [MASK] as we do on the workdir, our model dir and the HF dir."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from bert_jax import fill_mask
    from bert_jax.convert import formats as convert
    reference, _ = straight
    convert.convert(reference, tmp_path / "hf", to="hf")
    convert.convert(reference, tmp_path / "ours", to="bert_jax")

    hf_tok = transformers.BertTokenizer(str(tmp_path / "hf" / "vocab.txt"), do_lower_case=True)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    expected = []
    for text in TEXTS:
        enc = hf_tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = hf(**enc).logits[0]
        at = enc["input_ids"][0] == hf_tok.mask_token_id
        expected.append(torch.softmax(logits[at], -1).numpy())

    for source in (reference, tmp_path / "ours", tmp_path / "hf"):
        model, tok = fill_mask.load(source)
        got = fill_mask.mask_probabilities(model, tok, TEXTS)
        for g, e in zip(got, expected):
            assert g.shape == e.shape == (e.shape[0], tok.vocab_size)
            np.testing.assert_allclose(g, e, atol=1e-6, rtol=1e-4)
    # The CLI (here on our model dir) prints the top tokens of each [MASK] with
    # HF's probabilities.
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.fill_mask", f"--checkpoint={tmp_path / 'ours'}",
         *TEXTS, "--top_k=3"], env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("  [MASK]")]
    assert len(rows) == 3
    for row, probs in zip(rows, [p for e in expected for p in e]):
        best = np.argsort(-probs)[:3]
        want = "  ".join(f"{hf_tok.convert_ids_to_tokens(int(i))} {probs[i]:.4f}" for i in best)
        assert row.split(": ", 1)[1] == want


def test_fill_mask_errors(tmp_path, straight):
    from bert_jax import fill_mask
    reference, _ = straight
    with pytest.raises(ValueError, match=r"text 2 \('no mask here'\) has no \[MASK\] token"):
        fill_mask.fill_mask(reference, ["a [MASK] b", "no mask here"])
    # A bare encoder (HF BertModel) has no MLM head to predict with.
    from bert_jax.convert import formats, hf_format, model_dir
    cfg, _, flat = formats.load_flat(reference)
    enc = tmp_path / "encoder"
    enc.mkdir()
    hf_format.write_hf_dir(enc, cfg, {k: v for k, v in flat.items() if k.startswith("bert/")},
                           "encoder")
    model_dir.copy_vocab(reference / "vocab.txt", enc)
    with pytest.raises(ValueError, match="no MLM head to fill masks with"):
        fill_mask.load(enc)
