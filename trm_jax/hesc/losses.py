"""HESC total loss and metrics (docs/architecture.md#hesc-loss, weights configurable in HESCConfig).

    loss = lm + w_qh (q_halt + q_continue) + w_rec reconstruction + w_exp expansion + w_vq vq
           + w_dqn(step) dqn + w_mtp mtp - w_ent entropy(Q) + rnd

Every term is a *sum over rows* (like the TRM's lm_loss), so the trainer's division by the
global batch size turns it into a per-example mean. Each term can move the model:

* expansion: the *expected* expansion cost under the Q-head's action distribution,
  ``softmax(Q / T)[EXPAND] * m * cost_per_child`` (the realised cost is a count, with no gradient);
* reconstruction: predicts the input capsules (cosine) and their checksums from ``z_H``;
* rnd: trains the curiosity predictor only.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from trm_jax.hesc import capsules as caps
from trm_jax.hesc import dqn
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.mtp import mtp_loss
from trm_jax.hesc.qheads import CONTINUE, EXPAND, HALT
from trm_jax.losses import LOSS_FNS, act_loss_terms
from trm_jax.models.carry import ACTCarry


def hesc_loss(cfg: HESCConfig, new_carry: ACTCarry, out: Mapping[str, Any], *, temperature: jax.Array,
              expansion_cost: jax.typing.ArrayLike = None,
              dqn_terms: Optional[Tuple[jax.Array, Mapping[str, jax.Array]]] = None,
              dqn_weight: jax.Array = 0.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Total loss (scalar, summed over rows) and metrics of one HESC ACT step.

    The TRM's ACT loss (``lm + w_qh (q_halt + q_continue)``; ``w_qh = loss_q_halt_weight``, the
    reference's 0.5) plus the enabled extensions' terms. ``expansion_cost``: the (annealed) cost per
    child this step (default: ``expansion_cost_per_child``). Metrics: the TRM's reference sums
    (``count``, ``accuracy``, ..., ``lm_loss``, ``q_halt_loss``) plus per-step HESC values (means
    over rows) named as in docs/hesc.md.
    """
    terms, metrics = act_loss_terms(new_carry, out, cfg.loss_type)
    B = out["logits"].shape[0]
    f32 = jnp.float32
    loss = terms["lm_loss"] + cfg.loss_q_halt_weight * (terms["q_halt_loss"] + terms["q_continue_loss"])
    cost_per_child = cfg.expansion_cost_per_child if expansion_cost is None else expansion_cost

    if cfg.q_head_num_actions == 3:
        q = out["q_values"].astype(f32)
        probs = jax.nn.softmax(q / temperature, axis=-1)
        if cfg.enable_capsule_expansion:
            expected_cost = probs[:, EXPAND] * (cfg.m * cost_per_child)
            loss = loss + cfg.loss_expansion_weight * expected_cost.sum()
            metrics["expansion_loss"] = jax.lax.stop_gradient(expected_cost.mean())
        if cfg.enable_entropy_regularization:
            entropy = dqn.action_entropy(q, temperature)
            bonus = cfg.entropy_regularization_weight * entropy.sum()
            loss = loss - bonus
            metrics["q_entropy"] = jax.lax.stop_gradient(entropy.mean())
            # The PyTorch system's name: the (negative) term added to the loss, per row.
            metrics["entropy_bonus"] = jax.lax.stop_gradient(-bonus / B)

    if cfg.enable_capsule_expansion:
        conf_loss = confidence_loss(cfg, new_carry, out)
        loss = loss + cfg.loss_confidence_weight * conf_loss
        metrics["confidence_loss"] = jax.lax.stop_gradient(conf_loss) / B

    if cfg.enable_capsules and cfg.enable_reconstruction:
        # Masked capsules (capsules mode) are not reconstructed: their content never reaches the model.
        target = new_carry.extras.capsule_target
        rec_loss, rec_metrics = caps.reconstruction_loss(
            out["recon"], jax.lax.stop_gradient(out["capsule_sketches"]), out["checksum_pred"],
            jax.lax.stop_gradient(out["capsule_checksums"]), mask=None if target is None else ~target)
        loss = loss + cfg.loss_reconstruction_weight * B * rec_loss
        metrics.update({k: jax.lax.stop_gradient(v) for k, v in rec_metrics.items()})

    vq = out["cycle_stats"].get("vq")
    if vq is not None:
        loss = loss + cfg.loss_vq_weight * B * vq["loss"]
        metrics.update(vq_loss=vq["loss"], vq_codebook_loss=vq["codebook_loss"],
                       vq_commitment_loss=vq["commitment_loss"], vq_perplexity=vq["perplexity"],
                       vq_usage=vq["usage"])

    if cfg.enable_mtp:
        m_loss, m_metrics = mtp_loss(out["mtp_logits"], new_carry.current_data["labels"], LOSS_FNS[cfg.loss_type])
        loss = loss + cfg.loss_mtp_weight * m_loss
        # Both come back summed over rows (like lm_loss); log per-row means.
        metrics.update({k: jax.lax.stop_gradient(v) / B for k, v in m_metrics.items()})

    if "rnd_loss" in out:
        loss = loss + B * out["rnd_loss"]
        metrics["rnd_loss"] = jax.lax.stop_gradient(out["rnd_loss"])

    if dqn_terms is not None:
        td, td_metrics = dqn_terms
        loss = loss + dqn_weight * B * td
        metrics["dqn_loss"] = jax.lax.stop_gradient(td)
        metrics["dqn_weight"] = jnp.asarray(dqn_weight, f32)
        metrics.update({k: jax.lax.stop_gradient(v) for k, v in td_metrics.items()})
        # The PyTorch system's names for the same quantities (its dashboards read these).
        metrics["dqn_td_error_mean"] = metrics["dqn_td_error"]
        metrics["dqn_target_mean"] = metrics["dqn_target_q_mean"]

    if cfg.q_head_num_actions == 3:
        metrics.update(action_metrics(cfg, out))
    mem = out["cycle_stats"].get("memory")
    if mem is not None:
        metrics["memory_similarity_mean"] = jnp.mean(mem["similarity"]).astype(f32)
        metrics["memory_read_norm"] = jnp.asarray(mem["read_norm"], f32)
    if "planning_entropy" in out:
        metrics["planning_entropy"] = jnp.mean(out["planning_entropy"]).astype(f32)
    metrics["hcycles_mean"] = jnp.mean(out["hcycles"]).astype(f32)
    return loss, metrics


def confidence_loss(cfg: HESCConfig, new_carry: ACTCarry, out: Mapping[str, Any]) -> jax.Array:
    """BCE of the capsule-confidence logits against how right each capsule's part of the answer is.

    Tokens mode: the accuracy of the tokens of the capsule's grid region; capsules mode: whether
    the (masked) capsule's concept is predicted right; pixels mode: the row's token accuracy, the
    same for each of its capsules (no token belongs to one capsule: a pooling query may attend to any
    patch, and a line of text or an output grid is not laid out like the image's regions), over rows
    with a labelled token. Summed over rows, mean over capsules.
    """
    logits = out["confidence"].astype(jnp.float32)
    labels = new_carry.current_data["labels"]
    valid = labels != -100
    correct = jax.lax.stop_gradient(out["token_correct"]).astype(jnp.float32)
    if cfg.mode == "tokens":
        region = caps.grid_region_ids(cfg.capsule_grid, cfg.capsule_regions)
        target = caps.region_accuracy(correct, valid, region, cfg.k)
        weight = jnp.ones_like(target)
    elif cfg.mode == "pixels":
        counts = valid.sum(-1, keepdims=True).astype(jnp.float32)
        row_accuracy = (correct * valid).sum(-1, keepdims=True) / jnp.maximum(counts, 1.0)
        target = jnp.broadcast_to(row_accuracy, logits.shape)
        weight = jnp.broadcast_to((counts > 0).astype(jnp.float32), logits.shape)
    else:
        target, weight = correct, valid.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, target)
    return ((bce * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1.0)).sum()


def action_metrics(cfg: HESCConfig, out: Mapping[str, Any]) -> Dict[str, jax.Array]:
    """Per-step action counts, Q means, expansions (the PyTorch system's names)."""
    f32 = jnp.float32
    actions, q = out["actions"], out["q_values"].astype(f32)
    B = actions.shape[0]
    m = {"q_continue_mean": q[:, CONTINUE].mean(), "q_halt_mean": q[:, HALT].mean()}
    names = ["action_0_continue", "action_1_halt"] + (["action_2_expand"] if cfg.q_head_num_actions == 3 else [])
    for a, name in enumerate(names):
        m[name] = (actions == a).sum().astype(f32)
    if cfg.q_head_num_actions == 3:
        m["q_expand_mean"] = q[:, EXPAND].mean()
        m["action_expand_pct"] = 100.0 * (actions == EXPAND).sum().astype(f32) / B
    if cfg.enable_capsule_expansion:
        m["num_expansions"] = out["num_expansions"].astype(f32).mean()
        m["expansions_this_step"] = (out["expanded_index"] >= 0).sum().astype(f32)
        m["expansion_cost"] = out["expansion_cost"].mean()
    return {k: jax.lax.stop_gradient(v) for k, v in m.items()}
