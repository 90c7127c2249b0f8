"""Evaluation: every test example, full ``halt_max_steps``, reference metrics, evaluators."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from trm_jax.evaluators import Evaluator
from trm_jax.lm.objective import language_metrics
from trm_jax.sharding import make_global_batch


def normalize_eval_metrics(sums: Mapping[str, float]) -> Dict[str, float]:
    """Reference evaluation normalisation: every metric divided by ``count``; ``count`` kept."""
    count = float(sums.get("count", 0.0))
    out = {f"eval/{k}": float(v) / max(count, 1.0) for k, v in sums.items() if k != "count"}
    out["eval/count"] = count
    if "read_count" in sums:  # greedy reading (models/vision.py): over the rows read left to right
        reads = max(float(sums["read_count"]), 1.0)
        out.update({f"eval/{k}": float(sums[k]) / reads for k in ("char_accuracy", "line_accuracy")})
        out["eval/read_count"] = float(sums["read_count"])
    out.update(language_metrics(out, "eval", token_mean_loss=True))  # perplexity, bits per byte (a language model's)
    return out


def _host(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(eval_batch: Callable, params: Any, buffers: Any, batches: Iterable[Mapping[str, np.ndarray]],
             mesh: Mesh, evaluators: Sequence[Evaluator] = (), output_dir: Optional[str] = None,
             num_batches: Optional[int] = None, show_progress: bool = True, aux: Any = None) -> Dict[str, float]:
    """Run ``eval_batch`` over ``batches`` (this process's rows) and return ``eval/*`` metrics.

    ``eval_batch(params, buffers, aux, global_batch) -> (metric sums, preds, q_halt_logits)``
    is the jitted family eval function (e.g. :func:`trm_jax.steps.make_eval_batch`). Padded rows have no labels
    and so count in no metric; evaluators only see rows whose ``mask`` is true.
    """
    for ev in evaluators:
        ev.begin()
    sums: Optional[Dict[str, jax.Array]] = None
    bar = tqdm(batches, total=num_batches, desc="eval", unit="batch", leave=False,
               disable=not show_progress or jax.process_index() != 0)
    for local_batch in bar:
        batch = make_global_batch(local_batch, mesh)
        metrics, preds, q_halt = eval_batch(params, buffers, {} if aux is None else aux, batch)
        sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
        if evaluators:
            host_batch = {k: _host(v) for k, v in batch.items()}
            host_preds, host_q = _host(preds), _host(q_halt)
            keep = host_batch["mask"] if "mask" in host_batch else np.ones(len(host_preds), bool)
            rows = {k: v[keep] for k, v in host_batch.items()}
            for ev in evaluators:
                ev.update(rows, host_preds[keep], host_q[keep])
    results = normalize_eval_metrics({k: float(v) for k, v in (sums or {}).items()})
    for ev in evaluators:
        out_dir = os.path.join(output_dir, ev.name) if output_dir else ""
        if out_dir and jax.process_index() == 0:
            os.makedirs(out_dir, exist_ok=True)
        results.update({f"eval/{k}": float(v) for k, v in ev.result(out_dir).items()})
    return results
