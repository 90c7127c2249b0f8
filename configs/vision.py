"""Reading text from pixels (the PyTorch system's ``vision_optimized``): a TRM whose input is an
image of a line of code or prose (``rendered_text``), encoded into 12 capsules, and whose output
is the line's tokens generated left to right (docs/vision.md).

Variants (``--config=configs/vision.py:VARIANTS``, comma-separated):
  (none)   GPU size: 224x224 images, 16x16 patches (196), hidden 512, 8 heads, a 2-layer encoder,
           H_cycles 2 x L_cycles 2 over 2 layers, lines of up to 64 characters, bfloat16.
  tiny     a 2-core CPU run: 16x160 images of one line of up to 20 characters, 8x8 patches (40)
           pooled by 20 column regions, hidden 128, float32 (docs/vision.md has the measured time and
           character accuracy).
  unified  ``trm_unified``: no encoder blocks of its own; the TRM's recursion encodes the patches
           with the same weights that then read the line.
"""
import dataclasses
from typing import Any, Dict, Optional

import ml_collections

from configs import common

VARIANTS = ("tiny", "unified")

# What makes a TRM model section read an image (trm_jax/models/config.py, the pixel path).
VISION_FIELDS: Dict[str, Any] = dict(image_height=224, image_width=224, patch_size=16, vision_capsules=12,
                                     vision_layers=2, vision_pooling="queries")
# The CPU run: one line of up to 20 characters (7-px cells, no margin) on a 16x160 image, 8x8
# patches (2 x 20), pooled by 20 fixed regions (the 1x20 columns of the patch grid: 2x1 patches, a
# character and a seventh wide), so each capsule holds about one character from the start.
VISION_TINY_FIELDS: Dict[str, Any] = dict(image_height=16, image_width=160, patch_size=8, vision_capsules=20,
                                          vision_pooling="regions")
TINY_DATA = dict(preset="tiny", height=16, width=160, font_size=12, margin=0, max_chars=20)


def data_options(**options: Any) -> Dict[str, Any]:
    """Every option of ``rendered_text`` (data_pipeline/vision.py) with its value for ``options``
    (a preset expanded), so each one can be set on the command line."""
    from data_pipeline.vision import RenderedText

    return dataclasses.asdict(RenderedText.make_options(options))
# Training while the dataset builds (data_pipeline/streaming.py): off by default for these small
# datasets; shard_rows 0 = the dataset's shard size (3200 examples).
INCREMENTAL: Dict[str, Any] = dict(incremental=False, shard_rows=0)
# rendered_text's vocabulary (data_pipeline/vision.py: PAD, EOS, ARC colours, BOS, 256 bytes).
VISION_VOCAB = 269


def vision_model(variants: set, seq_len: int, vocab_size: int, image: Dict[str, Any],
                 **size: Any) -> ml_collections.ConfigDict:
    """A TRM model section that reads an image (``image``: the pixel-path fields) at ``size``;
    ``unified`` shares the reasoning module with the encoder (``vision_shared``)."""
    return common.trm_model(**{**VISION_FIELDS, **image, **size}, seq_len=seq_len, vocab_size=vocab_size,
                            vision_shared="unified" in variants)


def get_config(arg: Optional[str] = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    tiny = "tiny" in variants
    config = common.training(global_batch_size=64, epochs=40, eval_interval=5.0, checkpoint_interval=1000,
                             lr=3e-4, lr_min_ratio=0.1, lr_warmup_steps=200, weight_decay=0.1, log_interval=50,
                             puzzle_emb_lr=0.0, puzzle_emb_weight_decay=0.0)
    # No puzzle identifiers (one line is one example); left-to-right rows (prefix_lm); two supervision
    # steps, no halting exploration.
    reading = dict(puzzle_emb_ndim=0, prefix_lm=True, halt_max_steps=2, halt_exploration_prob=0.0,
                   loss_type="softmax_cross_entropy")
    if tiny:
        config.model = vision_model(variants, 21, VISION_VOCAB, VISION_TINY_FIELDS, hidden_size=128, num_heads=4,
                                    expansion=4.0, H_cycles=2, L_cycles=2, L_layers=2, vision_layers=2,
                                    forward_dtype="float32", **reading)
        config.data = ml_collections.ConfigDict(dict(name="rendered_text", data_dir="", **INCREMENTAL,
                                                     options=data_options(**TINY_DATA)))
        config.update(dict(global_batch_size=32, epochs=10, eval_interval=2.0, checkpoint_interval=500, lr=1e-3,
                           lr_warmup_steps=50, log_interval=20))
    else:
        config.model = vision_model(variants, 65, VISION_VOCAB, {}, hidden_size=512, num_heads=8, expansion=4.0,
                                    H_cycles=2, L_cycles=2, L_layers=2, **reading)
        config.data = ml_collections.ConfigDict(dict(name="rendered_text", data_dir="", **INCREMENTAL,
                                                     options=data_options()))
    return config
