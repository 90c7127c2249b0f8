"""Maze generator and built dataset: every label is a shortest path (independent BFS), on all
8 dihedral transforms."""
from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest

from data_pipeline import maze_logic
from data_pipeline.grids import DIHEDRAL_INVERSE, dihedral_transform, inverse_dihedral_transform
from data_pipeline.maze import TOKEN_TO_CHAR, generate_mazes


# ----------------------------------------------------------------------------- independent BFS
def as_text(board) -> list[str]:
    return ["".join(chr(c) for c in row) for row in np.asarray(board)]


def find(rows: list[str], ch: str) -> list[tuple[int, int]]:
    return [(r, c) for r, row in enumerate(rows) for c, x in enumerate(row) if x == ch]


def bfs(rows: list[str], start, allowed) -> dict:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nxt in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if nxt in allowed and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def assert_label_is_shortest_path(question, answer) -> int:
    """The answer equals the question except 'o' on open cells, and S + o-cells + G form a path
    of the shortest length between S and G. Returns that length."""
    q, a = as_text(question), as_text(answer)
    assert len(q) == len(a) and all(len(row) == len(q) for row in q)
    (start,), (goal,) = find(q, "S"), find(q, "G")
    for r, (qr, ar) in enumerate(zip(q, a)):
        for c, (x, y) in enumerate(zip(qr, ar)):
            assert x == y or (x == " " and y == "o"), f"cell {(r, c)}: {x!r} -> {y!r}"
    free = {(r, c) for r, row in enumerate(q) for c, x in enumerate(row) if x != "#"}
    shortest = bfs(q, start, free)[goal]
    marked = set(find(a, "o"))
    assert len(marked) == shortest - 1
    along = bfs(q, start, marked | {start, goal})
    assert along.get(goal) == shortest  # the marked cells connect S to G that fast
    return shortest


# ----------------------------------------------------------------------------- tests
def test_dihedral_transforms_are_the_group_of_the_square():
    grid = np.arange(12).reshape(3, 4)
    images = {dihedral_transform(grid, t).tobytes() + bytes(dihedral_transform(grid, t).shape)
              for t in range(8)}
    assert len(images) == 8
    for t in range(8):
        assert np.array_equal(inverse_dihedral_transform(dihedral_transform(grid, t), t), grid)
        assert DIHEDRAL_INVERSE[DIHEDRAL_INVERSE[t]] == t


@pytest.mark.parametrize("size,min_len,loop_prob", [(30, 110, 0.1), (30, 0, 0.0), (11, 10, 0.3)])
def test_generated_labels_are_shortest_paths_under_all_transforms(size, min_len, loop_prob):
    for seed in range(4):
        question, answer, length = maze_logic.generate_maze(random.Random(seed), size, min_len, loop_prob)
        assert question.shape == (size, size)
        assert length >= max(1, min_len)
        for t in range(8):
            got = assert_label_is_shortest_path(dihedral_transform(question, t),
                                                dihedral_transform(answer, t))
            assert got == length


def test_unique_shortest_path():
    # The generator promises one shortest path, so the label does not depend on tie-breaking.
    for seed in range(3):
        q, a, length = maze_logic.generate_maze(random.Random(seed), 30, 50, 0.2)
        rows = as_text(q)
        (start,), (goal,) = find(rows, "S"), find(rows, "G")
        free = {(r, c) for r, row in enumerate(rows) for c, x in enumerate(row) if x != "#"}
        dist = bfs(rows, start, free)
        ways = {start: 1}
        for cell in sorted(dist, key=dist.get)[1:]:
            r, c = cell
            ways[cell] = sum(ways.get(n, 0) for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                             if dist.get(n) == dist[cell] - 1)
        assert ways[goal] == 1


def test_impossible_length_fails_cleanly():
    with pytest.raises(ValueError, match="min_path_length"):
        maze_logic.generate_maze(random.Random(0), 5, 100, 0.1, max_attempts=5)


def test_generation_is_deterministic():
    a = generate_mazes(3, seed=5, split="train", min_path_length=40)
    b = generate_mazes(3, seed=5, split="train", min_path_length=40)
    c = generate_mazes(3, seed=5, split="test", min_path_length=40)
    np.testing.assert_array_equal(a.questions, b.questions)
    assert not np.array_equal(a.questions, c.questions)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import data_pipeline as dp
    data_dir = str(tmp_path_factory.mktemp("maze_data"))
    options = {"num_train": 6, "num_test": 4, "aug": True, "min_path_length": 80, "seed": 2}
    meta = dp.ensure_built("maze", data_dir, options, num_workers=1)
    return dp, data_dir, options, meta


def test_built_dataset_labels_are_shortest_paths(built):
    dp, data_dir, options, meta = built
    train = meta["train"]
    assert (train.seq_len, train.vocab_size, train.num_puzzle_identifiers) == (900, 6, 1)
    assert train.total_groups == 6 and train.total_puzzles == 48
    assert meta["test"].total_puzzles == 4
    source = dp.load("maze", "train", data_dir, **options)
    groups = source.index.group_indices
    for g in range(len(groups) - 1):
        members = [source[int(p)] for p in range(groups[g], groups[g + 1])]
        assert sorted(int(m["dihedral"]) for m in members) == list(range(8))
        originals = set()
        for m in members:
            q = TOKEN_TO_CHAR[m["inputs"].reshape(30, 30)]
            a = TOKEN_TO_CHAR[m["labels"].reshape(30, 30)]
            length = assert_label_is_shortest_path(q, a)
            assert length == int(m["rating"]) >= 80
            t = int(m["dihedral"])
            originals.add(inverse_dihedral_transform(q, t).tobytes())
        assert len(originals) == 1  # all 8 are transforms of one maze
    test = dp.load("maze", "test", data_dir, **options)
    assert {int(test[i]["dihedral"]) for i in range(len(test))} == {0}
