"""Per-example predictions of the board datasets (Sudoku, Maze), and their rule checks.

After each evaluation, ``WORKDIR/eval/<step>/<dataset>/predictions.jsonl`` holds one JSON
object per test example, in example order::

    {"index": 17, "input": "5.3..7...", "prediction": "523...", "label": "523...",
     "exact": true, "valid": true, "q_halt": 0.93}

* Sudoku: boards are 81-character strings, row-major, ``.`` = blank; ``valid`` = the prediction
  is a complete grid obeying the rules that keeps every given digit.
* Maze: boards are lists of rows of ``# SGo`` (wall, open, start, goal, path); ``valid`` = the
  predicted path connects S to G through open cells and keeps the walls, S and G.

``exact`` is the evaluation's definition (every labelled token right), so the share of exact
rows is ``eval/exact_accuracy``; ``q_halt`` is sigmoid(q_halt_logits) of the last ACT step.
Metrics added: ``<dataset>/valid_fraction``. Only process 0 writes (every process sees every row).

This module is light (NumPy only): ``python -m trm_jax.solve`` uses the same checks.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from data_pipeline import maze_logic, sudoku_logic
from trm_jax.evaluators import is_primary, register

IGNORE_LABEL_ID = -100  # data_pipeline.common.IGNORE_LABEL_ID (not imported: that module pulls in TFDS)

# Token ids (data_pipeline/sudoku.py, maze.py): sudoku 1 = blank, d + 1 = digit d; maze ``# SGo`` -> 1..5.
_SUDOKU_CHARS = np.frombuffer(b"?.123456789", dtype=np.uint8)
_MAZE_CHARS = np.frombuffer(b"?" + maze_logic.CHARSET.encode(), dtype=np.uint8)
_WALL, _OPEN, _START, _GOAL, _PATH = (ord(c) for c in maze_logic.CHARSET)


# ------------------------------------------------------------------------------------------ Sudoku
@dataclasses.dataclass(frozen=True)
class SudokuCheck:
    """``valid``: a complete grid whose rows, columns and boxes hold 1-9 once each;
    ``givens_kept``: every given digit of the puzzle unchanged; ``solved``: both."""

    valid: bool
    givens_kept: bool

    @property
    def solved(self) -> bool:
        return self.valid and self.givens_kept


def check_sudoku(puzzle_81: np.ndarray, answer_81: np.ndarray) -> SudokuCheck:
    """Rule check of ``answer_81`` (digits, 0 = blank) against ``puzzle_81`` (digits, 0 = blank)."""
    valid = bool(sudoku_logic.valid_solutions(np.asarray(answer_81).reshape(1, 81))[0])
    kept = bool(sudoku_logic.clues_agree(np.asarray(puzzle_81).reshape(1, 81),
                                         np.asarray(answer_81).reshape(1, 81))[0])
    return SudokuCheck(valid, kept)


def sudoku_tokens_to_digits(tokens: np.ndarray) -> np.ndarray:
    """Model tokens (1 = blank, d + 1 = digit d; 0 = pad) -> digits (0 = blank or pad), same shape."""
    t = np.asarray(tokens).astype(np.int64)
    return np.clip(t - 1, 0, 9)


def sudoku_text(tokens: np.ndarray) -> str:
    """Tokens [81] as the usual 81-character line (``.`` = blank)."""
    return _SUDOKU_CHARS[np.clip(np.asarray(tokens), 0, 10)].tobytes().decode("ascii")


# -------------------------------------------------------------------------------------------- Maze
@dataclasses.dataclass(frozen=True)
class MazeCheck:
    """``kept``: walls, S and G of the question unchanged and ``o`` only on open cells;
    ``connected``: the ``o`` cells with S and G hold a 4-neighbour route from S to G;
    ``shortest``: connected, and the route uses exactly a shortest path's cells (no extra ``o``).
    ``solved``: all three (the datasets' label is the unique shortest path)."""

    kept: bool
    connected: bool
    shortest: bool

    @property
    def solved(self) -> bool:
        return self.kept and self.connected and self.shortest


def check_maze(question: np.ndarray, answer: np.ndarray) -> MazeCheck:
    """Rule check of ``answer`` against ``question``: uint8 ASCII boards [H, W] of ``# SGo``."""
    q, a = np.asarray(question, np.uint8), np.asarray(answer, np.uint8)
    kept = bool(np.all((q == a) | ((a == _PATH) & (q == _OPEN))))
    starts, goals = np.argwhere(q == _START), np.argwhere(q == _GOAL)
    if len(starts) != 1 or len(goals) != 1:
        return MazeCheck(kept, False, False)
    start, goal = tuple(starts[0]), tuple(goals[0])
    on_path = (a == _PATH) | (a == _START) | (a == _GOAL)
    on_path[start] = on_path[goal] = True  # a prediction that overwrote S or G fails ``kept``, not the route
    route_len = int(maze_logic.bfs(on_path, start)[0][goal])
    connected = route_len >= 0
    best = int(maze_logic.bfs(q != _WALL, start)[0][goal])
    shortest = connected and route_len == best and int(np.count_nonzero(a == _PATH)) == best - 1
    return MazeCheck(kept, connected, shortest)


def maze_tokens_to_board(tokens: np.ndarray, size: int) -> np.ndarray:
    """Model tokens [size * size] -> ASCII board uint8 [size, size] (pad -> ``?``)."""
    return _MAZE_CHARS[np.clip(np.asarray(tokens), 0, 5)].reshape(size, size)


def maze_rows(board: np.ndarray) -> List[str]:
    """An ASCII board [H, W] as its rows of text."""
    return [row.tobytes().decode("ascii") for row in np.asarray(board, np.uint8)]


# --------------------------------------------------------------------------------------- Evaluator
def exact_rows(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool [b]: every labelled token predicted (rows without labels: False), as ``eval/exact_accuracy``."""
    mask = labels != IGNORE_LABEL_ID
    return mask.any(-1) & np.all(~mask | (preds == labels), axis=-1)


class BoardPredictions:
    """``trm_jax.evaluators.Evaluator`` writing ``predictions.jsonl`` for ``sudoku`` or ``maze``."""

    def __init__(self, dataset_name: str):
        if dataset_name not in ("sudoku", "maze"):
            raise ValueError(f"board predictions are for sudoku and maze, not {dataset_name!r}")
        self.name = dataset_name
        self.begin()

    def begin(self) -> None:
        self._parts: List[Dict[str, np.ndarray]] = []

    def update(self, batch: Mapping[str, np.ndarray], preds: np.ndarray, q_halt_logits: np.ndarray) -> None:
        """Keeps the rows' tokens (uint8) until ``result``: a few bytes per cell."""
        n = len(preds)
        index = np.asarray(batch["example_index"]) if "example_index" in batch else np.full(n, -1)
        self._parts.append({
            "index": index.astype(np.int64), "inputs": np.asarray(batch["inputs"]).astype(np.uint8),
            "labels": np.asarray(batch["labels"]).astype(np.int16), "preds": np.asarray(preds).astype(np.uint8),
            "q_halt": 1.0 / (1.0 + np.exp(-np.asarray(q_halt_logits, np.float64)))})

    def _board(self, tokens: np.ndarray) -> Any:
        if self.name == "sudoku":
            return sudoku_text(tokens)
        return maze_rows(maze_tokens_to_board(tokens, int(round(np.sqrt(tokens.shape[-1])))))

    def _valid(self, inputs: np.ndarray, preds: np.ndarray) -> bool:
        if self.name == "sudoku":
            return check_sudoku(sudoku_tokens_to_digits(inputs), sudoku_tokens_to_digits(preds)).solved
        size = int(round(np.sqrt(inputs.shape[-1])))
        check = check_maze(maze_tokens_to_board(inputs, size), maze_tokens_to_board(preds, size))
        return check.kept and check.connected

    def rows(self) -> List[Dict[str, Any]]:
        """One record per example seen, in example order."""
        if not self._parts:
            return []
        cols = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        order = np.argsort(cols["index"], kind="stable")
        exact = exact_rows(cols["preds"].astype(np.int64), cols["labels"].astype(np.int64))
        out = []
        for i in order.tolist():
            labels = cols["labels"][i]
            label_tokens = np.where(labels == IGNORE_LABEL_ID, 0, labels).astype(np.uint8)
            out.append({"index": int(cols["index"][i]), "input": self._board(cols["inputs"][i]),
                        "prediction": self._board(cols["preds"][i]), "label": self._board(label_tokens),
                        "exact": bool(exact[i]), "valid": self._valid(cols["inputs"][i], cols["preds"][i]),
                        "q_halt": round(float(cols["q_halt"][i]), 6)})
        return out

    def result(self, output_dir: str) -> Dict[str, float]:
        """``<dataset>/valid_fraction``; writes ``predictions.jsonl`` into ``output_dir`` on process 0."""
        rows = self.rows()
        if output_dir and is_primary():
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "predictions.jsonl"), "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        return {f"{self.name}/valid_fraction": sum(r["valid"] for r in rows) / max(len(rows), 1)}



@register("sudoku")
@register("maze")
def make_board_predictions(dataset_name: str, data_dir: Optional[str], options: Mapping[str, Any]) -> BoardPredictions:
    """The predictions writer of a sudoku or maze dataset (needs nothing from the dataset itself)."""
    del data_dir, options
    return BoardPredictions(dataset_name)
