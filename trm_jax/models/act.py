"""Adaptive Computation Time (ACT): one supervision step as a pure function of the carry.

Semantics follow the reference ``TinyRecursiveReasoningModel_ACTV1.forward``
(docs/architecture.md#act): halted rows are reset and load the new batch's example, the
recursion runs once, ``steps`` advances, and rows halt at ``halt_max_steps``
(or, while training, when the Q-head says so, subject to exploration).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from trm_jax.models.carry import ACTCarry
from trm_jax.models.config import ModelConfig


def row_where(mask_B: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``where(mask, a, b)`` with ``mask [B]`` broadcast over the trailing axes."""
    return jnp.where(mask_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def halting_decision(steps_B: jax.Array, wants_halt_B: jax.Array, cfg: ModelConfig, train: bool,
                     rng: Optional[jax.Array], active: bool) -> jax.Array:
    """Which rows halt after this step (``[B] bool``).

    Always at ``halt_max_steps``. Where the policy is ``active`` (the model's
    ``halting_active``: training with ACT, an adaptive evaluation) also where it wants to halt
    (``wants_halt``: the TRM's ``q_halt > 0`` or ``q_halt > q_continue``; HESC's HALT action),
    except that while training, with probability ``halt_exploration_prob``, a row draws
    ``min_steps ~ U{2..max}`` and may not halt earlier.
    """
    halted = steps_B >= cfg.halt_max_steps
    if not active:
        return halted
    halted = halted | wants_halt_B
    if train and cfg.halt_exploration_prob > 0:
        if rng is None:
            raise ValueError("training with halt_exploration_prob > 0 needs an RNG: "
                             "model.apply(..., train=True, rngs={'exploration': key})")
        explore_key, steps_key = jax.random.split(rng)
        explore = jax.random.uniform(explore_key, wants_halt_B.shape) < cfg.halt_exploration_prob
        min_steps = explore * jax.random.randint(steps_key, steps_B.shape, 2, cfg.halt_max_steps + 1)
        halted = halted & (steps_B >= min_steps)
    return halted


def act_step(model: Any, inner: Any, carry: ACTCarry, batch: Mapping[str, jax.Array], train: bool,
             adaptive: bool = False, rng: Optional[jax.Array] = None,
             inputs: Optional[Mapping[str, Any]] = None) -> Tuple[ACTCarry, Dict[str, Any]]:
    """Advance every row by one supervision step.

    ``model`` supplies the hooks ``halting_active`` / ``bootstraps_q`` / ``begin_step`` /
    ``wants_halt`` / ``end_step`` (the TRM's do nothing beyond the reference; HESC's carry capsules,
    actions and expansions), ``inner`` the recursion ``(z, data, reset, ctx) -> (z, outputs)``.

    Returns the new carry (hidden states under ``stop_gradient``) and the outputs: at least
    ``logits [B, seq_len, V]``, ``q_halt_logits [B]``, ``q_continue_logits [B]`` and, where the
    model bootstraps its continue logit (TRM: ``no_ACT_continue`` false, training), the
    ``target_q_continue [B]``.
    """
    cfg = model.config
    inputs = dict(inputs or {})
    reset = carry.halted
    steps = jnp.where(reset, 0, carry.steps)
    data = {k: row_where(reset, batch[k], v) for k, v in carry.current_data.items()}
    extras, data, ctx = model.begin_step(carry.extras, data, reset, train, inputs)

    z, outputs = inner(carry.z, data, reset, ctx, train)
    z = jax.lax.stop_gradient(z)

    steps = steps + 1
    halted = halting_decision(steps, model.wants_halt(outputs, train, inputs), cfg, train, rng,
                              model.halting_active(train, adaptive))
    if model.bootstraps_q(train):
        # Bootstrapped target from a second forward of the new state (no replay
        # buffer or target network, as in the reference / PQN).
        _, nxt = inner(z, data, None, ctx, train)
        is_last = steps >= cfg.halt_max_steps
        target = jnp.where(is_last, nxt["q_halt_logits"], jnp.maximum(nxt["q_halt_logits"], nxt["q_continue_logits"]))
        outputs["target_q_continue"] = jax.lax.stop_gradient(jax.nn.sigmoid(target))
    out_name = cfg.OUTPUT_LATENT
    extras, z_out, outputs = model.end_step(extras, z[out_name], data, outputs, halted, ctx)
    z = {**z, out_name: z_out}
    return ACTCarry(z=z, steps=steps, halted=halted, current_data=data, extras=extras), outputs
