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

VARIANTS = common.LANGUAGE_VARIANTS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    # source "": the Python documentation shipped with the interpreter (README "Language models").
    return common.language_config(arg, "text", 256, dict(source="", text_field="text"),
                                  tiny_epochs=4, tiny_eval_interval=0.5)
