"""Dataset-specific evaluators that consume predictions after each evaluation batch.

An evaluator sees every real (unpadded) test row once per evaluation, with the
model's prediction and halting confidence, and returns extra metrics (e.g. ARC
pass@k) and files (e.g. a Kaggle ``submission.json``, Sudoku/Maze ``predictions.jsonl``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Protocol

import numpy as np


class Evaluator(Protocol):
    """What the evaluation loop calls."""

    name: str

    def begin(self) -> None:
        """Start a new evaluation (forget earlier predictions)."""

    def update(self, batch: Mapping[str, np.ndarray], preds: np.ndarray, q_halt_logits: np.ndarray) -> None:
        """Rows of one batch (``mask`` true), ``preds [b, seq_len]``, ``q_halt_logits [b]``."""

    def result(self, output_dir: str) -> Dict[str, float]:
        """Metrics (names without the ``eval/`` prefix); may write files under ``output_dir``."""


def is_primary() -> bool:
    """Whether this process writes evaluator files (process 0; every process holds every row)."""
    import jax  # here, not at module level: evaluator modules stay light to import
    return jax.process_index() == 0


_FACTORIES: Dict[str, Any] = {}


def register(dataset_name: str):
    """Decorator: ``factory(dataset_name, data_dir, options) -> Evaluator`` for a dataset."""

    def wrap(factory):
        _FACTORIES[dataset_name] = factory
        return factory

    return wrap


def make_evaluators(dataset_name: str, data_dir: str, options: Mapping[str, Any]) -> List[Evaluator]:
    """The evaluators that apply to a dataset (ARC: voting, pass@k, submission.json; Sudoku and Maze:
    per-example predictions.jsonl)."""
    if dataset_name in ("arc", "arc_pixels"):
        import trm_jax.evaluators.arc  # noqa: F401  (registers the ARC evaluator; imports TFDS)
    elif dataset_name in ("sudoku", "maze"):
        import trm_jax.evaluators.boards  # noqa: F401  (registers the predictions writer)
    factory = _FACTORIES.get(dataset_name)
    return [] if factory is None else [factory(dataset_name, data_dir, dict(options))]
