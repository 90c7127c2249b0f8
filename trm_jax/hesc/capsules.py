"""Capsules: expandable summaries of the input, their state across ACT steps, and their heads.

A capsule is a *sketch* ``[Dc]`` (a coarse summary) with ``m`` *children* ``[m, Dc]`` (finer
summaries) and a *checksum* ``[R]`` (a fixed random projection of the children). Once a row
EXPANDs a capsule, the capsule's effective content becomes the aggregate of its children.

Shapes: batch ``B``, capsules ``k``, children per capsule ``m``, capsule width ``Dc`` (``D`` for
the grid encoder), checksum size ``R``, token sequence ``L``, puzzle prefix ``P``,
sequence ``S = P + k + L``.

Contents:

* :class:`CapsuleState` and its pure helpers (:func:`capsule_state_init`,
  :func:`effective_content`, :func:`with_content`, :func:`expand_capsules`);
* :func:`checksum_projection` (fixed, seeded, linear);
* :class:`GridCapsuleEncoder` and :func:`grid_region_ids` (capsules from a token grid);
* :func:`hierarchical_attention_bias` (additive attention bias from the capsule structure);
* :class:`ReconstructionHead` and :func:`reconstruction_loss`;
* :class:`CapsuleConfidence` and :func:`region_accuracy` (a target for it).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from trm_jax.models.layers import casted_dense, trunc_normal_init

AGGREGATES = ("mean", "max", "sum")


# --------------------------------------------------------------------------------------------
# State and expansion
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class CapsuleState:
    """Capsules of each batch row and which of them are expanded (rides in the ACT carry).

    Attributes:
      sketches: ``[B, k, Dc]`` coarse content of each capsule.
      children: ``[B, k, m, Dc]`` fine content (the capsule's ``m`` children).
      checksums: ``[B, k, R]`` fixed random projection of the children.
      expanded_mask: ``[B, k] bool``; True once the capsule has been expanded.
      num_expansions: ``[B] int32``; expansions made by the row so far.
    """

    sketches: jax.Array
    children: jax.Array
    checksums: jax.Array
    expanded_mask: jax.Array
    num_expansions: jax.Array


def _check_content(sketches: jax.Array, children: jax.Array, checksums: jax.Array) -> None:
    if children.ndim != 4 or sketches.ndim != 3 or checksums.ndim != 3:
        raise ValueError(f"expected sketches [B, k, Dc], children [B, k, m, Dc], checksums [B, k, R]; got "
                         f"{sketches.shape}, {children.shape}, {checksums.shape}")
    if children.shape[:2] != sketches.shape[:2] or checksums.shape[:2] != sketches.shape[:2] \
            or children.shape[-1] != sketches.shape[-1]:
        raise ValueError(f"capsule shapes disagree: sketches {sketches.shape}, children {children.shape}, "
                         f"checksums {checksums.shape}")


def capsule_state_init(sketches: jax.Array, children: jax.Array, checksums: jax.Array) -> CapsuleState:
    """A state with nothing expanded.

    Args:
      sketches: ``[B, k, Dc]``; children: ``[B, k, m, Dc]``; checksums: ``[B, k, R]``.
    """
    _check_content(sketches, children, checksums)
    B, k = sketches.shape[:2]
    return CapsuleState(sketches=sketches, children=children, checksums=checksums,
                        expanded_mask=jnp.zeros((B, k), jnp.bool_),
                        num_expansions=jnp.zeros((B,), jnp.int32))


def with_content(state: CapsuleState, sketches: jax.Array, children: jax.Array,
                 checksums: jax.Array) -> CapsuleState:
    """``state`` with fresh content (same shapes), keeping ``expanded_mask`` and ``num_expansions``.

    Used when the content is recomputed every step (grid encoder on token tasks).
    """
    _check_content(sketches, children, checksums)
    if sketches.shape[:2] != state.expanded_mask.shape:
        raise ValueError(f"new content has {sketches.shape[:2]} capsules, the state {state.expanded_mask.shape}")
    return state.replace(sketches=sketches, children=children, checksums=checksums)


def aggregate_children(children: jax.Array, aggregate: str = "mean") -> jax.Array:
    """``[..., m, Dc] -> [..., Dc]``: ``mean``, ``max`` or ``sum`` over the children."""
    if aggregate == "mean":
        return jnp.mean(children, axis=-2)
    if aggregate == "max":
        return jnp.max(children, axis=-2)
    if aggregate == "sum":
        return jnp.sum(children, axis=-2)
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def effective_content(state: CapsuleState, aggregate: str = "mean") -> jax.Array:
    """``[B, k, Dc]``: the sketch of each capsule, or the aggregate of its children once expanded."""
    agg = aggregate_children(state.children, aggregate).astype(state.sketches.dtype)
    return jnp.where(state.expanded_mask[..., None], agg, state.sketches)


def expand_capsules(state: CapsuleState, do_expand: jax.Array, confidence: jax.Array,
                    cost_per_child: jax.typing.ArrayLike,
                    blocked: Optional[jax.Array] = None) -> Tuple[CapsuleState, jax.Array, jax.Array]:
    """Expand, in every row with ``do_expand``, its least-confident unexpanded capsule.

    Args:
      state: the capsules.
      do_expand: ``[B] bool``, the rows that chose EXPAND.
      confidence: ``[B, k]``; the capsule with the lowest value among the unexpanded ones is
        expanded (ties: the lowest index; NaN counts as +inf, i.e. most confident).
      cost_per_child: cost of one expansion per child; an expansion costs ``cost_per_child * m``.
      blocked: ``[B, k] bool`` capsules that may never be expanded (capsules mode: the masked
        targets, whose children are the answer); None = none.

    Returns:
      ``(new_state, expanded_index [B] int32, cost [B] float32)``. ``expanded_index`` is -1 and
      the cost 0 where the row did not expand (``do_expand`` False, or every capsule already
      expanded); such rows are unchanged. Exactly one capsule changes in an expanding row.
    """
    k, m = state.children.shape[1:3]
    conf = jnp.asarray(confidence, jnp.float32)
    conf = jnp.where(jnp.isnan(conf), jnp.inf, conf)
    unavailable = state.expanded_mask if blocked is None else state.expanded_mask | blocked
    masked = jnp.where(unavailable, jnp.inf, conf)
    # The first available capsule attaining the minimum; robust to +inf confidences, which
    # a plain argmin over `masked` could confuse with unavailable capsules.
    candidate = (~unavailable) & (masked <= jnp.min(masked, axis=-1, keepdims=True))
    index = jnp.argmax(candidate, axis=-1).astype(jnp.int32)
    act = jnp.asarray(do_expand, jnp.bool_) & jnp.any(~unavailable, axis=-1)
    new_mask = state.expanded_mask | (jax.nn.one_hot(index, k, dtype=jnp.bool_) & act[:, None])
    new_state = state.replace(expanded_mask=new_mask,
                              num_expansions=state.num_expansions + act.astype(jnp.int32))
    expanded_index = jnp.where(act, index, -1)
    cost = jnp.where(act, jnp.asarray(cost_per_child, jnp.float32) * m, jnp.float32(0.0))
    return new_state, expanded_index, cost


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def checksum_projection(children: jax.Array, num_out: int, seed: int = 0) -> jax.Array:
    """A fixed random projection of the children: ``[..., m, Dc] -> [..., R=num_out]`` float32.

    ``flatten(children) @ G / sqrt(m * Dc)`` with ``G ~ N(0, 1)^[m*Dc, R]`` drawn from
    ``jax.random.key(seed)``: not learned, identical across calls for a seed, linear (so
    gradients flow through it to whatever produced the children).
    """
    *lead, m, dc = children.shape
    proj = jax.random.normal(jax.random.key(seed), (m * dc, num_out), jnp.float32) / math.sqrt(m * dc)
    flat = children.astype(jnp.float32).reshape(*lead, m * dc)
    return flat @ proj


# --------------------------------------------------------------------------------------------
# Capsules from a token grid
# --------------------------------------------------------------------------------------------


def _check_tiling(grid: int, regions: int, subregions: int = 1) -> None:
    if grid <= 0 or regions <= 0 or subregions <= 0:
        raise ValueError(f"grid, regions and subregions must be positive, got {grid}, {regions}, {subregions}")
    if grid % regions:
        raise ValueError(f"{regions} regions per side do not tile a {grid}x{grid} grid")
    if (grid // regions) % subregions:
        raise ValueError(f"{subregions} sub-regions per side do not tile a region of side {grid // regions}")


def grid_region_ids(grid: int, regions: int) -> np.ndarray:
    """``[L = grid*grid] int32``: the region of each token of a row-major grid.

    Region ``r * regions + c`` holds the tokens of rows ``[r*s, (r+1)*s)`` and columns
    ``[c*s, (c+1)*s)`` with ``s = grid // regions``. Static (NumPy), usable inside ``jit``.
    """
    _check_tiling(grid, regions)
    band = np.arange(grid) // (grid // regions)
    return (band[:, None] * regions + band[None, :]).reshape(-1).astype(np.int32)


class GridCapsuleEncoder(nn.Module):
    """Capsules from a token grid: ``k = regions**2`` regions of ``m = subregions**2`` children.

    ``__call__(token_emb [B, L, Din], valid [B, L] bool) -> (sketches [B, k, dim],
    children [B, k, m, dim], checksums [B, k, checksum_dim] float32)`` with ``L = grid*grid``
    row-major; capsules and children are numbered row-major (capsule ``k`` = ``grid_region_ids``).

    * sketch = ``sketch_proj(masked mean of the region) + region_row[r] + region_col[c]``;
    * child = ``child_out(silu(child_hidden(masked mean of the sub-region))) + sub_row[R] +
      sub_col[C]`` where ``(R, C)`` is the sub-region's position on the whole grid, so children
      (and their aggregate) also carry where their region is;
    * checksums = ``checksum_projection(children, checksum_dim, checksum_seed)``.

    Masked means ignore tokens with ``valid`` False (0 where a (sub-)region has none) and are
    taken in float32; projections compute in ``dtype``. The child projection is nonlinear, so
    the aggregate of the children is not a function of the sketch's mean alone.
    """

    grid: int
    regions: int
    subregions: int
    dim: int
    checksum_dim: int
    dtype: jnp.dtype = jnp.float32
    checksum_seed: int = 0
    # Row and column embeddings each get this std, so their sum has unit per-element scale
    # (the TRM's scaled inputs have roughly unit scale too).
    pos_std: float = 1.0 / math.sqrt(2.0)

    @property
    def num_capsules(self) -> int:
        return self.regions ** 2

    @property
    def num_children(self) -> int:
        return self.subregions ** 2

    @nn.compact
    def __call__(self, token_emb: jax.Array, valid: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
        _check_tiling(self.grid, self.regions, self.subregions)
        B, L, Din = token_emb.shape
        if L != self.grid * self.grid or valid.shape != (B, L):
            raise ValueError(f"expected token_emb [B, {self.grid * self.grid}, D] and valid [B, L]; "
                             f"got {token_emb.shape}, {valid.shape}")
        n, s = self.regions, self.subregions
        c = self.grid // (n * s)  # side of a sub-region in cells
        k, m, D = n * n, s * s, self.dim

        # Grid rows split as (region, sub-region, cell): row = (R * s + i) * c + a; same for columns.
        w = valid.astype(jnp.float32).reshape(B, n, s, c, n, s, c)
        x = token_emb.astype(jnp.float32).reshape(B, n, s, c, n, s, c, Din) * w[..., None]
        sub_sum = x.sum(axis=(3, 6)).transpose(0, 1, 3, 2, 4, 5).reshape(B, k, m, Din)
        sub_cnt = w.sum(axis=(3, 6)).transpose(0, 1, 3, 2, 4).reshape(B, k, m)
        sub_mean = sub_sum / jnp.maximum(sub_cnt, 1.0)[..., None]
        region_mean = sub_sum.sum(2) / jnp.maximum(sub_cnt.sum(2), 1.0)[..., None]

        def table(name: str, rows: int) -> jax.Array:
            return self.param(name, trunc_normal_init(self.pos_std), (rows, D), jnp.float32)

        region_pos = (table("region_row", n)[:, None] + table("region_col", n)[None, :]).reshape(k, D)
        sub_row = table("sub_row", n * s).reshape(n, s, D)
        sub_col = table("sub_col", n * s).reshape(n, s, D)
        # [R, C, i, j, D]: global sub-row R*s+i, sub-column C*s+j.
        sub_pos = (sub_row[:, None, :, None] + sub_col[None, :, None, :]).reshape(k, m, D)

        sketches = casted_dense(D, True, self.dtype, "sketch_proj")(region_mean.astype(self.dtype))
        sketches = sketches + region_pos.astype(self.dtype)
        hidden = nn.silu(casted_dense(D, True, self.dtype, "child_hidden")(sub_mean.astype(self.dtype)))
        children = casted_dense(D, True, self.dtype, "child_out")(hidden) + sub_pos.astype(self.dtype)
        checksums = checksum_projection(children, self.checksum_dim, self.checksum_seed)
        return sketches, children, checksums


# --------------------------------------------------------------------------------------------
# Hierarchical attention bias
# --------------------------------------------------------------------------------------------


def hierarchical_attention_bias(prefix: int, num_capsules: int, region_of_token: jax.Array,
                                strong: float = 0.0, weak: float = -1.0) -> jax.Array:
    """Additive attention bias ``[S, S]`` float32 for the sequence ``[prefix P | capsules k | tokens L]``.

    Each position gets a group: prefix positions -1, capsule ``i`` group ``i``, token ``t`` group
    ``region_of_token[t]``. A pair (query ``a``, key ``b``) gets ``strong`` when

    * either position is in the prefix (prefix rows and columns are unbiased), or
    * both are capsules (capsule-capsule), or
    * their groups are equal (a capsule and the tokens of its region, in both directions;
      tokens of the same region; a position with itself), or
    * either group is negative (a token given region -1 belongs to no region: unbiased);

    every other pair (a token and another region's capsule, tokens of different regions) gets
    ``weak``. The bias is symmetric. Add it to attention logits ``[B, H, S, S]`` (it broadcasts).

    Args:
      prefix: ``P`` (static). num_capsules: ``k`` (static).
      region_of_token: ``[L]`` int region of each token (e.g. :func:`grid_region_ids`).
    """
    region = jnp.asarray(region_of_token, jnp.int32)
    group = jnp.concatenate([jnp.full((prefix,), -1, jnp.int32),
                             jnp.arange(num_capsules, dtype=jnp.int32), region])
    is_capsule = jnp.concatenate([jnp.zeros((prefix,), jnp.bool_), jnp.ones((num_capsules,), jnp.bool_),
                                  jnp.zeros(region.shape, jnp.bool_)])
    related = ((group[:, None] == group[None, :]) | (group[:, None] < 0) | (group[None, :] < 0)
               | (is_capsule[:, None] & is_capsule[None, :]))
    return jnp.where(related, jnp.float32(strong), jnp.float32(weak))


# --------------------------------------------------------------------------------------------
# Heads on the capsule positions
# --------------------------------------------------------------------------------------------


class ReconstructionHead(nn.Module):
    """Reconstructs each capsule and its checksum from the model state at its position.

    ``__call__(z_caps [B, k, D]) -> (recon [B, k, out_dim], checksum_pred [B, k, checksum_dim])``,
    both float32 (two linear maps computed in ``dtype``).
    """

    out_dim: int
    checksum_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_caps: jax.Array) -> Tuple[jax.Array, jax.Array]:
        z = z_caps.astype(self.dtype)
        recon = casted_dense(self.out_dim, True, self.dtype, "recon_proj")(z)
        checksum_pred = casted_dense(self.checksum_dim, True, self.dtype, "checksum_proj")(z)
        return recon.astype(jnp.float32), checksum_pred.astype(jnp.float32)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    w = mask.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def reconstruction_loss(recon: jax.Array, target_sketches: jax.Array, checksum_pred: jax.Array,
                        target_checksums: jax.Array, mask: Optional[jax.Array] = None,
                        eps: float = 1e-8) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Cosine reconstruction of the capsules plus checksum MSE, averaged over ``mask``.

    Args:
      recon, target_sketches: ``[B, k, Dc]``. checksum_pred, target_checksums: ``[B, k, R]``.
      mask: ``[B, k] bool`` capsules that count (None: all); 0 loss when none count.

    Returns:
      ``(loss, metrics)`` with ``loss = mean(1 - cos(recon, target)) + mean_k(mean_R (pred -
      target)^2)`` and metrics ``reconstruction_loss`` (= loss), ``cos_sim_mean``,
      ``checksum_mse``. The targets are held fixed (``stop_gradient``): the loss moves the head
      and the model under it, never the targets — with learned targets (the grid encoder)
      a gradient through them would let the encoder collapse them.
    """
    target = jax.lax.stop_gradient(target_sketches).astype(jnp.float32)
    target_sum = jax.lax.stop_gradient(target_checksums).astype(jnp.float32)
    recon = recon.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(recon.shape[:-1], jnp.bool_)
    # Norms clamped at eps (as torch's cosine_similarity), with gradient-safe square roots.
    norm_r = jnp.sqrt(jnp.maximum(jnp.sum(recon * recon, -1), eps * eps))
    norm_t = jnp.sqrt(jnp.maximum(jnp.sum(target * target, -1), eps * eps))
    cos = jnp.sum(recon * target, -1) / (norm_r * norm_t)
    cos_mean = _masked_mean(cos, mask)
    checksum_mse = _masked_mean(jnp.mean(jnp.square(checksum_pred.astype(jnp.float32) - target_sum), -1), mask)
    loss = (1.0 - cos_mean) * jnp.any(mask) + checksum_mse
    return loss, {"reconstruction_loss": loss, "cos_sim_mean": cos_mean, "checksum_mse": checksum_mse}


class CapsuleConfidence(nn.Module):
    """A tiny head ``z_caps [B, k, D] -> confidence [B, k]`` float32 (a logit: higher = more sure).

    EXPAND opens the capsule with the lowest confidence. Train it with a BCE on the logit
    against e.g. :func:`region_accuracy`.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_caps: jax.Array) -> jax.Array:
        logit = casted_dense(1, True, self.dtype, "confidence_proj")(z_caps.astype(self.dtype))
        return logit[..., 0].astype(jnp.float32)


def region_accuracy(correct: jax.Array, valid: jax.Array, region_of_token: jax.Array,
                    num_regions: int) -> jax.Array:
    """``[B, k]`` float32: fraction of each region's valid tokens that are correct (1 if none valid).

    Args:
      correct: ``[B, L] bool`` per-token correctness. valid: ``[B, L] bool`` tokens that count.
      region_of_token: ``[L]`` int (ids outside ``[0, num_regions)`` count for no region).
    """
    onehot = jax.nn.one_hot(jnp.asarray(region_of_token), num_regions, dtype=jnp.float32)  # [L, k]
    w = valid.astype(jnp.float32)
    hits = (w * correct.astype(jnp.float32)) @ onehot
    total = w @ onehot
    return jnp.where(total > 0, hits / jnp.maximum(total, 1.0), 1.0)
