"""Maze-Hard TRM (paper: 30x30 mazes, 1k training mazes x 8 dihedral augmentations).

Variants: (none) the paper's attention TRM (H3 L4, 2 layers); ``tiny`` a CPU-sized run on 12x12
mazes (a laptop run of a few minutes); ``hrm``, ``trm_singlez``, ``trm_hier6``, ``transformer`` the
reference's other architectures at their reference sizes (``maze.py:trm_singlez``, ``maze.py:hrm,tiny``).
"""
import ml_collections

from configs import common


VARIANTS = ("tiny", *common.ARCHITECTURES)

def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    config = common.training(
        epochs=50000, eval_interval=5000, checkpoint_interval=5000,
        lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0, ema=True,
    )
    config.model = common.dataset_model(variants, dict(seq_len=900, vocab_size=6, num_puzzle_identifiers=1),
                                        dict(H_cycles=3, L_cycles=4, L_layers=2))
    # source: a directory with the Maze-Hard train.csv/test.csv (README "Paper data"); "" = generate.
    config.data = ml_collections.ConfigDict(dict(name="maze", data_dir="", options=dict(preset="hard_1k_aug", source="")))
    if "tiny" in variants:
        common.tiny_model(config.model)
        # 12x12 mazes (seq_len 144): 500 mazes (one of their 8 dihedral versions drawn per epoch),
        # 20 epochs = 312 steps of 32.
        config.data.options = dict(preset="small", source="")
        config.update(dict(global_batch_size=32, epochs=20, eval_interval=5, checkpoint_interval=100,
                           lr=1e-3, puzzle_emb_lr=1e-2, lr_warmup_steps=20, weight_decay=0.1,
                           puzzle_emb_weight_decay=0.1, log_interval=10, ema=False))
    return config
