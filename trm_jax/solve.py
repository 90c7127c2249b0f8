"""See what a trained model answers: ``python -m trm_jax.solve --workdir=RUN PUZZLE``.

The dataset kind comes from the run's config (``config.data.name``); the puzzle is tokenised
as that dataset's builder does, the model runs the full ``halt_max_steps`` ACT steps as in
evaluation, and the answer is drawn and checked::

    # Sudoku: 81 characters (0 or . = blank), or a file holding them (whitespace ignored)
    python -m trm_jax.solve --workdir=runs/sudoku_tiny \\
        ..3.2.6..9..3.5..1..18.64....81.29..7.......8..67.82....26.95..8..2.3..9..5.1.3..

    # Maze: rows of '# SG' (wall, open, start, goal), from a file or a string with newlines
    python -m trm_jax.solve --workdir=runs/maze_tiny maze.txt

    # ARC: a Kaggle challenges file (+ its *_solutions.json beside it, if any) and a task id,
    # or a one-task {"train": [...], "test": [...]} file; --num_aug augmented versions vote
    python -m trm_jax.solve --workdir=runs/arc arc-agi_evaluation_challenges.json --task=00576224 --num_aug=8

    # a PyTorch reference checkpoint instead of a run
    python -m trm_jax.solve --restore_from=step_50000 --config=configs/sudoku.py PUZZLE

    # one JSON object instead of the drawing
    python -m trm_jax.solve --workdir=runs/sudoku_tiny --json PUZZLE

``--workdir`` also takes a ``checkpoints/<step>`` or ``best/<step>`` directory; the EMA weights
are used when the run kept them (``--noema``: the raw ones). Output: the input and the
prediction (Sudoku: a 9x9 grid with box separators, predicted digits coloured; Maze: the rows
with the path; ARC: coloured cells), whether the answer is valid/solved, the ACT step at which
the Q-head first said halt (``q_halt_logits > 0``) and the halting Q-value (sigmoid of the last
step's ``q_halt_logits``). Colours are used when stdout is a terminal and ``NO_COLOR`` is
unset. ``--json`` fields: ``kind, checkpoint, step, input, prediction, valid, solved, steps,
q_halt, q_halt_per_step`` (ARC: per test input in ``tests``, with ``attempts``).

ARC: the model knows a task through its learned puzzle embeddings, one per augmentation. For a
task of the run's dataset the augmentations (and identifiers) are the dataset's own, the first
``--num_aug`` + 1 of them, exactly what evaluation votes over; another task gets the builder's
``plan_augmentations`` with the blank embedding (a warning says so: the answer is then a guess).
The two attempts are the evaluator's vote (``trm_jax.evaluators.arc.vote``).

A malformed puzzle (wrong length, bad characters, ragged rows, invalid JSON) exits with status 1
and a one-line ``error: ...`` naming what is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import sudoku_logic
from trm_jax.evaluators import boards
from trm_jax.families import get_family
from trm_jax.pretrained import restore_run
from trm_jax.steps import make_eval_batch

_UNIT_NAMES = [f"row {i + 1}" for i in range(9)] + [f"column {i + 1}" for i in range(9)] + \
    [f"box {i + 1}" for i in range(9)]


class PuzzleError(ValueError):
    """A puzzle that cannot be read: the message names what is wrong."""


# ============================================================================ reading puzzles
def puzzle_text(arg: str) -> str:
    """``arg`` itself, or the content of the file it names."""
    if os.path.isfile(arg):
        with open(arg, encoding="utf-8", errors="replace") as f:
            return f.read()
    return arg


def parse_sudoku(text: str) -> np.ndarray:
    """An 81-cell Sudoku (``0`` or ``.`` = blank, whitespace ignored) -> digits int [81] (0 = blank).

    Raises:
      PuzzleError: not 81 cells, a character other than 1-9/0/., or a given digit repeated in a
        row, column or box.
    """
    cells = "".join(text.split())
    for pos, ch in enumerate(cells):
        if ch not in "0123456789.":
            raise PuzzleError(f"Sudoku: bad character {ch!r} at position {pos + 1} (allowed: 1-9, and 0 or . "
                              "for a blank)")
    if len(cells) != 81:
        raise PuzzleError(f"Sudoku: expected 81 cells (9 rows of 9), got {len(cells)}")
    digits = np.asarray([0 if ch == "." else int(ch) for ch in cells], dtype=np.int64)
    for unit, name in zip(sudoku_logic.UNITS, _UNIT_NAMES):
        values = digits[unit][digits[unit] > 0]
        repeated = [int(d) for d in np.unique(values) if np.count_nonzero(values == d) > 1]
        if repeated:
            raise PuzzleError(f"Sudoku: the given digit {repeated[0]} appears twice in {name}")
    return digits


def parse_maze(text: str, size: Optional[int] = None) -> np.ndarray:
    """Rows of ``# SG`` (wall, open, start, goal) -> ASCII board uint8 [H, W].

    Spaces are cells, so only line ends are stripped; empty lines around the maze are ignored.

    Raises:
      PuzzleError: ragged rows, another character, not exactly one S and one G, or not
        ``size`` x ``size`` when ``size`` is given.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise PuzzleError("Maze: empty puzzle")
    widths = [len(line) for line in lines]
    if len(set(widths)) != 1:
        bad = next(i for i, w in enumerate(widths) if w != widths[0])
        raise PuzzleError(f"Maze: ragged rows: row {bad + 1} has {widths[bad]} characters, row 1 has {widths[0]}")
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            if ch not in "# SG":
                raise PuzzleError(f"Maze: row {r + 1}, column {c + 1}: {ch!r} is not a maze cell (allowed: '#' wall, "
                                  "' ' open, 'S' start, 'G' goal)")
    board = np.frombuffer("".join(lines).encode("ascii"), dtype=np.uint8).reshape(len(lines), widths[0]).copy()
    for ch, name in (("S", "start"), ("G", "goal")):
        n = int(np.count_nonzero(board == ord(ch)))
        if n != 1:
            raise PuzzleError(f"Maze: expected one {ch} ({name}), found {n}")
    if size is not None and board.shape != (size, size):
        raise PuzzleError(f"Maze: the model solves {size}x{size} mazes; this one is "
                          f"{board.shape[0]}x{board.shape[1]}")
    return board


@dataclasses.dataclass
class ArcPuzzle:
    """One ARC task to solve: demonstrations, test inputs, and test outputs when known."""

    task_id: str
    train: List[Tuple[np.ndarray, np.ndarray]]
    test_inputs: List[np.ndarray]
    test_outputs: List[Optional[np.ndarray]]


def load_arc_task(path: str, task_id: str = "") -> ArcPuzzle:
    """An ARC task from a JSON file: a Kaggle challenges file (``task_id`` picks the task; the
    ``*_solutions.json`` beside it gives the test outputs) or one ``{"train", "test"}`` task.

    Raises:
      PuzzleError / data_pipeline.DataError: invalid JSON, a malformed grid, an unknown task id.
    """
    from data_pipeline.arc import parse_grid, read_json

    if not os.path.isfile(path):
        raise PuzzleError(f"ARC: {path} is not a file (an ARC puzzle is a task JSON file)")
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise PuzzleError(f"ARC: {path}: expected a JSON object (one task, or task id -> task)")
    solutions: Any = None
    if isinstance(raw.get("train"), list):  # one task
        task_id, task = task_id or os.path.splitext(os.path.basename(path))[0], raw
    else:
        if not task_id:
            if len(raw) != 1:
                raise PuzzleError(f"ARC: {path} holds {len(raw)} tasks; pick one with --task=ID")
            task_id = next(iter(raw))
        if task_id not in raw:
            raise PuzzleError(f"ARC: task {task_id!r} is not in {path}")
        task = raw[task_id]
        sol_path = path[:-len("_challenges.json")] + "_solutions.json" if path.endswith("_challenges.json") else ""
        if sol_path and os.path.isfile(sol_path):
            solutions = read_json(sol_path).get(task_id)
    if not isinstance(task, dict) or not isinstance(task.get("train"), list) or not isinstance(task.get("test"), list):
        raise PuzzleError(f"ARC: {path}: task {task_id} needs 'train' and 'test' lists")
    where = f"task {task_id}"
    train = []
    for i, pair in enumerate(task["train"]):
        if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
            raise PuzzleError(f"ARC: {path}: {where} train pair {i} needs 'input' and 'output'")
        train.append((parse_grid(pair["input"], path, f"{where} train pair {i} input"),
                      parse_grid(pair["output"], path, f"{where} train pair {i} output")))
    inputs, outputs = [], []
    for i, pair in enumerate(task["test"]):
        if not isinstance(pair, dict) or "input" not in pair:
            raise PuzzleError(f"ARC: {path}: {where} test pair {i} needs 'input'")
        inputs.append(parse_grid(pair["input"], path, f"{where} test pair {i} input"))
        out = pair.get("output")
        if out is None and isinstance(solutions, list) and i < len(solutions):
            out = solutions[i]
        outputs.append(None if out is None else parse_grid(out, path, f"{where} test pair {i} output"))
    if not inputs:
        raise PuzzleError(f"ARC: {path}: {where} has no test input")
    return ArcPuzzle(task_id, train, inputs, outputs)


# ============================================================================ the model
@dataclasses.dataclass
class ActTrace:
    """What the model did on a batch: ``preds`` int [B, L] and ``q_halt`` [B] of the last ACT step
    (what evaluation scores), ``q_halt_per_step`` [B, N] the Q-head's halt logits at every step."""

    preds: np.ndarray
    q_halt: np.ndarray
    q_halt_per_step: np.ndarray

    def first_halt_step(self) -> List[Optional[int]]:
        """Per row, the first ACT step (1-based) with ``q_halt_logits > 0``; None if the Q-head never said halt."""
        said = self.q_halt_per_step > 0
        return [int(np.argmax(row)) + 1 if row.any() else None for row in said]


@dataclasses.dataclass
class Solver:
    """A model ready to answer: its config, family, weights and the compiled ACT trace."""

    config: ml_collections.ConfigDict
    params: Any
    buffers: Any
    aux: Dict[str, Any]
    source: str
    step: Optional[int]
    _trace: Optional[Callable] = None

    @property
    def kind(self) -> str:
        return str(self.config.data.name)

    def run(self, batch: Dict[str, np.ndarray]) -> ActTrace:
        """All ``halt_max_steps`` ACT steps on ``batch`` (inputs, labels, puzzle_identifiers)."""
        if self._trace is None:
            family = get_family(self.config.model.name)
            model_cfg = family.config_cls.from_any(self.config.model)
            # The evaluation's own computation (every row fresh, halt_max_steps greedy steps), with
            # every step's halting logit kept, to say when the Q-head would have halted.
            self._trace = jax.jit(make_eval_batch(family.build_model(model_cfg), with_trace=True))
        _, preds, q, steps = self._trace(self.params, self.buffers, self.aux,
                                         {k: jnp.asarray(v) for k, v in batch.items()})
        return ActTrace(np.asarray(preds), np.asarray(q, np.float64),
                        np.asarray(steps["q_halt_logits"], np.float64).T)


def load_solver(workdir: str = "", *, restore_from: str = "", config: Optional[ml_collections.ConfigDict] = None,
                ema: bool = True) -> Solver:
    """A :class:`Solver` from a trm_jax run (``workdir``: workdir or step directory) or from a PyTorch
    reference checkpoint (``restore_from`` with the ``config`` it was trained under)."""
    if workdir:
        run = restore_run(workdir, ema=ema)
        return Solver(run.config, run.params, run.buffers, run.aux, run.info.path, run.info.step)
    if not restore_from or config is None:
        raise ValueError("pass --workdir=RUN, or --restore_from=PYTORCH_CHECKPOINT with --config=CONFIG")
    from trm_jax.families import ARCHITECTURES, get_family

    if not get_family(config.model.name).loads_torch:
        raise ValueError(f"PyTorch checkpoints load into the reference's architectures {ARCHITECTURES} only "
                         f"(config.model.name={config.model.name!r})")
    from trm_jax.pt_format import load_pt
    from trm_jax.torch_io import from_torch

    if not os.path.isfile(restore_from):
        raise FileNotFoundError(f"--restore_from={restore_from} is not a file")
    state = load_pt(restore_from)  # tensors only: nothing in the file can run code
    state = state.get("model", state) if isinstance(state, dict) else state
    config = ml_collections.ConfigDict(config.to_dict())
    # The table sizes the reference trained with are in its tensors (the config holds placeholders).
    for key, value in state.items():
        if key.endswith("embed_tokens.embedding_weight"):
            config.model.vocab_size = int(value.shape[0])
        elif key.endswith("puzzle_emb.weights"):
            config.model.num_puzzle_identifiers = int(value.shape[0])
    if config.data.name == "sudoku":
        config.model.seq_len = 81
    variables = from_torch(state, config.model)
    return Solver(config, variables["params"], variables["buffers"], {}, os.path.abspath(restore_from), None)


def _batch(inputs: np.ndarray, identifiers: Sequence[int]) -> Dict[str, np.ndarray]:
    """A model batch: inputs int32 [B, L], no labels (all ignored), the given puzzle identifiers."""
    inputs = np.asarray(inputs, dtype=np.int32).reshape(len(identifiers), -1)
    return {"inputs": inputs, "labels": np.full_like(inputs, boards.IGNORE_LABEL_ID),
            "puzzle_identifiers": np.asarray(identifiers, dtype=np.int32)}


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-float(x))))


def _check_seq_len(solver: Solver, seq_len: int) -> None:
    if int(solver.config.model.seq_len) != seq_len:
        raise PuzzleError(f"{solver.kind}: the model reads {solver.config.model.seq_len} tokens, the puzzle has "
                          f"{seq_len}")


# ============================================================================ solving
def solve_sudoku(solver: Solver, digits_81: np.ndarray) -> Dict[str, Any]:
    """Answer of the model to one Sudoku (digits [81], 0 = blank) with its rule check."""
    from data_pipeline.sudoku import tokens_to_board

    _check_seq_len(solver, 81)
    trace = solver.run(_batch(np.asarray(digits_81) + 1, [0]))  # tokens as the builder: blank 1, digit d + 1
    answer = tokens_to_board(trace.preds[0]).reshape(81)
    check = boards.check_sudoku(digits_81, answer)
    return {"kind": "sudoku", "input": boards.sudoku_text(np.asarray(digits_81) + 1),
            "prediction": boards.sudoku_text(trace.preds[0]), "valid": check.valid,
            "givens_kept": check.givens_kept, "solved": check.solved, **_halting(trace, 0),
            "_puzzle": np.asarray(digits_81), "_answer": answer}


def solve_maze(solver: Solver, board: np.ndarray) -> Dict[str, Any]:
    """Answer of the model to one maze (ASCII board [size, size]) with its path check."""
    from data_pipeline.maze import CHAR_TO_TOKEN, tokens_to_board

    size = board.shape[0]
    _check_seq_len(solver, size * size)
    trace = solver.run(_batch(CHAR_TO_TOKEN[board].reshape(1, -1), [0]))
    answer = tokens_to_board(trace.preds[0], size)
    check = boards.check_maze(board, answer)
    return {"kind": "maze", "input": boards.maze_rows(board), "prediction": boards.maze_rows(answer),
            "valid": check.kept and check.connected, "shortest": check.shortest, "solved": check.solved,
            **_halting(trace, 0), "_puzzle": board, "_answer": answer}


def _halting(trace: ActTrace, row: int) -> Dict[str, Any]:
    return {"steps": trace.first_halt_step()[row], "q_halt": round(_sigmoid(trace.q_halt[row]), 6),
            "q_halt_per_step": [round(_sigmoid(q), 6) for q in trace.q_halt_per_step[row]]}


def arc_augmentations(config: ml_collections.ConfigDict, puzzle: ArcPuzzle,
                      num_aug: int) -> Tuple[List[Any], List[int], bool]:
    """``(augmentations, puzzle identifiers, known)`` for a task: the identity first.

    ``known``: the task is in the run's built dataset, whose augmentations and learned identifiers
    are used (the first ``num_aug`` + 1). Otherwise the builder's ``plan_augmentations`` with the
    task's seed, and identifier 0 (the blank embedding).
    """
    from data_pipeline import arc

    found = _dataset_augmentations(config, puzzle.task_id)
    if found:
        augs, ids = zip(*found[:num_aug + 1])
        return list(augs), list(ids), True
    options = dict(config.data.options)
    seed = int(options.get("seed", arc.ArcOptions.seed))
    pairs = list(puzzle.train) + [(g, g) for g in puzzle.test_inputs]
    augs = arc.plan_augmentations(pairs, num_aug, arc._task_seed(seed, puzzle.task_id))
    return augs, [0] * len(augs), False


def _dataset_augmentations(config: ml_collections.ConfigDict, task_id: str) -> List[Tuple[Any, int]]:
    """(augmentation, identifier) of each puzzle of ``task_id`` in the run's built dataset, by identifier."""
    import data_pipeline as dp
    from data_pipeline import arc

    data = config.data
    for split in ("test", "train"):
        try:
            source = dp.load(data.name, split, data.get("data_dir") or None, **dict(data.options))
        except Exception:  # noqa: BLE001 - not built here, or another layout: fall back to fresh augmentations
            return []
        cols = source.columns
        if "task_id" not in cols:
            return []
        ids = np.asarray(cols["task_id"])
        rows = np.flatnonzero((ids.astype(str) == task_id) if ids.dtype.kind in "SU" else
                              np.asarray([str(t.decode() if isinstance(t, bytes) else t) == task_id for t in ids]))
        if rows.size:
            seen: Dict[int, Any] = {}
            for i in rows.tolist():
                ident = int(cols["puzzle_identifier"][i])
                if ident not in seen:
                    seen[ident] = arc.example_augmentation(cols, i)
            return [(seen[k], k) for k in sorted(seen)]
    return []


def solve_arc(solver: Solver, puzzle: ArcPuzzle, num_aug: int = 8,
              test_index: Optional[int] = None) -> Dict[str, Any]:
    """The two attempts per test input, voted over augmented versions as the ARC evaluator."""
    from data_pipeline import arc
    from trm_jax.evaluators.arc import grid_key, vote

    _check_seq_len(solver, arc.SEQ_LEN)
    augs, ids, known = arc_augmentations(solver.config, puzzle, num_aug)
    tests = range(len(puzzle.test_inputs)) if test_index is None else [test_index]
    if test_index is not None and not 0 <= test_index < len(puzzle.test_inputs):
        raise PuzzleError(f"ARC: task {puzzle.task_id} has {len(puzzle.test_inputs)} test inputs; "
                          f"--test_index={test_index} is out of range")
    inputs = [arc.encode_grid(aug.apply(puzzle.test_inputs[t])).ravel() for t in tests for aug in augs]
    trace = solver.run(_batch(np.stack(inputs), [i for _ in tests for i in ids]))
    n = len(augs)
    halts = trace.first_halt_step()
    results = []
    for k, t in enumerate(tests):
        rows = slice(k * n, (k + 1) * n)
        ranked = vote(trace.preds[rows], trace.q_halt[rows], augs)
        attempts = [{"grid": c.grid.tolist(), "votes": c.count, "q_halt": round(c.q_mean, 6)} for c in ranked[:2]]
        truth = puzzle.test_outputs[t]
        solved = None if truth is None else any(grid_key(c.grid) == grid_key(truth) for c in ranked[:2])
        results.append({"index": t, "input": puzzle.test_inputs[t].tolist(),
                        "prediction": attempts[0]["grid"] if attempts else None, "attempts": attempts,
                        "valid": bool(attempts), "solution": None if truth is None else truth.tolist(),
                        "solved": solved, "steps": halts[rows],
                        "q_halt": [round(_sigmoid(q), 6) for q in trace.q_halt[rows]]})
    solved_all = None if any(r["solved"] is None for r in results) else all(r["solved"] for r in results)
    return {"kind": "arc", "task": puzzle.task_id, "known_task": known, "num_augmentations": n,
            "tests": results, "solved": solved_all}


# ============================================================================ drawing
ARC_PALETTE_256 = (16, 32, 203, 41, 220, 248, 199, 208, 117, 88)  # ARC colours 0-9 (black, blue, red,
# green, yellow, grey, fuchsia, orange, azure, maroon) as the nearest xterm-256 colours
_RESET = "\x1b[0m"


def use_color(stream: Any = None) -> bool:
    """Colours when ``stream`` (stdout) is a terminal and ``NO_COLOR`` is unset (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _side_by_side(blocks: Sequence[Tuple[str, List[str], int]], gap: int = 4) -> str:
    """Blocks ``(title, lines, visible width)`` next to each other (ANSI codes do not count in the width)."""
    height = max(len(lines) for _, lines, _ in blocks)
    out = ["".join(title.ljust(width + gap) for title, _, width in blocks).rstrip()]
    for r in range(height):
        row = ""
        for _, lines, width in blocks:
            cell = lines[r] if r < len(lines) else ""
            row += cell + " " * (width + gap - _visible_len(cell))
        out.append(row.rstrip())
    return "\n".join(out)


def _visible_len(text: str) -> int:
    import re
    return len(re.sub(r"\x1b\[[0-9;]*m", "", text))


def sudoku_lines(digits_81: np.ndarray, givens_81: Optional[np.ndarray] = None, color: bool = False) -> List[str]:
    """A Sudoku as 11 lines with 3x3 box separators (``.`` = blank). With ``givens_81``, cells that
    are not givens are predicted: coloured cyan (red where the digit breaks a rule or a given)."""
    d = np.asarray(digits_81).reshape(81)
    bad = set()
    if givens_81 is not None:
        g = np.asarray(givens_81).reshape(81)
        bad = {i for i in range(81) if g[i] and g[i] != d[i]}
        for unit in sudoku_logic.UNITS:
            vals = d[unit]
            bad |= {unit[j] for j in range(9) if vals[j] and np.count_nonzero(vals == vals[j]) > 1 and not g[unit[j]]}
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        cells = []
        for c in range(9):
            i = r * 9 + c
            ch = str(d[i]) if d[i] else "."
            if color and givens_81 is not None:
                ch = (f"\x1b[1;31m{ch}{_RESET}" if i in bad else
                      f"\x1b[1m{ch}{_RESET}" if givens_81.reshape(81)[i] else f"\x1b[36m{ch}{_RESET}")
            cells.append(ch)
            if c in (2, 5):
                cells.append("|")
        lines.append(" ".join(cells))
    return lines


def maze_lines(board: np.ndarray, color: bool = False) -> List[str]:
    """A maze board as rows; coloured: walls grey, path yellow, S green, G red."""
    rows = boards.maze_rows(board)
    if not color:
        return rows
    style = {"#": "\x1b[48;5;240m \x1b[0m", "o": "\x1b[48;5;220m \x1b[0m", "S": "\x1b[1;42mS\x1b[0m",
             "G": "\x1b[1;41mG\x1b[0m"}
    return ["".join(style.get(ch, ch) for ch in row) for row in rows]


def arc_lines(grid: Any, color: bool = False) -> Tuple[List[str], int]:
    """An ARC grid as lines of coloured cells (two spaces per cell) or digits; and the visible width."""
    g = np.asarray(grid, dtype=np.int64)
    if color:
        lines = ["".join(f"\x1b[48;5;{ARC_PALETTE_256[v]}m  " for v in row) + _RESET for row in g]
    else:
        lines = [" ".join(str(v) for v in row) for row in g]
    return lines, 2 * g.shape[1] if color else 2 * g.shape[1] - 1


def _verdict(ok: Optional[bool], yes: str, no: str) -> str:
    return "unknown" if ok is None else (yes if ok else no)


def _halting_line(result: Dict[str, Any], steps_total: int) -> str:
    first = result["steps"]
    said = f"step {first} of {steps_total}" if first is not None else f"never in {steps_total} steps"
    return f"Q-head said halt at: {said}; halting Q-value (last step): {result['q_halt']:.3f}"


def render(result: Dict[str, Any], steps_total: int, color: bool = False) -> str:
    """The human-readable report of a ``solve_*`` result."""
    kind = result["kind"]
    if kind == "sudoku":
        grids = _side_by_side([("Puzzle", sudoku_lines(result["_puzzle"]), 21),
                               ("Prediction", sudoku_lines(result["_answer"], result["_puzzle"], color), 21)])
        legend = "(bold: given, cyan: predicted, red: breaks a rule)" if color else \
            "(the model filled the cells blank in the puzzle)"
        verdict = ("SOLVED: a valid, complete grid that keeps every given" if result["solved"] else
                   "NOT SOLVED: " + ("the grid breaks the rules" if not result["valid"] else "a given digit changed"))
        return "\n".join([grids, legend, verdict, _halting_line(result, steps_total)])
    if kind == "maze":
        q = np.frombuffer("".join(result["input"]).encode(), np.uint8).reshape(len(result["input"]), -1)
        a = result["_answer"]
        w = q.shape[1]
        grids = _side_by_side([("Maze", maze_lines(q, color), w), ("Prediction (o = path)", maze_lines(a, color), w)])
        verdict = ("SOLVED: the shortest path from S to G" if result["solved"] else
                   "VALID: the path connects S to G, but is not the shortest" if result["valid"] else
                   "NOT SOLVED: the path does not connect S to G through open cells")
        return "\n".join([grids, verdict, _halting_line(result, steps_total)])
    out = [f"ARC task {result['task']}: {result['num_augmentations']} augmented versions vote"
           + ("" if result["known_task"] else " (task not in the run's dataset: blank puzzle embedding, a guess)")]
    for t in result["tests"]:
        blocks = [(f"Test input {t['index']}",) + arc_lines(t["input"], color)]
        for i, a in enumerate(t["attempts"]):
            blocks.append((f"Attempt {i + 1} ({a['votes']} votes)",) + arc_lines(a["grid"], color))
        if t["solution"] is not None:
            blocks.append(("Solution",) + arc_lines(t["solution"], color))
        blocks = [(title, lines, max(width, len(title))) for title, lines, width in blocks]
        out.append(_side_by_side(blocks))
        if not t["attempts"]:
            out.append("no augmented version predicted a grid")
        out.append(_verdict(t["solved"], "SOLVED (one of the two attempts is the solution)",
                            "NOT SOLVED (neither attempt is the solution)")
                   + ("" if t["solved"] is not None else " (no solution in the JSON)"))
        halted = [s for s in t["steps"] if s is not None]
        out.append(f"Q-head said halt in {len(halted)} of {len(t['steps'])} versions"
                   + (f" (median step {int(np.median(halted))} of {steps_total})" if halted else "")
                   + f"; mean halting Q-value {np.mean(t['q_halt']):.3f}")
    return "\n".join(out)


def public(result: Dict[str, Any]) -> Dict[str, Any]:
    """``result`` without its NumPy working fields (what ``--json`` prints)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def solve(solver: Solver, puzzle: str, *, task: str = "", num_aug: int = 8,
          test_index: Optional[int] = None) -> Dict[str, Any]:
    """Read ``puzzle`` (text or a file) as the run's dataset kind and answer it."""
    kind = solver.kind
    if kind == "sudoku":
        return solve_sudoku(solver, parse_sudoku(puzzle_text(puzzle)))
    if kind == "maze":
        size = int(round(np.sqrt(int(solver.config.model.seq_len))))
        return solve_maze(solver, parse_maze(puzzle_text(puzzle), size))
    if kind == "arc":
        return solve_arc(solver, load_arc_task(puzzle, task), num_aug, test_index)
    raise PuzzleError(f"solve knows sudoku, maze and arc; this run's dataset is {kind!r}")


# ============================================================================ command line
def main(argv: Sequence[str]) -> None:
    from absl import flags

    args = list(argv[1:])
    if len(args) != 1:
        print("usage: python -m trm_jax.solve --workdir=RUN PUZZLE (see --help)", file=sys.stderr)
        sys.exit(2)
    from data_pipeline import DataError
    from trm_jax.checkpoint import CheckpointError
    from trm_jax.models.config import ConfigError

    F = flags.FLAGS
    try:
        solver = load_solver(F.workdir, restore_from=F.restore_from, config=F.config, ema=F.ema)
        result = solve(solver, args[0], task=F.task, num_aug=F.num_aug,
                       test_index=None if F.test_index < 0 else F.test_index)
    except (PuzzleError, DataError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    if F.json:
        print(json.dumps({"checkpoint": solver.source, "step": solver.step, **public(result)}))
    else:
        where = solver.source + (f" (step {solver.step})" if solver.step is not None else "")
        print(f"Model: {where}")
        print(render(result, int(solver.config.model.halt_max_steps), use_color()))


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_string("workdir", "", "A trm_jax run: its workdir (latest complete checkpoint), checkpoints/ "
                        "directory, or a checkpoints/<step> or best/<step> directory.")
    flags.DEFINE_string("restore_from", "", "A PyTorch reference checkpoint file (with --config).")
    config_flags.DEFINE_config_file("config", None, "Config file[:variants] of a --restore_from checkpoint.")
    flags.DEFINE_bool("ema", True, "Use the EMA weights when the run kept them (--noema: the raw parameters).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the drawing.")
    flags.DEFINE_string("task", "", "ARC: the task id in a challenges file holding several tasks.")
    flags.DEFINE_integer("test_index", -1, "ARC: only this test input of the task (-1: all).")
    flags.DEFINE_integer("num_aug", 8, "ARC: augmented versions besides the original that vote.")


if __name__ == "__main__":
    from absl import app, logging as absl_logging

    _define_flags()
    absl_logging.set_verbosity(absl_logging.WARNING)
    app.run(main)
