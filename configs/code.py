"""Code language model (the PyTorch system's ``code_optimized``: sequence 512): a causal TRM over a
byte-level BPE of source files, by default the running interpreter's standard library.

Variants (``--config=configs/code.py:VARIANTS``, comma-separated):
  (none)       GPU size: hidden 512, 8 heads, 2 layers reused over H_cycles 2 x (L_cycles 2 + 1),
               sequence 512, vocabulary 4096, bfloat16.
  tiny         a 2-core CPU run: hidden 128, sequence 128, vocabulary 2048, float32
               (README "Language models" has the measured time and bits per byte).
  transformer  the causal transformer baseline at the same parameter count (2 layers, run once).

Other sources: ``--config.data.options.source=DIR`` (any directory or glob of source files) and
``--config.data.options.extensions=python,javascript``. Generate with ``python -m trm_jax.generate``.
"""
import ml_collections

from configs import common

VARIANTS = ("tiny", "transformer")
# The GPU size; tiny overrides hidden_size/num_heads/dtype (configs/common.language_model).
SIZE = dict(hidden_size=512, num_heads=8, expansion=4.0, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=1)
TINY_SIZE = dict(SIZE, hidden_size=128, num_heads=4, forward_dtype="float32")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    tiny = "tiny" in variants
    seq_len, vocab = (128, 2048) if tiny else (512, 4096)
    config = common.training(
        global_batch_size=64, epochs=20, eval_interval=2.0, checkpoint_interval=1000, lr=3e-4, lr_min_ratio=0.1,
        lr_warmup_steps=200, weight_decay=0.1, log_interval=50, puzzle_emb_lr=0.0, puzzle_emb_weight_decay=0.0,
    )
    config.model = common.language_model(variants, seq_len, vocab, **(TINY_SIZE if tiny else SIZE))
    # source "": the interpreter's standard library (Python); a directory/glob of files otherwise.
    config.data = ml_collections.ConfigDict(dict(name="code", data_dir="", options=dict(
        source="", extensions="python", vocab_size=vocab, seq_len=seq_len, max_documents=0)))
    if tiny:
        config.update(dict(global_batch_size=16, epochs=1, eval_interval=0.25, checkpoint_interval=500, lr=1e-3,
                           lr_warmup_steps=50, log_interval=20))
    return config
