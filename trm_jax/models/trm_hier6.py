"""The 6-level TRM (reference ``trm_hier6``) as a TRM variant.

What differs from the TRM (docs/architecture.md#variants): the low-level state is six latents
``z_L1 .. z_L6`` (buffers ``L1_init .. L6_init``). Low-level step ``i`` of a cycle replaces
``z_L{i}`` by ``f(z_L1 + ... + z_L6, z_H + x)``, so ``L_cycles <= 6`` and latents past
``L_cycles`` keep their initial state; the high-level update reads their sum,
``z_H = f(z_H, z_L1 + ... + z_L6)``. Everything else is the TRM's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Tuple

import jax
import jax.numpy as jnp

from trm_jax.models.config import TRMConfig
from trm_jax.models.trm import TRM, TRMInner, scan_module

NUM_LOW_LEVELS = 6
_LOW = tuple(f"z_L{i + 1}" for i in range(NUM_LOW_LEVELS))


@dataclasses.dataclass(frozen=True)
class Hier6Config(TRMConfig):
    """The TRM's fields (``arch/trm_hier6.yaml`` has the TRM's values); ``L_cycles <= 6``."""

    FAMILY: ClassVar[str] = "6-level TRM"
    LATENTS: ClassVar[Tuple[str, ...]] = ("z_H",) + _LOW

    def value_errors(self) -> List[str]:
        errors = super().value_errors()
        if self.L_cycles > NUM_LOW_LEVELS:
            errors.append(f"L_cycles={self.L_cycles}: the 6-level TRM updates one of its {NUM_LOW_LEVELS} "
                          f"low-level latents per L step, so L_cycles must be <= {NUM_LOW_LEVELS}")
        return errors


def _low_step(inner: "Hier6Inner", zs_NBSD, i, injection, rctx):
    """Low-level step ``i``: latent ``i`` becomes ``f(sum of the latents, injection)``."""
    new = inner.L_level(jnp.sum(zs_NBSD, axis=0), injection, rctx["cos_sin"], rctx["bias"])
    return zs_NBSD.at[i].set(new), None


class Hier6Inner(TRMInner):
    cfg: Hier6Config

    def cycle(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any]) -> Dict[str, jax.Array]:
        # The six latents stacked [6, B, S, D], so one scan body (one copy of L_level) does every step.
        zs = jnp.stack([z[name] for name in _LOW])
        steps = jnp.arange(self.cfg.L_cycles)
        zs, _ = scan_module(_low_step, self.cfg.L_cycles, 2, n_scanned=1)(self, zs, steps, z["z_H"] + x_BSD, rctx)
        z_H = self.L_level(z["z_H"], jnp.sum(zs, axis=0), rctx["cos_sin"], rctx["bias"])
        return {"z_H": z_H, **{name: zs[i] for i, name in enumerate(_LOW)}}


class Hier6TRM(TRM):
    config: Hier6Config

    def make_inner(self) -> Hier6Inner:
        return Hier6Inner(self.config, name="inner")
