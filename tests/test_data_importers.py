"""Importers of the public CSV layouts (Sudoku-Extreme, Maze-Hard) and their refusal of bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline.common import DataError
from data_pipeline.maze import generate_mazes, read_maze_csv
from data_pipeline.sudoku import generate_sudokus, read_sudoku_csv

HEADER = "source,question,answer,rating\n"


def sudoku_rows(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    boards = generate_sudokus(n, seed=seed, split="fixture")
    rows = []
    for i, (q, a) in enumerate(zip(boards.questions, boards.answers)):
        question = "".join("." if v == 0 else str(v) for v in q)
        rows.append((f"src{i}", question, "".join(str(v) for v in a), 10 * i))
    return rows


def maze_rows(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    boards = generate_mazes(n, seed=seed, split="fixture", min_path_length=30)
    return [(f"maze{i}", bytes(q.reshape(-1)).decode(), bytes(a.reshape(-1)).decode(), int(r))
            for i, (q, a, r) in enumerate(zip(boards.questions, boards.answers, boards.ratings))]


def write_csv(path, rows, header: str = HEADER) -> str:
    with open(path, "w") as f:
        f.write(header)
        for row in rows:
            f.write(",".join(str(x) for x in row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def sudoku_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku_csv")
    write_csv(d / "train.csv", sudoku_rows(6, 0))
    write_csv(d / "test.csv", sudoku_rows(3, 1))
    return d


@pytest.fixture(scope="module")
def maze_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("maze_csv")
    write_csv(d / "train.csv", maze_rows(3, 0))
    write_csv(d / "test.csv", maze_rows(2, 1))
    return d


# ----------------------------------------------------------------------------- good input
def test_sudoku_import_matches_csv(sudoku_dir, tmp_path):
    rows = sudoku_rows(6, 0)
    options = {"source": str(sudoku_dir), "min_rating": 10, "num_aug": 2}
    meta = dp.ensure_built("sudoku", str(tmp_path), options)
    assert meta["train"].total_groups == 5  # rating 0 filtered out
    assert meta["train"].total_puzzles == 15 and meta["test"].total_puzzles == 2
    source = dp.load("sudoku", "train", str(tmp_path), **options)
    first = [source[int(p)] for p in source.index.group_indices[:-1]]  # un-augmented puzzles
    for ex, (_, q, a, rating) in zip(first, rows[1:]):
        expected_q = np.array([0 if ch == "." else int(ch) for ch in q]) + 1
        np.testing.assert_array_equal(ex["inputs"], expected_q)
        np.testing.assert_array_equal(ex["labels"], np.array([int(ch) for ch in a]) + 1)
        assert int(ex["rating"]) == rating


def test_sudoku_explicit_paths_and_subsample(sudoku_dir, tmp_path):
    options = {"train_csv": str(sudoku_dir / "train.csv"), "test_csv": str(sudoku_dir / "test.csv"),
               "subsample_size": 4}
    meta = dp.ensure_built("sudoku", str(tmp_path), options)
    assert meta["train"].total_groups == 4 and meta["test"].total_groups == 3


def test_maze_import_matches_csv(maze_dir, tmp_path):
    rows = maze_rows(3, 0)
    options = {"source": str(maze_dir), "aug": True}
    meta = dp.ensure_built("maze", str(tmp_path), options)
    assert meta["train"].total_puzzles == 24 and meta["test"].total_puzzles == 2
    source = dp.load("maze", "train", str(tmp_path), **options)
    for g, (_, q, a, rating) in enumerate(rows):
        ex = source[int(source.index.group_indices[g])]
        assert int(ex["dihedral"]) == 0
        assert "".join("# SGo"[t - 1] for t in ex["inputs"]) == q
        assert "".join("# SGo"[t - 1] for t in ex["labels"]) == a
        assert int(ex["rating"]) == a.count("o") + 1


def test_maze_min_path_length_filters(maze_dir):
    path = str(maze_dir / "train.csv")
    boards = read_maze_csv(path, min_path_length=0)
    expected = [a.count("o") + 1 for _, _, a, _ in maze_rows(3, 0)]
    assert boards.ratings.tolist() == expected
    cut = sorted(expected)[1]
    kept = read_maze_csv(path, min_path_length=cut)
    assert kept.ratings.tolist() == [r for r in expected if r >= cut]


# ----------------------------------------------------------------------------- bad input
def _expect_error(reader, path, row: int | None, match: str):
    with pytest.raises(DataError, match=match) as info:
        reader(path)
    message = str(info.value)
    assert os.fspath(path) in message
    if row is not None:
        assert f"row {row}" in message
    return message


def _mutate(rows, index, **changes):
    rows = [list(r) for r in rows]
    fields = {"source": 0, "question": 1, "answer": 2, "rating": 3}
    for key, value in changes.items():
        rows[index][fields[key]] = value(rows[index][fields[key]]) if callable(value) else value
    return rows


def test_sudoku_bad_inputs(tmp_path):
    rows = sudoku_rows(4, 2)
    cases = {
        "columns": (_mutate(rows, 2, rating=lambda r: f"{r},extra"), 4, "4 columns"),
        "short_board": (_mutate(rows, 1, question=lambda q: q[:80]), 3, "80 characters"),
        "short_answer": (_mutate(rows, 3, answer=lambda a: a[:80]), 5, "80 characters"),
        "bad_char": (_mutate(rows, 0, question=lambda q: "x" + q[1:]), 2, "unknown characters"),
        "contradiction": (_mutate(rows, 2, question=lambda q: str(int(rows[2][2][0]) % 9 + 1) + q[1:]),
                          4, "contradicts"),
        "invalid_solution": (_mutate(rows, 1, answer=lambda a: a[1] + a[0] + a[2:]
                                     if a[0] != a[1] else a), 3, "not a valid sudoku"),
        "rating": (_mutate(rows, 0, rating="hard"), 2, "not a number"),
    }
    for name, (bad_rows, line, match) in cases.items():
        path = write_csv(tmp_path / f"{name}.csv", bad_rows)
        _expect_error(read_sudoku_csv, path, line, match)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect_error(read_sudoku_csv, str(empty), None, "empty file")
    header_only = write_csv(tmp_path / "header_only.csv", [])
    _expect_error(read_sudoku_csv, header_only, None, "no data rows")
    wrong_header = write_csv(tmp_path / "wrong_header.csv", rows, header="a,b,c,d\n")
    _expect_error(read_sudoku_csv, wrong_header, 1, "header")


def test_maze_bad_inputs(tmp_path):
    rows = maze_rows(3, 3)
    cases = {
        "columns": (_mutate(rows, 1, source=lambda s: f"{s},x"), 3, "4 columns"),
        "wrong_size": (_mutate(rows, 2, question=lambda q: q[:870]), 4, "870 characters"),
        "unknown_char": (_mutate(rows, 0, question=lambda q: q.replace(" ", "x", 1)), 2,
                         "unknown characters"),
        "path_in_question": (_mutate(rows, 1, question=lambda q: q.replace(" ", "o", 1)), 3,
                             "unknown characters"),
        "answer_changes_walls": (_mutate(rows, 2, answer=lambda a: a.replace("#", " ", 1)), 4,
                                 "differs from the question"),
    }
    for name, (bad_rows, line, match) in cases.items():
        path = write_csv(tmp_path / f"{name}.csv", bad_rows)
        _expect_error(read_maze_csv, path, line, match)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect_error(read_maze_csv, str(empty), None, "empty file")


def test_bad_input_fails_the_build_and_leaves_nothing(tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    rows = sudoku_rows(3, 4)
    write_csv(d / "train.csv", rows)
    write_csv(d / "test.csv", _mutate(rows, 1, answer=lambda a: a[:80]))
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"test\.csv, row 3"):
        dp.ensure_built("sudoku", str(data_dir), {"source": str(d)})
    with pytest.raises(FileNotFoundError):
        dp.load("sudoku", "train", str(data_dir), source=str(d))
    assert not list(data_dir.glob("sudoku/*/1.0.0"))  # no half-written dataset
    with pytest.raises(DataError, match="file not found"):
        dp.ensure_built("sudoku", str(data_dir), {"source": str(tmp_path / "missing")})
