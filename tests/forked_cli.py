"""`python -m bert_jax.<command> ...` without paying Python's and JAX's import
time for every case: each run is a fresh process forked from a server that has
imported NumPy, JAX, Flax, Optax, Orbax and the tokenizers once (this file run as a script), that runs
the command's module as `__main__` with its own argv, environment, working
directory and stdout/stderr, and exits with the code `python -m` would
(SystemExit's code; 1 and a traceback on an uncaught exception; atexit handlers
run). The bad-input matrix starts ~100 such processes: most of each one's 3-5 s
was importing JAX; forked, a case takes ~0.4 s.

A run whose environment changes what the preloaded modules read at import
(`JAX_*`, the storage emulator's host, ...: IMPORT_TIME) is forked from a
server started with that environment; one with another PYTHONPATH (its
sitecustomize runs at startup) runs as a real subprocess. XLA_FLAGS may differ:
XLA reads it when the first backend is created, which a server never does.

(multiprocessing's forkserver would do, but its children re-import the parent's
`__main__`: pytest's, when not under xdist.)"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback

# Imported once in the server. Never a bert_jax command: importing one defines
# its absl flags, and running it again as __main__ would define them twice.
PRELOAD = ["numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "tensorstore",
           "ml_collections", "absl.app", "absl.flags", "tokenizers", "safetensors.numpy", "tqdm"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ the server


def _child(req: dict) -> None:  # runs in the forked process, never returns
    signal.alarm(int(req["timeout"]))  # SIGALRM's default action ends a stuck case
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["out"]), (2, req["err"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    code = 0
    try:
        if req["module"]:  # `python -m module`: the working directory first on the path
            sys.path[:0] = [req["cwd"]]
            sys.argv = [req["module"], *req["args"]]
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        else:  # `python script.py`: the script's directory first
            sys.path[:0] = [os.path.dirname(os.path.abspath(req["script"]))]
            sys.argv = [req["script"], *req["args"]]
            runpy.run_path(req["script"], run_name="__main__")
    except KeyboardInterrupt:
        # The interpreter ends by the signal itself (exit status -SIGINT).
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    """Read one JSON request per stdin line, fork a child for each, write
    `<id> <exit code>` per finished child. Single-threaded, so that a fork
    never copies a lock another thread holds."""
    for name in PRELOAD:
        importlib.import_module(name)
    out = os.fdopen(os.dup(1), "w")
    out.write("ready\n")
    out.flush()
    children: dict[int, int] = {}
    buf, fd = b"", sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], 0.02 if children else None)
        if ready:
            data = os.read(fd, 1 << 16)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req)
                children[pid] = req["id"]
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            out.write(f"{children.pop(pid)} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()


# ------------------------------------------------------------------ the client


# Variables the preloaded modules read when imported: a run whose values differ
# gets a server of its own, started with them.
IMPORT_TIME = ("JAX_", "TPU_", "TENSORSTORE_", "GCSFS_", "FSSPEC_", "GOOGLE_",
               "STORAGE_EMULATOR_HOST", "XLA_PYTHON_")


def _key(env: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME)))


class _Server:
    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=REPO,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"forked_cli server did not start (exit {self.proc.wait()})")
        self.lock = threading.Lock()
        self.waiting: dict[int, concurrent.futures.Future] = {}
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            i, rc = map(int, line.split())
            with self.lock:
                fut = self.waiting.pop(i)
            fut.set_result(rc)

    def run(self, module, script, args, env, cwd, timeout) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            fut: concurrent.futures.Future = concurrent.futures.Future()
            with self.lock:
                i, self.next_id = self.next_id, self.next_id + 1
                self.waiting[i] = fut
                self.proc.stdin.write(json.dumps(dict(
                    id=i, module=module, script=script, args=list(args), env=dict(env),
                    cwd=str(cwd),
                    out=out, err=err, timeout=timeout)).encode() + b"\n")
                self.proc.stdin.flush()
            rc = fut.result()
            argv = [sys.executable, *(["-m", module] if module else [script]), *args]
            if rc == -signal.SIGALRM:
                raise subprocess.TimeoutExpired(argv, timeout)
            with open(out, errors="replace") as o, open(err, errors="replace") as e:
                return subprocess.CompletedProcess(argv, rc, o.read(), e.read())


_SERVERS: dict[tuple, _Server] = {}
_START = threading.Lock()


def run_argv(argv: list[str], env: dict[str, str], cwd: str,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([python, *argv], env=env, cwd=cwd, capture_output=True,
    text=True, timeout=timeout)` for argv `-m module args...` or `script
    args...`, forked when it can be: not with another PYTHONPATH (its
    sitecustomize runs at startup)."""
    if env.get("PYTHONPATH", REPO) != REPO or argv[0].startswith("-") and argv[0] != "-m":
        return subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
    module, script, args = (argv[1], None, argv[2:]) if argv[0] == "-m" else (
        None, argv[0], argv[1:])
    with _START:
        server = _SERVERS.get(_key(env))
        if server is None:
            server = _SERVERS[_key(env)] = _Server(dict(env))
    return server.run(module, script, args, env, cwd, timeout)


def run(module: str, args: list[str], env: dict[str, str], cwd: str,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m module args...` as `run_argv` runs it."""
    return run_argv(["-m", module, *args], env, cwd, timeout)


if __name__ == "__main__":
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))  # tests/ is not on a command's path
    sys.path.insert(0, REPO)
    _serve()
