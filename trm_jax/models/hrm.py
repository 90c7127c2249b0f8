"""The Hierarchical Reasoning Model (reference ``HierarchicalReasoningModel_ACTV1``) as a TRM variant.

What differs from the TRM (docs/architecture.md#variants):

* two reasoning modules: ``L_level`` (``L_layers`` blocks) updates ``z_L``, a separate ``H_level``
  (``H_layers`` blocks) updates ``z_H``;
* the one-step gradient: every update but the very last ``z_L`` and ``z_H`` updates runs without
  gradient (the TRM differentiates the whole last H-cycle);
* its ACT learns both halting logits (``no_ACT_continue`` false: the continue logit's target is
  the next step's Q), with the TRM's exploration.

Embeddings, blocks, heads, the ACT step and the loss are the TRM's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Mapping, Tuple

import jax

from trm_jax.models.config import TRMConfig
from trm_jax.models.trm import TRM, ReasoningModule, TRMInner, l_step, plain_cycle, scan_module


@dataclasses.dataclass(frozen=True)
class HRMConfig(TRMConfig):
    """Hyper-parameters of the HRM (reference ``HierarchicalReasoningModel_ACTV1Config``, ``arch/hrm.yaml``).

    The reference HRM has no ``puzzle_emb_len`` (its prefix is ``ceil(puzzle_emb_ndim / hidden_size)``
    positions): the default 0 gives that; ``no_ACT_continue`` is false as in the reference.
    """

    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    puzzle_emb_len: int = 0
    no_ACT_continue: bool = False

    FAMILY: ClassVar[str] = "HRM"
    POSITIVE_FIELDS: ClassVar[Tuple[str, ...]] = TRMConfig.POSITIVE_FIELDS + ("H_layers",)

    @classmethod
    def refused_values(cls, values: Mapping[str, Any]) -> List[str]:
        return []  # (the TRM's refusal of H_layers != 0 does not apply: the HRM has an H module)


class HRMInner(TRMInner):
    """``L_level`` and ``H_level``; one-step gradient."""

    cfg: HRMConfig

    def make_levels(self) -> None:
        self.L_level = ReasoningModule(self.cfg, self.cfg.L_layers)
        self.H_level = ReasoningModule(self.cfg, self.cfg.H_layers)

    def cycle(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any]) -> Dict[str, jax.Array]:
        """``L_cycles`` times ``z_L = L(z_L, z_H + x)``, then ``z_H = H(z_H, z_L)``."""
        z_H, z_L = z["z_H"], z["z_L"]
        z_L, _ = scan_module(l_step, self.cfg.L_cycles, 2)(self, z_L, z_H + x_BSD, rctx)
        return {"z_H": self.H_level(z_H, z_L, rctx["cos_sin"], rctx["bias"]), "z_L": z_L}

    def recursion(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any],
                  train: bool) -> Tuple[Dict[str, jax.Array], Dict[str, Any]]:
        """``H_cycles x L_cycles``; only the final ``z_L`` and ``z_H`` updates carry gradient."""
        cfg = self.cfg
        if cfg.H_cycles > 1:
            z, _ = scan_module(plain_cycle, cfg.H_cycles - 1, 2)(self, z, x_BSD, rctx)
        z_H, z_L = z["z_H"], z["z_L"]
        if cfg.L_cycles > 1:
            z_L, _ = scan_module(l_step, cfg.L_cycles - 1, 2)(self, z_L, z_H + x_BSD, rctx)
        z_H, z_L = jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L)
        z_L = self.L_level(z_L, z_H + x_BSD, rctx["cos_sin"], rctx["bias"])
        z_H = self.H_level(z_H, z_L, rctx["cos_sin"], rctx["bias"])
        return {"z_H": z_H, "z_L": z_L}, {}


class HRM(TRM):
    """The HRM with the TRM's ACT wrapper (``model.apply(variables, carry, batch, train=...)``)."""

    config: HRMConfig

    def make_inner(self) -> HRMInner:
        return HRMInner(self.config, name="inner")
