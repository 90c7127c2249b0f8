"""The ACT carry: everything a batch row keeps between supervision steps."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class ACTCarry:
    """State carried across ACT steps (reference ``..._ACTV1Carry``: ``inner_carry`` and the rest).

    Attributes:
      z: the latent states ``[B, seq_len + P, D]`` in ``forward_dtype``, by the reference's
        inner-carry names: the TRM's ``z_H`` and ``z_L``; the single-z TRM's ``z_L``; the 6-level
        TRM's ``z_H``, ``z_L1`` .. ``z_L6``; the transformer baseline's ``z_H``
        (the config's ``LATENTS``).
      steps: ``[B] int32`` supervision steps taken by the row's current example.
      halted: ``[B] bool``; a halted row is reset and takes a new example next step.
      current_data: the example each row is working on (same keys/shapes as the batch).
      extras: per-row state of model extensions (HESC: capsule expansions, Q-head RNN
        state, the pending DQN transition); empty for the TRM.
    """

    z: Dict[str, jax.Array]
    steps: jax.Array
    halted: jax.Array
    current_data: Dict[str, jax.Array]
    extras: Any = dataclasses.field(default_factory=dict)

    @property
    def z_H(self) -> jax.Array:
        """The high-level state (architectures that have one)."""
        return self.z["z_H"]

    @property
    def z_L(self) -> jax.Array:
        """The low-level state (architectures that have one)."""
        return self.z["z_L"]


def init_buffer_name(latent: str) -> str:
    """The buffer a latent is reset to, by the reference's names: ``z_H`` -> ``H_init``, ``z_L3`` -> ``L3_init``."""
    return latent[2:] + "_init"


def initial_carry(model_cfg: Any, batch: Mapping[str, Any]) -> ACTCarry:
    """A carry in which every row is halted, so the first step loads ``batch``.

    ``model_cfg``: a typed config (any architecture) or a model section (its ``name`` picks the
    architecture). Like the reference, the hidden states' content is irrelevant (halted rows are
    reset to their ``*_init`` buffers); zeros keep it deterministic.
    """
    from trm_jax.models.config import ModelConfig

    if not isinstance(model_cfg, ModelConfig):
        from trm_jax.families import family_of

        model_cfg = family_of(model_cfg).config_cls.from_any(model_cfg)
    cfg = model_cfg
    batch_size = np.shape(batch["inputs"])[0]
    # One buffer per latent, not a shared one: a state made eagerly can then be donated to a jitted step.
    z = {name: jnp.zeros((batch_size, cfg.total_len, cfg.hidden_size), cfg.dtype) for name in cfg.LATENTS}
    return ACTCarry(
        z=z,
        steps=jnp.zeros((batch_size,), jnp.int32),
        halted=jnp.ones((batch_size,), jnp.bool_),
        current_data={k: jnp.zeros(np.shape(v), jnp.asarray(v).dtype) for k, v in batch.items()},
    )
