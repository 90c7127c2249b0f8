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
counting batches per iteration. Unlike the reference (which draws the within-puzzle order from
numpy's global RNG), all randomness comes from the seeded generator, so the stream is
reproducible.

Streaming. The generator is consumed in three consecutive phases per iteration:

  (A) ``epochs_per_iter`` calls of ``rng.permutation(num_groups)``  (the visit order),
  (B) one ``rng.integers(low, high)`` over the whole order          (one puzzle per visit),
  (C) one ``rng.random(n)`` per batch, on the multi-example path    (within-puzzle order).

numpy draws each element of a broadcast ``integers`` call on its own, so (B) may be drawn in
blocks, and (C) is sequential anyway. The batches are therefore produced by three generators
placed at the starts of (A), (B) and (C), walking the order one block of epochs at a time:
memory is one block (``_BLOCK_ENTRIES`` visits, or one epoch if larger) plus the batch being
assembled, whatever ``epochs_per_iter`` is, and the batches are bit for bit those of drawing
each phase whole. The starts of (B) and (C) come from a first pass that discards values.
"""
from __future__ import annotations

import array
import bisect
import dataclasses
import threading
from collections import OrderedDict
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from data_pipeline.source import SplitIndex

# Visits (group draws) per block: bounds the sampler's memory (a few arrays of this many int64)
# while amortising numpy's per-call overhead (``integers`` costs ~14 us per call on 200 groups).
_BLOCK_ENTRIES = 1 << 16
# Epochs per iteration from which the discarding passes show a progress bar (~5 us per epoch).
_PROGRESS_EPOCHS = 200_000


def _generator(state: dict[str, Any]) -> np.random.Generator:
    """A Philox generator at a saved ``bit_generator.state``."""
    bit_generator = np.random.Philox(0)
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _epochs(epochs: int, iteration: int, what: str) -> Iterable[int]:
    """``range(epochs)``, with a progress bar when the pass is long enough to be noticed."""
    if epochs < _PROGRESS_EPOCHS:
        return range(epochs)
    return tqdm(range(epochs), desc=f"sampler iteration {iteration}: {what}", unit="epoch",
                leave=False, mininterval=2.0)


@dataclasses.dataclass(frozen=True)
class _Iteration:
    """What a pass over iteration ``t`` needs: its set, its RNG phase starts, its batch count."""

    iteration: int
    first_group: int
    num_groups: int
    single: bool               # every puzzle of the set has one example (Sudoku, Maze)
    state_b: dict[str, Any]    # bit generator state at the start of phase (B)
    state_c: dict[str, Any] | None  # ... of phase (C); None on the single-example path
    num_batches: int


class _Walk:
    """Sequential producer of one iteration's batches, from its first batch on.

    Holds one block of visits (``starts``/``sizes``: the drawn puzzle's first example and
    example count, int64 [block]) and the pieces of the batch being assembled.
    """

    def __init__(self, index: SplitIndex, it: _Iteration, seed: int, batch_size: int, epochs: int):
        self.index, self.it, self.batch_size, self.epochs = index, it, batch_size, epochs
        self.gen_a = np.random.Generator(np.random.Philox(seed + it.iteration))
        self.gen_b = _generator(it.state_b)
        # Phase (C) only exists on the multi-example path, and only once the prepass placed it.
        self.gen_c = _generator(it.state_c) if it.state_c is not None else None
        self.blocks = self._blocks()
        self.starts = self.sizes = self.cum = np.zeros(0, dtype=np.int64)
        self.pos = 0           # next visit in the current block
        self.next_batch = 0    # number of the batch the next ``produce``/``skip`` yields
        self.progress: tqdm | None = None  # updated per block (a per-batch update would dominate)

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(starts, sizes) of the visits, a block of whole epochs at a time (phases A and B)."""
        per_block = max(1, _BLOCK_ENTRIES // max(1, self.it.num_groups))
        g0 = self.it.first_group
        for e0 in range(0, self.epochs, per_block):
            n = min(per_block, self.epochs - e0)
            order = g0 + np.concatenate([self.gen_a.permutation(self.it.num_groups) for _ in range(n)])
            puzzles = self.gen_b.integers(self.index.group_indices[order],
                                          self.index.group_indices[order + 1])
            starts = self.index.puzzle_indices[puzzles]
            yield starts, self.index.puzzle_indices[puzzles + 1] - starts

    def _load(self) -> bool:
        """Move to the next block; False at the end of the iteration."""
        block = next(self.blocks, None)
        if block is None:
            return False
        self.starts, self.sizes = block
        self.cum = np.cumsum(self.sizes)
        self.pos = 0
        if self.progress is not None:
            self.progress.update(len(self.sizes))
        return True

    def _take_single(self) -> np.ndarray | None:
        """Next batch on the one-example path: the next ``batch_size`` visits' examples."""
        need, pieces = self.batch_size, []
        while need:
            if self.pos == len(self.starts) and not self._load():
                return None  # incomplete final batch: dropped
            n = min(need, len(self.starts) - self.pos)
            pieces.append(self.starts[self.pos:self.pos + n])
            self.pos += n
            need -= n
        return np.concatenate(pieces)

    def take_visits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(starts, sizes) of the visits that fill the next batch (the last one overflows or
        fills it exactly), or None when the rest of the iteration cannot fill one."""
        starts, sizes = [], []
        acc = 0  # examples of the visits already taken into this batch
        while True:
            if self.pos == len(self.sizes) and not self._load():
                return None
            base = int(self.cum[self.pos - 1]) if self.pos else 0
            last = int(np.searchsorted(self.cum, base + self.batch_size - acc, side="left"))
            if last >= len(self.sizes):  # the batch continues in the next block
                starts.append(self.starts[self.pos:])
                sizes.append(self.sizes[self.pos:])
                acc += int(self.cum[-1]) - base
                self.pos = len(self.sizes)
                continue
            starts.append(self.starts[self.pos:last + 1])
            sizes.append(self.sizes[self.pos:last + 1])
            self.pos = last + 1
            return np.concatenate(starts), np.concatenate(sizes)

    def produce(self) -> np.ndarray | None:
        """The next batch, int64 [batch_size], or None past the iteration's last batch."""
        if self.it.single:
            batch = self._take_single()
        else:
            visits = self.take_visits()
            batch = None if visits is None else self._cut(*visits)
        if batch is not None:
            self.next_batch += 1
        return batch

    def skip(self, count: int) -> None:
        """Advance past ``count`` batches without building them."""
        if self.it.single:
            # Whole blocks before the target are drawn but not gathered.
            remaining = count * self.batch_size
            while remaining:
                if self.pos == len(self.starts) and not self._load():
                    break
                n = min(remaining, len(self.starts) - self.pos)
                self.pos += n
                remaining -= n
            self.next_batch += count
            return
        draws = 0  # phase (C) values of the skipped batches, drawn (and dropped) in blocks
        for _ in range(count):
            visits = self.take_visits()
            if visits is None:
                break
            draws += int(visits[1].sum())
            self.next_batch += 1
        while self.gen_c is not None and draws:
            n = min(draws, _BLOCK_ENTRIES)
            self.gen_c.random(n)
            draws -= n

    def _cut(self, starts: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The batch of visits ``starts``/``n`` (examples per visit) whose total overflows or
        fills the batch: each puzzle's examples in random order, the last puzzle cut."""
        take = n.copy()
        take[-1] -= int(n.sum()) - self.batch_size  # cut the overflowing puzzle
        # A random subset, in random order, of each puzzle's examples: sort random keys within
        # each puzzle's segment and keep the first ``take`` of each segment.
        seg_start = np.cumsum(n) - n
        seg = np.repeat(np.arange(len(n)), n)
        local = np.arange(int(n.sum())) - np.repeat(seg_start, n)  # example offset in its puzzle
        perm = np.lexsort((self.gen_c.random(len(seg)), seg))  # stays within segments
        chosen = perm[local < np.repeat(take, n)]
        return (np.repeat(starts, n)[chosen] + local[chosen]).astype(np.int64)


def _set_is_single(index: SplitIndex, set_id: int) -> bool:
    """Whether every puzzle of set ``set_id`` has exactly one example."""
    p0 = int(index.group_indices[index.set_groups[set_id]])
    p1 = int(index.group_indices[index.set_groups[set_id + 1]])
    return bool(np.all(np.diff(index.puzzle_indices[p0:p1 + 1]) == 1))


def _prepare(index: SplitIndex, set_id: int, seed: int, iteration: int, batch_size: int,
             epochs: int, single: bool) -> _Iteration:
    """The discarding first pass: phase starts and batch count of one iteration.

    On the one-example path the count is closed form ((B) draws one example per visit and no
    puzzle is cut); otherwise it walks the iteration once without phase (C), which also leaves
    the (B) generator at the start of (C).
    """
    g0, g1 = int(index.set_groups[set_id]), int(index.set_groups[set_id + 1])
    num_groups = g1 - g0
    rng = np.random.Generator(np.random.Philox(seed + iteration))
    if num_groups == 0:
        return _Iteration(iteration, g0, 0, True, rng.bit_generator.state, None, 0)
    scratch = np.arange(num_groups)
    for _ in _epochs(epochs, iteration, "placing the puzzle draws"):
        rng.shuffle(scratch)  # consumes exactly what ``permutation(num_groups)`` does
    state_b = rng.bit_generator.state
    if single:
        return _Iteration(iteration, g0, num_groups, True, state_b, None,
                          epochs * num_groups // batch_size)
    walk = _Walk(index, _Iteration(iteration, g0, num_groups, False, state_b, None, 0), seed,
                 batch_size, epochs)
    count = 0
    with tqdm(total=epochs * num_groups, desc=f"sampler iteration {iteration}: counting batches",
              unit="visit", leave=False, mininterval=2.0,
              disable=epochs < _PROGRESS_EPOCHS) as walk.progress:
        while walk.take_visits() is not None:
            count += 1
    return _Iteration(iteration, g0, num_groups, False, state_b, walk.gen_b.bit_generator.state,
                      count)


def iteration_batches(index: SplitIndex, set_id: int, seed: int, iteration: int,
                      global_batch_size: int, epochs_per_iter: int = 1) -> np.ndarray:
    """Example indices of every full batch of one iteration: int64 [num_batches, global_batch_size].

    Materialises the whole iteration (for inspection and tests); training reads batches one at
    a time through ``TrainSchedule``, whose memory does not grow with ``epochs_per_iter``.
    """
    it = _prepare(index, set_id, seed, iteration, global_batch_size, epochs_per_iter,
                  _set_is_single(index, set_id))
    walk = _Walk(index, it, seed, global_batch_size, epochs_per_iter)
    plan = [walk.produce() for _ in range(it.num_batches)]
    if not plan:
        return np.zeros((0, global_batch_size), dtype=np.int64)
    return np.stack(plan).astype(np.int64)


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

    Thread-safe (Grain may prefetch with several threads, slightly out of order). Looking up
    batch ``k`` needs the batch counts of all earlier iterations; they are computed once and
    kept (8 bytes each). Batches are produced by a sequential walk per iteration that keeps
    the last ``window`` batches it produced: a request inside the window or ahead of the walk
    is cheap; one behind the window restarts that iteration's walk. Memory does not depend on
    ``epochs_per_iter`` (see the module docstring).
    """

    def __init__(self, index: SplitIndex, seed: int, global_batch_size: int,
                 epochs_per_iter: int | None = None, window: int = 64, max_walks: int = 2):
        if global_batch_size < 1 or (epochs_per_iter is not None and epochs_per_iter < 1):
            raise ValueError("global_batch_size and epochs_per_iter must be >= 1")
        if window < 1 or max_walks < 1:
            raise ValueError("window and max_walks must be >= 1")
        self.index = index
        self.seed = int(seed)
        self.global_batch_size = int(global_batch_size)
        self.num_sets = len(index.set_groups) - 1
        self.epochs_per_iter = int(epochs_per_iter or auto_epochs_per_iter(index, global_batch_size))
        self.window, self.max_walks = int(window), int(max_walks)
        self._single = [_set_is_single(index, s) for s in range(self.num_sets)]
        self._ends = array.array("q")  # _ends[t - 1] = batches in iterations 1..t
        self._empty_run = 0  # consecutive iterations without a full batch
        self._reset_caches()
        self._lock = threading.Lock()

    def _reset_caches(self) -> None:
        # Recomputable state, never pickled: prepared iterations (phase starts; a prepass each
        # on the multi-example path) and the live walks with their recent batches.
        self._iterations: OrderedDict[int, _Iteration] = OrderedDict()
        self._walks: OrderedDict[int, tuple[_Walk, OrderedDict[int, np.ndarray]]] = OrderedDict()

    def __getstate__(self) -> dict:  # picklable for Grain's multiprocessing prefetch
        state = dict(self.__dict__)
        for key in ("_lock", "_iterations", "_walks"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()
        self._lock = threading.Lock()

    def _iteration(self, t: int) -> _Iteration:
        it = self._iterations.get(t)
        if it is None:
            set_id = (t - 1) % self.num_sets
            it = _prepare(self.index, set_id, self.seed, t, self.global_batch_size,
                          self.epochs_per_iter, self._single[set_id])
            self._iterations[t] = it
            while len(self._iterations) > max(4, self.max_walks):
                self._iterations.popitem(last=False)
        else:
            self._iterations.move_to_end(t)
        return it

    def _count(self, t: int) -> int:
        set_id = (t - 1) % self.num_sets
        if self._single[set_id]:  # closed form: no pass over the iteration
            num_groups = int(self.index.set_groups[set_id + 1] - self.index.set_groups[set_id])
            return self.epochs_per_iter * num_groups // self.global_batch_size
        return self._iteration(t).num_batches

    def locate(self, k: int) -> tuple[int, int]:
        """(iteration t >= 1, batch within it) of global batch ``k`` >= 0."""
        with self._lock:
            return self._locate(k)

    def _locate(self, k: int) -> tuple[int, int]:
        while not self._ends or self._ends[-1] <= k:
            t = len(self._ends) + 1
            count = self._count(t)
            self._empty_run = self._empty_run + 1 if count == 0 else 0
            if self._empty_run >= self.num_sets:  # a whole cycle of sets without a batch
                raise ValueError(
                    f"global_batch_size {self.global_batch_size} is larger than one iteration "
                    f"of any set provides (epochs_per_iter={self.epochs_per_iter}); lower the "
                    "batch size or raise epochs_per_iter")
            self._ends.append((self._ends[-1] if self._ends else 0) + count)
        t = bisect.bisect_right(self._ends, k) + 1
        return t, k - (self._ends[t - 2] if t > 1 else 0)

    def _batch(self, t: int, j: int) -> np.ndarray:
        """Batch ``j`` of iteration ``t`` (which has more than ``j`` batches)."""
        entry = self._walks.get(t)
        if entry is not None:
            self._walks.move_to_end(t)
            walk, recent = entry
            if j in recent:
                return recent[j]
        if entry is None or j < walk.next_batch:  # new iteration, or behind the window: restart
            walk = _Walk(self.index, self._iteration(t), self.seed, self.global_batch_size,
                         self.epochs_per_iter)
            recent = OrderedDict()
            self._walks[t] = (walk, recent)
            while len(self._walks) > self.max_walks:
                self._walks.popitem(last=False)
        # Batches within ``window`` of the target are kept: prefetch threads may ask for them next.
        walk.skip(max(0, j - self.window + 1 - walk.next_batch))
        while walk.next_batch <= j:
            number = walk.next_batch
            batch = walk.produce()
            if batch is None:
                raise RuntimeError(f"iteration {t} ended before its batch {j}: sampler bug")
            recent[number] = batch
            while len(recent) > self.window:
                recent.popitem(last=False)
        return recent[j]

    def __getitem__(self, k: int) -> np.ndarray:
        with self._lock:
            t, j = self._locate(int(k))
            return self._batch(t, j)
