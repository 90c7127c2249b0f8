"""Base for datasets of single-board puzzles that are generated here or imported from a public CSV.

Sudoku-Extreme and Maze-Hard share the CSV layout (``source,question,answer,rating``) and the
reference's options (``source`` / ``train_csv`` / ``test_csv``, ``num_train`` / ``num_test``,
``subsample_size``, ``seed``); a subclass says how to read and how to generate its boards.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from data_pipeline import generation
from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import DataError


@dataclasses.dataclass
class Boards:
    """Puzzles with their solutions: ``questions``/``answers`` ``[n, ...]`` uint8, ``ratings`` int64 ``[n]``."""

    questions: np.ndarray
    answers: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.ratings)

    def take(self, idx: np.ndarray) -> "Boards":
        return Boards(self.questions[idx], self.answers[idx], self.ratings[idx])


class BoardDatasetBuilder(PuzzleDatasetBuilder):
    """Generated-or-imported boards; subclasses implement ``read_csv``, ``generate``, ``filter_description``."""

    @staticmethod
    def is_import(options: Any) -> bool:
        return bool(options.source or options.train_csv or options.test_csv)

    def csv_path(self, split: str) -> str:
        """The CSV of ``split``: an explicit ``{split}_csv`` option, else ``source/{split}.csv``."""
        o = self.options
        explicit = o.train_csv if split == "train" else o.test_csv
        if explicit:
            return explicit
        if not o.source:
            raise ValueError(f"{self.name} importer: no CSV for split {split!r}; set source or {split}_csv")
        return os.path.join(o.source, f"{split}.csv")

    def read_csv(self, path: str, count: int | None) -> Any:
        """Boards (with ``len`` and ``take``) read from ``path``, at most ``count`` after filtering."""
        raise NotImplementedError

    def generate(self, count: int, split: str) -> Any:
        """``count`` freshly generated boards for ``split`` (deterministic from the options' seed)."""
        raise NotImplementedError

    def filter_description(self) -> str:
        """The filtering options, for the 'nothing left' error."""
        raise NotImplementedError

    def original_boards(self, split: str) -> Any:
        """The un-augmented boards of ``split`` after filtering and (train) subsampling."""
        o = self.options
        count = o.num_train if split == "train" else o.num_test
        if self.is_import(o):
            boards = self.read_csv(self.csv_path(split), count)
        else:  # generation is the slow stage: an interrupted build continues it
            with generation.resumable(os.path.join(self.build_state_dir, "generation")):
                boards = self.generate(count, split)
        if len(boards) == 0:
            raise DataError(f"no {self.name} left for split {split!r} after filtering ({self.filter_description()})")
        if split == "train" and o.subsample_size is not None and o.subsample_size < len(boards):
            rng = np.random.default_rng([o.seed, 1])
            boards = boards.take(np.sort(rng.choice(len(boards), o.subsample_size, replace=False)))
        return boards
