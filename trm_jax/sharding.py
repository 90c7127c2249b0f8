"""One code path for every scale: a ``(data, fsdp)`` device mesh and the shardings on it.

* Batches (and everything with a batch axis: the ACT carry) are split over all
  devices, ``P(("data", "fsdp"))``.
* Parameters, optimizer state and EMA are replicated, or, with ``mesh.fsdp > 1``,
  each large enough array is split over ``fsdp`` along its largest divisible axis.
* Scalars (step, RNG key) are replicated.

``jax.jit`` with these in/out shardings (the pjit style) lets XLA insert the
collectives; the same code runs on one CPU, 8 GPUs or several hosts.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trm_jax.models.config import ConfigError
from trm_jax.models.layers import BATCH_AXES


class MeshError(ConfigError):
    """A mesh or batch size that does not fit the devices and processes."""


def create_mesh(data: int = -1, fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all); ``-1`` fills the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise MeshError("mesh.data and mesh.fsdp cannot both be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise MeshError(f"mesh (data={data}, fsdp={fsdp}) does not fit the {n} available devices "
                         f"(data * fsdp must equal {n})")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_global_batch(global_batch_size: int, mesh: Mesh, process_count: Optional[int] = None) -> int:
    """The per-process batch; a clear error when the batch does not split evenly."""
    process_count = jax.process_count() if process_count is None else process_count
    devices = mesh.devices.size
    if global_batch_size % devices or global_batch_size % process_count:
        raise MeshError(f"global_batch_size={global_batch_size} must be divisible by the number of devices "
                         f"({devices}) and of processes ({process_count})")
    return global_batch_size // process_count


def fsdp_spec(shape: Tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Split the largest axis divisible by ``fsdp`` (arrays of at least ``min_size`` elements)."""
    if fsdp <= 1 or not shape or int(np.prod(shape)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(abstract_tree: Any, mesh: Mesh, min_size: int = 2 ** 14) -> Any:
    """Shardings for parameter-shaped trees (params, optimizer state, EMA)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_tree)


def batch_tree_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """Every leaf split along its leading (batch) axis."""
    return jax.tree.map(lambda x: batch_sharding(mesh) if x.ndim else replicated(mesh), abstract_tree)


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Global ``jax.Array``s from this process's rows (``jax.make_array_from_process_local_data``)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
