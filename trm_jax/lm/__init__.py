"""Language models: a causal TRM (or transformer baseline) over BPE tokens, its objective, tokenizer,
sampling, ``generate`` and ``chat`` (docs/language_models.md)."""
