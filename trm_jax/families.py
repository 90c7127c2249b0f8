"""Model families the trainer can run: ``config.model.name`` picks one.

A family is a ``(model, objective)`` pair and its config class: the model is the TRM or a
subclass of it (the reference's other architectures in trm_jax/models/, HESC in
trm_jax/hesc/model.py), the objective what the family adds to the one train step and evaluation
(:class:`trm_jax.steps.Objective`). Every family runs through the same step, loop, checkpoints,
sharding and logging (docs/architecture.md#families).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict


@dataclasses.dataclass(frozen=True)
class Family:
    """``config_cls`` (typed, strict), ``model_cls`` (a ``flax.linen.Module`` taking the config) and
    ``objective``; ``loads_torch``: whether ``--restore_from`` accepts a PyTorch reference checkpoint;
    ``reference``: the reference class it reimplements."""

    name: str
    config_cls: Any
    model_cls: Any
    objective: Any
    loads_torch: bool = False
    reference: str = ""

    def build_model(self, model_cfg: Any) -> Any:
        """The model as a ``flax.linen.Module`` from a config (ConfigDict, dict or typed)."""
        return self.model_cls(self.config_cls.from_any(model_cfg))


def _trm() -> Family:
    from trm_jax.models import TRM, TRMConfig
    from trm_jax.steps import Objective

    return Family("trm", TRMConfig, TRM, Objective(), True, "trm@TinyRecursiveReasoningModel_ACTV1")


def _hrm() -> Family:
    from trm_jax.models.hrm import HRM, HRMConfig
    from trm_jax.steps import Objective

    return Family("hrm", HRMConfig, HRM, Objective(), True, "hrm@HierarchicalReasoningModel_ACTV1")


def _trm_singlez() -> Family:
    from trm_jax.models.trm_singlez import SingleZConfig, SingleZTRM
    from trm_jax.steps import Objective

    return Family("trm_singlez", SingleZConfig, SingleZTRM, Objective(), True,
                  "trm_singlez@TinyRecursiveReasoningModel_ACTV1")


def _trm_hier6() -> Family:
    from trm_jax.models.trm_hier6 import Hier6Config, Hier6TRM
    from trm_jax.steps import Objective

    return Family("trm_hier6", Hier6Config, Hier6TRM, Objective(), True,
                  "trm_hier6@TinyRecursiveReasoningModel_ACTV1")


def _transformer() -> Family:
    from trm_jax.models.transformer import Transformer, TransformerConfig
    from trm_jax.steps import Objective

    return Family("transformer", TransformerConfig, Transformer, Objective(), True,
                  "transformers_baseline@Model_ACTV2")


def _hesc() -> Family:
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.hesc.model import HESC
    from trm_jax.hesc.objective import HESCObjective

    return Family("hesc", HESCConfig, HESC, HESCObjective())


_FAMILIES: Dict[str, Callable[[], Family]] = {
    "trm": _trm, "hrm": _hrm, "trm_singlez": _trm_singlez, "trm_hier6": _trm_hier6,
    "transformer": _transformer, "hesc": _hesc,
}
# The reference's architectures (``from_torch`` / ``to_torch``, ``configs/*.py:<name>`` variants).
ARCHITECTURES = ("trm", "hrm", "trm_singlez", "trm_hier6", "transformer")


def family_names() -> tuple:
    return tuple(_FAMILIES)


def get_family(name: str) -> Family:
    """The family of ``config.model.name`` (a clear error for an unknown name).

    The reference's own names, as its ``config/arch/*.yaml`` write them
    (``recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1``), name their architecture too.
    """
    if name not in _FAMILIES:
        reference = name.split("recursive_reasoning.", 1)[-1]
        for candidate in ARCHITECTURES:
            if _FAMILIES[candidate]().reference == reference:
                return _FAMILIES[candidate]()
        raise ValueError(f"unknown model name {name!r} (config.model.name); known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]()


def family_of(model_cfg: Any) -> Family:
    """The family of a typed model config, or of a model section by its ``name`` (default ``"trm"``)."""
    for name in _FAMILIES:
        family = get_family(name)
        if type(model_cfg) is family.config_cls:
            return family
    name = model_cfg.get("name", "trm") if hasattr(model_cfg, "get") else "trm"
    return get_family(str(name))


def objective_of(model_cfg: Any) -> Any:
    """What a model adds to the train step and evaluation (:class:`trm_jax.steps.Objective`): its
    family's, or for a causal language model (``causal=True``, any architecture that allows it) the
    next-token objective of trm_jax/lm/objective.py."""
    family = family_of(model_cfg)
    causal = getattr(model_cfg, "causal", None)
    if causal is None and hasattr(model_cfg, "get"):
        causal = model_cfg.get("causal", False)
    if causal:
        from trm_jax.lm.objective import LanguageModelObjective

        return LanguageModelObjective()
    return family.objective


def initial_carry(model_cfg: Any, batch: Any) -> Any:
    """A carry for any family in which every row is halted, so the first step loads ``batch``."""
    return family_of(model_cfg).build_model(model_cfg).initial_carry(batch)
