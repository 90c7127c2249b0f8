"""Shared vocabulary of the data pipeline: errors, the example schema and split metadata.

Every puzzle dataset (Sudoku, Maze, ARC, ...) stores one record per *example*:

    inputs            int32 [seq_len]   token ids of the question
    labels            int32 [seq_len]   token ids of the answer; ``ignore_label_id`` = no loss
    puzzle_identifier int32 []          id fed to the puzzle-embedding table
    group_id          int32 []          all augmentations of one original puzzle share it
    puzzle_index      int32 []          one puzzle = one augmented instance (ARC: several examples)
    set_index         int32 []          index into ``metadata.sets`` (one set "all" for most data)
    <extras>                            per-dataset fields (e.g. sudoku ``rating``)

Records are written in (set, group, puzzle) order, so groups and puzzles are contiguous
ranges of examples: the loader rebuilds the reference's ``puzzle_indices`` / ``group_indices``
boundary arrays from the ids. Labels keep the dataset's ``ignore_label_id`` on disk (0 = pad,
as in the reference) and are mapped to ``IGNORE_LABEL_ID`` (-100) when loaded.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

# Label value that losses skip, after loading (the reference's IGNORE_LABEL_ID).
IGNORE_LABEL_ID = -100

# Core per-example fields, in schema order; extras are appended by each builder.
CORE_FIELDS = ("inputs", "labels", "puzzle_identifier", "group_id", "puzzle_index", "set_index")


class DataError(ValueError):
    """Malformed input data. The message names the file and the row / example."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        self.path = path
        self.row = row
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclasses.dataclass(frozen=True)
class PuzzleDatasetMetadata:
    """Metadata of one split, with the reference's fields (``dataset.json``).

    ``total_groups`` / ``total_puzzles`` / ``num_examples`` count the whole split (all sets);
    ``mean_puzzle_examples`` = num_examples / total_puzzles.
    """

    seq_len: int
    vocab_size: int
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: tuple[str, ...]
    num_examples: int = 0  # Not in the reference; convenient for step counts.

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sets"] = list(self.sets)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PuzzleDatasetMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["sets"] = tuple(kwargs.get("sets", ("all",)))
        return cls(**kwargs)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class StaticMetadata:
    """The part of the metadata a builder knows before generating (the rest is counted)."""

    seq_len: int
    vocab_size: int
    pad_id: int = 0
    ignore_label_id: int | None = 0
    blank_identifier_id: int = 0
    num_puzzle_identifiers: int = 1
    sets: tuple[str, ...] = ("all",)


@dataclasses.dataclass
class Puzzle:
    """One (possibly augmented) puzzle: its examples share the identifier and extras.

    inputs / labels: int arrays [num_examples, seq_len] of token ids.
    extras: per-puzzle extra fields, replicated on every example (e.g. ``{"rating": 12}``).
    example_extras: optional per-example extra fields, each a sequence of length num_examples.
    """

    inputs: np.ndarray
    labels: np.ndarray
    identifier: int = 0
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    example_extras: dict[str, Sequence[Any]] = dataclasses.field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])


@dataclasses.dataclass
class PuzzleGroup:
    """All augmentations of one original puzzle (an epoch samples groups)."""

    puzzles: list[Puzzle]
    set_name: str = "all"


def single_example_puzzle(inputs: np.ndarray, labels: np.ndarray, identifier: int = 0,
                          **extras: Any) -> Puzzle:
    """A puzzle with one example; ``inputs``/``labels`` are [seq_len] (any grid shape is flattened)."""
    return Puzzle(inputs=np.asarray(inputs).reshape(1, -1), labels=np.asarray(labels).reshape(1, -1),
                  identifier=identifier, extras=dict(extras))
