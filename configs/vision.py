"""Reading text from pixels (the PyTorch system's ``vision_optimized``): a TRM whose input is an
image of a line of code or prose (``rendered_text``), encoded into 12 capsules, and whose output
is the line's tokens generated left to right (docs/vision.md).

Variants (``--config=configs/vision.py:VARIANTS``, comma-separated):
  (none)   GPU size: 224x224 images, 16x16 patches (196), hidden 512, 8 heads, a 2-layer encoder,
           H_cycles 2 x L_cycles 2 over 2 layers, lines of up to 64 characters, bfloat16.
  tiny     a 2-core CPU run: 32x128 images of one line of up to 20 characters, 8x8 patches (64),
           hidden 128, float32 (README "Vision" has the measured time and character accuracy).
  unified  ``trm_unified``: no encoder blocks of its own; the TRM's recursion encodes the patches
           with the same weights that then read the line.
"""
from typing import Any, Dict, Optional

import ml_collections

from configs import common

VARIANTS = ("tiny", "unified")

# What makes a TRM model section read an image (trm_jax/models/config.py, the pixel path).
VISION_FIELDS: Dict[str, Any] = dict(image_height=224, image_width=224, patch_size=16, vision_capsules=12,
                                     vision_layers=2, vision_pooling="queries")
VISION_TINY_FIELDS: Dict[str, Any] = dict(image_height=32, image_width=128, patch_size=8)
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
        config.data = ml_collections.ConfigDict(dict(name="rendered_text", data_dir="",
                                                     options=dict(preset="tiny", source="")))
        config.update(dict(global_batch_size=32, epochs=10, eval_interval=2.0, checkpoint_interval=500, lr=1e-3,
                           lr_warmup_steps=50, log_interval=20))
    else:
        config.model = vision_model(variants, 65, VISION_VOCAB, {}, hidden_size=512, num_heads=8, expansion=4.0,
                                    H_cycles=2, L_cycles=2, L_layers=2, **reading)
        config.data = ml_collections.ConfigDict(dict(name="rendered_text", data_dir="",
                                                     options=dict(source="", height=224, width=224, max_chars=64)))
    return config
