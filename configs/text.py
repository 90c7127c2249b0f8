"""Natural-language model (the PyTorch system's ``text_optimized``: sequence 256): a causal TRM over a
byte-level BPE of text, by default the Python documentation that ships with the interpreter.

Variants (``--config=configs/text.py:VARIANTS``, comma-separated):
  (none)       GPU size: hidden 512, 8 heads, 2 layers reused over H_cycles 2 x (L_cycles 2 + 1),
               sequence 256, vocabulary 4096, bfloat16.
  tiny         a 2-core CPU run: hidden 128, sequence 128, vocabulary 2048, float32
               (README "Language models" has the measured time and bits per byte).
  transformer  the causal transformer baseline at the same parameter count (2 layers, run once).

Other sources: ``--config.data.options.source=PATH``: TinyStories (``.txt`` with ``<|endoftext|>``
separators, or ``.jsonl``), WikiText raw (``wiki.train.raw``), or a directory of ``.txt``/``.jsonl``/
``.parquet`` files (``--config.data.options.text_field=text``). Generate with ``python -m trm_jax.generate``.
"""
import ml_collections

from configs import common
from configs.code import SIZE, TINY_SIZE

VARIANTS = ("tiny", "transformer")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, VARIANTS)
    tiny = "tiny" in variants
    seq_len, vocab = (128, 2048) if tiny else (256, 4096)
    config = common.training(
        global_batch_size=64, epochs=20, eval_interval=2.0, checkpoint_interval=1000, lr=3e-4, lr_min_ratio=0.1,
        lr_warmup_steps=200, weight_decay=0.1, log_interval=50, puzzle_emb_lr=0.0, puzzle_emb_weight_decay=0.0,
    )
    config.model = common.language_model(variants, seq_len, vocab, **(TINY_SIZE if tiny else SIZE))
    # source "": the Python documentation shipped with the interpreter (README "Language models").
    config.data = ml_collections.ConfigDict(dict(name="text", data_dir="", options=dict(
        source="", text_field="text", vocab_size=vocab, seq_len=seq_len, max_documents=0)))
    if tiny:
        config.update(dict(global_batch_size=16, epochs=4, eval_interval=0.5, checkpoint_interval=500, lr=1e-3,
                           lr_warmup_steps=50, log_interval=20))
    return config
