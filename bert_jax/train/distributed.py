"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Order: explicit flags/config; BERT_JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES /
_PROCESS_ID (set by launch/slurm.sbatch); otherwise let JAX detect the cluster
(TPU VM pod slices, SLURM, ...). A single process with none of these set runs
without initializing.
"""

from __future__ import annotations

import os

import jax


def _cluster_detected() -> bool:
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
    addr = coordinator_address or os.environ.get("BERT_JAX_COORDINATOR_ADDRESS", "")
    if addr:
        n = num_processes or int(os.environ["BERT_JAX_NUM_PROCESSES"])
        pid = process_id if process_id >= 0 else int(os.environ["BERT_JAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    elif _cluster_detected():
        jax.distributed.initialize()
