"""Random access to a built split: ``load(name, split, data_dir, **options)``.

``PuzzleSource`` follows Grain's ``RandomAccessDataSource`` protocol (``len`` and
``__getitem__``) over the memory-mapped column store (``arrays.py``), and adds vectorised
``gather`` for whole batches plus the reference's index structure (``SplitIndex``):
``puzzle_indices`` [P+1] (example boundaries of each puzzle), ``group_indices`` [G+1] (puzzle
boundaries of each group), and the group / example ranges of each set.

One example (``source[i]``), labels already mapped to -100 where ignored::

    inputs int32 [L], labels int32 [L], puzzle_identifiers int32 [], group_id int32 [],
    puzzle_index int32 [], set_index int32 [], example_index int32 [], <extras>
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from data_pipeline import arrays
from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import IGNORE_LABEL_ID, DataError, PuzzleDatasetMetadata
from data_pipeline.registry import make_builder

_STRUCTURE = ("group_id", "puzzle_index", "set_index")


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """Boundaries of puzzles, groups and sets (all int64, as the reference's index arrays).

    puzzle_indices: [P+1] examples of puzzle p are ``puzzle_indices[p]:puzzle_indices[p+1]``.
    group_indices:  [G+1] puzzles of group g are ``group_indices[g]:group_indices[g+1]``.
    set_groups:     [S+1] groups of set s are ``set_groups[s]:set_groups[s+1]``.
    set_examples:   [S+1] examples of set s are ``set_examples[s]:set_examples[s+1]``.
    """

    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    set_groups: np.ndarray
    set_examples: np.ndarray


def _run_starts(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """Start positions of the runs of ``values``, which must read 0,..,0,1,..,1,2,.. ."""
    values = np.asarray(values, dtype=np.int64)
    steps = np.diff(values)
    bad = np.flatnonzero((steps != 0) & (steps != 1))
    if values[0] != 0 or bad.size:
        at = 0 if values[0] != 0 else int(bad[0]) + 1
        raise DataError(f"{name} must count up from 0 in steps of 1 (records in group/puzzle "
                        f"order); found {values[at]} at example {at}", path=where)
    return np.concatenate([[0], np.flatnonzero(steps) + 1]).astype(np.int64)


def build_index(columns: Mapping[str, np.ndarray], num_sets: int, where: str) -> SplitIndex:
    """Check the record order and derive the ``SplitIndex``; ``where`` names the data in errors."""
    n = len(columns["inputs"])
    puzzle_starts = _run_starts(columns["puzzle_index"], "puzzle_index", where)
    group_starts = _run_starts(columns["group_id"], "group_id", where)
    set_index = np.asarray(columns["set_index"], dtype=np.int64)
    steps = np.diff(set_index)
    if set_index[0] < 0 or set_index[-1] >= num_sets or np.any(steps < 0):
        raise DataError(f"set_index must be non-decreasing within [0, {num_sets})", path=where)
    # Groups must start at puzzle starts; sets at group starts.
    split_groups = np.setdiff1d(group_starts, puzzle_starts)
    if split_groups.size:
        raise DataError(f"a puzzle spans two groups at example {int(split_groups[0])}", path=where)
    set_starts = np.concatenate([[0], np.flatnonzero(steps) + 1])
    split_sets = np.setdiff1d(set_starts, group_starts)
    if split_sets.size:
        raise DataError(f"a group spans two sets at example {int(split_sets[0])}", path=where)
    puzzle_of_example = np.asarray(columns["puzzle_index"], dtype=np.int64)
    # Example / group boundaries of each set (empty sets allowed).
    set_examples = np.searchsorted(set_index, np.arange(num_sets + 1), side="left").astype(np.int64)
    set_groups = np.searchsorted(group_starts, set_examples, side="left").astype(np.int64)
    return SplitIndex(
        puzzle_indices=np.append(puzzle_starts, n),
        group_indices=np.append(puzzle_of_example[group_starts], len(puzzle_starts)),
        set_groups=set_groups,
        set_examples=set_examples,
    )


class PuzzleSource:
    """Random access to one split (see module docstring); Grain ``RandomAccessDataSource``."""

    def __init__(self, columns: Mapping[str, np.ndarray], metadata: PuzzleDatasetMetadata,
                 where: str = "<memory>", batch_extras: tuple[str, ...] = (), view: Any = None):
        self.columns = dict(columns)
        self.view = view  # the builder's batch_view (e.g. images rendered from the stored text)
        self.metadata = metadata
        self.where = where
        missing = set(batch_extras) - set(self.columns)
        if missing:
            raise DataError(f"batch extras {sorted(missing)} are not columns of the split", path=where)
        self.batch_extras = tuple(batch_extras)
        self.index = build_index(self.columns, len(metadata.sets), where)
        self.extra_fields = tuple(k for k in self.columns
                                  if k not in ("inputs", "labels", "puzzle_identifier") + _STRUCTURE)
        # Puzzle identifier per puzzle (the reference stores it per puzzle).
        self.puzzle_identifiers = np.asarray(
            self.columns["puzzle_identifier"][self.index.puzzle_indices[:-1]], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.columns["inputs"])

    def __repr__(self) -> str:
        return (f"PuzzleSource({self.where}, examples={len(self)}, "
                f"puzzles={len(self.index.puzzle_indices) - 1}, groups={len(self.index.group_indices) - 1})")

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        labels = raw.astype(np.int32)
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        return labels

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The model's batch for example ``indices`` [b]: inputs/labels int32 [b, L] (-100 =
        ignore), puzzle_identifiers int32 [b], plus the builder's ``batch_extras`` [b, ...]
        (integers widened to int32, except images: uint8 [b, H, W, C]), then the builder's
        ``batch_view`` (PuzzleDatasetBuilder.batch_view) if it has one."""
        idx = np.asarray(indices, dtype=np.int64)
        batch = {
            "inputs": self.columns["inputs"][idx].astype(np.int32),
            "labels": self._labels(self.columns["labels"][idx]),
            "puzzle_identifiers": self.columns["puzzle_identifier"][idx].astype(np.int32),
        }
        for key in self.batch_extras:
            values = np.asarray(self.columns[key][idx])
            if values.dtype == np.uint8 and values.ndim == 4:
                batch[key] = values  # images [b, H, W, C] stay bytes: 4x less host memory and transfer
            else:
                batch[key] = values.astype(np.int32) if values.dtype.kind in "iub" else values
        return batch if self.view is None else self.view(batch, self.columns, idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        i %= len(self)
        item: dict[str, Any] = {
            "inputs": np.asarray(self.columns["inputs"][i], dtype=np.int32),
            "labels": self._labels(np.asarray(self.columns["labels"][i])),
            "puzzle_identifiers": np.int32(self.columns["puzzle_identifier"][i]),
        }
        for key in _STRUCTURE:
            item[key] = np.int32(self.columns[key][i])
        item["example_index"] = np.int32(i)
        for key in self.extra_fields:
            value = self.columns[key][i]
            item[key] = np.array(value) if np.ndim(value) else value
        return item

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        return [self[i] for i in indices]


def _records(builder: PuzzleDatasetBuilder, split: str):
    """Decoded records of a split; TFDS returns Text as bytes, the builder wrote str."""
    source = builder.as_data_source(split)
    for start in range(0, len(source), 4096):
        for record in source.__getitems__(list(range(start, min(len(source), start + 4096)))):
            yield {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}


def open_split(builder: PuzzleDatasetBuilder, split: str) -> PuzzleSource:
    """``PuzzleSource`` of a prepared builder's split (rebuilding the column store if absent)."""
    metadata_by_split = builder.split_metadata()
    if split not in metadata_by_split:
        raise KeyError(f"{builder.name} has no split {split!r}; splits: {sorted(metadata_by_split)}")
    path = os.fspath(builder.data_path)
    if not arrays.has_columns(path, split):
        arrays.materialise_from_records(_records(builder, split), path, split)
    columns = arrays.load_columns(path, split)
    return PuzzleSource(columns, metadata_by_split[split], where=f"{path} [{split}]",
                        batch_extras=builder.batch_extras, view=builder.batch_view())


def load(name: str, split: str, data_dir: str | None = None, **options: Any) -> PuzzleSource:
    """Random-access source of a built dataset split (``ensure_built`` builds it).

    ``options`` are the dataset's builder options (they select the directory), e.g.
    ``load("sudoku", "train", preset="tiny")``. Raises FileNotFoundError if not built.
    """
    builder = make_builder(name, data_dir, options)
    if not builder.is_built():
        raise FileNotFoundError(f"dataset {name} with options {options} is not built in "
                                f"{builder.data_path}; call data_pipeline.ensure_built first")
    return open_split(builder, split)


def load_metadata(name: str, split: str = "train", data_dir: str | None = None,
                  **options: Any) -> PuzzleDatasetMetadata:
    """``PuzzleDatasetMetadata`` of a built split."""
    metadata = make_builder(name, data_dir, options).split_metadata()
    if split not in metadata:
        raise KeyError(f"{name} has no split {split!r}; splits: {sorted(metadata)}")
    return metadata[split]
