"""Maze rules and a generator of square mazes with a unique shortest path.

Boards are [size, size] uint8 arrays of ASCII characters: ``#`` wall, `` `` open, ``S`` start,
``G`` goal; the answer additionally marks the cells strictly between S and G on the shortest
path with ``o`` (S and G keep their letters). Moves are 4-neighbour steps between non-wall
cells; the path length is the number of steps from S to G.

Generation: a random spanning tree (depth-first "recursive backtracker") on the lattice of
cells with odd coordinates, plus ``loop_prob`` of the remaining inner walls knocked down so
that the shortest path is a real choice among several routes; S is a random open cell (or,
when no goal qualifies, one of the cells farthest from it) and G a random open cell whose
shortest path from S is at least ``min_path_length`` steps long *and* unique (so the label
is well defined and invariant under the dihedral augmentations).
"""
from __future__ import annotations

import random
from collections import deque

import numpy as np

from data_pipeline.generation import attempt_rng

WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"
CHARSET = "# SGo"  # token id = position + 1; 0 = pad

_B = {ch: ord(ch) for ch in CHARSET}


def _carve(rng: random.Random, size: int, loop_prob: float) -> np.ndarray:
    """bool [size, size]: open cells of a random maze on the odd-coordinate lattice."""
    n = len(range(1, size, 2))  # lattice cells per side, at coordinates 1, 3, ..., < size
    is_open = np.zeros((size, size), dtype=bool)
    visited = [[False] * n for _ in range(n)]
    start = (rng.randrange(n), rng.randrange(n))
    stack = [start]
    visited[start[0]][start[1]] = True
    is_open[2 * start[0] + 1, 2 * start[1] + 1] = True
    while stack:
        i, j = stack[-1]
        nbrs = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= i + di < n and 0 <= j + dj < n and not visited[i + di][j + dj]]
        if not nbrs:
            stack.pop()
            continue
        a, b = nbrs[rng.randrange(len(nbrs))]
        visited[a][b] = True
        is_open[2 * a + 1, 2 * b + 1] = True
        is_open[i + a + 1, j + b + 1] = True  # the wall between (i, j) and (a, b)
        stack.append((a, b))
    if loop_prob > 0:
        for i in range(n):
            for j in range(n):
                for a, b in ((i + 1, j), (i, j + 1)):
                    if a < n and b < n and not is_open[i + a + 1, j + b + 1] and rng.random() < loop_prob:
                        is_open[i + a + 1, j + b + 1] = True
    return is_open


def bfs(is_open: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (-1 = unreachable) and numbers of shortest paths (capped at 2) from ``start``.

    is_open: bool [H, W]. Returns (dist int32 [H, W], count int8 [H, W]).
    """
    h, w = is_open.shape
    open_list = is_open.tolist()
    dist = [[-1] * w for _ in range(h)]
    count = [[0] * w for _ in range(h)]
    sr, sc = start
    dist[sr][sc] = 0
    count[sr][sc] = 1
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        d, k = dist[r][c] + 1, count[r][c]
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < h and 0 <= nc < w and open_list[nr][nc]:
                nd = dist[nr][nc]
                if nd < 0:
                    dist[nr][nc] = d
                    count[nr][nc] = k
                    queue.append((nr, nc))
                elif nd == d:
                    count[nr][nc] = min(2, count[nr][nc] + k)
    return np.asarray(dist, dtype=np.int32), np.asarray(count, dtype=np.int8)


def _trace_back(dist: np.ndarray, goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells of a shortest path from the BFS source to ``goal`` (both included), source first."""
    h, w = dist.shape
    path = [goal]
    r, c = goal
    while dist[r, c] > 0:
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < h and 0 <= nc < w and dist[nr, nc] == dist[r, c] - 1:
                r, c = nr, nc
                break
        path.append((r, c))
    return path[::-1]


def generate_maze(rng: random.Random, size: int = 30, min_path_length: int = 0,
                  loop_prob: float = 0.1, max_attempts: int = 1000) -> tuple[np.ndarray, np.ndarray, int]:
    """A random maze: (question uint8 [size, size], answer uint8 [size, size], path_length).

    Raises ValueError if no maze with a unique shortest path of ``min_path_length`` steps is
    found in ``max_attempts`` mazes (the bound is too large for ``size``).
    """
    for _ in range(max_attempts):
        is_open = _carve(rng, size, loop_prob)
        cells = np.argwhere(is_open)
        start = tuple(int(x) for x in cells[rng.randrange(len(cells))])
        dist, count = bfs(is_open, start)
        ok = np.argwhere((dist >= max(1, min_path_length)) & (count == 1))
        if len(ok) == 0:
            # Second sweep from a cell farthest from the first start: long paths become likely,
            # so "hard" mazes need far fewer attempts.
            far = np.argwhere(dist == dist.max())
            start = tuple(int(x) for x in far[rng.randrange(len(far))])
            dist, count = bfs(is_open, start)
            ok = np.argwhere((dist >= max(1, min_path_length)) & (count == 1))
        if len(ok) == 0:
            continue
        goal = tuple(int(x) for x in ok[rng.randrange(len(ok))])
        question = np.where(is_open, _B[OPEN], _B[WALL]).astype(np.uint8)
        question[start] = _B[START]
        question[goal] = _B[GOAL]
        answer = question.copy()
        for cell in _trace_back(dist, goal)[1:-1]:
            answer[cell] = _B[PATH]
        return question, answer, int(dist[goal])
    raise ValueError(f"no {size}x{size} maze with a unique shortest path of >= {min_path_length} "
                     f"steps in {max_attempts} attempts; lower min_path_length")


def generation_attempt(attempt: int, *, seed: int, split: str, size: int, min_path_length: int,
                       loop_prob: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Attempt number ``attempt`` of a generation run (module level and light to import, for
    worker processes); seeded from (seed, split, attempt) only."""
    rng = attempt_rng(seed, split, attempt, salt="maze")
    return generate_maze(rng, size, min_path_length, loop_prob)


def path_length_of_answer(answer: np.ndarray) -> int:
    """Steps of the path marked in an answer board: number of ``o`` cells + 1."""
    return int(np.count_nonzero(np.asarray(answer) == _B[PATH])) + 1


def render(board: np.ndarray) -> str:
    """A board [H, W] of ASCII codes as text lines (for debugging and docs)."""
    return "\n".join(bytes(row.tolist()).decode("ascii") for row in np.asarray(board, dtype=np.uint8))
