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

VARIANTS = common.LANGUAGE_VARIANTS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    # source "": the interpreter's standard library (Python); a directory/glob of files otherwise.
    return common.language_config(arg, "code", 512, dict(source="", extensions="python"),
                                  tiny_epochs=1, tiny_eval_interval=0.25)
