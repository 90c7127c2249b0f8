"""Training on a dataset while it is still being built: committed shards and a growing iterator.

A build commits its progress at group boundaries (``builder.py``: the column chunks, the record
spool and the counters in ``<data_dir>/<name>/<config>/build_state/<split>/state.json``, every
``SHARD_ROWS`` examples); an interrupted build continues from its last commit. Each committed
chunk is a *shard* (the PyTorch system's ``consolidated_*.pt``): this module reads the committed
prefix of a split while the build goes on, and :class:`IncrementalTrainIterator` trains on it:

* it starts once the training split's first ``first_examples`` rows are committed (and, for
  evaluation, the test split is complete: the pixel datasets build ``test`` first);
* at each iteration boundary of the reference sampling (``sampling.py``: every ``epochs_per_iter``
  epochs of the data it has) it begins a new *stage* on twice as many rows (whole groups; batch
  counter back to 0, same seed), waiting for the build if they are not committed yet, until the
  stage holds the whole split. Stage sizes depend on the data alone, not on the build's speed;
* its state is the row count of every stage and the batch number within the last one, so a
  resumed run replays exactly the batches of the run it continues (the prefix of a deterministic
  build is the same rows whether read from the committed chunks or from the finished dataset).

``start_background_build`` runs ``python -m data_pipeline.build`` in another process (the build
holds the configuration's lock: ``ensure.build_lock``). One process only: with several JAX
processes every one would have to see the same shards at the same step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np

from data_pipeline import arrays
from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import DataError, PuzzleDatasetMetadata
from data_pipeline.loader import _TrainBatch, process_slice
from data_pipeline.registry import make_builder
from data_pipeline.sampling import TrainSchedule
from data_pipeline.source import PuzzleSource


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a split has committed: ``examples`` and ``groups`` readable now, ``complete`` once
    the split is fully written (``built``: the whole dataset is finished)."""

    examples: int = 0
    groups: int = 0
    complete: bool = False
    built: bool = False


def _state(builder: PuzzleDatasetBuilder, split: str) -> dict[str, Any] | None:
    path = os.path.join(builder.build_state_dir, split, "state.json")
    try:
        with open(path) as f:
            return json.load(f)["progress"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def progress(builder: PuzzleDatasetBuilder, split: str) -> Progress:
    """The committed progress of ``split`` (zeros when nothing is committed yet)."""
    if builder.is_built():
        meta = builder.split_metadata()[split]
        return Progress(meta.num_examples, meta.total_groups, True, True)
    state = _state(builder, split)
    if state is None:
        return Progress()
    return Progress(int(state["examples"]), int(state["groups"]), bool(state["complete"]))


def _committed_columns(builder: PuzzleDatasetBuilder, split: str,
                       keys: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The committed chunks of a build in progress, concatenated per field (``keys``: only these),
    and their row count."""
    state = _state(builder, split)
    if state is None:
        raise FileNotFoundError(f"{builder.name} {split}: nothing committed yet in {builder.build_state_dir}")
    spool = os.path.join(builder.build_state_dir, split, "columns")
    columns = {}
    for key, names in state["columns"]["chunks"].items():
        if keys is not None and key not in keys:
            continue
        chunks = [np.load(os.path.join(spool, name), mmap_mode="r") for name in names]
        columns[key] = np.concatenate(chunks) if len(chunks) > 1 else np.asarray(chunks[0])
    return columns, int(state["columns"]["count"])


def _readable_columns(builder: PuzzleDatasetBuilder, split: str,
                      keys: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The columns of ``split`` readable now (``keys``: only these) and their row count: the finished
    dataset's (memory-mapped), or the committed shards of a build in progress."""
    for attempt in range(20):  # the build may finish (and remove its state) between two reads
        try:
            if builder.is_built():
                columns = arrays.load_columns(os.fspath(builder.data_path), split)
                available = len(columns["inputs"])
                return ({k: v for k, v in columns.items() if k in keys} if keys else columns), available
            return _committed_columns(builder, split, keys)
        except (FileNotFoundError, OSError):
            if attempt == 19:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def prefix_source(builder: PuzzleDatasetBuilder, split: str, examples: int) -> PuzzleSource:
    """A :class:`PuzzleSource` of the first ``examples`` rows of ``split`` (a group boundary of
    the build), read from the finished dataset or from the committed shards of a build in progress."""
    static = builder.static_metadata()
    columns, available = _readable_columns(builder, split)
    if examples > available:
        raise DataError(f"{builder.name} {split}: {examples} examples asked for, {available} committed",
                        path=builder.build_state_dir)
    columns = {k: v[:examples] for k, v in columns.items()}
    groups = int(np.asarray(columns["group_id"])[-1]) + 1 if examples else 0
    puzzles = int(np.asarray(columns["puzzle_index"])[-1]) + 1 if examples else 0
    meta = PuzzleDatasetMetadata(
        seq_len=static.seq_len, vocab_size=static.vocab_size, pad_id=static.pad_id,
        ignore_label_id=static.ignore_label_id, blank_identifier_id=static.blank_identifier_id,
        num_puzzle_identifiers=static.num_puzzle_identifiers, total_groups=groups,
        mean_puzzle_examples=examples / max(puzzles, 1), total_puzzles=puzzles, sets=tuple(static.sets),
        num_examples=examples)
    return PuzzleSource(columns, meta, where=f"{builder.name} [{split}, first {examples} examples]",
                        batch_extras=builder.batch_extras, view=builder.batch_view())


def planned_metadata(builder: PuzzleDatasetBuilder, split: str) -> PuzzleDatasetMetadata:
    """The metadata ``split`` will have when built (for the run's schedule while it is building)."""
    if builder.is_built():
        return builder.split_metadata()[split]
    size = builder.planned_size(split)
    if size is None:
        raise DataError(f"{builder.name}: incremental training needs the size of the {split} split before it "
                        "is built (PuzzleDatasetBuilder.planned_size); this dataset does not say it. Build it "
                        "first (data.incremental=False)")
    groups, puzzles, examples = size
    static = builder.static_metadata()
    return PuzzleDatasetMetadata(
        seq_len=static.seq_len, vocab_size=static.vocab_size, pad_id=static.pad_id,
        ignore_label_id=static.ignore_label_id, blank_identifier_id=static.blank_identifier_id,
        num_puzzle_identifiers=static.num_puzzle_identifiers, total_groups=groups,
        mean_puzzle_examples=examples / max(puzzles, 1), total_puzzles=puzzles, sets=tuple(static.sets),
        num_examples=examples)


def build_command(name: str, data_dir: str | None, options: Mapping[str, Any],
                  shard_rows: int | None = None) -> list[str]:
    """``python -m data_pipeline.build NAME ...`` for these options."""
    cmd = [sys.executable, "-m", "data_pipeline.build", name]
    if data_dir:
        cmd += ["--data_dir", data_dir]
    if shard_rows:
        cmd += ["--shard_rows", str(shard_rows)]
    for key, value in dict(options).items():
        if value is None:
            continue
        if isinstance(value, bool):
            cmd.append(f"--{key}" if value else f"--no-{key}")
        else:
            cmd += [f"--{key}", str(value)]
    return cmd


def start_background_build(name: str, data_dir: str | None, options: Mapping[str, Any],
                           log_path: str, shard_rows: int | None = None) -> subprocess.Popen:
    """Build the dataset in another process (its output to ``log_path``); it commits shards as it goes
    and continues an interrupted build's progress."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(build_command(name, data_dir, options, shard_rows), stdout=log, stderr=subprocess.STDOUT,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_until(ready: Callable[[], bool], what: str, build: subprocess.Popen | None, log_path: str = "",
               poll_s: float = 1.0, report: Callable[[str], None] = print) -> None:
    """Poll ``ready()``; fail with the build's log if the build process ends first without it."""
    said = False
    while not ready():
        if build is not None and build.poll() is not None and not ready():
            tail = ""
            if log_path and os.path.isfile(log_path):
                with open(log_path, errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
            raise DataError(f"the dataset build ended (exit code {build.returncode}) before {what}:\n{tail}",
                            path=log_path or None)
        if not said:
            report(f"waiting for {what} ...")
            said = True
        time.sleep(poll_s)


class IncrementalTrainIterator:
    """Endless training batches over a growing prefix of a training split that is still being
    built (module docstring).

    Stage ``s`` trains on the groups that lie wholly within the first ``first_examples * 2**s``
    rows (all of them once the split is complete); a new stage begins at an iteration boundary of
    the sampling (every ``epochs_per_iter`` epochs of the current stage), waiting for the build if
    those rows are not committed yet. The stages are a function of the data alone, never of how
    fast the build went, so a resumed run draws exactly the batches of the run it continues.

    ``get_state()`` / ``set_state()``: ``{"stages": [examples of each stage], "batch": n}``
    (JSON-able, saved with every checkpoint).
    """

    def __init__(self, name: str, data_dir: str | None, options: Mapping[str, Any], *, global_batch_size: int,
                 seed: int = 0, epochs_per_iter: int | None = None, process_index: int | None = None,
                 process_count: int | None = None, first_examples: int = 1,
                 on_stage: Callable[[int, int], None] | None = None,
                 wait: Callable[[Callable[[], bool], str], None] | None = None):
        self.builder = make_builder(name, data_dir, dict(options))
        self.global_batch_size, self.seed, self.epochs_per_iter = global_batch_size, seed, epochs_per_iter
        rank, local = process_slice(global_batch_size, process_index, process_count)
        self.lo, self.hi = rank * local, (rank + 1) * local
        self.first_examples = max(1, int(first_examples))
        self.on_stage = on_stage
        self.wait = wait or (lambda ready, what: wait_until(ready, what, None))
        self.stages: list[int] = []
        self.batch = 0
        self._map: _TrainBatch | None = None

    def stage_rows(self, stage: int) -> int | None:
        """Rows of stage ``stage``: the groups wholly within its first ``first_examples * 2**stage``
        rows (at least one group more than the stage before; the whole split once that reaches
        past its end); None while they are not committed yet."""
        want = self.first_examples << stage
        last = self.stages[stage - 1] if stage else 0
        done = progress(self.builder, "train")
        if done.examples <= max(want, last):
            return done.examples if done.complete else None
        # Only the group ids (a poll while waiting must not concatenate every committed column).
        group_ids = np.asarray(_readable_columns(self.builder, "train", ("group_id",))[0]["group_id"])
        rows = int(np.searchsorted(group_ids, group_ids[want], side="left"))
        if rows <= last:  # doubling stays inside one (large) group: take the group after the last stage
            rows = int(np.searchsorted(group_ids, group_ids[last], side="right"))
        return rows

    def _open(self, examples: int) -> None:
        source = prefix_source(self.builder, "train", examples)
        schedule = TrainSchedule(source.index, self.seed, self.global_batch_size, self.epochs_per_iter)
        self._map = _TrainBatch(source, schedule, self.lo, self.hi)

    def _next_stage(self) -> None:
        stage = len(self.stages)
        what = f"the training data of stage {stage} (the first {self.first_examples << stage} examples)"
        rows = self.stage_rows(stage)
        if rows is None:
            self.wait(lambda: self.stage_rows(stage) is not None, what)
            rows = self.stage_rows(stage)
        if rows == 0:
            raise DataError(f"{self.builder.name}: the first group is larger than {self.first_examples} "
                            "examples; raise first_examples", path=self.builder.build_state_dir)
        if self.stages and rows == self.stages[-1]:
            return  # the whole split: nothing more to come
        self.stages.append(rows)
        self.batch = 0
        self._open(rows)
        if self.on_stage is not None:
            self.on_stage(stage, rows)

    def __iter__(self) -> "IncrementalTrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._map is None:
            self._next_stage()
        elif self.batch > 0 and self._map.schedule.locate(self.batch)[1] == 0 and not self._complete():
            self._next_stage()  # an iteration boundary: move on to the next stage's data
        batch = self._map.map(self.batch)
        self.batch += 1
        return batch

    def _complete(self) -> bool:
        """Whether the current stage holds the whole (finished) split."""
        done = progress(self.builder, "train")
        return done.complete and bool(self.stages) and self.stages[-1] == done.examples

    def get_state(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "batch": self.batch}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if "stages" not in state:
            raise DataError("the checkpoint's data state is not an incremental run's (it was saved with "
                            "data.incremental=False); resume with the same setting")
        self.stages = [int(n) for n in state["stages"]]
        self.batch = int(state["batch"])
        self._map = None
        if self.stages:
            self._open(self.stages[-1])
