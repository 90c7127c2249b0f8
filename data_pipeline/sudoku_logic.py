"""Sudoku rules, a bitmask depth-first solver, a rated puzzle generator and augmentations.

Boards are flat sequences of 81 ints in row-major order: 0 = blank, 1..9 = digit.

Difficulty rating (``rate``) = the number of backtracks of a deterministic depth-first
search that finds the first solution, like the rating of the public Sudoku-Extreme set (a
solver's backtrack count; the numbers differ from theirs, tdoku being a smarter solver).
The search is specified exactly so that it can be re-implemented independently:

* a node picks one empty cell: the first empty cell (row-major) that has at most one
  candidate digit if there is one, else the first empty cell with the fewest candidates;
* a cell without candidates is a dead end; otherwise its candidates are tried in ascending
  order (random order when filling a random grid);
* a backtrack is one tried digit that is taken back because its subtree has no solution.

Pure Python (no numba): bit masks for rows/columns/boxes make one node a few µs.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from data_pipeline.generation import attempt_rng

_ROW = tuple(i // 9 for i in range(81))
_COL = tuple(i % 9 for i in range(81))
_BOX = tuple((i // 27) * 3 + (i % 9) // 3 for i in range(81))
_POPCOUNT = tuple(bin(m).count("1") for m in range(512))
_DIGITS_OF = tuple(tuple(d for d in range(9) if m >> d & 1) for m in range(512))


class _Search:
    """One depth-first search over a board; see the module docstring for the exact rules."""

    def __init__(self, board: Sequence[int], limit: int, rng: random.Random | None,
                 exclude: tuple[int, int] | None, max_backtracks: int | None):
        self.grid = list(board)
        self.limit = limit
        self.rng = rng
        self.exclude_cell, self.exclude_bit = (exclude[0], 1 << (exclude[1] - 1)) if exclude else (-1, 0)
        self.max_backtracks = max_backtracks
        self.solutions: list[list[int]] = []
        self.backtracks = 0
        self.aborted = False
        self.rows = [0] * 9
        self.cols = [0] * 9
        self.boxes = [0] * 9
        self.consistent = True
        for i, v in enumerate(self.grid):
            if v:
                bit = 1 << (v - 1)
                r, c, b = _ROW[i], _COL[i], _BOX[i]
                if (self.rows[r] | self.cols[c] | self.boxes[b]) & bit:
                    self.consistent = False
                self.rows[r] |= bit
                self.cols[c] |= bit
                self.boxes[b] |= bit
        self.empties = [i for i in range(81) if not self.grid[i]]

    def run(self) -> "_Search":
        if self.consistent:
            self._node()
        return self

    def _node(self) -> bool:
        """Returns True when the search must stop (enough solutions, or aborted)."""
        grid, rows, cols, boxes = self.grid, self.rows, self.cols, self.boxes
        row_of, col_of, box_of, popcount = _ROW, _COL, _BOX, _POPCOUNT  # locals: faster lookups
        exclude_cell = self.exclude_cell
        best, best_count, best_mask = -1, 10, 0
        for cell in self.empties:
            if grid[cell]:
                continue
            mask = 0x1FF & ~(rows[row_of[cell]] | cols[col_of[cell]] | boxes[box_of[cell]])
            if cell == exclude_cell:
                mask &= ~self.exclude_bit
            count = popcount[mask]
            if count < best_count:
                best, best_count, best_mask = cell, count, mask
                if count <= 1:
                    break
        if best < 0:  # no empty cell left: a solution
            self.solutions.append(list(grid))
            return len(self.solutions) >= self.limit
        if best_count == 0:
            return False
        r, c, b = _ROW[best], _COL[best], _BOX[best]
        digits = _DIGITS_OF[best_mask]
        if self.rng is not None:
            digits = list(digits)
            self.rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            grid[best] = d + 1
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            found_before = len(self.solutions)
            if self._node():
                return True
            grid[best] = 0
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            if len(self.solutions) == found_before:
                self.backtracks += 1
                if self.max_backtracks is not None and self.backtracks > self.max_backtracks:
                    self.aborted = True
                    return True
        return False


def solve(board: Sequence[int], limit: int = 1) -> list[list[int]]:
    """Up to ``limit`` solutions of ``board`` (81 ints, 0 = blank); [] if none or inconsistent."""
    return _Search(board, limit, None, None, None).run().solutions


def count_solutions(board: Sequence[int], limit: int = 2) -> int:
    """Number of solutions of ``board``, counted up to ``limit``."""
    return len(solve(board, limit))


def rate(board: Sequence[int], max_backtracks: int | None = None) -> int:
    """Backtrack count of the reference depth-first search until the first solution.

    Raises ValueError if the board has no solution. With ``max_backtracks`` the search stops
    early and returns ``max_backtracks + 1``.
    """
    search = _Search(board, 1, None, None, max_backtracks).run()
    if search.aborted:
        return search.backtracks
    if not search.solutions:
        raise ValueError("sudoku has no solution")
    return search.backtracks


def random_solution(rng: random.Random) -> list[int]:
    """A uniformly-seeded random complete grid (random digit order in the search)."""
    return _Search([0] * 81, 1, rng, None, None).run().solutions[0]


def generate_puzzle(rng: random.Random, max_blanks: int | None = None) -> tuple[list[int], list[int]]:
    """A random puzzle with a unique solution: (puzzle, solution), 81 ints each.

    Clues of a random full grid are removed in random order; a removal is kept only when the
    puzzle stays unique, i.e. no solution exists with that cell set to another digit. Without
    ``max_blanks`` every removable clue goes (a minimal puzzle); with it, removal stops at
    ``max_blanks`` blank cells (an easy puzzle: fewer unknowns, each forced by few others).
    """
    solution = random_solution(rng)
    puzzle = list(solution)
    order = list(range(81))
    rng.shuffle(order)
    blanks = 0
    for cell in order:
        if max_blanks is not None and blanks >= max_blanks:
            break
        digit = puzzle[cell]
        puzzle[cell] = 0
        if _Search(puzzle, 1, None, (cell, digit), None).run().solutions:
            puzzle[cell] = digit  # another digit fits: the clue is needed
        else:
            blanks += 1
    return puzzle, solution


def generation_attempt(attempt: int, *, seed: int, split: str, min_rating: int = 0,
                       max_blanks: int | None = None):
    """Attempt number ``attempt`` of a generation run: (puzzle, solution, rating) or None if
    rated below ``min_rating``. Module level and light to import, for worker processes."""
    rng = attempt_rng(seed, split, attempt, salt="sudoku")
    puzzle, solution = generate_puzzle(rng, max_blanks)
    rating = rate(puzzle)
    return (puzzle, solution, rating) if rating >= min_rating else None


# ---------------------------------------------------------------------------------------------
# Vectorised checks on batches of boards (numpy int arrays [n, 81], 0 = blank).

def _unit_index() -> np.ndarray:
    rows = [[r * 9 + c for c in range(9)] for r in range(9)]
    cols = [[r * 9 + c for r in range(9)] for c in range(9)]
    boxes = [[(br * 3 + i) * 9 + bc * 3 + j for i in range(3) for j in range(3)]
             for br in range(3) for bc in range(3)]
    return np.asarray(rows + cols + boxes, dtype=np.int64)  # [27, 9]


# Cell indices of the 27 units: rows 0-8, columns 9-17, boxes 18-26 (row-major boxes).
UNITS = _unit_index()


def valid_solutions(solutions: np.ndarray) -> np.ndarray:
    """bool [n]: each row of ``solutions`` [n, 81] is a complete grid obeying the rules."""
    s = np.asarray(solutions).reshape(-1, 81)
    units = np.sort(s[:, UNITS], axis=-1)  # [n, 27, 9]
    return np.all(units == np.arange(1, 10), axis=(1, 2))


def clues_agree(puzzles: np.ndarray, solutions: np.ndarray) -> np.ndarray:
    """bool [n]: every clue (non-zero cell) of ``puzzles`` [n, 81] equals ``solutions`` there."""
    p = np.asarray(puzzles).reshape(-1, 81)
    s = np.asarray(solutions).reshape(-1, 81)
    return np.all((p == 0) | (p == s), axis=1)


# ---------------------------------------------------------------------------------------------
# Augmentation: symmetries that map valid sudokus to valid sudokus.

def random_symmetry(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(cell_map [81], digit_map [10]): new[i] = digit_map[old[cell_map[i]]].

    Composes a digit relabelling (0 stays blank), an optional transpose, a band shuffle with
    a row shuffle inside each band, and a stack shuffle with a column shuffle inside each stack.
    """
    digit_map = np.concatenate([[0], rng.permutation(np.arange(1, 10))])
    transpose = rng.random() < 0.5
    row_perm = np.concatenate([band * 3 + rng.permutation(3) for band in rng.permutation(3)])
    col_perm = np.concatenate([stack * 3 + rng.permutation(3) for stack in rng.permutation(3)])
    cells = np.arange(81).reshape(9, 9)
    if transpose:
        cells = cells.T
    cell_map = cells[row_perm][:, col_perm].reshape(81)
    return cell_map, digit_map


def apply_symmetry(board: np.ndarray, cell_map: np.ndarray, digit_map: np.ndarray) -> np.ndarray:
    """Apply a ``random_symmetry`` to a board [81] (0 = blank) -> [81]."""
    return digit_map[np.asarray(board).reshape(81)[cell_map]]
