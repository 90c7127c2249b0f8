"""Sudoku generator, rating, augmentation and built dataset, checked by independent code.

The checkers below deliberately share nothing with data_pipeline.sudoku_logic: rules are
checked with Python sets, solutions are counted with a set-based search, and the rating's
backtrack count is re-implemented from its written specification.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from data_pipeline import sudoku_logic
from data_pipeline.sudoku import generate_sudokus

ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


def board_from_string(s: str) -> list[int]:
    return [0 if ch in ".0" else int(ch) for ch in s]


# ----------------------------------------------------------------------------- independent checks
def units() -> list[list[int]]:
    rows = [[r * 9 + c for c in range(9)] for r in range(9)]
    cols = [[r * 9 + c for r in range(9)] for c in range(9)]
    boxes = [[(3 * br + i) * 9 + 3 * bc + j for i in range(3) for j in range(3)]
             for br in range(3) for bc in range(3)]
    return rows + cols + boxes


UNITS = units()
PEERS = [sorted({p for u in UNITS if i in u for p in u} - {i}) for i in range(81)]


def obeys_rules(solution) -> bool:
    s = [int(x) for x in solution]
    return len(s) == 81 and all({s[i] for i in u} == set(range(1, 10)) for u in UNITS)


def agrees(puzzle, solution) -> bool:
    return all(int(p) == 0 or int(p) == int(s) for p, s in zip(puzzle, solution))


def candidates(grid: list[int], cell: int) -> list[int]:
    used = {grid[p] for p in PEERS[cell]}
    return [d for d in range(1, 10) if d not in used]


def count_solutions(puzzle, limit: int = 2) -> int:
    """Set-based depth-first count, fewest-candidates cell first."""
    grid = [int(x) for x in puzzle]
    for i, v in enumerate(grid):
        if v and v in {grid[p] for p in PEERS[i]}:
            return 0
    found = 0

    def search() -> bool:
        nonlocal found
        empty = [i for i in range(81) if grid[i] == 0]
        if not empty:
            found += 1
            return found >= limit
        cell = min(empty, key=lambda i: len(candidates(grid, i)))
        for d in candidates(grid, cell):
            grid[cell] = d
            if search():
                return True
            grid[cell] = 0
        return False

    search()
    return found


def reference_backtracks(puzzle) -> int:
    """The rating's specification, written from the docstring: pick the first empty cell
    (row-major) with <= 1 candidates, else the first with the fewest; digits ascending; count
    every tried digit that is taken back; stop at the first solution."""
    grid = [int(x) for x in puzzle]
    count = 0

    def search() -> bool:
        nonlocal count
        empty = [i for i in range(81) if grid[i] == 0]
        if not empty:
            return True
        chosen, best = None, None
        for i in empty:
            cand = candidates(grid, i)
            if best is None or len(cand) < len(best):
                chosen, best = i, cand
                if len(cand) <= 1:
                    break
        for d in best:
            grid[chosen] = d
            if search():
                return True
            grid[chosen] = 0
            count += 1
        return False

    assert search(), "puzzle without solution"
    return count


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def generated():
    return [sudoku_logic.generate_puzzle(random.Random(seed)) for seed in range(8)]


def test_generated_puzzles_are_valid_and_unique(generated):
    for puzzle, solution in generated:
        assert obeys_rules(solution)
        assert agrees(puzzle, solution)
        assert 17 <= sum(1 for v in puzzle if v) < 81
        assert count_solutions(puzzle) == 1


def test_generated_puzzles_are_minimal(generated):
    # Removing any clue of a generated puzzle must make it ambiguous (the digging is complete).
    puzzle, _ = generated[0]
    for cell in [i for i in range(81) if puzzle[i]]:
        reduced = list(puzzle)
        reduced[cell] = 0
        assert count_solutions(reduced) == 2


def test_rating_equals_independent_backtrack_count(generated):
    boards = [p for p, _ in generated] + [board_from_string(ESCARGOT)]
    for board in boards:
        assert sudoku_logic.rate(board) == reference_backtracks(board)


def test_rating_grows_with_difficulty(generated):
    puzzle, solution = generated[1]
    easy = list(solution)
    for cell in random.Random(5).sample(range(81), 12):  # 12 blanks: singles all the way
        easy[cell] = 0
    assert sudoku_logic.rate(easy) == 0
    hard = sudoku_logic.rate(board_from_string(ESCARGOT))
    assert hard > 50
    # Over a sample, ratings follow the independent count of the solver's work.
    ratings = [sudoku_logic.rate(p) for p, _ in generated]
    work = [reference_backtracks(p) for p, _ in generated]
    assert np.corrcoef(ratings, work)[0, 1] > 0.99
    assert max(ratings) > 0


def test_solver_rejects_contradictions():
    bad = board_from_string(ESCARGOT)
    bad[1] = 1  # two 1s in the first row
    assert sudoku_logic.solve(bad) == []
    with pytest.raises(ValueError):
        sudoku_logic.rate(bad)


def test_generation_is_deterministic_and_filtered():
    a = generate_sudokus(3, seed=7, split="train", min_rating=30)
    b = generate_sudokus(3, seed=7, split="train", min_rating=30)
    c = generate_sudokus(3, seed=8, split="train", min_rating=30)
    np.testing.assert_array_equal(a.questions, b.questions)
    assert not np.array_equal(a.questions, c.questions)
    assert np.all(a.ratings >= 30)
    assert [sudoku_logic.rate(q.tolist()) for q in a.questions] == a.ratings.tolist()
    for q, s in zip(a.questions, a.answers):
        assert obeys_rules(s) and agrees(q, s) and count_solutions(q) == 1


def test_parallel_generation_matches_serial():
    serial = generate_sudokus(4, seed=3, split="test", num_workers=1)
    parallel = generate_sudokus(4, seed=3, split="test", num_workers=2)
    np.testing.assert_array_equal(serial.questions, parallel.questions)
    np.testing.assert_array_equal(serial.ratings, parallel.ratings)


def test_augmentations_keep_valid_sudokus(generated):
    rng = np.random.default_rng(0)
    transposed = 0
    for puzzle, solution in generated[:4]:
        p, s = np.asarray(puzzle), np.asarray(solution)
        for _ in range(10):
            cell_map, digit_map = sudoku_logic.random_symmetry(rng)
            assert sorted(cell_map.tolist()) == list(range(81))
            assert digit_map[0] == 0 and sorted(digit_map[1:].tolist()) == list(range(1, 10))
            ap = sudoku_logic.apply_symmetry(p, cell_map, digit_map)
            asol = sudoku_logic.apply_symmetry(s, cell_map, digit_map)
            assert obeys_rules(asol) and agrees(ap, asol)
            assert np.count_nonzero(ap) == np.count_nonzero(p)
            assert count_solutions(ap) == 1
            transposed += int(cell_map[1] % 9 == cell_map[0] % 9)  # neighbours share a column
    assert transposed > 0  # the transpose is exercised


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import data_pipeline as dp
    data_dir = str(tmp_path_factory.mktemp("sudoku_data"))
    options = {"num_train": 12, "num_test": 6, "num_aug": 3, "seed": 1}
    meta = dp.ensure_built("sudoku", data_dir, options, num_workers=1)
    return dp, data_dir, options, meta


def test_built_dataset_examples_are_valid(built):
    dp, data_dir, options, meta = built
    assert meta["train"].seq_len == 81 and meta["train"].vocab_size == 11
    assert meta["train"].num_puzzle_identifiers == 1 and meta["train"].sets == ("all",)
    assert meta["train"].total_groups == 12 and meta["train"].total_puzzles == 48
    assert meta["test"].total_groups == 6 and meta["test"].total_puzzles == 6  # not augmented
    for split in ("train", "test"):
        source = dp.load("sudoku", split, data_dir, **options)
        for i in range(len(source)):
            ex = source[i]
            assert ex["inputs"].dtype == np.int32 and ex["inputs"].shape == (81,)
            q, s = ex["inputs"] - 1, ex["labels"] - 1  # tokens: 1 = blank, d + 1 = digit
            assert q.min() >= 0 and s.min() >= 1
            assert obeys_rules(s) and agrees(q, s)
            assert int(ex["puzzle_identifiers"]) == 0
        if split == "train":
            groups = source.index.group_indices
            assert np.all(np.diff(groups) == 4)  # original + 3 augmentations per group
            for g in range(len(groups) - 1):
                members = [source[int(p)] for p in range(groups[g], groups[g + 1])]
                assert len({int(m["group_id"]) for m in members}) == 1
                assert len({int(m["rating"]) for m in members}) == 1
                assert len({int(np.count_nonzero(m["inputs"] - 1)) for m in members}) == 1
                assert count_solutions((members[-1]["inputs"] - 1).tolist()) == 1
