"""Model families the trainer can run: ``config.model.name`` picks one.

A family is a ``(model, objective)`` pair and its config class: the model is the TRM or a
subclass of it (HESC, trm_jax/hesc/model.py), the objective what the family adds to the one
train step and evaluation (:class:`trm_jax.steps.Objective`). Every family runs through the same
step, loop, checkpoints, sharding and logging (docs/architecture.md#families).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict


@dataclasses.dataclass(frozen=True)
class Family:
    """``config_cls`` (typed, strict), ``model_cls`` (a ``flax.linen.Module`` taking the config) and
    ``objective``; ``loads_torch``: whether ``--restore_from`` accepts a PyTorch reference checkpoint."""

    name: str
    config_cls: Any
    model_cls: Any
    objective: Any
    loads_torch: bool = False

    def build_model(self, model_cfg: Any) -> Any:
        """The model as a ``flax.linen.Module`` from a config (ConfigDict, dict or typed)."""
        return self.model_cls(self.config_cls.from_any(model_cfg))


def _trm() -> Family:
    from trm_jax.models import TRM, TRMConfig
    from trm_jax.steps import Objective

    return Family("trm", TRMConfig, TRM, Objective(), loads_torch=True)


def _hesc() -> Family:
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.hesc.model import HESC
    from trm_jax.hesc.objective import HESCObjective

    return Family("hesc", HESCConfig, HESC, HESCObjective())


_FAMILIES: Dict[str, Callable[[], Family]] = {"trm": _trm, "hesc": _hesc}


def get_family(name: str) -> Family:
    """The family of ``config.model.name`` (a clear error for an unknown name)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model name {name!r} (config.model.name); known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]()


def family_of(model_cfg: Any) -> Family:
    """The family of a typed model config, or of a model section by its ``name`` (default ``"trm"``)."""
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.models.config import TRMConfig

    if isinstance(model_cfg, HESCConfig):
        return get_family("hesc")
    if isinstance(model_cfg, TRMConfig):
        return get_family("trm")
    name = model_cfg.get("name", "trm") if hasattr(model_cfg, "get") else "trm"
    return get_family(str(name))


def initial_carry(model_cfg: Any, batch: Any) -> Any:
    """A carry for any family in which every row is halted, so the first step loads ``batch``."""
    return family_of(model_cfg).build_model(model_cfg).initial_carry(batch)
