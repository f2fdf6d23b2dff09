"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Order: explicit flags/config; BERT_JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES /
_PROCESS_ID (set by launch/slurm.sbatch); otherwise let JAX detect the cluster
(TPU VM pod slices, SLURM, ...). A single process with none of these set runs
without initializing.

A process of the job that dies (kill -9, a lost VM) must not leave the others
hanging in a collective or a checkpoint barrier, nor kill them with a page of
C++ fatal-error output. So the job runs in JAX's recoverable mode (the
coordination service does not abort every task when one fails) and each
process watches the others' heartbeats (`_Watchdog`): when a peer has stopped
without finishing, it prints one line and exits 1 within about
HEARTBEAT_TIMEOUT_S; rerunning all processes resumes from the newest
checkpoint. A process that finishes says so in the coordination service's
key-value store before it leaves, and process 0 (which hosts the service)
waits for the others to leave before it exits, so a clean end is not taken
for a death. (When process 0 itself dies, the service is gone and JAX's
client ends the other processes at once with its own message.)
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
from tqdm import tqdm

# Seconds without a heartbeat after which JAX declares a process dead (JAX's
# default is 100; heartbeats come from a gRPC thread, so a long compile or a
# loaded host does not delay them).
HEARTBEAT_TIMEOUT_S = int(os.environ.get("BERT_JAX_HEARTBEAT_TIMEOUT_S", "30"))
_DONE_KEY = "bert_jax/finished/{}"
_watchdog: _Watchdog | None = None


def _cluster_detected() -> bool:
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
    addr = coordinator_address or os.environ.get("BERT_JAX_COORDINATOR_ADDRESS", "")
    if not addr and not _cluster_detected():
        return
    jax.config.update("jax_enable_recoverability", True)
    if addr:
        n = num_processes or int(os.environ["BERT_JAX_NUM_PROCESSES"])
        pid = process_id if process_id >= 0 else int(os.environ["BERT_JAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    else:
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    if jax.process_count() > 1:
        global _watchdog
        _watchdog = _Watchdog()
        _watchdog.start()


def finished() -> None:
    """The command ended as planned (done or preempted, exit 0 / 75): the
    other processes must not take this one's exit for a death."""
    if _watchdog is not None:
        _watchdog.ok = True


def leave(code) -> None:
    """End a multi-process command (any exit code) without the interpreter's
    teardown; returns at once in a single-process run.

    Each process first runs the atexit handlers (the watchdog's `finish`:
    process 0 waits for the others; logging's flush; JAX's own) and leaves the
    coordination service in order (`jax.distributed.shutdown`), then exits
    with os._exit. The teardown it skips is where C++ threads (gRPC, the
    runtime's pools) still running could call back into an interpreter that
    is being dismantled: CI saw process 1 of a finished two-process run abort
    there ("terminate called after throwing an instance of ''", exit -6) after
    its work was done and written. Everything the run writes is closed by then
    (checkpoints, metrics, TensorBoard), and stdout/stderr are flushed here."""
    if _watchdog is None:
        return
    atexit._run_exitfuncs()
    try:
        jax.distributed.shutdown()
    except Exception:  # noqa: BLE001 - the service is already gone: nothing to leave
        pass
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader left
            pass
    os._exit(code or 0)


def _client():
    # JAX's own distributed client: only a multi-process run reaches here
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


class _Watchdog(threading.Thread):
    POLL_S = 2.0

    def __init__(self):
        super().__init__(daemon=True, name="bert_jax-peer-watchdog")
        self.me, self.n = jax.process_index(), jax.process_count()
        self.leaving = threading.Event()
        self.ok = False
        # Registered after JAX's own start-up, so it runs before JAX shuts
        # its client down (atexit is last-in, first-out).
        atexit.register(self.finish)

    def _finished(self, peer: int) -> bool:
        try:
            return _client().key_value_try_get(_DONE_KEY.format(peer)) is not None
        except Exception:  # noqa: BLE001 - NOT_FOUND: the peer has not finished
            return False

    def run(self) -> None:
        while not self.leaving.wait(self.POLL_S):
            try:
                live = set(_client().get_live_nodes(list(range(self.n))))
            except Exception:  # noqa: BLE001 - service unreachable: JAX's client reports it
                continue
            dead = [p for p in range(self.n) if p not in live and not self._finished(p)]
            if dead and not self.leaving.is_set():
                which = ", ".join(str(p) for p in dead)
                # tqdm.write: on a line of its own, not glued to the progress bar.
                tqdm.write(f"error: process {which} of {self.n} stopped (no heartbeat for "
                           f"{HEARTBEAT_TIMEOUT_S} s); process {self.me} stops too: rerun all "
                           f"{self.n} processes to resume from the newest checkpoint",
                           file=sys.stderr)
                sys.stderr.flush()
                os._exit(1)  # a collective may be blocked in C++: nothing to unwind

    def finish(self) -> None:
        """At exit: say this process finished; process 0 keeps the service up
        until the others have left (bounded)."""
        self.leaving.set()
        # Wait for the watchdog's own call into JAX's client to return: `leave`
        # shuts that client down next, and a daemon thread still inside a
        # GIL-releasing C++ call when the interpreter is torn down can abort
        # the process ("FATAL: exception not rethrown").
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5.0)
        try:
            client = _client()
            if self.ok:
                client.key_value_set(_DONE_KEY.format(self.me), "1")
            if self.me == 0:
                deadline = time.monotonic() + 2 * HEARTBEAT_TIMEOUT_S
                while time.monotonic() < deadline and \
                        set(client.get_live_nodes(list(range(self.n)))) - {0}:
                    time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the service is already gone
            pass
