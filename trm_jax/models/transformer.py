"""The transformer baseline (reference ``transformers_baseline.Model_ACTV2``) as a TRM variant.

What differs from the TRM (docs/architecture.md#variants): no recursion. One state ``z_H``
(buffer ``H_init``) and one module ``H_level`` of ``H_layers`` blocks, run once per ACT step,
``z_H = H_level(z_H + x)``, with gradient. Its ACT halts where ``q_halt > q_continue``
(``act_enabled``: while training; ``act_inference``: also in evaluation) and, like the reference's
training loop, does not bootstrap the continue logit unless ``compute_target_q``.
Embeddings, blocks, heads, the ACT step and the loss are the TRM's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Mapping, Tuple

import jax

from trm_jax.models.config import ModelConfig
from trm_jax.models.trm import TRM, ReasoningModule, TRMInner


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """Hyper-parameters of the baseline (reference ``Model_ACTV2Config``, ``arch/transformers_baseline.yaml``).

    ``num_heads`` 12 with ``hidden_size`` 512 gives the reference's head dim 42 (12 x 42 = 504
    attention features). The prefix is ``ceil(puzzle_emb_ndim / hidden_size)`` positions (the
    baseline has no ``puzzle_emb_len``).
    """

    H_cycles: int = 1  # kept, as in the reference, so its yaml maps over; must be 1
    H_layers: int = 8
    num_heads: int = 12
    act_enabled: bool = True      # training: the halting head may stop a row early
    act_inference: bool = False   # evaluation: likewise (the reference's default: exactly halt_max_steps)
    compute_target_q: bool = False  # bootstrap the continue logit (the reference's forward flag; off in its training)

    FAMILY: ClassVar[str] = "transformer baseline"
    POSITIVE_FIELDS: ClassVar[Tuple[str, ...]] = ModelConfig.POSITIVE_FIELDS + ("H_layers",)
    CAUSAL_REQUIREMENTS: ClassVar[Tuple[Tuple[str, Any, str], ...]] = ModelConfig.CAUSAL_REQUIREMENTS + tuple(
        (name, False, "a causal model has no halting head (every row runs halt_max_steps steps)")
        for name in ("act_enabled", "act_inference", "compute_target_q"))

    def value_errors(self) -> List[str]:
        errors = super().value_errors()
        if self.pos_encodings == "none":
            errors.append("pos_encodings='none': the transformer baseline needs 'rope' or 'learned' (as the reference)")
        return errors

    @classmethod
    def refused_values(cls, values: Mapping[str, Any]) -> List[str]:
        errors = super().refused_values(values)
        h_cycles = values.get("H_cycles", 1)
        if h_cycles != 1:
            errors.append(f"H_cycles={h_cycles}: the transformer baseline runs its H_layers once per ACT step "
                          "(the reference keeps H_cycles for compatibility only), so H_cycles must be 1")
        return errors


class TransformerInner(TRMInner):
    cfg: TransformerConfig

    def make_levels(self) -> None:
        self.H_level = ReasoningModule(self.cfg, self.cfg.H_layers)

    def recursion(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any],
                  train: bool) -> Tuple[Dict[str, jax.Array], Dict[str, Any]]:
        return {"z_H": self.H_level(z["z_H"], x_BSD, rctx["cos_sin"], rctx["bias"])}, {}


class Transformer(TRM):
    config: TransformerConfig

    def make_inner(self) -> TransformerInner:
        return TransformerInner(self.config, name="inner")

    def halting_active(self, train: bool, adaptive: bool) -> bool:
        cfg = self.config
        return (cfg.halt_max_steps > 1 and not cfg.causal
                and (cfg.act_enabled if train else (cfg.act_inference or adaptive)))

    def bootstraps_q(self, train: bool) -> bool:
        return train and self.halting_active(train, False) and self.config.compute_target_q

    def wants_halt(self, out: Dict[str, Any], train: bool, inputs: Mapping[str, Any]) -> jax.Array:
        return jax.lax.stop_gradient(out["q_halt_logits"] > out["q_continue_logits"])
