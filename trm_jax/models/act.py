"""Adaptive Computation Time (ACT): one supervision step as a pure function of the carry.

Semantics follow the reference ``TinyRecursiveReasoningModel_ACTV1.forward``
(docs/architecture.md#act): halted rows are reset and load the new batch's example, the
recursion runs once, ``steps`` advances, and rows halt at ``halt_max_steps``
(or, while training, when the Q-head says so, subject to exploration).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from trm_jax.models.carry import ACTCarry
from trm_jax.models.config import TRMConfig

# (z_H, z_L, data, reset_mask_or_None) -> (z_H, z_L, logits, q_halt_logits, q_continue_logits)
InnerFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array], Optional[jax.Array]],
                   Tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]]


def _row_where(mask_B: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``where(mask, a, b)`` with ``mask [B]`` broadcast over the trailing axes."""
    return jnp.where(mask_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def halting_decision(steps_B: jax.Array, q_halt_B: jax.Array, q_continue_B: jax.Array,
                     cfg: TRMConfig, train: bool, rng: Optional[jax.Array]) -> jax.Array:
    """Which rows halt after this step (``[B] bool``).

    Evaluation: exactly ``halt_max_steps`` steps. Training with ACT: also halt
    when ``q_halt > 0`` (or ``q_halt > q_continue``), except that with
    probability ``halt_exploration_prob`` a row draws ``min_steps ~ U{2..max}``
    and may not halt earlier.
    """
    halted = steps_B >= cfg.halt_max_steps
    if not (train and cfg.halt_max_steps > 1):
        return halted
    if cfg.no_ACT_continue:
        halted = halted | (q_halt_B > 0)
    else:
        halted = halted | (q_halt_B > q_continue_B)
    if cfg.halt_exploration_prob > 0:
        if rng is None:
            raise ValueError("training with halt_exploration_prob > 0 needs an RNG: "
                             "model.apply(..., train=True, rngs={'exploration': key})")
        explore_key, steps_key = jax.random.split(rng)
        explore = jax.random.uniform(explore_key, q_halt_B.shape) < cfg.halt_exploration_prob
        min_steps = explore * jax.random.randint(steps_key, steps_B.shape, 2, cfg.halt_max_steps + 1)
        halted = halted & (steps_B >= min_steps)
    return halted


def act_step(inner: InnerFn, carry: ACTCarry, batch: Mapping[str, jax.Array], cfg: TRMConfig,
             train: bool, rng: Optional[jax.Array] = None) -> Tuple[ACTCarry, Dict[str, jax.Array]]:
    """Advance every row by one supervision step.

    Returns the new carry (hidden states under ``stop_gradient``) and outputs
    ``logits [B, seq_len, V]``, ``q_halt_logits [B]``, ``q_continue_logits [B]``
    and, when ``no_ACT_continue`` is false and training, the bootstrapped
    ``target_q_continue [B]``.
    """
    reset = carry.halted
    steps = jnp.where(reset, 0, carry.steps)
    data = {k: _row_where(reset, batch[k], v) for k, v in carry.current_data.items()}

    z_H, z_L, logits, q_halt, q_continue = inner(carry.z_H, carry.z_L, data, reset)
    z_H, z_L = jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L)
    outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

    steps = steps + 1
    halted = halting_decision(steps, jax.lax.stop_gradient(q_halt), jax.lax.stop_gradient(q_continue),
                              cfg, train, rng)
    if train and cfg.halt_max_steps > 1 and not cfg.no_ACT_continue:
        # Bootstrapped target from a second forward of the new state (no replay
        # buffer or target network, as in the reference / PQN).
        _, _, _, next_q_halt, next_q_continue = inner(z_H, z_L, data, None)
        is_last = steps >= cfg.halt_max_steps
        target = jnp.where(is_last, next_q_halt, jnp.maximum(next_q_halt, next_q_continue))
        outputs["target_q_continue"] = jax.lax.stop_gradient(jax.nn.sigmoid(target))

    return ACTCarry(z_H=z_H, z_L=z_L, steps=steps, halted=halted, current_data=data, extras=carry.extras), outputs
