"""The language-model objective: next-token cross-entropy at every position, per ACT step.

A causal model (``config.model.causal``) trains through the one train step (trm_jax/steps.py) with
this objective instead of the reference's ACT loss: no halting head, so no Q losses; every row runs
exactly ``halt_max_steps`` supervision steps (deep supervision when > 1) and each step's loss is the
mean cross-entropy over the batch's real tokens (padding labels are ``IGNORE_LABEL_ID``).

Metric sums (normalised like the TRM's: ``lm_loss`` by the batch, the rest by ``count``):

* ``lm_loss``: the token-mean cross-entropy (nats) times the batch size, so the logged value is the
  token-mean; ``train/perplexity = exp(train/lm_loss)``;
* ``token_nll``, ``tokens``, ``bytes``: summed negative log-likelihood (nats), predicted tokens and
  the UTF-8 bytes they stand for (the batch's ``label_bytes``), from which
  :func:`language_metrics` derives ``perplexity = exp(token_nll / tokens)`` and
  ``bits_per_byte = token_nll / (ln 2 * bytes)``, exact over a whole evaluation;
* ``accuracy``: next-token accuracy; ``count``, ``steps`` as for the TRM.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from trm_jax.losses import IGNORE_LABEL_ID, softmax_cross_entropy
from trm_jax.steps import Objective

Metrics = Dict[str, jax.Array]


def lm_metrics(carry: Any, outputs: Mapping[str, Any]) -> Tuple[jax.Array, Metrics]:
    """``(loss, metric sums)`` of one step of a causal model (see the module docstring)."""
    data = carry.current_data
    labels_BL = data["labels"]
    logits_BLV = outputs["logits"]
    mask_BL = labels_BL != IGNORE_LABEL_ID
    nll_BL = softmax_cross_entropy(logits_BLV, labels_BL)
    f32 = jnp.float32
    tokens = mask_BL.sum().astype(f32)
    nll = nll_BL.sum()
    batch = labels_BL.shape[0]  # the global batch (the step is compiled over global arrays)
    lm_loss = nll * (batch / jnp.maximum(tokens, 1.0))
    counts_B = mask_BL.sum(-1)
    valid_B = carry.halted & (counts_B > 0)
    correct_BL = mask_BL & (jnp.argmax(logits_BLV, axis=-1) == labels_BL)
    row = lambda x_B: jnp.where(valid_B, x_B, 0).sum().astype(f32)  # noqa: E731 (rows that finished)
    metrics = {
        "count": valid_B.sum().astype(f32),
        "accuracy": row(correct_BL.sum(-1) / jnp.maximum(counts_B, 1)),
        "steps": row(carry.steps),
        "lm_loss": jax.lax.stop_gradient(lm_loss),
        "token_nll": row(jax.lax.stop_gradient(nll_BL).sum(-1)),
        "tokens": row(counts_B),
        "bytes": row(data["label_bytes"]),
    }
    return lm_loss, metrics


class LanguageModelObjective(Objective):
    """The objective of every causal model (any architecture with ``causal=True``)."""

    def step_metrics(self, cfg: Any, carry: Any, outputs: Mapping[str, Any]) -> Tuple[jax.Array, Metrics]:
        return lm_metrics(carry, outputs)


def language_metrics(metrics: Mapping[str, float], prefix: str, token_mean_loss: bool = False) -> Dict[str, float]:
    """``{prefix}/perplexity`` and ``{prefix}/bits_per_byte`` from normalised ``token_nll``/``tokens``/
    ``bytes`` (any common normalisation cancels); ``{}`` when the metrics are not a language model's.

    ``token_mean_loss``: also ``{prefix}/lm_loss`` = the exact token-mean cross-entropy (evaluation:
    a padded last batch would otherwise weigh its few rows as a full batch)."""
    nll, tokens, n_bytes = (metrics.get(f"{prefix}/{k}") for k in ("token_nll", "tokens", "bytes"))
    if nll is None or not tokens:
        return {}
    out = {f"{prefix}/perplexity": math.exp(min(nll / tokens, 700.0))}
    if token_mean_loss:
        out[f"{prefix}/lm_loss"] = nll / tokens
    if n_bytes:
        out[f"{prefix}/bits_per_byte"] = nll / (math.log(2.0) * n_bytes)
    return out
