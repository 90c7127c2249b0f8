"""The HESC action-value head: Q over ``[CONTINUE, HALT, EXPAND]`` from a pooled ``z_H``.

Shapes: batch ``B``, positions ``S``, hidden ``D``, actions ``A`` (3, or 2 without EXPAND),
head width ``H = hidden``. The head is split in two so the DQN can recompute Q later from a
small stored state instead of the whole sequence:

    pooling   h [B, S, D] -> x [B, D]           (first / masked mean / learned attention query)
    Q part    x (, rnn_state) -> q [B, A]        (MLP, or GRU cell + output layer)

``__call__`` runs both and returns the Q part's input as ``replay_state``;
``q_from_replay`` runs only the Q part, with exactly the same parameters and ops, so a
replayed Q equals the Q that was acted on (for online or target parameters alike).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trm_jax.models.layers import lecun_trunc_normal_init

CONTINUE, HALT, EXPAND = 0, 1, 2
ACTION_NAMES = ("continue", "halt", "expand")

HEAD_TYPES = ("mlp", "rnn", "attention")
POOLINGS = ("first", "mean")

ReplayState = Dict[str, jax.Array]


def masked_mean(h_BSD: jax.Array, mask_BS: Optional[jax.Array]) -> jax.Array:
    """Mean over positions of ``h [B, S, D]`` where ``mask [B, S]`` is true -> ``[B, D]`` float32.

    ``mask=None`` averages every position; a row with no valid position pools to zeros.
    """
    h32 = h_BSD.astype(jnp.float32)
    if mask_BS is None:
        return jnp.mean(h32, axis=1)
    m = mask_BS.astype(jnp.float32)[..., None]
    return jnp.sum(h32 * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class AttentionPool(nn.Module):
    """One learned query attends over the positions: ``softmax_S(k(h) . q / sqrt(D))``-weighted sum of ``h``.

    h: ``[B, S, D]``, mask: ``[B, S]`` bool or None -> ``[B, D]`` float32. The query starts at
    zero, so the head starts as a plain masked mean and learns where to look. A row with no
    valid position pools to zeros (like :func:`masked_mean`).
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BSD: jax.Array, mask_BS: Optional[jax.Array] = None) -> jax.Array:
        D = h_BSD.shape[-1]
        query = self.param("query", nn.initializers.zeros, (D,), jnp.float32)
        keys = nn.Dense(D, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=lecun_trunc_normal_init(), name="key_proj")(h_BSD.astype(self.dtype))
        scores_BS = jnp.einsum("bsd,d->bs", keys.astype(jnp.float32), query) / math.sqrt(D)
        if mask_BS is not None:
            # A large finite negative keeps fully masked rows NaN-free; they are zeroed below.
            scores_BS = jnp.where(mask_BS, scores_BS, -1e30)
        weights_BS = jax.nn.softmax(scores_BS, axis=-1)
        if mask_BS is not None:
            weights_BS = weights_BS * mask_BS.astype(jnp.float32)
        return jnp.einsum("bs,bsd->bd", weights_BS, h_BSD.astype(jnp.float32))


class ActionQHead(nn.Module):
    """Q-values ``[B, A]`` (float32) for the actions ``[CONTINUE, HALT, EXPAND][:A]``.

    ``head_type``: ``mlp`` (pool -> Dense(hidden) -> SiLU -> Dense(A)); ``rnn`` (pool -> GRU
    cell whose state ``[B, hidden]`` rides in the ACT carry -> Dense(A)); ``attention``
    (learned-query attention pooling -> the same MLP; ``pooling`` is then unused).
    ``pooling``: ``first`` = ``h[:, 0]``, ``mean`` = masked mean over positions.

    The output layer starts at zero (kernel and bias), so every Q starts at exactly 0, like
    the TRM's q-head special init: no action is preferred before the DQN has learned anything.
    Parameters are float32; the layers compute in ``dtype``; pooling and Q are float32.
    """

    num_actions: int = 3
    head_type: str = "mlp"
    pooling: str = "mean"
    hidden: int = 512
    dtype: Any = jnp.float32

    def setup(self):
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_actions not in (2, 3):
            raise ValueError(f"num_actions must be 2 ([CONTINUE, HALT]) or 3 (+EXPAND), got {self.num_actions}")
        # Submodules are created lazily, so q_from_replay only touches (and needs) the Q part:
        # its parameter tree is a subset of the one __call__ creates.
        if self.head_type == "attention":
            self.attn_pool = AttentionPool(self.dtype)
        if self.head_type == "rnn":
            self.gru = nn.GRUCell(features=self.hidden, dtype=self.dtype, param_dtype=jnp.float32)
        else:
            self.mlp_in = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                                   kernel_init=lecun_trunc_normal_init())
        self.q_out = nn.Dense(self.num_actions, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

    def initial_rnn_state(self, batch_size: int) -> jax.Array:
        """Zero GRU state ``[batch_size, hidden]`` float32 (works on an unbound module)."""
        return jnp.zeros((batch_size, self.hidden), jnp.float32)

    def _pool(self, h_BSD: jax.Array, mask_BS: Optional[jax.Array]) -> jax.Array:
        if self.head_type == "attention":
            return self.attn_pool(h_BSD, mask_BS)
        if self.pooling == "first":
            return h_BSD[:, 0].astype(jnp.float32)
        return masked_mean(h_BSD, mask_BS)

    def _q_part(self, x_ND: jax.Array, state_NH: Optional[jax.Array]) -> Tuple[jax.Array, Optional[jax.Array]]:
        """The Q part shared by ``__call__`` and ``q_from_replay``: ``x [N, D]`` -> ``(q [N, A], new state)``."""
        x = x_ND.astype(self.dtype)
        if self.head_type == "rnn":
            new_state, _ = self.gru(state_NH.astype(self.dtype), x)
            new_state = new_state.astype(jnp.float32)  # the carry keeps float32 whatever dtype computes
            return self.q_out(new_state.astype(self.dtype)).astype(jnp.float32), new_state
        return self.q_out(nn.silu(self.mlp_in(x))).astype(jnp.float32), None

    def __call__(self, h_BSD: jax.Array, rnn_state: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None) -> Tuple[jax.Array, Optional[jax.Array], ReplayState]:
        """Q-values from the hidden state.

        Args:
          h_BSD: ``[B, S, D]`` (e.g. ``z_H``), any float dtype.
          rnn_state: ``[B, hidden]`` GRU state for ``rnn`` (None = zeros); ignored otherwise.
          mask: ``[B, S]`` bool, positions that count in ``mean`` / ``attention`` pooling (None = all).

        Returns:
          ``q [B, A]`` float32; ``new_rnn_state [B, hidden]`` float32 for ``rnn``, else None;
          ``replay_state``: ``{"x": [B, D]}`` (+ ``{"h": [B, hidden]}`` for ``rnn``), float32,
          gradient-stopped — what :meth:`q_from_replay` needs to recompute ``q``.
        """
        x_BD = self._pool(h_BSD, mask)
        replay = {"x": jax.lax.stop_gradient(x_BD)}
        state = None
        if self.head_type == "rnn":
            B = h_BSD.shape[0]
            state = self.initial_rnn_state(B) if rnn_state is None else rnn_state.astype(jnp.float32)
            if state.shape != (B, self.hidden):
                raise ValueError(f"rnn_state must be [B, hidden] = {(B, self.hidden)}, got {state.shape}")
            replay["h"] = jax.lax.stop_gradient(state)
        q_BA, new_state = self._q_part(x_BD, state)
        return q_BA, new_state, replay

    def q_from_replay(self, replay_state: ReplayState) -> jax.Array:
        """Q ``[N, A]`` float32 from a stored ``replay_state`` (``x [N, D]``, + ``h [N, hidden]`` for ``rnn``).

        Equals ``__call__``'s ``q`` for the inputs that produced the state. Call as
        ``ActionQHead(...).apply({"params": p}, replay_state, method=ActionQHead.q_from_replay)``.
        """
        q_NA, _ = self._q_part(replay_state["x"], replay_state.get("h") if self.head_type == "rnn" else None)
        return q_NA
