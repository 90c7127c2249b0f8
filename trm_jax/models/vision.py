"""The pixel path: an image encoded into capsule positions of the TRM's hidden sequence.

Shapes: batch ``B``, image ``H x W`` RGB, patch side ``p``, patches ``N = (H/p) * (W/p)`` on a
``gh x gw`` grid, hidden ``D``, capsules ``k``, children per capsule ``m``.

The encoder (docs/vision.md) is 2-D and has no RoPE: patches are embedded by one linear map plus
learned row and column embeddings, mixed by TRM blocks (the same ``Block`` code as the reasoning
module, bidirectional), then pooled into ``k`` capsules, by ``k`` learned queries that attend to
the patches or by fixed rectangular regions of the patch grid. The capsules become positions
between the puzzle prefix and the tokens, where the 1-D sequence (RoPE) takes over. With
``vision_shared`` (the PyTorch system's ``trm_unified``) the encoder has no blocks of its own: the
TRM's recursion runs over the patch tokens first (``TRMInner.encode_patches``).

Rows whose batch entry ``causal`` is 1 are read left to right: :func:`prefix_lm_bias` lets every
position see the prefix and the capsules and a token see no later token.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trm_jax.models.config import ModelConfig
from trm_jax.models.layers import casted_dense, rms_norm, trunc_normal_init

# An additive attention bias that removes a key: finite so float16 attention stays NaN-free.
_MASKED = -65504.0


def patchify(image_BHWC: jax.Array, patch: int) -> jax.Array:
    """``[B, H, W, C]`` uint8 -> ``[B, N, p*p*C]`` float32 in [0, 1], patches row-major, *inverted*:
    white paper is 0, so a blank patch embeds to the bias alone and ink (or an ARC colour) is the
    signal (with white at 1 a constant dominated every patch and the encoder learned far slower)."""
    B, H, W, C = image_BHWC.shape
    x = 1.0 - image_BHWC.astype(jnp.float32) * (1.0 / 255.0)
    x = x.reshape(B, H // patch, patch, W // patch, patch, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


def region_split(grid: Tuple[int, int], k: int) -> Tuple[int, int]:
    """``(rows, columns)`` of regions, ``rows * columns = k``, whose cells are the most square on a
    ``grid`` of patches (each of ``rows``/``columns`` at most the grid's side)."""
    gh, gw = grid
    pairs = [(r, k // r) for r in range(1, k + 1) if k % r == 0 and r <= gh and k // r <= gw]
    if not pairs:
        raise ValueError(f"{k} regions do not fit a {gh}x{gw} patch grid")
    return min(pairs, key=lambda rc: (abs(math.log((gh / rc[0]) / (gw / rc[1]))), rc))


def region_ids(grid: Tuple[int, int], k: int) -> np.ndarray:
    """``[N]`` int32: the region (row-major, ``region_split``) each patch of a ``grid`` falls in.
    Regions tile the grid; with a side not divisible by the split they differ by at most one patch."""
    gh, gw = grid
    rows, cols = region_split(grid, k)
    r = np.arange(gh) * rows // gh
    c = np.arange(gw) * cols // gw
    return (r[:, None] * cols + c[None, :]).reshape(-1).astype(np.int32)


def encoder_config(cfg: ModelConfig) -> ModelConfig:
    """The block config of the encoder's own TRM module: the model's, bidirectional, with attention."""
    changes = {"causal": False}
    if getattr(cfg, "mlp_t", False):  # the token-mixing MLP is sized for the 1-D sequence, not the patches
        changes["mlp_t"] = False
    return dataclasses.replace(cfg, **changes)


class PatchEmbed(nn.Module):
    """``image [B, H, W, 3] uint8 -> [B, N, D]`` unit-RMS patch tokens: a linear map of each patch
    plus learned row and column embeddings (2-D positions; no RoPE in the encoder)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, image_BHWC: jax.Array) -> jax.Array:
        cfg = self.cfg
        gh, gw = cfg.patch_grid
        D = cfg.hidden_size
        x_BNP = patchify(image_BHWC, cfg.patch_size).astype(cfg.dtype)
        x_BND = casted_dense(D, True, cfg.dtype, "patch_proj")(x_BNP)
        # Small row and column tables (std 0.02, as ViT's): at unit scale they drowned the pixels'
        # content after the norm, and reading random letters barely learned (docs/vision.md).
        row = self.param("pos_row", trunc_normal_init(0.02), (gh, D), jnp.float32)
        col = self.param("pos_col", trunc_normal_init(0.02), (gw, D), jnp.float32)
        pos_ND = (row[:, None] + col[None, :]).reshape(gh * gw, D)
        return rms_norm(x_BND + pos_ND.astype(cfg.dtype), cfg.rms_norm_eps)


class CapsulePool(nn.Module):
    """``patch tokens [B, N, D] -> capsules [B, k, D]`` (unit RMS), and with ``num_children`` > 0
    also ``children [B, k, m, D]`` from a finer pooling (HESC's expandable capsules).

    ``queries``: ``k`` (and ``k*m`` child) learned queries attend to the patches (Flax's multi-head
    attention). ``regions``: the mean of each fixed region of the patch grid (:func:`region_ids`;
    children: the ``m`` sub-regions of each region) plus a learned embedding of the region, projected.
    """

    cfg: ModelConfig
    num_capsules: int
    num_children: int = 0

    @nn.compact
    def __call__(self, h_BND: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
        cfg = self.cfg
        k, m, D = self.num_capsules, self.num_children, cfg.hidden_size
        if cfg.vision_pooling == "queries":
            attend = nn.MultiHeadDotProductAttention(num_heads=cfg.num_heads, dtype=cfg.dtype, param_dtype=jnp.float32,
                                                     qkv_features=D, out_features=D, name="attend")
            queries = self.param("queries", trunc_normal_init(1.0), (k + k * m, D), jnp.float32)
            q_BQD = jnp.broadcast_to(queries.astype(cfg.dtype), (h_BND.shape[0],) + queries.shape)
            pooled = rms_norm(attend(q_BQD, h_BND), cfg.rms_norm_eps)
            caps = pooled[:, :k]
            children = pooled[:, k:].reshape(-1, k, m, D) if m else None
            return caps, children
        caps = self._regions(h_BND, k, "capsule")
        if not m:
            return caps, None
        # Children: the grid cut into k*m regions, renumbered so capsule j's m children are its
        # own sub-regions (rows x columns of each region split the same way).
        children = self._regions(h_BND, k * m, "child", parent_regions=k)
        return caps, children.reshape(-1, k, m, D)

    def _regions(self, h_BND: jax.Array, n: int, name: str, parent_regions: int = 0) -> jax.Array:
        cfg = self.cfg
        ids = region_ids(cfg.patch_grid, n)
        if parent_regions:
            ids = _child_order(cfg.patch_grid, parent_regions, n // parent_regions)
        onehot_NR = jax.nn.one_hot(ids, n, dtype=jnp.float32)
        mean_BRD = jnp.einsum("bnd,nr->brd", h_BND.astype(jnp.float32), onehot_NR) / onehot_NR.sum(0)[:, None]
        pos = self.param(f"{name}_pos", trunc_normal_init(0.02), (n, cfg.hidden_size), jnp.float32)  # as PatchEmbed's
        out = casted_dense(cfg.hidden_size, True, cfg.dtype, f"{name}_proj")(mean_BRD.astype(cfg.dtype))
        return rms_norm(out + pos.astype(cfg.dtype), cfg.rms_norm_eps)


def _child_order(grid: Tuple[int, int], k: int, m: int) -> np.ndarray:
    """``[N]`` child index ``j * m + i`` of each patch: region ``j`` of ``region_ids(grid, k)`` cut into
    ``m`` sub-regions by ``region_split`` of its own shape."""
    gh, gw = grid
    rows, cols = region_split(grid, k)
    r_of = np.arange(gh) * rows // gh
    c_of = np.arange(gw) * cols // gw
    out = np.zeros((gh, gw), np.int32)
    for R in range(rows):
        rr = np.flatnonzero(r_of == R)
        for C in range(cols):
            cc = np.flatnonzero(c_of == C)
            sub = region_ids((len(rr), len(cc)), m).reshape(len(rr), len(cc))
            out[np.ix_(rr, cc)] = (R * cols + C) * m + sub
    return out.reshape(-1)


def prefix_lm_bias(causal_B: jax.Array, total_len: int, first_token: int) -> jax.Array:
    """``[B, 1, S, S]`` additive attention bias: for a row with ``causal`` true, position ``i`` sees
    position ``j`` iff ``j < first_token`` (the prefix and the image capsules) or ``first_token <= j
    <= i``; the prefix sees no token (so a token cannot read a later one through it). Other rows
    see everything."""
    i = jnp.arange(total_len)[:, None]
    j = jnp.arange(total_len)[None, :]
    allowed_SS = (j < first_token) | ((i >= first_token) & (j <= i))
    masked_BSS = causal_B.astype(bool)[:, None, None] & ~allowed_SS[None]
    return jnp.where(masked_BSS, _MASKED, 0.0).astype(jnp.float32)[:, None]


def greedy_read(run_logits, inputs_BL: jax.Array, length: jax.Array | int | None = None) -> jax.Array:
    """Tokens ``[B, L]`` generated left to right: at step ``t`` the inputs are ``[x_0, y_0 .. y_{t-1},
    pad ...]`` (``x_0 = inputs_BL[:, 0]``, the begin token) and ``y_t`` is the argmax of
    ``run_logits(inputs)[:, t]`` (every supervision step of a fresh evaluation per token: exact,
    without a key/value cache). ``length`` (may be traced): generate only the first ``length``
    tokens (the rest 0), e.g. the longest labelled line of a batch padded to a 900-token grid."""
    B, L = inputs_BL.shape

    def step(t, carry):
        tokens_BL, gen_BL = carry
        y_B = jnp.argmax(run_logits(tokens_BL)[:, t], axis=-1).astype(jnp.int32)
        gen_BL = gen_BL.at[:, t].set(y_B)
        # The next input position reads this token (the last one feeds nothing).
        tokens_BL = jnp.where(jnp.arange(L)[None] == t + 1, y_B[:, None], tokens_BL)
        return tokens_BL, gen_BL

    start = jnp.zeros((B, L), jnp.int32).at[:, 0].set(inputs_BL[:, 0])
    _, gen_BL = jax.lax.fori_loop(0, L if length is None else length, step, (start, jnp.zeros((B, L), jnp.int32)))
    return gen_BL


def read_length(labels_BL: jax.Array, causal_B: jax.Array, ignore: int = -100) -> jax.Array:
    """The tokens greedy reading must generate: one past the last labelled position of any row read
    left to right (0 when there is none)."""
    L = labels_BL.shape[1]
    labelled = (labels_BL != ignore) & causal_B.astype(bool)[:, None]
    return jnp.max(jnp.where(labelled, jnp.arange(1, L + 1)[None], 0))


def reading_metrics(gen_BL: jax.Array, labels_BL: jax.Array, causal_B: jax.Array, ignore: int = -100) -> dict:
    """Sums over the ``causal`` rows of a batch: ``char_accuracy`` (each row's share of labelled
    positions, the end token included, generated right), ``line_accuracy`` (rows entirely right)
    and ``read_count`` (the rows)."""
    valid = labels_BL != ignore
    rows = causal_B.astype(bool) & valid.any(-1)
    right = (gen_BL == labels_BL) & valid
    per_row = right.sum(-1) / jnp.maximum(valid.sum(-1), 1)
    line = jnp.all(right | ~valid, axis=-1)
    f = jnp.float32
    return {"char_accuracy": jnp.where(rows, per_row, 0.0).sum().astype(f),
            "line_accuracy": (rows & line).sum().astype(f), "read_count": rows.sum().astype(f)}
