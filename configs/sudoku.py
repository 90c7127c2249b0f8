"""Sudoku-Extreme TRM (paper: 1k training puzzles x 1000 augmentations).

Variants (``--config=configs/sudoku.py:VARIANTS``, comma-separated):
  (none)  attention TRM, the paper's hyper-parameters (hidden 512, H3 L6, 2 layers, RoPE).
  mlp     TRM-MLP: the reference's ``mlp_t=True, pos_encodings=none`` (best Sudoku result).
  tiny    a CPU-sized model on easy puzzles (preset ``easy``: at most 8 blanks), a laptop run of
          a few minutes; with ``mlp`` (``mlp,tiny``) exact solutions of held-out puzzles appear
          within that time (README "Configs" has the measured figures).
  hrm, trm_singlez, trm_hier6, transformer
          the reference's other architectures at their reference sizes (``arch/*.yaml``), e.g.
          ``sudoku.py:hrm``, ``sudoku.py:hrm,tiny``, ``sudoku.py:mlp,trm_singlez``.
"""
import ml_collections

from configs import common


VARIANTS = ("mlp", "tiny", *common.ARCHITECTURES)

def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    config = common.training(
        epochs=50000, eval_interval=5000, checkpoint_interval=5000,
        lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0, ema=True,
    )
    config.model = common.dataset_model(variants, dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1),
                                        dict(H_cycles=3, L_cycles=6, L_layers=2))
    # source: a directory with the Sudoku-Extreme train.csv/test.csv (README "Paper data"); "" = generate.
    config.data = ml_collections.ConfigDict(dict(name="sudoku", data_dir="", options=dict(preset="full", source="")))
    if "mlp" in variants:
        if "transformer" in variants:
            raise ValueError("variants 'mlp' and 'transformer': the transformer baseline has no mlp_t token mixing")
        config.model.mlp_t = True
        config.model.pos_encodings = "none"
    if "tiny" in variants:
        common.tiny_model(config.model)
        # 1000 easy puzzles: 40 epochs = 625 steps of 64. (``--config.data.options.preset=tiny`` gives
        # 200 minimal puzzles x 5 augmentations: harder, no exact solutions at this size.)
        config.data.options = dict(preset="easy", source="")
        config.update(dict(global_batch_size=64, epochs=40, eval_interval=10, checkpoint_interval=100,
                           lr=1e-3, puzzle_emb_lr=1e-2, lr_warmup_steps=20, weight_decay=0.1,
                           puzzle_emb_weight_decay=0.1, log_interval=10, ema=False))
    return config
