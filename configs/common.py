"""Shared pieces of the configs: the training section and variant parsing.

Every config file exposes ``get_config(arg)``; ``arg`` is the text after ``:``
in ``--config=configs/sudoku.py:tiny`` and may name several comma-separated
variants (``mlp,tiny``).
"""
from __future__ import annotations

from typing import Iterable, Optional, Set

import ml_collections


def parse_variants(arg: Optional[str], known: Iterable[str]) -> Set[str]:
    """The set of variant names in ``arg``; unknown names raise a ValueError listing the known ones."""
    names = {v.strip() for v in (arg or "").replace("+", ",").split(",") if v.strip()}
    known = set(known)
    unknown = names - known
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {sorted(known)}")
    return names


def trm_model(**overrides) -> ml_collections.ConfigDict:
    """The model section with the reference ``arch/trm.yaml`` defaults and field names."""
    model = ml_collections.ConfigDict(dict(
        name="trm",
        loss_type="stablemax_cross_entropy",
        # Set from the dataset metadata at run time (kept here so the model can be built without data).
        seq_len=81,
        vocab_size=11,
        num_puzzle_identifiers=1,
        hidden_size=512,
        num_heads=8,
        expansion=4.0,
        H_cycles=3,
        L_cycles=6,
        H_layers=0,
        L_layers=2,
        puzzle_emb_ndim=512,
        puzzle_emb_len=16,
        pos_encodings="rope",
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        halt_max_steps=16,
        halt_exploration_prob=0.1,
        forward_dtype="bfloat16",
        mlp_t=False,
        no_ACT_continue=True,
        remat="dots",  # what a block keeps for the backward: none | dots (matmul outputs) | dots_no_batch | full
        attention_impl="auto",  # cuDNN flash attention on GPUs in bf16, XLA elsewhere
    ))
    model.update(overrides)
    return model


def training(**overrides) -> ml_collections.ConfigDict:
    """Top-level training fields with the reference ``cfg_pretrain.yaml`` names and defaults."""
    cfg = ml_collections.ConfigDict(dict(
        global_batch_size=768,
        epochs=100000,
        eval_interval=10000,
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
        mesh=dict(data=-1, fsdp=1, fsdp_min_size=2 ** 14),
    ))
    cfg.update(overrides)
    return cfg


def tiny_model(model: ml_collections.ConfigDict) -> None:
    """Shrink a model section in place to a size that trains on a laptop CPU."""
    model.update(dict(hidden_size=64, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, L_layers=2,
                      puzzle_emb_ndim=64, puzzle_emb_len=1, halt_max_steps=4, forward_dtype="float32"))
