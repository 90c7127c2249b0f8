"""The ACT carry: everything a batch row keeps between supervision steps."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from trm_jax.models.config import TRMConfig


@flax.struct.dataclass
class ACTCarry:
    """State carried across ACT steps (reference ``TinyRecursiveReasoningModel_ACTV1Carry``).

    Attributes:
      z_H: high-level state ``[B, seq_len + P, D]`` in ``forward_dtype``.
      z_L: low-level state ``[B, seq_len + P, D]`` in ``forward_dtype``.
      steps: ``[B] int32`` supervision steps taken by the row's current example.
      halted: ``[B] bool``; a halted row is reset and takes a new example next step.
      current_data: the example each row is working on (same keys/shapes as the batch).
      extras: per-row state of model extensions (HESC: capsule expansions, Q-head RNN
        state, the pending DQN transition); empty for the TRM.
    """

    z_H: jax.Array
    z_L: jax.Array
    steps: jax.Array
    halted: jax.Array
    current_data: Dict[str, jax.Array]
    extras: Dict[str, Any] = dataclasses.field(default_factory=dict)


def initial_carry(model_cfg: Any, batch: Mapping[str, Any]) -> ACTCarry:
    """A carry in which every row is halted, so the first step loads ``batch``.

    Like the reference, the hidden states' content is irrelevant (halted rows
    are reset to ``H_init``/``L_init``); zeros keep it deterministic.
    """
    cfg = TRMConfig.from_any(model_cfg)
    batch_size = np.shape(batch["inputs"])[0]
    hidden = lambda: jnp.zeros((batch_size, cfg.total_len, cfg.hidden_size), cfg.dtype)  # noqa: E731
    return ACTCarry(  # two buffers, not one: a state made eagerly can then be donated to a jitted step
        z_H=hidden(),
        z_L=hidden(),
        steps=jnp.zeros((batch_size,), jnp.int32),
        halted=jnp.ones((batch_size,), jnp.bool_),
        current_data={k: jnp.zeros(np.shape(v), jnp.asarray(v).dtype) for k, v in batch.items()},
    )
