"""Sudoku dataset: generated rated puzzles, or an import of the public Sudoku-Extreme CSV.

Tokens (as the reference): 0 = pad, 1 = blank cell, digit d -> d + 1; seq_len 81 (row-major),
vocab_size 11, one puzzle identifier (0). Labels are the full solution. Extra field:
``rating`` (generator: backtracks of ``sudoku_logic.rate``; importer: the CSV's rating).

Sources (option ``source`` / ``train_csv`` / ``test_csv`` select the importer):

* generator: ``num_train`` / ``num_test`` puzzles (default 1000 each), minimal puzzles with a
  unique solution, kept when ``rating >= min_rating`` ("extreme" = a high minimum);
* importer: Sudoku-Extreme layout ``source,question,answer,rating`` with a header line,
  81-char boards, ``.`` (or ``0``) for blanks; ``train.csv`` / ``test.csv`` in ``source`` or
  explicit paths. ``min_rating`` filters on the CSV rating; ``num_train``/``num_test`` keep the
  first N rows that pass. Bad rows raise ``DataError`` naming the file and the line.

``subsample_size`` draws that many train puzzles (seeded); every train puzzle gets
``num_aug`` augmented copies in its group (digit relabelling, band/stack and row/column
shuffles, transpose); the test split is never augmented (as in the reference).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline import sudoku_logic
from data_pipeline.board_builder import BoardDatasetBuilder, Boards
from data_pipeline.common import PuzzleGroup, StaticMetadata, single_example_puzzle
from data_pipeline.csv_format import check_charset, iter_csv_chunks
from data_pipeline.generation import accept_first
from data_pipeline.registry import register_dataset

SEQ_LEN = 81
VOCAB_SIZE = 11  # pad + blank + 9 digits
DEFAULT_GENERATED = 1000


@dataclasses.dataclass(frozen=True)
class SudokuOptions:
    """Options that define a sudoku dataset (each set of values has its own directory)."""

    source: str | None = None         # directory with train.csv / test.csv (importer)
    train_csv: str | None = None      # explicit importer paths (override ``source``)
    test_csv: str | None = None
    num_train: int | None = None      # generator: puzzles (default 1000); importer: first N rows
    num_test: int | None = None
    min_rating: int = 0               # keep puzzles rated at least this
    max_blanks: int | None = None     # generator: stop digging at this many blanks (easy puzzles)
    subsample_size: int | None = None  # train: random subset of this many puzzles
    num_aug: int = 0                  # augmented copies per train puzzle
    seed: int = 0


# Sudoku boards as digits (0 = blank): questions/answers uint8 [n, 81], ratings int64 [n].
SudokuBoards = Boards


def read_sudoku_csv(path: str, min_rating: float = 0, limit: int | None = None) -> SudokuBoards:
    """Read and validate a Sudoku-Extreme CSV; keep rows rated >= ``min_rating`` (first ``limit``).

    Raises DataError (file + line) for a wrong layout, bad characters, an answer that is not
    a valid sudoku solution, or an answer that contradicts a clue.
    """
    questions, answers, ratings = [], [], []
    kept = 0
    for chunk in iter_csv_chunks(path, SEQ_LEN):
        check_charset(chunk, chunk.questions, ".0123456789", "question")
        check_charset(chunk, chunk.answers, "123456789", "answer")
        q = np.where(chunk.questions == ord("."), 0, chunk.questions - ord("0")).astype(np.uint8)
        a = (chunk.answers - ord("0")).astype(np.uint8)
        bad = np.flatnonzero(~sudoku_logic.valid_solutions(a))
        if bad.size:
            raise chunk.error(int(bad[0]), "answer is not a valid sudoku solution "
                              "(a row, column or box repeats a digit)")
        bad = np.flatnonzero(~sudoku_logic.clues_agree(q, a))
        if bad.size:
            i = int(bad[0])
            cell = int(np.flatnonzero((q[i] != 0) & (q[i] != a[i]))[0])
            raise chunk.error(i, f"answer contradicts the question at row {cell // 9 + 1}, column "
                              f"{cell % 9 + 1} (clue {q[i, cell]}, answer {a[i, cell]})")
        frac = np.flatnonzero(chunk.ratings != np.round(chunk.ratings))
        if frac.size:
            raise chunk.error(int(frac[0]), f"rating {chunk.ratings[frac[0]]} is not an integer")
        keep = np.flatnonzero(chunk.ratings >= min_rating)
        if limit is not None:
            keep = keep[: limit - kept]
        questions.append(q[keep])
        answers.append(a[keep])
        ratings.append(chunk.ratings[keep].astype(np.int64))
        kept += len(keep)
        if limit is not None and kept >= limit:
            break
    return SudokuBoards(np.concatenate(questions), np.concatenate(answers), np.concatenate(ratings))


def generate_sudokus(count: int, *, seed: int, split: str, min_rating: int = 0,
                     max_blanks: int | None = None, num_workers: int = 1) -> SudokuBoards:
    """``count`` generated puzzles rated >= ``min_rating`` (with at most ``max_blanks`` blank
    cells when given); deterministic in (seed, split)."""
    attempt = functools.partial(sudoku_logic.generation_attempt, seed=seed, split=split,
                                min_rating=min_rating, max_blanks=max_blanks)
    found = accept_first(count, attempt, num_workers=num_workers, desc=f"sudoku {split}")
    return SudokuBoards(np.asarray([f[0] for f in found], dtype=np.uint8).reshape(-1, SEQ_LEN),
                        np.asarray([f[1] for f in found], dtype=np.uint8).reshape(-1, SEQ_LEN),
                        np.asarray([f[2] for f in found], dtype=np.int64))


@register_dataset
class Sudoku(BoardDatasetBuilder):
    """TFDS builder of the sudoku dataset (see module docstring)."""

    name = "sudoku"
    Options = SudokuOptions
    PRESETS = {
        "tiny": {"num_train": 200, "num_test": 100, "num_aug": 4},
        # Quick-start data: puzzles with at most 8 blanks, so a CPU-sized model reaches exact
        # solutions within minutes (minimal puzzles have ~55 blanks and need hours).
        "easy": {"num_train": 1000, "num_test": 200, "num_aug": 0, "max_blanks": 8},
        "extreme": {"min_rating": 200},
        "full": {"num_train": 1000, "num_test": 10000, "num_aug": 1000, "min_rating": 200},
        "extreme_1k_aug_1000": {"subsample_size": 1000, "num_aug": 1000},  # with a CSV source
    }

    @classmethod
    def normalize_options(cls, options: SudokuOptions) -> SudokuOptions:
        options = super().normalize_options(options)
        for key in ("num_train", "num_test", "subsample_size"):
            value = getattr(options, key)
            if value is not None and value < 1:
                raise ValueError(f"sudoku option {key} must be >= 1, got {value}")
        if options.max_blanks is not None and not 1 <= options.max_blanks <= 64:
            raise ValueError(f"sudoku option max_blanks must be in [1, 64], got {options.max_blanks}")
        if options.max_blanks is not None and cls.is_import(options):
            raise ValueError("sudoku option max_blanks applies to generated puzzles, not to a CSV import")
        if options.num_aug < 0:
            raise ValueError(f"sudoku option num_aug must be >= 0, got {options.num_aug}")
        if not cls.is_import(options):
            options = dataclasses.replace(
                options, num_train=options.num_train or DEFAULT_GENERATED,
                num_test=options.num_test or DEFAULT_GENERATED)
        return options

    @classmethod
    def summary(cls, o: SudokuOptions) -> str:
        if cls.is_import(o):
            return f"csv-r{o.min_rating}-a{o.num_aug}"
        blanks = f"-b{o.max_blanks}" if o.max_blanks is not None else ""
        return f"gen-tr{o.num_train}-te{o.num_test}-r{o.min_rating}-a{o.num_aug}{blanks}"

    def static_metadata(self) -> StaticMetadata:
        return StaticMetadata(seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE, pad_id=0, ignore_label_id=0,
                              blank_identifier_id=0, num_puzzle_identifiers=1, sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"rating": tfds.features.Scalar(dtype=np.int32)}

    def read_csv(self, path: str, count: int | None) -> SudokuBoards:
        return read_sudoku_csv(path, self.options.min_rating, count)

    def generate(self, count: int, split: str) -> SudokuBoards:
        return generate_sudokus(count, seed=self.options.seed, split=split, min_rating=self.options.min_rating,
                                max_blanks=self.options.max_blanks, num_workers=self.num_workers)

    def filter_description(self) -> str:
        return f"min_rating={self.options.min_rating}"

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        boards = self.original_boards(split)
        num_aug = self.options.num_aug if split == "train" else 0
        for i in tqdm(range(len(boards)), desc=f"sudoku {split} records", unit="group", leave=False):
            q, a, rating = boards.questions[i], boards.answers[i], int(boards.ratings[i])
            puzzles = [single_example_puzzle(q + 1, a + 1, rating=rating)]
            rng = np.random.default_rng([self.options.seed, 2, i]) if num_aug else None
            for _ in range(num_aug):
                cell_map, digit_map = sudoku_logic.random_symmetry(rng)
                puzzles.append(single_example_puzzle(
                    sudoku_logic.apply_symmetry(q, cell_map, digit_map) + 1,
                    sudoku_logic.apply_symmetry(a, cell_map, digit_map) + 1, rating=rating))
            yield PuzzleGroup(puzzles)


def tokens_to_board(tokens: Any) -> np.ndarray:
    """Model tokens [81] (1 = blank, d + 1 = digit) back to digits [9, 9] (0 = blank)."""
    t = np.asarray(tokens).reshape(9, 9).astype(np.int64)
    return np.clip(t - 1, 0, 9)
