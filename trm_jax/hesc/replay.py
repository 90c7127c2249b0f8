"""Prioritized experience replay as fixed-size arrays (docs/hesc.md, docs/architecture.md#hesc).

The buffer is a pytree of ``[C, ...]`` arrays with a ring pointer, so it lives in the train
state, is filled and sampled inside the jitted step and is checkpointed with everything else.
Filling is contiguous from slot 0 and only wraps once the buffer is full, hence the filled
slots are always exactly ``[0, size)``.

Use inside a jitted train step::

    buf = replay_add(buf, s, a, r, s_next, done, valid)                  # rows [N, ...]
    idx, batch, w = replay_sample(buf, key, batch_size, alpha, beta)     # batch_size static
    loss, td, metrics = td_loss(q_apply, params, target, batch, w, gamma)
    loss = jnp.where(buf.size >= min_size, loss, 0.0)
    buf = replay_update_priorities(buf, idx, jax.lax.stop_gradient(td))
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

__all__ = [
    "ReplayBuffer",
    "replay_add",
    "replay_init",
    "replay_sample",
    "replay_update_priorities",
]

PyTree = Any


@flax.struct.dataclass
class ReplayBuffer:
    """Ring buffer of transitions with priorities.

    Attributes:
      state: pytree of ``[C, ...]`` arrays (structure of the example given to ``replay_init``).
      action: ``[C] int32``.
      reward: ``[C] float32``.
      next_state: same pytree as ``state``.
      done: ``[C] bool``.
      priority: ``[C] float32``; 0 for empty slots.
      pointer: ``int32`` scalar, the next ring slot to write.
      size: ``int32`` scalar, number of filled slots (``<= C``).
      max_priority: ``float32`` scalar, priority given to new transitions.
    """

    state: PyTree
    action: jax.Array
    reward: jax.Array
    next_state: PyTree
    done: jax.Array
    priority: jax.Array
    pointer: jax.Array
    size: jax.Array
    max_priority: jax.Array

    @property
    def capacity(self) -> int:
        """Number of slots ``C`` (static)."""
        return self.priority.shape[0]


def replay_init(capacity: int, state_example: PyTree) -> ReplayBuffer:
    """An empty buffer of ``capacity`` slots.

    Args:
      capacity: Number of slots ``C`` (> 0).
      state_example: pytree of arrays for ONE transition's state, e.g. ``{"x": zeros([D])}``;
        only shapes and dtypes are used. ``next_state`` has the same structure.

    Returns:
      A ``ReplayBuffer`` with zeroed storage, ``size = pointer = 0`` and ``max_priority = 1``.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    storage = lambda: jax.tree.map(  # noqa: E731
        lambda a: jnp.zeros((capacity,) + jnp.shape(a), jnp.asarray(a).dtype), state_example)
    return ReplayBuffer(
        state=storage(),
        action=jnp.zeros((capacity,), jnp.int32),
        reward=jnp.zeros((capacity,), jnp.float32),
        next_state=storage(),
        done=jnp.zeros((capacity,), bool),
        priority=jnp.zeros((capacity,), jnp.float32),
        pointer=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        # New transitions get the largest priority seen so far; 1 until a TD error is known.
        max_priority=jnp.ones((), jnp.float32),
    )


def replay_add(buf: ReplayBuffer, state: PyTree, action: jax.Array, reward: jax.Array,
               next_state: PyTree, done: jax.Array, valid: jax.Array) -> ReplayBuffer:
    """Write the valid rows contiguously at the ring pointer, with priority ``max_priority``.

    Args:
      buf: The buffer.
      state: pytree of ``[N, ...]`` arrays (structure of the buffer's ``state``).
      action: ``[N]`` int.
      reward: ``[N]`` float.
      next_state: pytree like ``state``.
      done: ``[N]`` bool.
      valid: ``[N]`` bool; only these rows are written, in row order.

    Returns:
      The buffer with ``pointer += n_valid (mod C)`` and ``size = min(size + n_valid, C)``.
      If more than ``C`` rows are valid, the last ``C`` of them are kept (ring semantics).
    """
    C = buf.capacity
    valid = jnp.asarray(valid, bool)
    valid_i = valid.astype(jnp.int32)
    n_valid = jnp.sum(valid_i)
    rank = jnp.cumsum(valid_i) - 1  # position of each valid row among the valid rows
    # Rows overwritten later in the same call are dropped so that no slot gets two writes
    # (the order of duplicate scatter indices is unspecified).
    keep = valid & (n_valid - 1 - rank < C)
    slot = jnp.where(keep, (buf.pointer + rank) % C, C)  # C is out of bounds -> dropped

    def put(store: jax.Array, rows: jax.Array) -> jax.Array:
        return store.at[slot].set(jnp.asarray(rows).astype(store.dtype), mode="drop")

    return buf.replace(
        state=jax.tree.map(put, buf.state, state),
        action=put(buf.action, action),
        reward=put(buf.reward, reward),
        next_state=jax.tree.map(put, buf.next_state, next_state),
        done=put(buf.done, done),
        priority=buf.priority.at[slot].set(buf.max_priority, mode="drop"),
        pointer=((buf.pointer + n_valid) % C).astype(jnp.int32),
        size=jnp.minimum(buf.size + n_valid, C).astype(jnp.int32),
    )


def _log_probs(buf: ReplayBuffer, alpha: float) -> jax.Array:
    """``log P(i) = alpha log p_i - log sum_j p_j^alpha`` over filled slots; -inf elsewhere. [C]."""
    filled = (jnp.arange(buf.capacity) < buf.size) & (buf.priority > 0)
    log_p = jnp.where(filled, jnp.log(jnp.where(filled, buf.priority, 1.0)), -jnp.inf)
    scaled = alpha * log_p
    # logsumexp subtracts the max first, so large priorities do not overflow p^alpha; an empty
    # buffer gives -inf (not NaN) everywhere.
    lse = jax.nn.logsumexp(scaled)
    return scaled - jnp.where(jnp.isfinite(lse), lse, 0.0)


def replay_sample(buf: ReplayBuffer, key: jax.Array, batch_size: int, alpha: float,
                  beta: float) -> tuple[jax.Array, dict[str, Any], jax.Array]:
    """Draw ``batch_size`` transitions with replacement, ``P(i) ∝ p_i^alpha`` over filled slots.

    Sampling is by inverse CDF (``O(C + n log C)``; no ``[n, C]`` noise array). Importance
    weights are ``w_i = (size * P(i))^-beta / max_j w_j`` with the max over all filled slots
    (the slot with the smallest ``P``), so they are at most 1 and do not depend on the batch.

    Args:
      buf: The buffer.
      key: PRNG key.
      batch_size: Number of draws ``n`` (static).
      alpha: Priority exponent (0 = uniform).
      beta: Importance-sampling exponent (0 = no correction).

    Returns:
      ``indices [n] int32``, ``batch`` (dict ``state``, ``action [n]``, ``reward [n]``,
      ``next_state``, ``done [n]``; state pytrees ``[n, ...]``) and ``is_weights [n] float32``.
      With an empty buffer the indices are 0 and the weights 0 (mask the loss with
      ``size >= min_size``).
    """
    log_prob = _log_probs(buf, alpha)
    prob = jnp.exp(log_prob)  # exactly 0 on empty slots
    cdf = jnp.cumsum(prob)
    u = jax.random.uniform(key, (batch_size,), jnp.float32) * cdf[-1]
    # First slot whose cdf exceeds u; zero-probability slots have a flat cdf so are never hit.
    # The clip guards float rounding at the top end and the empty buffer.
    idx = jnp.searchsorted(cdf, u, side="right")
    idx = jnp.clip(idx, 0, jnp.maximum(buf.size - 1, 0)).astype(jnp.int32)

    # w_i / max_j w_j = (P(i) / P_min)^-beta, computed in log space; 0 for undrawable slots.
    drawable = jnp.isfinite(log_prob)
    safe_log_prob = jnp.where(drawable, log_prob, 0.0)
    log_p_min = jnp.min(jnp.where(drawable, log_prob, jnp.inf))
    log_p_min = jnp.where(jnp.isfinite(log_p_min), log_p_min, 0.0)
    log_w = -beta * (safe_log_prob[idx] - log_p_min)
    is_weights = jnp.where(drawable[idx], jnp.exp(log_w), 0.0).astype(jnp.float32)

    take = lambda a: a[idx]  # noqa: E731
    batch = {
        "state": jax.tree.map(take, buf.state),
        "action": buf.action[idx],
        "reward": buf.reward[idx],
        "next_state": jax.tree.map(take, buf.next_state),
        "done": buf.done[idx],
    }
    return idx, batch, is_weights


def replay_update_priorities(buf: ReplayBuffer, indices: jax.Array, td_errors: jax.Array,
                             eps: float = 1e-6) -> ReplayBuffer:
    """Set ``p_i = |td_i| + eps`` for the sampled slots and raise ``max_priority``.

    Args:
      buf: The buffer.
      indices: ``[n]`` int slots from ``replay_sample``.
      td_errors: ``[n]`` TD errors (pass them through ``stop_gradient``).
      eps: Floor that keeps every filled slot drawable.

    Returns:
      The buffer with updated ``priority`` and ``max_priority``. Indices outside the filled
      range (the dummy draws of an empty buffer) are ignored, so empty slots keep priority 0.
    """
    new_p = jnp.abs(jnp.asarray(td_errors, jnp.float32)) + eps
    in_range = indices < buf.size
    slot = jnp.where(in_range, indices, buf.capacity)
    max_new = jnp.max(jnp.where(in_range, new_p, 0.0), initial=0.0)
    return buf.replace(
        priority=buf.priority.at[slot].set(new_p, mode="drop"),
        max_priority=jnp.maximum(buf.max_priority, max_new),
    )
