"""Multi-process start-up: ``jax.distributed.initialize`` from flags or the launcher's environment.

Detected launchers: SLURM (``SLURM_NTASKS > 1``) and Open MPI (``OMPI_COMM_WORLD_SIZE > 1``),
both auto-configured by JAX; and a coordinator variable as Kubernetes/GKE job specs set it
(``JAX_COORDINATOR_ADDRESS`` or ``COORDINATOR_ADDRESS``, with ``NUM_PROCESSES`` and
``PROCESS_ID``). Flags ``--coordinator_address --num_processes --process_id`` override.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from typing import Mapping, Optional

import jax


class DistributedInitError(RuntimeError):
    """The processes of a multi-host run could not be brought together."""


def detect_launcher(env: Optional[Mapping[str, str]] = None) -> str:
    """Name of the launcher whose environment says there are several processes, or ''."""
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
        return "coordinator"
    return ""


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               timeout_s: int = 300) -> None:
    """Start JAX's distributed runtime when flags or the environment ask for several processes.

    CPU collectives use gloo, so several CPU processes (on one machine or
    several) run the same sharded program. A process that cannot reach the
    others fails after ``timeout_s`` with a message naming the coordinator.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address or num_processes > 1 or process_id >= 0:
        if not (coordinator_address and num_processes > 0 and 0 <= process_id < num_processes):
            raise DistributedInitError(
                "multi-host needs --coordinator_address=HOST:PORT, --num_processes=N and --process_id in [0, N); "
                f"got {coordinator_address!r}, {num_processes}, {process_id}")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    else:
        launcher = detect_launcher()
        if not launcher:
            return
        if launcher == "coordinator":
            missing = [v for v in ("NUM_PROCESSES", "PROCESS_ID") if v not in os.environ]
            if missing:
                raise DistributedInitError(f"a coordinator address is set but {missing} are not")
            kwargs = dict(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS")
                          or os.environ["COORDINATOR_ADDRESS"],
                          num_processes=int(os.environ["NUM_PROCESSES"]), process_id=int(os.environ["PROCESS_ID"]))
    if "coordinator_address" in kwargs:
        pid, n, address = kwargs["process_id"], kwargs["num_processes"], kwargs["coordinator_address"]
        # JAX's runtime aborts the process (no Python exception) when the group does not
        # form in time; say first what is being waited for, so that abort has context.
        print(f"[trm_jax] process {pid} of {n}: joining coordinator {address} (waiting up to {timeout_s}s "
              "for every process)", file=sys.stderr, flush=True)
        if pid > 0:
            _wait_for_coordinator(address, timeout_s)
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except Exception as e:  # noqa: BLE001 - the runtime's errors are long; say what failed
        where = kwargs.get("coordinator_address", "the launcher's coordinator")
        raise DistributedInitError(
            f"could not start {kwargs.get('num_processes', 'the')} processes with coordinator {where} within "
            f"{timeout_s}s (process {kwargs.get('process_id', '?')}): are all processes started with the same "
            f"--num_processes and can they reach the coordinator? ({type(e).__name__}: {str(e)[:300]})") from e


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
    """Block until the coordinator's port accepts connections, or fail with a clear message."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedInitError(f"--coordinator_address={address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedInitError(
                    f"coordinator {address} did not answer within {timeout_s}s ({e}); is process 0 running "
                    "and reachable from this host?") from e
            time.sleep(0.5)
