"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Pure functions of ``(logits, key, settings)``, compiled into the decoding step: the same key gives
the same token, so a generation is reproducible under ``--seed``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """``temperature`` 0: greedy (argmax); else sample from ``softmax(logits / temperature)`` restricted
    to the ``top_k`` most likely tokens (0: all) and to the smallest set whose probability reaches
    ``top_p`` (1: all)."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0: greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0: no limit)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    def as_arrays(self) -> dict:
        """The settings as arrays (traced arguments: changing them does not recompile)."""
        return {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(self.top_k),
                "top_p": jnp.float32(self.top_p)}


def filtered_logits(logits_NV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """``logits`` with every token outside the top-k / top-p set at ``-inf`` (float32).

    A token is kept when fewer than ``top_k`` tokens are more likely (``top_k`` 0: no limit) and the
    probability of the tokens more likely than it is below ``top_p`` (the most likely is always kept).
    """
    logits = logits_NV.astype(jnp.float32)
    V = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(V)
    keep_sorted = jnp.where(top_k > 0, rank < top_k, True)
    before = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1) - jax.nn.softmax(sorted_logits, axis=-1)
    keep_sorted &= (before < top_p) | (rank == 0)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def next_token(logits_NV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
               top_p: jax.Array) -> jax.Array:
    """``[N] int32``: the argmax where ``temperature == 0``, else a sample of the filtered distribution."""
    greedy = jnp.argmax(logits_NV, axis=-1)
    filtered = filtered_logits(logits_NV / jnp.maximum(temperature, 1e-6), top_k, top_p)
    sampled = jax.random.categorical(key, filtered, axis=-1)
    return jnp.where(temperature == 0, greedy, sampled).astype(jnp.int32)
