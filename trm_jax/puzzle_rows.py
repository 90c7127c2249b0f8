"""Row-sparse gradients for the puzzle-embedding table.

Differentiating through a gather from a ``[num_ids, D]`` table yields a dense
``[num_ids, D]`` gradient, and data-parallel training would all-reduce all of it
every step (about 2 GB for ARC-AGI-1 with 1000 augmentations). Instead, the train
step adds a zero offset ``delta [B, D]`` (collection :data:`COLLECTION`) to the
gathered rows, keeps the table itself behind ``stop_gradient``, and differentiates
with respect to ``delta``: the gradient of every row occurrence in the batch. The
table's gradient is then the scatter-add of those rows, computed from the
all-gathered ``[B, D]`` rows on every device: an all-gather of the batch's rows
replaces the all-reduce of the table. It is the same gradient (the transpose of a
gather is that scatter-add), so the optimizer (sign-SGD on the present rows, the
NaN guard, gradient statistics) is unchanged. The reference does the same with its
``CastedSparseEmbedding`` local weights and an all-gather.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from trm_jax.models.layers import ROW_OFFSETS, constrain_batch

COLLECTION = ROW_OFFSETS  # the variable collection of the row offsets
OFFSET = "delta"
_TABLE_MODULE = "puzzle_emb"
_TABLE_PARAM = "embedding"

Path = Tuple[str, ...]


def _table_paths(params: Any) -> Dict[Path, jax.Array]:
    """Flattened paths of the puzzle-embedding tables in ``params`` (``.../puzzle_emb/embedding``)."""
    flat = traverse_util.flatten_dict(params)
    return {path: leaf for path, leaf in flat.items()
            if path[-1] == _TABLE_PARAM and len(path) > 1 and _TABLE_MODULE in path[-2]}


def zero_offsets(params: Any, batch_size: int) -> Dict[str, Any]:
    """``{module path: {"delta": zeros [B, D]}}`` for every puzzle table; ``{}`` when there is none."""
    offsets = {path[:-1] + (OFFSET,): constrain_batch(jnp.zeros((batch_size, leaf.shape[1]), jnp.float32))
               for path, leaf in _table_paths(params).items()}
    return traverse_util.unflatten_dict(offsets) if offsets else {}


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` gathered onto every device of the current mesh (a no-op without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec())


def with_table_grads(grads: Any, offset_grads: Dict[str, Any], ids_B: jax.Array) -> Any:
    """``grads`` with each table's (zero) gradient replaced by the scatter-add of its row gradients.

    Args:
      grads: gradients w.r.t. the parameters, the tables' leaves being zero (``stop_gradient``).
      offset_grads: gradients w.r.t. :func:`zero_offsets`, ``[B, D]`` per table.
      ids_B: the identifiers the model gathered, ``[B]`` (the carry's current puzzle ids).
    """
    if not offset_grads:
        return grads
    flat = traverse_util.flatten_dict(grads)
    rows = traverse_util.flatten_dict(offset_grads)
    ids = _replicated(ids_B.reshape(-1).astype(jnp.int32))
    for path, table_grad in _table_paths(grads).items():
        g_rows = _replicated(rows[path[:-1] + (OFFSET,)].astype(table_grad.dtype))
        flat[path] = jnp.zeros_like(table_grad).at[ids].add(g_rows)
    return traverse_util.unflatten_dict(flat)


def value_and_grad(loss_fn: Callable[..., Tuple[jax.Array, Any]], ids_of: Callable[[Any], jax.Array],
                   batch_size: int) -> Callable[..., Tuple[Tuple[jax.Array, Any], Any]]:
    """``jax.value_and_grad(loss_fn, has_aux=True)`` with the puzzle tables' gradients row-sparse.

    ``loss_fn(params, row_offsets, *args) -> (loss, aux)`` passes ``row_offsets`` to the model
    as the :data:`COLLECTION` variables; ``ids_of(aux)`` returns the ``[B]`` identifiers the model
    gathered. The returned ``f(params, *args)`` gives ``((loss, aux), grads)`` with ``grads``
    shaped like ``params``, as plain ``value_and_grad`` would.
    """

    def f(params, *args):
        offsets = zero_offsets(params, batch_size)
        (loss, aux), (grads, offset_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            params, offsets, *args)
        return (loss, aux), with_table_grads(grads, offset_grads, ids_of(aux))

    return f
