"""Multi-token prediction (DeepSeek-V3 style): sequential heads predicting targets further ahead.

Shapes: batch ``B``, token sequence ``L``, hidden ``D``, vocabulary ``V``, depths ``Dp``.

Position ``t`` of the main model predicts ``labels[t]``. MTP depth ``d`` (1-based) at
position ``t`` predicts ``labels[t + d]`` from

    h_d = rms_norm(h_{d-1} + SwiGLU(Dense(concat(rms_norm(h_{d-1}), rms_norm(emb(labels[t + d - 1]))))))

with ``h_0 = h`` (the trunk's ``z_H`` at the token positions). Teacher forcing: depth ``d``
sees the *true* target ``t + d - 1`` (the one depth ``d - 1`` predicts), so the depths form a
causal chain over the targets, as in DeepSeek-V3; each depth has its own output projection.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trm_jax.losses import IGNORE_LABEL_ID
from trm_jax.models.layers import SwiGLU, casted_dense, rms_norm

# loss_fn(logits [..., V], labels [...]) -> per-token CE [...], 0 where labels == -100.
TokenLossFn = Callable[[jax.Array, jax.Array], jax.Array]


def shift_left(x: jax.Array, shift: int, fill: Any) -> jax.Array:
    """``out[:, t] = x[:, t + shift]`` along axis 1, ``fill`` past the end; static ``shift >= 0``."""
    if shift == 0:
        return x
    L = x.shape[1]
    pad = jnp.full((x.shape[0], min(shift, L)) + x.shape[2:], fill, x.dtype)
    return jnp.concatenate([x[:, shift:], pad], axis=1)


def mtp_targets(labels_BL: jax.Array, depth: int) -> jax.Array:
    """Targets of MTP depth ``depth``: ``labels`` shifted left by ``depth`` ``[B, L]``, -100 past the end."""
    return shift_left(labels_BL, depth, IGNORE_LABEL_ID)


class MTPBlock(nn.Module):
    """One MTP depth: ``(h_prev [B, L, D], emb [B, L, D]) -> (h [B, L, D], logits [B, L, V])``."""

    vocab_size: int
    expansion: float = 4.0
    rms_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_prev: jax.Array, emb: jax.Array) -> Tuple[jax.Array, jax.Array]:
        D = h_prev.shape[-1]
        eps = self.rms_norm_eps
        joined = jnp.concatenate([rms_norm(h_prev, eps), rms_norm(emb.astype(h_prev.dtype), eps)], axis=-1)
        u = casted_dense(D, False, self.dtype, "proj")(joined.astype(self.dtype))
        # Post-norm residual like the TRM's blocks, so every depth sees unit-scale inputs.
        h = rms_norm(h_prev.astype(self.dtype) + SwiGLU(D, self.expansion, self.dtype, name="mlp")(u), eps)
        return h, casted_dense(self.vocab_size, False, self.dtype, "head")(h)


class MTPHeads(nn.Module):
    """``(h [B, L, D], prev_token_emb [B, L, D]) -> logits [num_depths, B, L, V]`` (in ``dtype``).

    ``prev_token_emb[:, t]`` is the embedding of the *target* ``labels[t]`` (the caller embeds
    ``labels`` with -100 replaced by 0); depth ``d`` reads it shifted left by ``d - 1`` (zeros
    past the end), so ``logits[d - 1, :, t]`` predicts ``mtp_targets(labels, d)[:, t]``.
    Submodules ``depth_1 .. depth_{num_depths}`` (:class:`MTPBlock`), float32 parameters.
    """

    num_depths: int
    vocab_size: int
    dtype: Any = jnp.float32
    expansion: float = 4.0
    rms_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, h_BLD: jax.Array, prev_token_emb: jax.Array) -> jax.Array:
        if self.num_depths < 1:
            raise ValueError(f"num_depths must be >= 1, got {self.num_depths}")
        if prev_token_emb.shape != h_BLD.shape:
            raise ValueError(f"prev_token_emb {prev_token_emb.shape} must match h {h_BLD.shape}")
        h = h_BLD
        logits = []
        for d in range(1, self.num_depths + 1):
            emb = shift_left(prev_token_emb, d - 1, 0)
            h, logits_BLV = MTPBlock(self.vocab_size, self.expansion, self.rms_norm_eps, self.dtype,
                                     name=f"depth_{d}")(h, emb)
            logits.append(logits_BLV)
        return jnp.stack(logits, axis=0)


def mtp_loss(logits_DBLV: jax.Array, labels_BL: jax.Array, loss_fn: TokenLossFn,
             row_mask_B: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """MTP loss: the mean over depths of the reference lm_loss ``sum_b sum_t CE / max(1, count_b)``.

    Args:
      logits_DBLV: ``[Dp, B, L, V]`` from :class:`MTPHeads`.
      labels_BL: ``[B, L]`` the main targets (-100 ignored); depth ``d`` uses ``mtp_targets(labels, d)``.
      loss_fn: per-token CE, e.g. ``trm_jax.losses.stablemax_cross_entropy`` or ``softmax_cross_entropy``.
      row_mask_B: ``[B]`` bool, rows counted in ``mtp_accuracy`` (None = all rows); e.g. the
        halted rows, to match the TRM's ``accuracy`` metric.

    Returns:
      ``loss`` scalar float32 — like the TRM's ``lm_loss`` a *sum* over rows (normalised by
      the global batch size when logged); metrics ``{"mtp_loss": stop_gradient(loss),
      "mtp_accuracy": mean over depths of sum_b (correct_b / max(1, count_b))}`` over the
      masked rows (normalised by ``count`` when logged, as ``accuracy`` is).
    """
    num_depths = logits_DBLV.shape[0]
    targets_DBL = jnp.stack([mtp_targets(labels_BL, d) for d in range(1, num_depths + 1)], axis=0)
    valid_DBL = targets_DBL != IGNORE_LABEL_ID
    divisor_DB1 = jnp.maximum(valid_DBL.sum(-1), 1)[..., None].astype(jnp.float32)

    ce_DBL = loss_fn(logits_DBLV, targets_DBL)
    loss = jnp.mean(jnp.sum(ce_DBL / divisor_DB1, axis=(1, 2)))

    correct_DBL = valid_DBL & (jnp.argmax(logits_DBLV, axis=-1) == targets_DBL)
    acc_DB = jnp.sum(correct_DBL.astype(jnp.float32) / divisor_DB1, axis=-1)
    if row_mask_B is not None:
        acc_DB = jnp.where(row_mask_B[None, :], acc_DB, 0.0)
    metrics = {"mtp_loss": jax.lax.stop_gradient(loss), "mtp_accuracy": jnp.mean(jnp.sum(acc_DB, axis=-1))}
    return loss, metrics
