"""ARC evaluator: vote over augmented predictions, score pass@k, write a Kaggle submission.

Each test example of the ``arc`` dataset is one test pair of a task under one augmentation
(``data_pipeline/arc.py`` stores ``task_id``, ``test_index``, ``dihedral`` and ``color_perm``
with it). For every prediction the evaluator

1. crops the grid at the end-of-grid marker (``arc.decode_grid``, the reference's crop; a
   prediction with no grid is dropped),
2. maps it back to the task's frame (``Augmentation.invert``: inverse dihedral transform,
   inverse colour map),
3. votes per (task, test pair): candidates ranked by how many augmentations predicted them,
   ties broken by the mean of ``sigmoid(q_halt_logits)`` over those predictions (as the
   reference evaluator). ``add_prediction`` / ``vote`` are these steps on their own (used by
   ``python -m trm_jax.solve``).

Metrics (the trainer prefixes ``eval/``):

* ``ARC/pass@k`` (k = 1, 2, 5, 10, 100, 1000): fraction of tasks whose *every* test output is
  among the top-k candidates of its pair, as ARC Prize scores a task (k = 2: two attempts);
* ``ARC/partial_pass@k`` (k = 1, 2): per task the fraction of its test outputs found, averaged
  over tasks; this is the reference TRM evaluator's ``ARC/pass@k`` (the paper's numbers);
* ``ARC/valid_fraction``: share of predictions that contain a grid.

``submission.json`` (Kaggle format) goes to ``output_dir``:
``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...one per test input]}``; a test input
without any valid prediction gets ``[[0]]``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from data_pipeline.arc import Augmentation, decode_grid
from trm_jax.evaluators import is_primary, register

PASS_KS = (1, 2, 5, 10, 100, 1000)
PARTIAL_KS = (1, 2)
NUM_ATTEMPTS = 2
EMPTY_GRID = [[0]]


def grid_key(grid: np.ndarray) -> bytes:
    """Hashable identity of a grid (shape and cells)."""
    return bytes(grid.shape) + np.ascontiguousarray(grid, dtype=np.uint8).tobytes()


@dataclasses.dataclass
class ArcTestSet:
    """Which (task, test pair) each stored test example belongs to, and the true outputs.

    pair_of_example: int [N] pair id of example i (pairs numbered in store order);
    dihedral: int [N], color_perm: uint8 [N, 10] the augmentation of example i;
    pairs: (task_id, test_index) of each pair; truths: the true output grid of each pair;
    tasks: task_id -> its pair ids in test-input order (tasks in store order).
    """

    pair_of_example: np.ndarray
    dihedral: np.ndarray
    color_perm: np.ndarray
    pairs: List[tuple]
    truths: List[np.ndarray]
    tasks: Dict[str, List[int]]

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> "ArcTestSet":
        """From the test split's columns (``PuzzleSource.columns``: raw labels, pad = 0)."""
        group = np.asarray(columns["group_id"], dtype=np.int64)
        test_index = np.asarray(columns["test_index"], dtype=np.int64)
        if test_index.size and test_index.min() < 0:
            raise ValueError("ARC test split holds a demonstration pair (test_index -1)")
        code = group * (int(test_index.max(initial=0)) + 1) + test_index
        # Codes increase with the store order (groups are contiguous), so unique keeps it.
        codes, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        dihedral = np.asarray(columns["dihedral"], dtype=np.int64)
        color_perm = np.asarray(columns["color_perm"], dtype=np.uint8)
        pairs, truths, tasks = [], [], {}
        for pair_id, ex in enumerate(first.tolist()):
            task_id = str(columns["task_id"][ex])
            pairs.append((task_id, int(test_index[ex])))
            aug = Augmentation(int(dihedral[ex]), tuple(int(c) for c in color_perm[ex]))
            truth = decode_grid(np.asarray(columns["labels"][ex]))
            if truth is None:
                raise ValueError(f"ARC test example {ex} (task {task_id}) has no label grid")
            truths.append(aug.invert(truth))
            tasks.setdefault(task_id, []).append(pair_id)
        for task_id, ids in tasks.items():
            ids.sort(key=lambda p: pairs[p][1])
        return cls(inverse.reshape(-1).astype(np.int64), dihedral, color_perm, pairs, truths, tasks)


@dataclasses.dataclass
class Candidate:
    """A distinct predicted grid of one test pair: votes and summed halting confidence."""

    grid: np.ndarray
    count: int = 0
    q_sum: float = 0.0

    @property
    def q_mean(self) -> float:
        return self.q_sum / max(self.count, 1)


def rank_candidates(candidates: Mapping[bytes, Candidate]) -> List[Candidate]:
    """Most votes first; equal votes: higher mean sigmoid(q_halt) first; then first seen."""
    return sorted(candidates.values(), key=lambda c: (c.count, c.q_mean), reverse=True)


def add_prediction(votes: Dict[bytes, Candidate], tokens: np.ndarray, aug: Augmentation, confidence: float) -> bool:
    """Tally one augmented prediction into ``votes`` (grid key -> candidate) of its test input.

    Crops ``tokens`` [900] at the end-of-grid marker, maps the grid back through ``aug`` and adds
    one vote with ``confidence`` (sigmoid of q_halt). Returns False (nothing added) when the
    prediction holds no grid.
    """
    grid = decode_grid(tokens)
    if grid is None:
        return False
    grid = aug.invert(grid)
    cand = votes.setdefault(grid_key(grid), Candidate(grid))
    cand.count += 1
    cand.q_sum += confidence
    return True


def vote(preds: np.ndarray, q_halt_logits: np.ndarray, augmentations: Sequence[Augmentation]) -> List[Candidate]:
    """Ranked candidates of one test input from its augmented predictions (the evaluator's vote).

    preds: int [n, 900] token predictions, one per augmentation; q_halt_logits: [n];
    augmentations: the n augmentations the inputs were made with. Most votes first, ties by the
    mean sigmoid(q_halt) of their predictions.
    """
    votes: Dict[bytes, Candidate] = {}
    for tokens, q, aug in zip(np.asarray(preds), _sigmoid(q_halt_logits).tolist(), augmentations):
        add_prediction(votes, tokens, aug, q)
    return rank_candidates(votes)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def first_correct_rank(ranked: Sequence[Candidate], truth: np.ndarray) -> Optional[int]:
    """0-based rank of the true grid among the candidates, None if absent."""
    key = grid_key(truth)
    for rank, cand in enumerate(ranked):
        if grid_key(cand.grid) == key:
            return rank
    return None


class ArcEvaluator:
    """``trm_jax.evaluators.Evaluator`` for the ``arc`` dataset (see module docstring)."""

    name = "ARC"

    def __init__(self, test_set: ArcTestSet, pass_ks: Sequence[int] = PASS_KS,
                 partial_ks: Sequence[int] = PARTIAL_KS, num_attempts: int = NUM_ATTEMPTS):
        self.test_set = test_set
        self.pass_ks = tuple(pass_ks)
        self.partial_ks = tuple(partial_ks)
        self.num_attempts = num_attempts
        self.begin()

    def begin(self) -> None:
        self.votes: List[Dict[bytes, Candidate]] = [{} for _ in self.test_set.pairs]
        self.num_predictions = 0
        self.num_valid = 0

    def update(self, batch: Mapping[str, np.ndarray], preds: np.ndarray,
               q_halt_logits: np.ndarray) -> None:
        """batch: real rows with ``example_index`` int [b]; preds int [b, 900]; q_halt_logits [b]."""
        ts = self.test_set
        for ex, pred, q in zip(np.asarray(batch["example_index"]).tolist(), np.asarray(preds),
                               _sigmoid(q_halt_logits).tolist()):
            self.num_predictions += 1
            aug = Augmentation(int(ts.dihedral[ex]), tuple(int(c) for c in ts.color_perm[ex]))
            self.num_valid += add_prediction(self.votes[ts.pair_of_example[ex]], pred, aug, q)

    def ranked(self) -> List[List[Candidate]]:
        """Ranked candidates of every pair."""
        return [rank_candidates(v) for v in self.votes]

    def scores(self, ranked: Sequence[Sequence[Candidate]]) -> Dict[str, float]:
        """ARC metrics from the ranked candidates of every pair."""
        ts = self.test_set
        ranks = [first_correct_rank(r, truth) for r, truth in zip(ranked, ts.truths)]
        strict = {k: 0.0 for k in self.pass_ks}
        partial = {k: 0.0 for k in self.partial_ks}
        for pair_ids in ts.tasks.values():
            task_ranks = [ranks[p] for p in pair_ids]
            for k in self.pass_ks:
                strict[k] += all(r is not None and r < k for r in task_ranks)
            for k in self.partial_ks:
                partial[k] += float(np.mean([r is not None and r < k for r in task_ranks]))
        n = max(len(ts.tasks), 1)
        out = {f"ARC/pass@{k}": v / n for k, v in strict.items()}
        out.update({f"ARC/partial_pass@{k}": v / n for k, v in partial.items()})
        out["ARC/valid_fraction"] = self.num_valid / max(self.num_predictions, 1)
        return out

    def submission(self, ranked: Sequence[Sequence[Candidate]]) -> Dict[str, List[Dict[str, Any]]]:
        """Kaggle submission: per task, per test input, ``attempt_1..attempt_K`` grids."""
        out = {}
        for task_id, pair_ids in self.test_set.tasks.items():
            entries = []
            for p in pair_ids:
                grids = [c.grid.tolist() for c in ranked[p][:self.num_attempts]] or [EMPTY_GRID]
                grids += [grids[0]] * (self.num_attempts - len(grids))  # repeat the best guess
                entries.append({f"attempt_{i + 1}": g for i, g in enumerate(grids)})
            out[task_id] = entries
        return out

    def result(self, output_dir: str) -> Dict[str, float]:
        """Metrics; writes ``submission.json`` into ``output_dir`` (if given) on process 0."""
        ranked = self.ranked()
        if output_dir and is_primary():
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "submission.json"), "w") as f:
                json.dump(self.submission(ranked), f)
        return self.scores(ranked)



@register("arc")
@register("arc_pixels")  # the same tasks with the input grids as images (data_pipeline/vision.py)
def make_arc_evaluator(dataset_name: str, data_dir: Optional[str],
                       options: Mapping[str, Any]) -> ArcEvaluator:
    """The evaluator of a built ``arc`` dataset (its test split's columns)."""
    import data_pipeline as dp
    source = dp.load(dataset_name, "test", data_dir or None, **dict(options))
    return ArcEvaluator(ArcTestSet.from_columns(source.columns))
