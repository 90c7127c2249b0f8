"""Which examples make up each global training batch: the reference's ``_iter_train``.

Iteration ``t`` = 1, 2, 3, ... visits set ``(t - 1) % num_sets`` with
``rng = Generator(Philox(seed + t))``:

1. ``order`` = ``epochs_per_iter`` concatenated permutations of the set's groups;
2. for each group in ``order``: one random puzzle of the group, and that puzzle's examples in
   random order, appended to the current batch; a puzzle that overflows the batch is cut to
   fill it exactly (the rest of it is not used), and the next batch starts with the next group;
3. the last incomplete batch of the iteration is dropped.

``epochs_per_iter`` defaults to the fewest epochs that fill one batch per iteration
(``auto_epochs_per_iter``); the reference passes its eval interval (in epochs).

Everything is a pure function of (seed, t), so batch ``k`` of the endless stream is found by
counting batches per iteration; ``TrainSchedule`` caches those counts and the latest plans.
Unlike the reference (which draws the within-puzzle order from numpy's global RNG), all
randomness comes from the seeded generator, so the stream is reproducible.
"""
from __future__ import annotations

import bisect
import threading
from collections import OrderedDict

import numpy as np

from data_pipeline.source import SplitIndex


def iteration_batches(index: SplitIndex, set_id: int, seed: int, iteration: int,
                      global_batch_size: int, epochs_per_iter: int = 1) -> np.ndarray:
    """Example indices of every full batch of one iteration: int64 [num_batches, global_batch_size]."""
    rng = np.random.Generator(np.random.Philox(seed + iteration))
    g0, g1 = int(index.set_groups[set_id]), int(index.set_groups[set_id + 1])
    num_groups = g1 - g0
    if num_groups == 0:
        return np.zeros((0, global_batch_size), dtype=np.int64)
    order = g0 + np.concatenate([rng.permutation(num_groups) for _ in range(epochs_per_iter)])
    first_puzzle = index.group_indices[order]
    puzzles = rng.integers(first_puzzle, index.group_indices[order + 1])  # one per visited group
    starts = index.puzzle_indices[puzzles]
    sizes = index.puzzle_indices[puzzles + 1] - starts
    if np.all(sizes == 1):  # Sudoku / Maze: one example per puzzle, no cutting, no shuffling
        num_batches = len(starts) // global_batch_size
        return starts[: num_batches * global_batch_size].reshape(num_batches, global_batch_size)

    ends = np.cumsum(sizes)  # examples appended up to and including each visited group
    batches = []
    pos = 0  # next position in ``order``
    while pos < len(order):
        before = ends[pos - 1] if pos else 0
        last = int(np.searchsorted(ends, before + global_batch_size, side="left"))
        if last >= len(order):
            break  # incomplete final batch: dropped
        n = sizes[pos:last + 1]
        take = n.copy()
        take[-1] -= ends[last] - (before + global_batch_size)  # cut the overflowing puzzle
        # A random subset, in random order, of each puzzle's examples: sort random keys within
        # each puzzle's segment and keep the first ``take`` of each segment.
        seg_start = np.cumsum(n) - n
        seg = np.repeat(np.arange(len(n)), n)
        local = np.arange(int(n.sum())) - np.repeat(seg_start, n)  # example offset in its puzzle
        perm = np.lexsort((rng.random(len(seg)), seg))  # stays within segments
        chosen = perm[local < np.repeat(take, n)]
        batches.append(np.repeat(starts[pos:last + 1], n)[chosen] + local[chosen])
        pos = last + 1
    if not batches:
        return np.zeros((0, global_batch_size), dtype=np.int64)
    return np.stack(batches).astype(np.int64)


def auto_epochs_per_iter(index: SplitIndex, global_batch_size: int) -> int:
    """The fewest epochs per iteration with which every set fills at least one global batch
    (each group supplies at least its smallest puzzle's examples)."""
    sizes = np.diff(index.puzzle_indices)
    # Groups are never empty, so reduceat's segments are the groups' puzzles.
    smallest = np.minimum.reduceat(sizes, index.group_indices[:-1]) if len(sizes) else sizes
    epochs = 1
    for s in range(len(index.set_groups) - 1):
        supply = int(smallest[index.set_groups[s]:index.set_groups[s + 1]].sum())
        if supply:
            epochs = max(epochs, -(-global_batch_size // supply))
    return epochs


class TrainSchedule:
    """Random access to the endless stream of global batches: ``schedule[k]`` -> int64 [B].

    Thread-safe (Grain may prefetch with several threads). Looking up batch ``k`` needs the
    batch counts of all earlier iterations; they are computed once and kept (a few bytes
    each), while only the most recent iteration plans are cached.
    """

    def __init__(self, index: SplitIndex, seed: int, global_batch_size: int,
                 epochs_per_iter: int | None = None, cache_size: int = 2):
        if global_batch_size < 1 or (epochs_per_iter is not None and epochs_per_iter < 1):
            raise ValueError("global_batch_size and epochs_per_iter must be >= 1")
        self.index = index
        self.seed = int(seed)
        self.global_batch_size = int(global_batch_size)
        self.num_sets = len(index.set_groups) - 1
        self.epochs_per_iter = int(epochs_per_iter or auto_epochs_per_iter(index, global_batch_size))
        self._ends: list[int] = []  # _ends[t - 1] = batches in iterations 1..t
        self._empty_run = 0  # consecutive iterations without a full batch
        self._plans: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable for Grain's multiprocessing prefetch
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _plan(self, iteration: int) -> np.ndarray:
        plan = self._plans.get(iteration)
        if plan is None:
            plan = iteration_batches(self.index, (iteration - 1) % self.num_sets, self.seed, iteration,
                                     self.global_batch_size, self.epochs_per_iter)
            self._plans[iteration] = plan
            while len(self._plans) > self._cache_size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(iteration)
        return plan

    def locate(self, k: int) -> tuple[int, int]:
        """(iteration t >= 1, batch within it) of global batch ``k`` >= 0."""
        with self._lock:
            while not self._ends or self._ends[-1] <= k:
                t = len(self._ends) + 1
                count = len(self._plan(t))
                self._empty_run = self._empty_run + 1 if count == 0 else 0
                if self._empty_run >= self.num_sets:  # a whole cycle of sets without a batch
                    raise ValueError(
                        f"global_batch_size {self.global_batch_size} is larger than one iteration "
                        f"of any set provides (epochs_per_iter={self.epochs_per_iter}); lower the "
                        "batch size or raise epochs_per_iter")
                self._ends.append((self._ends[-1] if self._ends else 0) + count)
            t = bisect.bisect_right(self._ends, k) + 1
            return t, k - (self._ends[t - 2] if t > 1 else 0)

    def __getitem__(self, k: int) -> np.ndarray:
        t, j = self.locate(int(k))
        with self._lock:
            return self._plan(t)[j]
