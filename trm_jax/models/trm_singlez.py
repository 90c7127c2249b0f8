"""The single-latent TRM (reference ``trm_singlez``) as a TRM variant.

What differs from the TRM (docs/architecture.md#variants): the carry holds one state ``z_L``
(buffer ``L_init``), which every cycle updates ``L_cycles`` times as ``z_L = f(z_L + x)`` and then
once more without the input, ``z_L = f(z_L)``; the heads read ``z_L``. Everything else (one shared
``L_level``, the gradient through the last H-cycle, ACT, loss) is the TRM's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import jax

from trm_jax.models.config import TRMConfig
from trm_jax.models.trm import TRM, TRMInner, l_step, scan_module


@dataclasses.dataclass(frozen=True)
class SingleZConfig(TRMConfig):
    """The TRM's fields (``arch/trm_singlez.yaml`` has the TRM's values); one latent."""

    FAMILY: ClassVar[str] = "single-z TRM"
    LATENTS: ClassVar[Tuple[str, ...]] = ("z_L",)
    OUTPUT_LATENT: ClassVar[str] = "z_L"


class SingleZInner(TRMInner):
    cfg: SingleZConfig

    def cycle(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any]) -> Dict[str, jax.Array]:
        z_L, _ = scan_module(l_step, self.cfg.L_cycles, 2)(self, z["z_L"], x_BSD, rctx)
        return {"z_L": self.L_level(z_L, None, rctx["cos_sin"], rctx["bias"])}


class SingleZTRM(TRM):
    config: SingleZConfig

    def make_inner(self) -> SingleZInner:
        return SingleZInner(self.config, name="inner")
