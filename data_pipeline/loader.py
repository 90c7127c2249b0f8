"""Grain input pipelines: endless training batches and one-pass evaluation batches.

Both are ``grain.MapDataset``s over *batch numbers* (random access, so Grain's iterator state
is just the next batch number), mapped to numpy batches gathered from the memory-mapped
column store, and iterated with Grain's thread prefetch:

    train:  MapDataset.range(0, ∞) -> TrainSchedule[k] (global example ids [B]) -> this
            process's contiguous slice [process_index * b : (process_index + 1) * b],
            b = B // process_count -> gather
    eval:   MapDataset.range(num_batches) -> rows of global batch k, this process's slice,
            padded to b -> gather + mask + example_index

The iterators' ``get_state()`` / ``set_state()`` (Grain) save and restore the position, so a
resumed run continues with exactly the next batch; every process computes the same global
batch from the seed, so 2 processes see together what 1 process sees.

Batches (dicts of numpy arrays, b = per-process batch)::

    train: inputs int32 [b, L], labels int32 [b, L] (-100 = ignore), puzzle_identifiers int32 [b],
           plus the dataset's ``batch_extras`` (e.g. capsules: sketches float32 [b, k, D], ...)
    eval:  the same, padded (inputs pad_id, labels -100, identifier blank_identifier_id),
           plus mask bool [b] (real rows) and example_index int32 [b] (-1 on padding)
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

import grain
import numpy as np

from data_pipeline.common import IGNORE_LABEL_ID
from data_pipeline.sampling import TrainSchedule
from data_pipeline.source import PuzzleSource, load

_ENDLESS = sys.maxsize


def process_slice(global_batch_size: int, process_index: int | None,
                  process_count: int | None) -> tuple[int, int]:
    """(process_index, local batch size), defaults from JAX; checks divisibility."""
    if process_index is None or process_count is None:
        import jax  # only for the defaults: tests and tools pass them explicitly
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                         f"process count {process_count}")
    return process_index, global_batch_size // process_count


class _TrainBatch(grain.transforms.Map):
    """Global batch number -> this process's batch."""

    def __init__(self, source: PuzzleSource, schedule: TrainSchedule, lo: int, hi: int):
        self.source, self.schedule, self.lo, self.hi = source, schedule, lo, hi

    def map(self, k: int) -> dict[str, np.ndarray]:
        return self.source.gather(self.schedule[k][self.lo:self.hi])


class _EvalBatch(grain.transforms.Map):
    """Eval batch number -> this process's rows of it, padded to the local batch size."""

    def __init__(self, source: PuzzleSource, starts: np.ndarray, ends: np.ndarray, offset: int,
                 local: int):
        self.source, self.starts, self.ends, self.offset, self.local = source, starts, ends, offset, local

    def map(self, k: int) -> dict[str, np.ndarray]:
        start = int(self.starts[k]) + self.offset
        stop = min(start + self.local, int(self.ends[k]))
        rows = np.arange(start, max(start, stop), dtype=np.int64)
        batch = self.source.gather(rows)
        n, pad = len(rows), self.local - len(rows)
        meta = self.source.metadata
        if pad:
            fill = {"inputs": meta.pad_id, "labels": IGNORE_LABEL_ID,
                    "puzzle_identifiers": meta.blank_identifier_id}
            batch = {key: np.concatenate([v, np.full((pad,) + v.shape[1:], fill.get(key, 0), dtype=v.dtype)])
                     for key, v in batch.items()}
        batch["mask"] = np.arange(self.local) < n
        batch["example_index"] = np.concatenate([rows, np.full(pad, -1)]).astype(np.int32)
        return batch


def train_dataset(source: PuzzleSource, *, global_batch_size: int, seed: int = 0,
                  epochs_per_iter: int | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
    """Endless ``MapDataset`` of this process's training batches (reference sampling)."""
    rank, local = process_slice(global_batch_size, process_index, process_count)
    schedule = TrainSchedule(source.index, seed, global_batch_size, epochs_per_iter)
    return grain.MapDataset.range(0, _ENDLESS).map(
        _TrainBatch(source, schedule, rank * local, (rank + 1) * local))


def eval_dataset(source: PuzzleSource, *, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
    """Finite ``MapDataset`` of eval batches: each example once, in order; sets never share a
    batch (as in the reference); every process gets the same number of batches."""
    rank, local = process_slice(global_batch_size, process_index, process_count)
    starts, ends = [], []
    bounds = source.index.set_examples
    for s in range(len(bounds) - 1):
        first, last = int(bounds[s]), int(bounds[s + 1])
        for start in range(first, last, global_batch_size):
            starts.append(start)
            ends.append(min(start + global_batch_size, last))
    return grain.MapDataset.range(len(starts)).map(
        _EvalBatch(source, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64),
                   rank * local, local))


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def train_iterator(name: str, data_dir: str | None = None, options: Mapping[str, Any] | None = None,
                   *, global_batch_size: int, seed: int = 0, epochs_per_iter: int | None = None,
                   process_index: int | None = None, process_count: int | None = None,
                   split: str = "train", num_threads: int = 2, prefetch: int = 4) -> grain.DatasetIterator:
    """Endless Grain iterator of this process's training batches of dataset ``name``.

    Args:
      name, data_dir, options: select the built dataset (as in ``ensure_built``).
      global_batch_size: B, summed over processes; must divide by ``process_count``.
      seed: sampling seed (iteration t uses ``seed + t``, as the reference).
      epochs_per_iter: permutations of the groups concatenated per iteration; None = the fewest
        that fill one global batch (the reference uses its eval interval in epochs: pass that
        for the reference's exact iteration boundaries).
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      num_threads, prefetch: Grain read threads and prefetch buffer (batches).

    Returns:
      An iterator of dicts ``inputs``/``labels`` int32 [B / process_count, L],
      ``puzzle_identifiers`` int32 [B / process_count]; ``get_state()`` / ``set_state(state)``
      save and restore the position exactly.
    """
    source = load(name, split, data_dir, **dict(options or {}))
    ds = train_dataset(source, global_batch_size=global_batch_size, seed=seed,
                       epochs_per_iter=epochs_per_iter, process_index=process_index,
                       process_count=process_count)
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def eval_iterator(name: str, data_dir: str | None = None, options: Mapping[str, Any] | None = None,
                  *, global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, split: str = "test", num_threads: int = 2,
                  prefetch: int = 4) -> grain.DatasetIterator:
    """One pass over ``split`` in order; see ``eval_dataset``. Batches also carry ``mask`` bool [b]
    and ``example_index`` int32 [b] (global example index, -1 on padding rows)."""
    source = load(name, split, data_dir, **dict(options or {}))
    ds = eval_dataset(source, global_batch_size=global_batch_size, process_index=process_index,
                      process_count=process_count)
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))
