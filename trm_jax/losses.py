"""ACT loss head: stable-max / softmax cross-entropy, Q-halt and Q-continue BCE, metrics.

Reference: ``ACTLossHead`` (docs/architecture.md#loss). Losses and metrics are *sums over the
batch*, ready to be summed across devices/hosts; :func:`normalize_metrics`
turns them into the logged means (losses / global batch, the rest / count).
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from trm_jax.models.carry import ACTCarry

IGNORE_LABEL_ID = -100


def log_stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """``log(s(x) / sum s(x))`` with ``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)`` otherwise.

    Computed in float32 from ``log s`` (``log1p``) for accuracy; both branches are
    kept finite so gradients through ``where`` are never NaN.
    """
    x = logits.astype(jnp.float32)
    x_pos, x_neg = jnp.maximum(x, 0.0), jnp.minimum(x, 0.0)
    s = jnp.where(x >= 0, x_pos + 1.0, 1.0 / (1.0 - x_neg))
    log_s = jnp.where(x >= 0, jnp.log1p(x_pos), -jnp.log1p(-x_neg))
    return log_s - jnp.log(jnp.sum(s, axis=axis, keepdims=True))


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array,
                            ignore_index: int = IGNORE_LABEL_ID) -> jax.Array:
    """Per-token stable-max CE ``[...]``; 0 where ``labels == ignore_index``."""
    valid = labels != ignore_index
    safe_labels = jnp.where(valid, labels, 0)
    logp = jnp.take_along_axis(log_stablemax(logits), safe_labels[..., None], axis=-1)[..., 0]
    return jnp.where(valid, -logp, 0.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          ignore_index: int = IGNORE_LABEL_ID) -> jax.Array:
    """Per-token softmax CE in float32 ``[...]``; 0 where ``labels == ignore_index``."""
    valid = labels != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.where(valid, ce, 0.0)


LOSS_FNS = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def act_loss_terms(new_carry: ACTCarry, outputs: Mapping[str, jax.Array],
                   loss_type: str = "stablemax_cross_entropy") -> Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]:
    """The ACT loss head's differentiable terms and metric sums (see :func:`act_loss`).

    Returns ``({"lm_loss", "q_halt_loss", "q_continue_loss"}, metrics)``.
    """
    labels_BL = new_carry.current_data["labels"]
    logits_BLV = outputs["logits"]
    q_halt_B = outputs["q_halt_logits"]

    mask_BL = labels_BL != IGNORE_LABEL_ID
    counts_B = mask_BL.sum(-1)
    divisor_B = jnp.maximum(counts_B, 1)[:, None]

    preds_BL = jnp.argmax(logits_BLV, axis=-1)
    correct_BL = mask_BL & (preds_BL == labels_BL)
    seq_correct_B = correct_BL.sum(-1) == counts_B
    valid_B = new_carry.halted & (counts_B > 0)

    terms = {
        "lm_loss": (LOSS_FNS[loss_type](logits_BLV, labels_BL) / divisor_B).sum(),
        "q_halt_loss": optax.sigmoid_binary_cross_entropy(q_halt_B, seq_correct_B.astype(q_halt_B.dtype)).sum(),
        "q_continue_loss": jnp.zeros((), jnp.float32),
    }
    if "target_q_continue" in outputs:
        terms["q_continue_loss"] = optax.sigmoid_binary_cross_entropy(outputs["q_continue_logits"],
                                                                      outputs["target_q_continue"]).sum()
    f32 = jnp.float32
    metrics = {
        "count": valid_B.sum().astype(f32),
        "accuracy": jnp.where(valid_B, (correct_BL.astype(f32) / divisor_B).sum(-1), 0.0).sum(),
        "exact_accuracy": (valid_B & seq_correct_B).sum().astype(f32),
        "q_halt_accuracy": (valid_B & ((q_halt_B >= 0) == seq_correct_B)).sum().astype(f32),
        "steps": jnp.where(valid_B, new_carry.steps, 0).sum().astype(f32),
        **{k: jax.lax.stop_gradient(v) for k, v in terms.items()},
    }
    return terms, metrics


def act_loss(new_carry: ACTCarry, outputs: Mapping[str, jax.Array],
             loss_type: str = "stablemax_cross_entropy") -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Loss and metric sums of one ACT step.

    Labels are the carry's ``current_data['labels']`` (the examples the rows are
    working on after the reset). ``loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)``,
    with ``lm_loss = sum_b sum_t CE(b, t) / max(1, count_b)``. Metrics count only
    rows that halted this step and have at least one label.
    """
    terms, metrics = act_loss_terms(new_carry, outputs, loss_type)
    return terms["lm_loss"] + 0.5 * (terms["q_halt_loss"] + terms["q_continue_loss"]), metrics


def normalize_metrics(sums: Mapping[str, float], global_batch_size: int) -> Dict[str, float]:
    """Reference normalisation: ``*loss`` / global batch size, other metrics / count.

    ``count`` itself is kept as the number of rows that halted.
    """
    count = max(float(sums.get("count", 0.0)), 1.0)
    out = {}
    for k, v in sums.items():
        if k == "count":
            out[k] = float(v)
        elif k.endswith("loss"):
            out[k] = float(v) / global_batch_size
        else:
            out[k] = float(v) / count
    return out
