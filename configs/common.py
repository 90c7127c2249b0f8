"""Shared pieces of the configs: the model and training sections and variant parsing.

Every config file exposes ``get_config(arg)``; ``arg`` is the text after ``:``
in ``--config=configs/sudoku.py:tiny`` and may name several comma-separated
variants (``mlp,tiny``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Set, Type

import ml_collections

from trm_jax.models.config import TRMConfig

# The model fields without a default: the trainer sets them from the dataset's metadata at run
# time; these placeholders let a model be built from the config alone.
REQUIRED_PLACEHOLDERS: Dict[str, Any] = dict(seq_len=81, vocab_size=11)


def parse_variants(arg: Optional[str], known: Iterable[str]) -> Set[str]:
    """The set of variant names in ``arg``; unknown names raise a ValueError listing the known ones."""
    names = {v.strip() for v in (arg or "").replace("+", ",").split(",") if v.strip()}
    known = set(known)
    unknown = names - known
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {sorted(known)}")
    return names


def model_section(config_cls: Type[TRMConfig], name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """``name``, then every field of the family's config dataclass at its default, then ``overrides``.

    The dataclass is the one source of the defaults, so no config file repeats (and drifts from)
    them, and every field is in the locked section that ``--config.model.FIELD=V`` can set.

    Raises:
      ConfigError: an override that is not a field of ``config_cls`` (named, with the closest field),
        or a value the family refuses.
    """
    config_cls.check_fields(overrides)
    values: Dict[str, Any] = {"name": name}
    for field in dataclasses.fields(config_cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        else:
            values[field.name] = REQUIRED_PLACEHOLDERS[field.name]
    return ml_collections.ConfigDict(values)


def trm_model(**overrides: Any) -> ml_collections.ConfigDict:
    """The TRM model section: :class:`TRMConfig`'s defaults (the reference ``arch/trm.yaml``) and ``overrides``."""
    return model_section(TRMConfig, "trm", **overrides)


# The reference's other architectures, selectable as a variant of every dataset config
# (``configs/sudoku.py:hrm``); their sizes are their config classes' defaults, i.e. the reference's
# ``arch/hrm.yaml``, ``trm_singlez.yaml``, ``trm_hier6.yaml`` and ``transformers_baseline.yaml``.
ARCHITECTURES = ("hrm", "trm_singlez", "trm_hier6", "transformer")


def dataset_model(variants: Set[str], data_fields: Dict[str, Any], trm_fields: Dict[str, Any]) -> ml_collections.ConfigDict:
    """The model section of a dataset config: the architecture a variant names, at its reference
    size, or else the TRM with the dataset's ``trm_fields`` (the paper's cycles and depth for it).

    ``data_fields`` (``seq_len``, ``vocab_size``, ...) apply to every architecture.
    """
    from trm_jax.families import get_family

    named = sorted(variants & set(ARCHITECTURES))
    if len(named) > 1:
        raise ValueError(f"config variants name two architectures {named}; pick one")
    if not named:
        return trm_model(**data_fields, **trm_fields)
    return model_section(get_family(named[0]).config_cls, named[0], **data_fields)


# What makes a model section a causal language model (trm_jax/models/config.py: CAUSAL_REQUIREMENTS).
LANGUAGE_MODEL_FIELDS: Dict[str, Any] = dict(causal=True, puzzle_emb_ndim=0, halt_exploration_prob=0.0,
                                             loss_type="softmax_cross_entropy", pos_encodings="rope")


def language_model(variants: Set[str], seq_len: int, vocab_size: int, **size: Any) -> ml_collections.ConfigDict:
    """The model section of a language config (configs/code.py, configs/text.py): the causal TRM with
    ``size`` (hidden_size, cycles, layers, ...), or with the ``transformer`` variant the causal
    transformer baseline at the same parameter count (its ``H_layers`` = the TRM's ``L_layers``: the
    TRM reuses one module of that depth through its recursion, the baseline runs it once)."""
    data = dict(seq_len=seq_len, vocab_size=vocab_size, **LANGUAGE_MODEL_FIELDS)
    if "transformer" in variants:
        from trm_jax.models.transformer import TransformerConfig

        shared = {k: v for k, v in size.items() if k not in ("H_cycles", "L_cycles", "L_layers")}
        return model_section(TransformerConfig, "transformer", **{
            **data, "H_layers": size.get("L_layers", 2), "act_enabled": False, "act_inference": False,
            "compute_target_q": False, **shared})
    return trm_model(**{**data, **size})


# The language configs' GPU size (configs/code.py, configs/text.py); ``tiny`` shrinks width and dtype.
LANGUAGE_SIZE: Dict[str, Any] = dict(hidden_size=512, num_heads=8, expansion=4.0, L_layers=2, H_cycles=2, L_cycles=2,
                                     halt_max_steps=1)
LANGUAGE_TINY_SIZE: Dict[str, Any] = dict(LANGUAGE_SIZE, hidden_size=128, num_heads=4, forward_dtype="float32")
LANGUAGE_VARIANTS = ("tiny", "transformer")


def language_config(arg: Optional[str], dataset: str, seq_len: int, data_options: Dict[str, Any],
                    tiny_epochs: int, tiny_eval_interval: float) -> ml_collections.ConfigDict:
    """The config of a language dataset (``code``, ``text``): the causal TRM (or, variant
    ``transformer``, the baseline) at :data:`LANGUAGE_SIZE` with ``seq_len`` and vocabulary 4096, or
    with ``tiny`` at :data:`LANGUAGE_TINY_SIZE`, sequence 128, vocabulary 2048 and a CPU schedule of
    ``tiny_epochs`` epochs evaluated every ``tiny_eval_interval`` epochs. ``data_options``: the
    dataset's own options (``source``, ...)."""
    variants = parse_variants(arg, LANGUAGE_VARIANTS)
    tiny = "tiny" in variants
    seq_len, vocab = (128, 2048) if tiny else (seq_len, 4096)
    config = training(
        global_batch_size=64, epochs=20, eval_interval=2.0, checkpoint_interval=1000, lr=3e-4, lr_min_ratio=0.1,
        lr_warmup_steps=200, weight_decay=0.1, log_interval=50, puzzle_emb_lr=0.0, puzzle_emb_weight_decay=0.0,
    )
    config.model = language_model(variants, seq_len, vocab, **(LANGUAGE_TINY_SIZE if tiny else LANGUAGE_SIZE))
    config.data = ml_collections.ConfigDict(dict(name=dataset, data_dir="", options=dict(
        **data_options, vocab_size=vocab, seq_len=seq_len, max_documents=0)))
    if tiny:
        config.update(dict(global_batch_size=16, epochs=tiny_epochs, eval_interval=tiny_eval_interval,
                           checkpoint_interval=500, lr=1e-3, lr_warmup_steps=50, log_interval=20))
    return config


def training(**overrides) -> ml_collections.ConfigDict:
    """Top-level training fields with the reference ``cfg_pretrain.yaml`` names and defaults."""
    cfg = ml_collections.ConfigDict(dict(
        global_batch_size=768,
        epochs=100000,
        eval_interval=10000.0,  # in epochs; a fraction evaluates within an epoch (the language configs)
        checkpoint_interval=10000,
        lr=1e-4,
        lr_min_ratio=1.0,
        lr_warmup_steps=2000,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        puzzle_emb_lr=1e-2,
        puzzle_emb_weight_decay=0.1,
        grad_clip_norm=0.0,
        ema=False,
        ema_rate=0.999,
        seed=0,
        max_steps=0,
        log_interval=100,
        wandb_mode="offline",
        wandb_project="trm_jax",
        run_name="",
        # Not in the reference: checkpointing, robustness and the device mesh.
        max_to_keep=3,
        async_checkpointing=True,
        keep_best_metric="",  # e.g. "eval/exact_accuracy": also keep the best checkpoint in WORKDIR/best
        max_consecutive_skipped=20,  # stop after this many non-finite steps in a row
        # Also evaluate with adaptive halting (a row stops when its policy halts, a batch when all
        # rows have): logged as eval_adaptive/* (steps used, accuracy) beside the fixed-steps eval/*.
        adaptive_eval=False,
        mesh=dict(data=-1, fsdp=1, fsdp_min_size=2 ** 14),
    ))
    cfg.update(overrides)
    return cfg


def tiny_model(model: ml_collections.ConfigDict) -> None:
    """Shrink a model section in place to a size that trains on a laptop CPU (any architecture: the
    recursion fields it has, H and L cycles 2, two layers per module; the transformer baseline's
    single pass keeps ``H_cycles=1``)."""
    model.update(dict(hidden_size=64, num_heads=2, expansion=2.0, puzzle_emb_ndim=64, halt_max_steps=4,
                      forward_dtype="float32"))
    recursion = dict(H_cycles=2, L_cycles=2, L_layers=2, puzzle_emb_len=1)
    if model.get("name") in ("hrm", "transformer"):
        recursion["H_layers"] = 2
    if model.get("name") == "transformer":
        recursion["H_cycles"] = 1
    model.update({k: v for k, v in recursion.items() if k in model})
