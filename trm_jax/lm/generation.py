"""Text from a trained causal model: load a run, sample tokens one at a time, stream them.

Cost. A causal model's earlier positions never change when a token is appended, so each new token
runs the recursion over that one position only, reading the earlier positions' keys and values from
a cache that holds them for every application of every attention module (trm_jax/lm/kv_cache.py;
exact: ``tests/test_language.py`` compares the cached logits with a full forward). The prompt is
processed in one forward (its length rounded up to a power of two, so few shapes compile); each
shape is compiled once, ahead of time, and that time is reported apart from tokens/s. When the
context is full (``seq_len`` tokens) the cache is rebuilt from the last ``seq_len / 2`` tokens (one
prompt-sized forward; rotary positions are relative, so the model sees an ordinary context).
Measured tokens/s are in the README ("Language models").
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Iterator, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import tokenizer as bpe
from trm_jax.lm import kv_cache
from trm_jax.lm.sampling import Sampling, next_token


class GenerationError(ValueError):
    """A run that cannot generate text (not a language model, no tokenizer, bad settings)."""


@dataclasses.dataclass
class GenerationStats:
    """``tokens`` produced in ``seconds`` (prompt processing and sampling); ``compile_seconds`` apart."""

    tokens: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _require_causal(model_cfg: Any, source: str) -> None:
    if not getattr(model_cfg, "causal", False):
        raise GenerationError(f"{source} is not a language model (config.model.causal is False): generate and "
                              "chat need a run of configs/code.py or configs/text.py")


def _prompt_lengths(seq_len: int) -> List[int]:
    """Lengths a prompt forward is compiled for: powers of two from 16, then ``seq_len``."""
    sizes, n = [], 16
    while n < seq_len:
        sizes.append(n)
        n *= 2
    return sizes + [seq_len]


class LanguageModel:
    """A trained causal model with its tokenizer: ``encode``/``decode`` text and ``stream`` tokens.

    ``LanguageModel.load(workdir)`` reads the latest checkpoint (EMA weights when the run kept them)
    and the ``tokenizer.json`` the run copied from its dataset.
    """

    def __init__(self, model_cfg: Any, variables: Dict[str, Any], tokenizer: Any, source: str = ""):
        from trm_jax.families import family_of

        _require_causal(model_cfg, source or "this model")
        self.config = model_cfg
        self.model_cls = family_of(model_cfg).model_cls
        self.variables = {k: v for k, v in variables.items() if k in ("params", "buffers")}
        self.tokenizer = tokenizer
        self.source = source
        self.prompt_lengths = _prompt_lengths(model_cfg.seq_len)
        self.applications = kv_cache.count_applications(self.model_cls, model_cfg, self.variables)
        self._compiled: Dict[int, Any] = {}
        self.stats = GenerationStats()

    @classmethod
    def load(cls, path: str, ema: bool = True) -> "LanguageModel":
        """The run at ``path`` (a workdir, its checkpoints/ or a step directory) and its tokenizer."""
        from trm_jax.families import family_of
        from trm_jax.pretrained import restore_run

        run = restore_run(path, ema=ema)
        model_cfg = family_of(run.config.model).config_cls.from_any(run.config.model)
        workdir = os.path.dirname(os.path.dirname(run.info.path))
        tok_path = os.path.join(workdir, bpe.FILE_NAME)
        _require_causal(model_cfg, run.info.path)  # before looking for a tokenizer a puzzle run never has
        if not os.path.isfile(tok_path):
            raise GenerationError(f"{tok_path}: no tokenizer beside the checkpoint {run.info.path} (a language "
                                  "run copies its dataset's tokenizer.json into its workdir when it starts)")
        return cls(model_cfg, run.variables, bpe.load(tok_path), source=run.info.path)

    # -- text <-> tokens ------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def prompt(self, text: str) -> List[int]:
        """Token ids of ``text`` as the start of a document (the separator first, as every training document)."""
        return [bpe.SEPARATOR_ID] + self.encode(text)

    # -- decoding --------------------------------------------------------------------------------
    def _step(self, length: int):
        """``(variables, cache, tokens [1, length], pos, last, key, temperature, top_k, top_p) -> (token, cache)``:
        ``length`` new tokens at ``pos ..``, the token sampled after token ``last`` of them, compiled once."""
        if length not in self._compiled:
            cfg, model_cls = self.config, self.model_cls

            def step(variables, cache, tokens, pos, last, key, temperature, top_k, top_p):
                logits, cache = kv_cache.decode_forward(model_cls, cfg, variables, kv_cache.at_position(cache, pos),
                                                        tokens)
                logits_V = jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)
                return next_token(logits_V, key, temperature, top_k, top_p), cache

            start = time.perf_counter()
            args = (self.variables, kv_cache.init_cache(cfg, self.applications, 1), jnp.zeros((1, length), jnp.int32),
                    jnp.int32(0), jnp.int32(0), jax.random.PRNGKey(0), *Sampling().as_arrays().values())
            self._compiled[length] = jax.jit(step, donate_argnums=1).lower(*args).compile()
            self.stats.compile_seconds += time.perf_counter() - start
        return self._compiled[length]

    def prompt_length(self, n: int) -> int:
        return next(b for b in self.prompt_lengths if b >= n)

    def warm_up(self, prompt_tokens: int) -> None:
        """Compile the prompt forward and the one-token step (so tokens/s excludes compilation)."""
        self._step(self.prompt_length(min(prompt_tokens, self.config.seq_len)))
        self._step(self.prompt_length(self.config.seq_len // 2))  # the rebuild when the context is full
        self._step(1)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
               seed: int = 0, stop_ids: Sequence[int] = (bpe.SEPARATOR_ID,)) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` sampled token ids after ``prompt_ids``, stopping before a
        ``stop_ids`` token (the document separator). Token ``i`` uses ``fold_in(PRNGKey(seed), i)``, so
        a seed fixes the output. ``prompt_ids`` should start with the separator (a document's start,
        as in training: :meth:`prompt`)."""
        if not prompt_ids:
            raise GenerationError("empty prompt: start it with the document separator (LanguageModel.prompt)")
        S = self.config.seq_len
        context = list(prompt_ids)[-S:]
        key = jax.random.PRNGKey(seed)
        settings = tuple(sampling.as_arrays().values())
        cache = kv_cache.init_cache(self.config, self.applications, 1)
        pending = context  # tokens not yet in the cache
        pos = 0
        for i in range(max_new_tokens):
            if pos + len(pending) > S:  # full: rebuild from the most recent half of the context
                pending, pos = context[-(S // 2):], 0
            n = len(pending)
            length = 1 if n == 1 else self.prompt_length(n)
            tokens = np.zeros((1, length), np.int32)
            tokens[0, :n] = pending
            start = time.perf_counter()
            token_N, cache = self._step(length)(self.variables, cache, tokens, jnp.int32(pos), jnp.int32(n - 1),
                                                jax.random.fold_in(key, i), *settings)
            token = int(token_N[0])
            self.stats.seconds += time.perf_counter() - start
            pos += n
            if token in stop_ids:
                return
            self.stats.tokens += 1
            yield token
            context = (context + [token])[-S:]
            pending = [token]

    def generate(self, text: str, max_new_tokens: int, sampling: Sampling = Sampling(), seed: int = 0) -> str:
        """The continuation of ``text`` (not including it)."""
        return self.decode(list(self.stream(self.prompt(text), max_new_tokens, sampling, seed)))


def stream_text(lm: LanguageModel, tokens: Iterator[int]) -> Iterator[str]:
    """The text pieces of a token stream, each as soon as it decodes to whole characters (a multi-byte
    character split over tokens is held back until complete)."""
    ids: List[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = lm.decode(ids)
        if text.endswith("\ufffd"):
            continue
        if text.startswith(shown):
            piece, shown = text[len(shown):], text
            if piece:
                yield piece
    text = lm.decode(ids)
    if text.startswith(shown) and text != shown:
        yield text[len(shown):]
