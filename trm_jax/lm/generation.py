"""Text from a trained causal model: load a run, sample tokens one at a time, stream them.

Cost. Every new token runs the model's whole recursion (``halt_max_steps`` ACT steps of
``H_cycles x (L_cycles + 1)`` applications of the shared module) over the context so far: the
recursion's later cycles read every position's state from the earlier cycles, so a key/value cache
would need one cache per module application; this implementation recomputes instead. It reuses what
causality allows cheaply: the context is cut to the smallest power-of-two length that holds it
(positions after the last token cannot change its logits), so a short prompt costs a short forward,
and each length's step is compiled once, ahead of time, outside the measured tokens/s. When the
context is full (``seq_len`` tokens) the oldest tokens are dropped (rotary positions are relative).
Measured tokens/s are in the README ("Language models").
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import tokenizer as bpe
from trm_jax.lm.sampling import Sampling, next_token


class GenerationError(ValueError):
    """A run that cannot generate text (not a language model, no tokenizer, bad settings)."""


@dataclasses.dataclass
class GenerationStats:
    """``tokens`` produced in ``seconds`` (sampling only); ``compile_seconds`` spent compiling."""

    tokens: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _buckets(seq_len: int, fixed: bool) -> List[int]:
    """Context lengths a step is compiled for: powers of two from 16, then ``seq_len``."""
    if fixed:
        return [seq_len]
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

        if not getattr(model_cfg, "causal", False):
            raise GenerationError(f"{source or 'this model'} is not a language model (config.model.causal is "
                                  "False): generate and chat need a run of configs/code.py or configs/text.py")
        self.config = model_cfg
        self.family = family_of(model_cfg)
        self.variables = variables
        self.tokenizer = tokenizer
        self.source = source
        self.buckets = _buckets(model_cfg.seq_len, fixed=model_cfg.pos_encodings == "learned")
        self._compiled: Dict[int, Any] = {}
        self.stats = GenerationStats()

    @classmethod
    def load(cls, path: str, ema: bool = True) -> "LanguageModel":
        """The run at ``path`` (a workdir, its checkpoints/ or a step directory) and its tokenizer."""
        from trm_jax.pretrained import restore_run

        run = restore_run(path, ema=ema)
        family_cfg = _typed(run.config.model)
        workdir = os.path.dirname(os.path.dirname(run.info.path))
        tok_path = os.path.join(workdir, bpe.FILE_NAME)
        if not os.path.isfile(tok_path):
            raise GenerationError(f"{tok_path}: no tokenizer beside the checkpoint {run.info.path} (a language "
                                  "run copies its dataset's tokenizer.json into its workdir when it starts)")
        return cls(family_cfg, run.variables, bpe.load(tok_path), source=run.info.path)

    # -- text <-> tokens ------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- decoding --------------------------------------------------------------------------------
    def _step(self, length: int):
        """The compiled ``(variables, tokens [1, length], last, key, temperature, top_k, top_p) -> token``."""
        if length not in self._compiled:
            cfg = dataclasses.replace(self.config, seq_len=length)
            model = self.family.model_cls(cfg)

            def step(variables, tokens, last, key, temperature, top_k, top_p):
                batch = {"inputs": tokens, "labels": jnp.zeros_like(tokens),
                         "puzzle_identifiers": jnp.zeros(tokens.shape[:1], jnp.int32),
                         "label_bytes": jnp.zeros(tokens.shape[:1], jnp.int32)}
                carry = model.initial_carry(batch)
                for _ in range(cfg.halt_max_steps):  # every row runs exactly halt_max_steps steps
                    carry, out = model.apply(variables, carry, batch, train=False)
                logits = jax.lax.dynamic_index_in_dim(out["logits"], last, axis=1, keepdims=False)
                return next_token(logits, key, temperature, top_k, top_p)

            start = time.perf_counter()
            args = (self.variables, jnp.zeros((1, length), jnp.int32), jnp.int32(0), jax.random.PRNGKey(0),
                    *Sampling().as_arrays().values())
            self._compiled[length] = jax.jit(step).lower(*args).compile()
            self.stats.compile_seconds += time.perf_counter() - start
        return self._compiled[length]

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def warm_up(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Compile every context length a generation of this size will use (so tokens/s excludes it)."""
        for b in self.buckets:
            if b >= self.bucket(min(prompt_tokens, self.config.seq_len)) and \
                    (b == self.buckets[0] or b // 2 < prompt_tokens + max_new_tokens):
                self._step(b)

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
        settings = sampling.as_arrays()
        for i in range(max_new_tokens):
            n = len(context)
            length = self.bucket(n)
            step = self._step(length)
            tokens = np.zeros((1, length), np.int32)
            tokens[0, :n] = context
            start = time.perf_counter()
            token_N = step(self.variables, tokens, jnp.int32(n - 1), jax.random.fold_in(key, i), *settings.values())
            token = int(token_N[0])
            self.stats.seconds += time.perf_counter() - start
            if token in stop_ids:
                return
            self.stats.tokens += 1
            yield token
            context = (context + [token])[-S:]

    def prompt(self, text: str) -> List[int]:
        """Token ids of ``text`` as the start of a document (the separator first, as every training document)."""
        return [bpe.SEPARATOR_ID] + self.encode(text)

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


def _typed(model_section: Any) -> Any:
    from trm_jax.families import family_of

    return family_of(model_section).config_cls.from_any(model_section)


def default_sampling(temperature: Optional[float] = None, top_k: Optional[int] = None,
                     top_p: Optional[float] = None) -> Sampling:
    base = Sampling()
    return Sampling(base.temperature if temperature is None else temperature,
                    base.top_k if top_k is None else top_k, base.top_p if top_p is None else top_p)
