"""Model families the trainer can run: ``config.model.name`` picks one.

A family bundles its config class and the four functions the trainer needs; both run
through the same loop, checkpoints, sharding and logging (trm_jax/train.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict


@dataclasses.dataclass(frozen=True)
class Family:
    """``create_state(model_cfg, tx, global_batch_size, seed, use_ema) -> TrainState``;
    ``make_train_step(model, tx, config, total_steps)``; ``make_eval_batch(model)`` returns
    ``eval_batch(params, buffers, aux, batch) -> (metric sums, preds, q_halt_logits)``."""

    config_cls: Any
    build_model: Callable[[Any], Any]
    create_state: Callable[..., Any]
    make_train_step: Callable[..., Any]
    make_eval_batch: Callable[..., Any]
    loads_torch: bool = False  # whether --restore_from accepts a PyTorch reference checkpoint


def _trm() -> Family:
    from trm_jax.models import TRMConfig, build_model
    from trm_jax.steps import make_eval_batch, make_train_step
    from trm_jax.train_state import create_train_state

    return Family(TRMConfig, build_model, create_train_state, make_train_step, make_eval_batch, loads_torch=True)


def _hesc() -> Family:
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.hesc.train_step import build_model, create_hesc_state, make_hesc_eval_batch, make_hesc_train_step

    return Family(HESCConfig, build_model, create_hesc_state, make_hesc_train_step, make_hesc_eval_batch)


_FAMILIES: Dict[str, Callable[[], Family]] = {"trm": _trm, "hesc": _hesc}


def get_family(name: str) -> Family:
    """The family of ``config.model.name`` (a clear error for an unknown name)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model name {name!r} (config.model.name); known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]()
