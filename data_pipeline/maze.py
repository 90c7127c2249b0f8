"""Maze dataset: generated mazes with a unique shortest path, or an import of Maze-Hard CSVs.

Tokens (as the reference): 0 = pad, then ``# SGo`` -> 1..5 (wall, open, start, goal, path);
seq_len = size * size (900 for the default 30x30), vocab_size 6, one identifier (0). The
label is the board with the shortest path's inner cells marked ``o``. Extras: ``rating`` =
shortest path length in steps (generator: BFS; importer: ``o`` cells + 1) and ``dihedral``
(the augmentation applied, 0 = none; ``grids.inverse_dihedral_transform`` undoes it).

Sources: the generator (``num_train`` / ``num_test`` mazes, default 1000 each, "hard" =
``min_path_length``, the reference Maze-Hard keeps paths of >= 110 steps); or the importer
(``source`` directory with train.csv / test.csv, or ``train_csv`` / ``test_csv``) for the
public layout ``source,question,answer,rating`` with size*size-character boards;
``min_path_length`` then filters on the answer's path. Bad rows raise ``DataError``.

``aug`` adds the 7 non-identity dihedral transforms of every train maze to its group (8
puzzles per group); the test split is never augmented.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline import maze_logic
from data_pipeline.board_builder import BoardDatasetBuilder, Boards
from data_pipeline.common import PuzzleGroup, StaticMetadata, single_example_puzzle
from data_pipeline.csv_format import check_charset, iter_csv_chunks
from data_pipeline.generation import accept_first
from data_pipeline.grids import NUM_DIHEDRAL, dihedral_transform
from data_pipeline.registry import register_dataset

DEFAULT_GENERATED = 1000
DEFAULT_MIN_PATH = 110  # Maze-Hard: shortest paths of at least 110 steps
# ASCII code -> token id (0 = pad / unknown).
CHAR_TO_TOKEN = np.zeros(256, dtype=np.uint8)
CHAR_TO_TOKEN[np.frombuffer(maze_logic.CHARSET.encode(), dtype=np.uint8)] = np.arange(1, 6)
TOKEN_TO_CHAR = np.frombuffer(b"?" + maze_logic.CHARSET.encode(), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class MazeOptions:
    """Options that define a maze dataset (each set of values has its own directory)."""

    source: str | None = None        # directory with train.csv / test.csv (importer)
    train_csv: str | None = None
    test_csv: str | None = None
    num_train: int | None = None     # generator: mazes (default 1000); importer: first N rows
    num_test: int | None = None
    size: int = 30                   # board side; seq_len = size * size
    min_path_length: int | None = None  # "hard": paths of >= this many steps (generator
                                        # default 110 as Maze-Hard; importer default 0)
    loop_prob: float = 0.1           # generator: share of extra openings (several routes)
    subsample_size: int | None = None
    aug: bool = False                # train: all 8 dihedral transforms per maze
    seed: int = 0


# Mazes as ASCII: questions/answers uint8 [n, size, size], ratings int64 [n] (path length).
MazeBoards = Boards


def read_maze_csv(path: str, size: int = 30, min_path_length: int = 0,
                  limit: int | None = None) -> MazeBoards:
    """Read and validate a Maze-Hard CSV; keep mazes whose marked path is >= ``min_path_length``.

    Raises DataError (file + line) for a wrong layout, a board that is not size*size, unknown
    characters, or an answer that changes the question's walls/S/G or marks a wall as path.
    """
    questions, answers, ratings = [], [], []
    kept = 0
    for chunk in iter_csv_chunks(path, size * size):
        check_charset(chunk, chunk.questions, "# SG", "question")
        check_charset(chunk, chunk.answers, maze_logic.CHARSET, "answer")
        q, a = chunk.questions, chunk.answers
        path_cells = a == ord(maze_logic.PATH)
        same = (q == a) | (path_cells & (q != ord(maze_logic.WALL)))
        bad = np.flatnonzero(~same.all(axis=1))
        if bad.size:
            i = int(bad[0])
            cell = int(np.flatnonzero(~same[i])[0])
            raise chunk.error(i, f"answer differs from the question at row {cell // size + 1}, "
                              f"column {cell % size + 1} ({chr(q[i, cell])!r} -> {chr(a[i, cell])!r})")
        lengths = path_cells.sum(axis=1) + 1
        keep = np.flatnonzero(lengths >= min_path_length)
        if limit is not None:
            keep = keep[: limit - kept]
        questions.append(q[keep].reshape(-1, size, size))
        answers.append(a[keep].reshape(-1, size, size))
        ratings.append(lengths[keep].astype(np.int64))
        kept += len(keep)
        if limit is not None and kept >= limit:
            break
    return MazeBoards(np.concatenate(questions), np.concatenate(answers), np.concatenate(ratings))


def generate_mazes(count: int, *, seed: int, split: str, size: int = 30, min_path_length: int = 0,
                   loop_prob: float = 0.1, num_workers: int = 1) -> MazeBoards:
    """``count`` generated mazes; deterministic in (seed, split)."""
    attempt = functools.partial(maze_logic.generation_attempt, seed=seed, split=split, size=size,
                                min_path_length=min_path_length, loop_prob=loop_prob)
    found = accept_first(count, attempt, num_workers=num_workers, desc=f"maze {split}")
    return MazeBoards(np.stack([f[0] for f in found]), np.stack([f[1] for f in found]),
                      np.asarray([f[2] for f in found], dtype=np.int64))


@register_dataset
class Maze(BoardDatasetBuilder):
    """TFDS builder of the maze dataset (see module docstring)."""

    name = "maze"
    Options = MazeOptions
    PRESETS = {
        "tiny": {"num_train": 200, "num_test": 100, "aug": True, "min_path_length": 60},
        "small": {"size": 12, "num_train": 500, "num_test": 100, "aug": True, "min_path_length": 20},
        "hard_1k": {"num_train": 1000, "num_test": 1000, "min_path_length": 110},
        "hard_1k_aug": {"num_train": 1000, "num_test": 1000, "min_path_length": 110, "aug": True},
    }

    @classmethod
    def normalize_options(cls, options: MazeOptions) -> MazeOptions:
        options = super().normalize_options(options)
        for key in ("num_train", "num_test", "subsample_size"):
            value = getattr(options, key)
            if value is not None and value < 1:
                raise ValueError(f"maze option {key} must be >= 1, got {value}")
        if options.size < 3:
            raise ValueError(f"maze option size must be >= 3, got {options.size}")
        if not 0.0 <= options.loop_prob <= 1.0:
            raise ValueError(f"maze option loop_prob must be in [0, 1], got {options.loop_prob}")
        if cls.is_import(options):
            # Generator-only knobs do not change imported data: pin them for a stable name.
            return dataclasses.replace(options, loop_prob=0.0, min_path_length=options.min_path_length or 0)
        return dataclasses.replace(
            options, num_train=options.num_train or DEFAULT_GENERATED,
            num_test=options.num_test or DEFAULT_GENERATED,
            min_path_length=DEFAULT_MIN_PATH if options.min_path_length is None else options.min_path_length)

    @classmethod
    def summary(cls, o: MazeOptions) -> str:
        aug = "-aug" if o.aug else ""
        if cls.is_import(o):
            return f"csv{o.size}-p{o.min_path_length}{aug}"
        return f"gen{o.size}-tr{o.num_train}-te{o.num_test}-p{o.min_path_length}{aug}"

    def static_metadata(self) -> StaticMetadata:
        return StaticMetadata(seq_len=self.options.size ** 2, vocab_size=len(maze_logic.CHARSET) + 1,
                              pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                              num_puzzle_identifiers=1, sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"rating": tfds.features.Scalar(dtype=np.int32),
                "dihedral": tfds.features.Scalar(dtype=np.int32)}

    def read_csv(self, path: str, count: int | None) -> MazeBoards:
        o = self.options
        return read_maze_csv(path, o.size, o.min_path_length, count)

    def generate(self, count: int, split: str) -> MazeBoards:
        o = self.options
        return generate_mazes(count, seed=o.seed, split=split, size=o.size, min_path_length=o.min_path_length,
                              loop_prob=o.loop_prob, num_workers=self.num_workers)

    def filter_description(self) -> str:
        return f"min_path_length={self.options.min_path_length}"

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        boards = self.original_boards(split)
        transforms = range(NUM_DIHEDRAL) if (split == "train" and self.options.aug) else range(1)
        for i in tqdm(range(len(boards)), desc=f"maze {split} records", unit="group", leave=False):
            q = CHAR_TO_TOKEN[boards.questions[i]]
            a = CHAR_TO_TOKEN[boards.answers[i]]
            yield PuzzleGroup([
                single_example_puzzle(dihedral_transform(q, t), dihedral_transform(a, t),
                                      rating=int(boards.ratings[i]), dihedral=t)
                for t in transforms])


def tokens_to_board(tokens: np.ndarray, size: int = 30) -> np.ndarray:
    """Model tokens [size*size] back to an ASCII board uint8 [size, size] (pad -> '?')."""
    return TOKEN_TO_CHAR[np.asarray(tokens).reshape(size, size)]
