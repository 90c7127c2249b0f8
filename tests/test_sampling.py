"""The streaming training sampler: same batches as the whole-iteration plan, bounded memory.

The oracle is the sampler as it was before streaming (``oracle_iteration_batches``, kept here
verbatim): it materialised every permutation, draw and batch of an iteration at once.
"""
from __future__ import annotations

import gc
import json
import pickle
import random
import threading
import tracemalloc

import numpy as np
import pytest

import grain
from data_pipeline import sampling
from data_pipeline.loader import train_dataset
from data_pipeline.sampling import TrainSchedule, iteration_batches
from data_pipeline.source import SplitIndex
from tests.test_data_loader import synthetic_source


# ----------------------------------------------------------------------------- the oracle
def oracle_iteration_batches(index: SplitIndex, set_id: int, seed: int, iteration: int,
                             global_batch_size: int, epochs_per_iter: int = 1) -> np.ndarray:
    """The pre-streaming ``iteration_batches``, unchanged: int64 [num_batches, global_batch_size]."""
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


def oracle_stream(index: SplitIndex, seed: int, batch: int, epochs: int, iterations: int) -> np.ndarray:
    """The first ``iterations`` iterations of the endless stream, int64 [batches, batch]."""
    num_sets = len(index.set_groups) - 1
    plans = [oracle_iteration_batches(index, (t - 1) % num_sets, seed, t, batch, epochs)
             for t in range(1, iterations + 1)]
    return np.concatenate(plans)


def make_index(groups: list[list[int]], set_of_group: list[int] | None = None,
               num_sets: int = 1) -> SplitIndex:
    """``SplitIndex`` of groups[g] = example counts of group g's puzzles (sets in group order)."""
    set_of_group = set_of_group or [0] * len(groups)
    sizes = [s for g in groups for s in g]
    puzzle_indices = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    group_indices = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)
    set_groups = np.searchsorted(set_of_group, np.arange(num_sets + 1), side="left").astype(np.int64)
    return SplitIndex(puzzle_indices, group_indices, set_groups, puzzle_indices[group_indices[set_groups]])


def arc_like(num_groups: int, seed: int) -> list[list[int]]:
    """Groups of 1..6 augmented puzzles of 2..7 examples each (as ARC's train split)."""
    r = np.random.default_rng(seed)
    return [r.integers(2, 8, size=int(r.integers(1, 7))).tolist() for _ in range(num_groups)]


VARIED = [[3, 1], [2], [5, 2, 4], [1, 1, 1], [4], [2, 6], [3], [1, 2], [7], [2, 2]]
INDEXES = {
    "single": make_index([[1] * 5] * 7),                       # Sudoku-like: the size-1 path
    "varied": make_index(VARIED),
    "arc": make_index(arc_like(12, 0)),
    "mostly_single": make_index([[1] * 9 + [3]] * 3 + [[1]]),  # often draws only 1-example puzzles
    "two_sets": make_index([[1]] * 5 + [[2, 3]] * 4 + [[1]] * 3, [0] * 5 + [1] * 4 + [2] * 3, 3),
    "big_puzzles": make_index([[9, 12], [3], [15]]),             # puzzles larger than a batch
}


# ----------------------------------------------------------------------------- numpy's contract
def test_integers_drawn_in_pieces_equal_one_call():
    """The property streaming relies on: a broadcast ``integers`` draws element by element."""
    r = np.random.default_rng(0)
    for trial in range(30):
        n = int(r.integers(1, 400))
        low = r.integers(0, 1000, n)
        high = low + r.integers(1, 2 ** int(r.integers(1, 40)), n)  # includes 1-wide ranges
        whole, pieces = (np.random.Generator(np.random.Philox(trial)) for _ in range(2))
        whole.permutation(9), pieces.permutation(9)
        cuts = np.sort(r.integers(0, n + 1, 3))
        got = np.concatenate([pieces.integers(low[a:b], high[a:b])
                              for a, b in zip([0, *cuts], [*cuts, n])])
        np.testing.assert_array_equal(got, whole.integers(low, high))
        np.testing.assert_array_equal(pieces.random(4), whole.random(4))  # same state after


# ----------------------------------------------------------------------------- same data order
@pytest.mark.parametrize("block", [1, 7, 64, sampling._BLOCK_ENTRIES])
@pytest.mark.parametrize("name", sorted(INDEXES))
def test_iteration_batches_match_the_oracle(name, block, monkeypatch):
    # Small blocks put block boundaries inside batches and epochs, one block per epoch and
    # several epochs per block.
    monkeypatch.setattr(sampling, "_BLOCK_ENTRIES", block)
    index = INDEXES[name]
    num_sets = len(index.set_groups) - 1
    checked = 0
    for seed in (0, 5):
        for iteration in (1, 2, 3, 4):
            for batch in (1, 3, 8, 13):
                for epochs in (1, 2, 5):
                    set_id = (iteration - 1) % num_sets
                    want = oracle_iteration_batches(index, set_id, seed, iteration, batch, epochs)
                    got = iteration_batches(index, set_id, seed, iteration, batch, epochs)
                    assert got.dtype == np.int64 and got.shape == want.shape
                    np.testing.assert_array_equal(got, want)
                    checked += len(want)
    assert checked > 100


def test_a_mixed_set_sometimes_draws_only_single_examples():
    """The oracle's size-1 shortcut depends on the draws, the streaming path on the set: the
    comparison above covers both branches of the oracle on one set."""
    index = INDEXES["mostly_single"]
    shortcut = []
    for iteration in range(1, 30):
        rng = np.random.Generator(np.random.Philox(iteration))
        order = rng.permutation(4)
        puzzles = rng.integers(index.group_indices[order], index.group_indices[order + 1])
        shortcut.append(bool(np.all(np.diff(index.puzzle_indices)[puzzles] == 1)))
        np.testing.assert_array_equal(iteration_batches(index, 0, 0, iteration, 2),
                                      oracle_iteration_batches(index, 0, 0, iteration, 2))
    assert any(shortcut) and not all(shortcut)


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_schedule_in_order_matches_the_oracle_stream(name, monkeypatch):
    monkeypatch.setattr(sampling, "_BLOCK_ENTRIES", 5)
    index = INDEXES[name]
    for batch, epochs in ((4, 3), (6, None)):
        schedule = TrainSchedule(index, seed=2, global_batch_size=batch, epochs_per_iter=epochs, window=4)
        want = oracle_stream(index, 2, batch, schedule.epochs_per_iter, 7)
        got = np.stack([schedule[k] for k in range(len(want))])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["single", "arc", "two_sets"])
def test_random_access_in_any_order(name, monkeypatch):
    monkeypatch.setattr(sampling, "_BLOCK_ENTRIES", 6)
    index = INDEXES[name]
    want = oracle_stream(index, 7, 5, 6, 6)
    order = list(range(len(want)))
    random.Random(0).shuffle(order)
    # A small window makes most requests restart or skip within an iteration.
    schedule = TrainSchedule(index, seed=7, global_batch_size=5, epochs_per_iter=6, window=2)
    for k in order:
        np.testing.assert_array_equal(schedule[k], want[k])
    # Fresh schedules jumping straight to one batch (a resumed run) skip ahead without building.
    for k in (len(want) - 1, len(want) // 2, 3):
        np.testing.assert_array_equal(TrainSchedule(index, 7, 5, 6, window=1)[k], want[k])
    # Out of order inside the window, as prefetch threads ask: no restart needed.
    schedule = TrainSchedule(index, seed=7, global_batch_size=5, epochs_per_iter=6, window=8)
    for k in (2, 0, 1, 5, 3, 4, 9, 6, 8, 7):
        np.testing.assert_array_equal(schedule[k], want[k])


def test_concurrent_readers_get_the_oracle_batches():
    index = INDEXES["arc"]
    want = oracle_stream(index, 1, 8, 4, 5)
    schedule = TrainSchedule(index, seed=1, global_batch_size=8, epochs_per_iter=4, window=3)
    errors = []

    def read(offset: int) -> None:
        try:
            for k in range(offset, len(want), 3):
                np.testing.assert_array_equal(schedule[k], want[k])
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pickled_schedule_drops_its_walks_and_agrees():
    index = INDEXES["arc"]
    schedule = TrainSchedule(index, seed=3, global_batch_size=6, epochs_per_iter=3)
    first = [schedule[k] for k in range(12)]
    copy = pickle.loads(pickle.dumps(schedule))
    assert not copy._walks and not copy._iterations
    for k in (11, 0, 5, 20):
        np.testing.assert_array_equal(copy[k], schedule[k])
    np.testing.assert_array_equal(copy[0], first[0])


def test_counts_kept_per_iteration_are_8_bytes():
    schedule = TrainSchedule(INDEXES["single"], seed=0, global_batch_size=4, epochs_per_iter=1)
    schedule[5000]  # 7 visits per iteration: one batch of 4 each
    assert len(schedule._ends) == 5001 and schedule._ends.itemsize == 8
    assert list(schedule._ends[:3]) == [1, 2, 3] and schedule._ends[-1] == 5001


# ----------------------------------------------------------------------------- exact resume (Grain)
@pytest.mark.parametrize("groups", [arc_like(9, 3), [[1, 1]] * 11])
def test_grain_resume_continues_with_the_next_batch(groups, monkeypatch):
    monkeypatch.setattr(sampling, "_BLOCK_ENTRIES", 16)
    source = synthetic_source(groups)
    index = source.index
    kwargs = dict(global_batch_size=8, seed=4, epochs_per_iter=5, process_index=0, process_count=1)
    want = oracle_stream(index, 4, 8, 5, 4)
    # Small prefetch buffers: Grain's default (500 batches) would keep threads allocating after
    # the test, inside the memory tests' measurements.
    options = grain.ReadOptions(num_threads=3, prefetch_buffer_size=4)
    it = iter(train_dataset(source, **kwargs).to_iter_dataset(options))
    for k in range(len(want) - 6):
        got = next(it)
        np.testing.assert_array_equal(got["inputs"][:, 0], want[k])  # inputs[:, 0] = example id
    state = json.loads(json.dumps(it.get_state()))
    # Prefetch threads ask for batches slightly out of order.
    fresh = iter(train_dataset(source, **kwargs).to_iter_dataset(options))
    fresh.set_state(state)
    for k in range(len(want) - 6, len(want)):
        np.testing.assert_array_equal(next(fresh)["inputs"][:, 0], want[k])


# ----------------------------------------------------------------------------- bounded memory
def _peak_bytes(fn) -> int:
    gc.collect()  # finish off earlier tests' objects (e.g. Grain iterators) before measuring
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check_memory(groups: list[list[int]], epochs: int, batch: int) -> None:
    """Fetching the first batches stays within one block of visits, far below the old plan."""
    index = make_index(groups)
    plan_bytes = 8 * epochs * len(groups)  # the old plan alone at one example per visit: a floor

    def first_batches() -> list[np.ndarray]:
        schedule = TrainSchedule(index, seed=0, global_batch_size=batch, epochs_per_iter=epochs)
        return [schedule[k] for k in range(3)]

    new = _peak_bytes(first_batches)
    old = _peak_bytes(lambda: oracle_iteration_batches(index, 0, 0, 1, batch, epochs))
    # A handful of int64 arrays of one block (at least an epoch) plus a fixed overhead (generator
    # states, the walk's objects), whatever ``epochs`` is; the old sampler held several arrays of
    # all the iteration's visits.
    block = max(sampling._BLOCK_ENTRIES, len(groups))
    bound = 12 * 8 * block + (64 << 10)
    assert new < bound < plan_bytes / 4, (new, bound, plan_bytes)
    assert old > plan_bytes, (old, plan_bytes)
    np.testing.assert_array_equal(np.stack(first_batches()),
                                  oracle_iteration_batches(index, 0, 0, 1, batch, epochs)[:3])


@pytest.mark.parametrize("groups, epochs, batch", [([[1] * 5] * 50, 20_000, 16),   # size-1 path
                                                   (arc_like(40, 1), 5_000, 256)])
def test_memory_does_not_grow_with_epochs_per_iter(groups, epochs, batch, monkeypatch):
    monkeypatch.setattr(sampling, "_BLOCK_ENTRIES", 512)  # keeps the iteration small and fast
    _check_memory(groups, epochs, batch)


@pytest.mark.slow
def test_memory_bound_at_the_real_block_size():
    _check_memory([[1] * 5] * 10, 400_000, 64)
