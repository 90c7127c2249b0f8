"""Episodic memory bank: non-differentiable slots in the train state, a learned top-k reader.

Shapes: capacity ``M``, hidden ``D``, batch ``B``, positions ``S``, heads ``H``, head size
``Kh = D / H``, ``k = top_k``, rows written per call ``N``.

The bank is a fixed-shape pytree (jit, sharding, checkpoints). Writes and touches are pure
functions the train step applies after the forward; the reader only sees the bank through
``stop_gradient``, so gradients reach the reader's parameters and never the bank.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from trm_jax.models.layers import casted_dense

_NEG = -1e30  # logit / similarity of an empty slot: finite, so an empty bank gives no NaN


@flax.struct.dataclass
class MemoryBank:
    """keys/values [M, D] float32, scores [M] float32 (value estimate of the write),
    last_access [M] int32 (step of the last write or read), access_count [M] int32 (read steps
    since the write), filled [M] bool."""

    keys: jax.Array
    values: jax.Array
    scores: jax.Array
    last_access: jax.Array
    access_count: jax.Array
    filled: jax.Array


def memory_init(capacity: int, dim: int) -> MemoryBank:
    """An empty bank of ``capacity`` slots of size ``dim``."""
    return MemoryBank(
        keys=jnp.zeros((capacity, dim), jnp.float32),
        values=jnp.zeros((capacity, dim), jnp.float32),
        scores=jnp.zeros((capacity,), jnp.float32),
        last_access=jnp.zeros((capacity,), jnp.int32),
        access_count=jnp.zeros((capacity,), jnp.int32),
        filled=jnp.zeros((capacity,), bool),
    )


def _normalize_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """L2-normalise each head's slice of ``x [..., D]`` (zero vectors stay zero), in float32."""
    shape = x.shape
    x = x.astype(jnp.float32).reshape(*shape[:-1], num_heads, shape[-1] // num_heads)
    x = x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
    return x.reshape(shape)


class MemoryReader(nn.Module):
    """Top-k multi-head attention read from a ``MemoryBank`` with a gated residual add.

    ``__call__(h [B, S, D], bank) -> (h_out [B, S, D], info)``.

    Queries and the (stop-gradient) keys share the projection ``q_proj``, so a position whose
    state equals a stored key has the maximal similarity to it from initialisation on (cosine:
    exactly 1); similarity is the per-head cosine (or scaled dot), averaged over heads to choose
    the ``top_k`` slots per position (shared by the heads), then a softmax per head over those
    slots (cosine logits scaled by a learned per-head ``logit_scale``) weights the
    ``v_proj``-projected values; ``o_proj`` maps back to ``D``. The add is
    ``h + sigmoid(gate) * read`` with ``gate = gate_proj([h, read])``, zero kernel and bias
    ``gate_bias_init`` (sigmoid(-2) = 0.12). Empty slots are excluded; an empty bank reads exactly
    zero, so ``h_out == h``.

    info: ``indices [B, S, k] int32`` (chosen slots), ``valid [B, S, k] bool`` (slot filled),
    ``similarity [B, S]`` (max similarity over filled slots, 0 when empty), ``read_norm``
    (mean L2 norm of the gated read, i.e. of ``h_out - h``), ``gate_mean``.
    """

    dim: int
    top_k: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    similarity: str = "cosine"  # "cosine" or "dot"
    init_logit_scale: float = 10.0  # cosine in [-1, 1] needs a temperature to be selective
    gate_bias_init: float = -2.0

    @nn.compact
    def __call__(self, h: jax.Array, bank: MemoryBank) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        D, H, k = self.dim, self.num_heads, self.top_k
        M = bank.keys.shape[0]
        if D % H:
            raise ValueError(f"dim {D} is not divisible by num_heads {H}")
        if not 0 < k <= M:
            raise ValueError(f"top_k {k} must be in [1, capacity {M}]")
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {self.similarity!r}")
        B, S, _ = h.shape
        Kh = D // H

        keys = jax.lax.stop_gradient(bank.keys).astype(self.dtype)
        values = jax.lax.stop_gradient(bank.values).astype(self.dtype)
        filled = jax.lax.stop_gradient(bank.filled)

        q_proj = casted_dense(D, False, self.dtype, "q_proj")
        q_BSD, k_MD = q_proj(h), q_proj(keys)
        v_MD = casted_dense(D, False, self.dtype, "v_proj")(values)

        if self.similarity == "cosine":
            q_BSD, k_MD = _normalize_heads(q_BSD, H), _normalize_heads(k_MD, H)
            head_scale = jnp.exp(self.param("logit_scale", nn.initializers.constant(math.log(self.init_logit_scale)),
                                            (H,), jnp.float32))
            sel_scale = 1.0 / H  # mean over heads of the per-head cosine
        else:
            q_BSD, k_MD = q_BSD.astype(jnp.float32), k_MD.astype(jnp.float32)
            head_scale = jnp.full((H,), 1.0 / math.sqrt(Kh), jnp.float32)
            sel_scale = 1.0 / (H * math.sqrt(Kh))  # mean over heads of the scaled per-head dot

        # Slot choice on the head-averaged similarity: one [B, S, M] matmul, no [B, S, H, M].
        sim_BSM = jnp.einsum("bsd,md->bsm", q_BSD, k_MD) * sel_scale
        sim_BSM = jnp.where(filled[None, None, :], sim_BSM, _NEG)
        top_sim_BSk, idx_BSk = jax.lax.top_k(sim_BSM, k)
        valid_BSk = jnp.take(filled, idx_BSk)

        # Per-head logits and values on the k chosen slots only.
        # (gathered in the activation dtype: [B, S, k, D] is the largest tensor here)
        k_sel = jnp.take(k_MD.astype(self.dtype), idx_BSk, axis=0).reshape(B, S, k, H, Kh)
        logits_BSkH = jnp.einsum("bshd,bskhd->bskh", q_BSD.astype(self.dtype).reshape(B, S, H, Kh), k_sel,
                                 preferred_element_type=jnp.float32) * head_scale
        logits_BSkH = jnp.where(valid_BSk[..., None], logits_BSkH, _NEG)
        weights = jax.nn.softmax(logits_BSkH, axis=2) * valid_BSk[..., None]  # all-empty -> zeros
        v_sel = jnp.take(v_MD, idx_BSk, axis=0).reshape(B, S, k, H, Kh)
        read_BSHK = jnp.einsum("bskh,bskhd->bshd", weights.astype(self.dtype), v_sel)
        read_BSD = casted_dense(D, False, self.dtype, "o_proj")(read_BSHK.reshape(B, S, D))

        gate_proj = casted_dense(1, True, self.dtype, "gate_proj", kernel_init=nn.initializers.zeros,
                                 bias_init=nn.initializers.constant(self.gate_bias_init))
        gate_BS1 = jax.nn.sigmoid(gate_proj(jnp.concatenate([h.astype(self.dtype), read_BSD], axis=-1)))
        delta_BSD = (gate_BS1 * read_BSD).astype(h.dtype)
        h_out = h + delta_BSD

        any_valid_BS = valid_BSk[..., 0]  # top_k sorts filled slots first
        info = {
            "indices": idx_BSk.astype(jnp.int32),
            "valid": valid_BSk,
            "similarity": jnp.where(any_valid_BS, top_sim_BSk[..., 0], 0.0).astype(jnp.float32),
            "read_norm": jnp.mean(jnp.linalg.norm(delta_BSD.astype(jnp.float32), axis=-1)),
            "gate_mean": jnp.mean(gate_BS1.astype(jnp.float32)),
        }
        return h_out, info


def memory_write(bank: MemoryBank, keys: jax.Array, values: jax.Array, scores: jax.Array,
                 valid: jax.Array, step: jax.Array | int) -> MemoryBank:
    """Write the ``valid`` rows of ``keys/values [N, D]``, ``scores [N]`` into distinct slots.

    Slot order: empty slots first (by index), then filled slots by ascending score, ties by
    oldest ``last_access`` (value / recency replacement). Incoming rows are taken by descending
    score, so when more valid rows than slots arrive the best ones are kept. Written slots get
    ``last_access = step``, ``access_count = 0``, ``filled = True``. Jit-compatible: two sorts
    and ``mode="drop"`` scatters.
    """
    M = bank.keys.shape[0]
    keys, values, valid = jnp.asarray(keys), jnp.asarray(values), jnp.asarray(valid, bool)
    N = keys.shape[0]
    scores = jnp.asarray(scores, jnp.float32)
    # lexsort: the last key is the primary one.
    slot_order_M = jnp.lexsort((bank.last_access, bank.scores, bank.filled.astype(jnp.int32)))
    row_order_N = jnp.lexsort((-scores, (~valid).astype(jnp.int32)))  # valid rows first, best score first
    row_valid_N = valid[row_order_N]
    rank_N = jnp.arange(N)
    # The r-th (valid, by score) row goes to the r-th slot of the replacement order; the rest drop.
    target_N = jnp.where(row_valid_N & (rank_N < M), slot_order_M[jnp.minimum(rank_N, M - 1)], M)

    k_ND = jax.lax.stop_gradient(keys[row_order_N]).astype(jnp.float32)
    v_ND = jax.lax.stop_gradient(values[row_order_N]).astype(jnp.float32)
    step = jnp.asarray(step, jnp.int32)
    return MemoryBank(
        keys=bank.keys.at[target_N].set(k_ND, mode="drop"),
        values=bank.values.at[target_N].set(v_ND, mode="drop"),
        scores=bank.scores.at[target_N].set(jax.lax.stop_gradient(scores[row_order_N]), mode="drop"),
        last_access=bank.last_access.at[target_N].set(step, mode="drop"),
        access_count=bank.access_count.at[target_N].set(0, mode="drop"),
        filled=bank.filled.at[target_N].set(True, mode="drop"),
    )


def memory_touch(bank: MemoryBank, indices: jax.Array, step: jax.Array | int,
                 valid: Optional[jax.Array] = None) -> MemoryBank:
    """Mark the slots in ``indices [...]`` (e.g. ``info["indices"]``) as read at ``step``.

    ``valid [...]`` (e.g. ``info["valid"]``) drops entries; empty slots are never touched. Each
    touched slot gets ``last_access = step`` and ``access_count += 1`` once per call however many
    positions read it (counts read steps, which cannot overflow int32 the way per-position
    counts over ``B*S*k`` reads a step would).
    """
    M = bank.keys.shape[0]
    idx = jnp.asarray(indices, jnp.int32).reshape(-1)
    if valid is not None:
        idx = jnp.where(jnp.asarray(valid, bool).reshape(-1), idx, M)
    hit_M = jnp.zeros((M,), bool).at[idx].set(True, mode="drop") & bank.filled
    return bank.replace(
        last_access=jnp.where(hit_M, jnp.asarray(step, jnp.int32), bank.last_access),
        access_count=bank.access_count + hit_M.astype(jnp.int32),
    )


def memory_metrics(bank: MemoryBank) -> Dict[str, jax.Array]:
    """``memory_fill`` (fraction of filled slots), and over filled slots ``memory_score_mean``
    and ``memory_access_mean`` (0 for an empty bank)."""
    filled = bank.filled.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(filled), 1.0)
    return {
        "memory_fill": jnp.mean(filled),
        "memory_score_mean": jnp.sum(bank.scores * filled) / n,
        "memory_access_mean": jnp.sum(bank.access_count.astype(jnp.float32) * filled) / n,
    }
