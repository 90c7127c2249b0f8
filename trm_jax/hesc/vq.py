"""VQ concept codebook: nearest-code quantisation with a straight-through estimator.

Shapes: codes ``K`` (``num_codes``), code dimension ``D``, any leading shape ``...``
(typically ``[B, S]``), flattened positions ``N``.

The forward is pure (it is called inside the model's H-cycle ``nn.scan``): it returns
per-call assignment statistics (``counts``, ``sums``) and the train step folds them into a
``VQStats`` pytree afterwards with ``vq_stats_update``. Two codebook modes:

* ``use_ema=False``: the codebook is the param ``"codebook" [K, D]``, trained by the codebook
  loss ``mean (sg(z) - c)^2``.
* ``use_ema=True``: the codebook is the variable ``"buffers"/"codebook" [K, D]`` (a non-trained
  buffer, read-only in the forward); the train step replaces it with ``ema_codebook(stats)`` (VQ-VAE-2 updates), and
  the loss holds only the commitment term.

Losses are mean squared errors over the unmasked elements (``F.mse_loss`` convention), so
their scale does not grow with ``D``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from trm_jax.models.layers import trunc_normal_init


def nearest_codes(z_ND: jax.Array, codebook_KD: jax.Array, chunk_size: Optional[int] = None) -> jax.Array:
    """Index of the nearest code by squared L2 for each row: ``[N, D], [K, D] -> [N] int32``.

    Uses ``|z|^2 - 2 z.c + |c|^2`` in float32 (a ``[N, K]`` matrix, never ``[N, K, D]``); ``|z|^2``
    is constant per row so it is dropped from the argmin. With ``chunk_size`` the rows are
    processed ``chunk_size`` at a time (``lax.map``), bounding the live matrix to
    ``[chunk_size, K]``. No gradient flows through the result.
    """
    z = jax.lax.stop_gradient(z_ND).astype(jnp.float32)
    c = jax.lax.stop_gradient(codebook_KD).astype(jnp.float32)
    c_sq_K = jnp.sum(jnp.square(c), axis=-1)

    def argmin_rows(z_nD: jax.Array) -> jax.Array:
        dist_nK = c_sq_K[None, :] - 2.0 * (z_nD @ c.T)
        return jnp.argmin(dist_nK, axis=-1).astype(jnp.int32)

    N = z.shape[0]
    if chunk_size is None or N <= chunk_size:
        return argmin_rows(z)
    num_chunks = -(-N // chunk_size)
    z_pad = jnp.pad(z, ((0, num_chunks * chunk_size - N), (0, 0)))
    codes = jax.lax.map(argmin_rows, z_pad.reshape(num_chunks, chunk_size, -1))
    return codes.reshape(-1)[:N]


def _perplexity_usage(counts_K: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """``exp(entropy)`` of the normalised counts and the fraction of codes with a count > 0."""
    total = jnp.sum(counts_K)
    p = counts_K / jnp.maximum(total, 1e-12)
    # 0 log 0 = 0; an empty call (all masked) has entropy 0, i.e. perplexity 1.
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy), jnp.mean((counts_K > 0).astype(jnp.float32))


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser ``z [..., D] -> (z_q [..., D], codes [...] int32, aux)``.

    ``z_q = z + stop_gradient(c - z)``: the value is the chosen code, the gradient goes to ``z``
    unchanged (straight-through). ``aux``: ``loss``, ``codebook_loss``, ``commitment_loss``,
    ``perplexity``, ``usage`` (float32 scalars), ``counts [K]`` and ``sums [K, D]`` (float32,
    no gradient). ``mask [...]`` (bool) removes positions from the losses and statistics; masked
    positions are still quantised.
    """

    num_codes: int
    dim: int
    commitment_cost: float = 0.25
    use_ema: bool = False
    init_std: float = 1.0  # the scale of rms-normed hidden states (unit RMS per element)
    chunk_size: Optional[int] = None  # rows per distance block (bounds the [N, K] matrix)

    @nn.compact
    def __call__(self, z: jax.Array, mask: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array, Dict[str, jax.Array]]:
        K, D = self.num_codes, self.dim
        if z.shape[-1] != D:
            raise ValueError(f"VectorQuantizer(dim={D}) got z with last axis {z.shape[-1]}")
        init = trunc_normal_init(self.init_std)
        if self.use_ema:
            codebook = self.variable("buffers", "codebook", lambda: init(self.make_rng("params"), (K, D))).value
        else:
            codebook = self.param("codebook", init, (K, D), jnp.float32)

        lead = z.shape[:-1]
        z_ND = z.reshape(-1, D)
        codes_N = nearest_codes(z_ND, codebook, self.chunk_size)
        c_ND = jnp.take(codebook, codes_N, axis=0)  # float32; carries the codebook gradient
        z_q = z + jax.lax.stop_gradient(c_ND.astype(z.dtype).reshape(z.shape) - z)

        w_N = jnp.ones(codes_N.shape, jnp.float32) if mask is None else mask.reshape(-1).astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(w_N), 1.0) * D
        z32 = z_ND.astype(jnp.float32)
        codebook_loss = jnp.sum(w_N[:, None] * jnp.square(jax.lax.stop_gradient(z32) - c_ND)) / denom
        commitment_loss = jnp.sum(w_N[:, None] * jnp.square(z32 - jax.lax.stop_gradient(c_ND))) / denom
        loss = self.commitment_cost * commitment_loss
        if not self.use_ema:
            loss = loss + codebook_loss

        # Statistics for the EMA / usage / restarts; scatter-adds avoid a [N, K] one-hot.
        counts_K = jnp.zeros((K,), jnp.float32).at[codes_N].add(w_N)
        sums_KD = jnp.zeros((K, D), jnp.float32).at[codes_N].add(jax.lax.stop_gradient(z32) * w_N[:, None])
        perplexity, usage = _perplexity_usage(counts_K)
        aux = {
            "loss": loss,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "counts": counts_K,
            "sums": sums_KD,
            "perplexity": perplexity,
            "usage": usage,
        }
        return z_q, codes_N.reshape(lead), aux


@flax.struct.dataclass
class VQStats:
    """Running codebook statistics (train state, no gradient).

    usage [K]: EMA of per-step assignment counts (monitoring); ema_count [K] / ema_sum [K, D]:
    the VQ-VAE-2 cluster sizes and sums behind ``ema_codebook``; steps_unused [K] int32: steps
    since the code was last assigned (dead-code restarts).
    """

    usage: jax.Array
    ema_count: jax.Array
    ema_sum: jax.Array
    steps_unused: jax.Array


def vq_stats_init(num_codes: int, dim: int, codebook: Optional[jax.Array] = None) -> VQStats:
    """Fresh statistics. With ``codebook [K, D]`` (needed for EMA mode) each code starts as one
    pseudo-assignment of itself, so ``ema_codebook(vq_stats_init(K, D, cb)) == cb``."""
    if codebook is None:
        ema_count = jnp.zeros((num_codes,), jnp.float32)
        ema_sum = jnp.zeros((num_codes, dim), jnp.float32)
    else:
        if codebook.shape != (num_codes, dim):
            raise ValueError(f"codebook shape {codebook.shape} != {(num_codes, dim)}")
        ema_count = jnp.ones((num_codes,), jnp.float32)
        ema_sum = jnp.asarray(codebook, jnp.float32)
    return VQStats(usage=jnp.zeros((num_codes,), jnp.float32), ema_count=ema_count, ema_sum=ema_sum,
                   steps_unused=jnp.zeros((num_codes,), jnp.int32))


def vq_stats_update(stats: VQStats, counts: jax.Array, sums: jax.Array, decay: float = 0.99) -> VQStats:
    """Fold one step's ``counts [K]`` and ``sums [K, D]`` (from ``aux``; summed over H-cycles if
    the quantiser ran several times) into the running statistics."""
    counts = jax.lax.stop_gradient(counts).astype(jnp.float32)
    sums = jax.lax.stop_gradient(sums).astype(jnp.float32)
    return VQStats(
        usage=decay * stats.usage + (1.0 - decay) * counts,
        ema_count=decay * stats.ema_count + (1.0 - decay) * counts,
        ema_sum=decay * stats.ema_sum + (1.0 - decay) * sums,
        steps_unused=jnp.where(counts > 0, 0, stats.steps_unused + 1).astype(jnp.int32),
    )


def ema_codebook(stats: VQStats, eps: float = 1e-5) -> jax.Array:
    """The EMA codebook ``[K, D]``: ``ema_sum / n_i`` with Laplace-smoothed cluster sizes
    ``n_i = (ema_count_i + eps) / (n + K eps) * n`` (VQ-VAE-2), ``n = sum(ema_count)``."""
    K = stats.ema_count.shape[0]
    n = jnp.sum(stats.ema_count)
    smoothed = (stats.ema_count + eps) / (n + K * eps) * n
    # A code with no mass at all (only when n == 0) gets the zero vector instead of 0/0.
    return stats.ema_sum / jnp.maximum(smoothed, 1e-12)[:, None]


def restart_dead_codes(codebook: jax.Array, stats: VQStats, candidates: jax.Array, key: jax.Array,
                       max_unused_steps: int,
                       candidate_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, VQStats, jax.Array]:
    """Replace codes unused for more than ``max_unused_steps`` steps by random candidates.

    codebook [K, D], candidates [N, D] (e.g. recent encoder outputs; subsample large batches,
    the choice sorts N), candidate_mask [N] bool (optional, padding excluded). Dead codes take
    distinct candidates while there are enough valid ones (then they cycle). Restarted codes
    get ``ema_count = 1``, ``ema_sum = candidate`` (so ``ema_codebook`` returns the candidate),
    ``usage = 0`` and ``steps_unused = 0``. Returns ``(codebook, stats, num_restarted int32)``.
    """
    candidates = jnp.asarray(candidates)
    N = candidates.shape[0]
    valid_N = jnp.ones((N,), bool) if candidate_mask is None else candidate_mask.astype(bool)
    num_valid = jnp.sum(valid_N.astype(jnp.int32))
    dead_K = (stats.steps_unused > max_unused_steps) & (num_valid > 0)
    # Random order of the candidates with the valid ones first; the r-th dead code takes the
    # r-th candidate of that order.
    priority = jnp.where(valid_N, jax.random.uniform(key, (N,)), -1.0)
    order_N = jnp.argsort(-priority)
    rank_K = jnp.cumsum(dead_K.astype(jnp.int32)) - 1
    pick_K = order_N[jnp.mod(rank_K, jnp.maximum(num_valid, 1))]
    new_KD = jax.lax.stop_gradient(candidates[pick_K]).astype(jnp.float32)

    dead_KD = dead_K[:, None]
    codebook = jnp.where(dead_KD, new_KD.astype(codebook.dtype), codebook)
    stats = VQStats(
        usage=jnp.where(dead_K, 0.0, stats.usage),
        ema_count=jnp.where(dead_K, 1.0, stats.ema_count),
        ema_sum=jnp.where(dead_KD, new_KD, stats.ema_sum),
        steps_unused=jnp.where(dead_K, 0, stats.steps_unused).astype(jnp.int32),
    )
    return codebook, stats, jnp.sum(dead_K.astype(jnp.int32))


def codebook_metrics(counts: jax.Array) -> Dict[str, jax.Array]:
    """``vq_perplexity`` (exp entropy of the assignment distribution) and ``vq_usage`` (fraction
    of codes assigned at least once) from ``counts [K]``."""
    perplexity, usage = _perplexity_usage(jnp.asarray(counts, jnp.float32))
    return {"vq_perplexity": perplexity, "vq_usage": usage}


def dead_code_count(stats: VQStats, max_unused_steps: int) -> jax.Array:
    """``vq_dead_codes``: number of codes unused for more than ``max_unused_steps`` steps."""
    return jnp.sum((stats.steps_unused > max_unused_steps).astype(jnp.int32))
