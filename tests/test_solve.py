"""load_checkpoint, python -m trm_jax.solve, the rule checks, ARC voting, and predictions.jsonl."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.arc import Augmentation, encode_grid
from tests.conftest import REPO, micro_config
from trm_jax import optim
from trm_jax.checkpoint import CheckpointError
from trm_jax.evaluators import boards
from trm_jax.evaluators.arc import vote
from trm_jax.metrics_logger import read_metrics
import trm_jax
from trm_jax import solve as solve_lib

# A valid solution (hand-checked) and a puzzle of it with 30 givens.
SOLUTION = ("534678912672195348198342567859761423426853791713924856961537284287419635345286179")
PUZZLE = ("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79")


def _digits(text):
    """An 81-character board -> digits; ``.`` (blank) and ``?`` (a predicted pad token) are 0."""
    return np.asarray([int(c) if c.isdigit() else 0 for c in text])


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A micro Sudoku run with EMA, evaluated at its last step: (workdir, config, eval metrics)."""
    from trm_jax.train import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("solve_run"))
    config = micro_config(data_dir, max_steps=4, checkpoint_interval=2, ema=True, ema_rate=0.5)
    metrics = train_and_evaluate(config, workdir)
    return workdir, config, metrics


@pytest.fixture(scope="module")
def ckpt(data_dir, tmp_path_factory):
    """A checkpoint written without training: a fresh micro state whose EMA differs from its
    parameters, saved by the trainer's Checkpointer at step 7 (and step 3 with other weights)."""
    import optax
    from trm_jax.checkpoint import Checkpointer
    from trm_jax.train_state import create_train_state

    workdir = str(tmp_path_factory.mktemp("ckpt"))
    config = micro_config(data_dir, ema=True)
    config.model.update(dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1))  # as resolve_config does
    state = create_train_state(trm_jax.TRMConfig.from_any(config.model), optax.sgd(0.1), 4, 0, True)
    state = state.replace(ema_params=jax.tree.map(lambda x: 0.5 * x + 0.01, state.ema_params))
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    other = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
    checkpointer.save(3, other, {}, config.to_dict())
    checkpointer.save(7, state, {}, config.to_dict())
    checkpointer.wait()
    checkpointer.close()
    return {"workdir": workdir, "config": config, "state": state, "other": other}


# --------------------------------------------------------------------------------- load_checkpoint
def test_load_checkpoint_returns_the_saved_state(ckpt):
    workdir, state = ckpt["workdir"], ckpt["state"]
    cfg, variables, info = trm_jax.load_checkpoint(workdir, return_info=True)
    assert (info.step, info.ema, info.family) == (7, True, "trm")
    assert info.path == os.path.join(workdir, "checkpoints", "7")
    assert cfg.to_dict() == ckpt["config"].to_dict()
    # EMA weights, with the trained (never averaged) puzzle table, as evaluation uses them.
    _same(variables, {"params": optim.eval_params(state.ema_params, state.params), "buffers": state.buffers})
    assert not np.array_equal(np.asarray(variables["params"]["inner"]["lm_head"]["kernel"]),
                              np.asarray(state.params["inner"]["lm_head"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(variables["params"]["inner"]["puzzle_emb"]["embedding"]),
                                  np.asarray(state.params["inner"]["puzzle_emb"]["embedding"]))
    _, raw, raw_info = trm_jax.load_checkpoint(os.path.join(workdir, "checkpoints"), ema=False, return_info=True)
    assert not raw_info.ema
    _same(raw, {"params": state.params, "buffers": state.buffers})
    _, older, older_info = trm_jax.load_checkpoint(os.path.join(workdir, "checkpoints", "3"), ema=False,
                                                   return_info=True)
    assert older_info.step == 3
    _same(older["params"], ckpt["other"].params)
    model = trm_jax.build_model(cfg.model)  # ready for apply
    batch = trm_jax.dummy_batch(cfg.model, 2)
    _, out = model.apply(variables, trm_jax.initial_carry(cfg.model, batch), batch, train=False)
    assert out["logits"].shape == (2, 81, 11)


def test_solve_sudoku_in_process(ckpt):
    """The fields --json prints, consistent with the checker and the per-step Q-values."""
    solver = solve_lib.load_solver(ckpt["workdir"])
    out = solve_lib.public(solve_lib.solve(solver, PUZZLE))
    json.dumps(out)  # machine-readable as it is
    assert out["kind"] == "sudoku" and out["input"] == PUZZLE and len(out["prediction"]) == 81
    check = boards.check_sudoku(_digits(PUZZLE), _digits(out["prediction"]))
    assert (out["valid"], out["solved"]) == (check.valid, check.solved)
    assert len(out["q_halt_per_step"]) == 3 and out["q_halt"] == out["q_halt_per_step"][-1]
    first = next((i + 1 for i, q in enumerate(out["q_halt_per_step"]) if q > 0.5), None)
    assert out["steps"] == first
    text = solve_lib.render(solve_lib.solve(solver, PUZZLE), 3, color=False)
    assert "------+-------+------" in text and "5 3 . | . 7 . | . . ." in text and "\x1b[" not in text


def test_predictions_jsonl_rows_match_evaluate(ckpt, tmp_path):
    """Evaluation of the test split: exact rows / rows == eval/exact_accuracy, one row per example."""
    import data_pipeline as dp
    from trm_jax import sharding
    from trm_jax.evaluation import evaluate
    from trm_jax.evaluators import make_evaluators
    from trm_jax.steps import make_eval_batch

    solver = solve_lib.load_solver(ckpt["workdir"])
    # An untrained model solves few puzzles (exact rows are covered by the evaluator-only test
    # below); here the rows must be the evaluation's own: count, order, exact share, predictions.
    source = dp.load("sudoku", "test", ckpt["config"].data.data_dir, preset="tiny")
    mesh = sharding.create_mesh(1, 1, jax.devices()[:1])
    model = trm_jax.build_model(solver.config.model)
    evaluators = make_evaluators("sudoku", None, {})
    metrics = evaluate(jax.jit(make_eval_batch(model)), solver.params, solver.buffers,
                       dp.eval_dataset(source, global_batch_size=16), mesh, evaluators,
                       output_dir=str(tmp_path), show_progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "sudoku" / "predictions.jsonl")]
    assert len(rows) == metrics["eval/count"] == len(source)
    assert [r["index"] for r in rows] == list(range(len(source)))
    assert sum(r["exact"] for r in rows) / len(rows) == pytest.approx(metrics["eval/exact_accuracy"], abs=1e-9)
    assert sum(r["valid"] for r in rows) / len(rows) == pytest.approx(metrics["eval/sudoku/valid_fraction"])
    for r in rows[:10]:  # each row is its test example; ``exact`` recomputed from the strings
        assert r["input"] == boards.sudoku_text(source.columns["inputs"][r["index"]])
        assert r["label"] == boards.sudoku_text(source.columns["labels"][r["index"]])
        assert r["exact"] == (r["prediction"] == r["label"])
    trace = solver.run(source.gather(np.arange(4)))  # the same examples through solve's path
    assert [boards.sudoku_text(p) for p in trace.preds] == [r["prediction"] for r in rows[:4]]


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


@pytest.mark.slow
def test_load_checkpoint_gives_the_trainers_ema_and_raw_weights(run):
    from trm_jax.train import Trainer

    workdir, config, _ = run
    trainer = Trainer(config, workdir)
    try:
        assert trainer.restore_latest() == 4
        ema_params, buffers = trainer.eval_variables()  # what evaluation uses
        raw_params = trainer.state.params
    finally:
        trainer.close()
    cfg, variables, info = trm_jax.load_checkpoint(workdir, return_info=True)
    assert (info.step, info.ema, info.family) == (4, True, "trm")
    assert info.path == os.path.join(workdir, "checkpoints", "4")
    assert cfg.model.seq_len == 81 and cfg.model.vocab_size == 11 and cfg.data.name == "sudoku"
    _same(variables, {"params": ema_params, "buffers": buffers})
    _, raw = trm_jax.load_checkpoint(workdir, ema=False)
    _same(raw, {"params": raw_params, "buffers": buffers})
    # ema_rate 0.5 after 4 steps: the EMA really differs from the parameters (else the test proves nothing).
    assert not np.array_equal(np.asarray(variables["params"]["inner"]["lm_head"]["kernel"]),
                              np.asarray(raw["params"]["inner"]["lm_head"]["kernel"]))
    # A step directory and the checkpoints directory name the same weights; an older step its own.
    _same(trm_jax.load_checkpoint(os.path.join(workdir, "checkpoints"))[1], variables)
    _, older, info2 = trm_jax.load_checkpoint(os.path.join(workdir, "checkpoints", "2"), return_info=True)
    assert info2.step == 2
    model = trm_jax.build_model(cfg.model)  # ready for apply
    batch = trm_jax.dummy_batch(cfg.model, 2)
    _, out = model.apply(older, trm_jax.initial_carry(cfg.model, batch), batch, train=False)
    assert out["logits"].shape == (2, 81, 11)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trm_jax.load_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a trm_jax checkpoint"):
        trm_jax.load_checkpoint(str(tmp_path / "empty"))
    interrupted = tmp_path / "interrupted" / "checkpoints"
    (interrupted / "8.orbax-checkpoint-tmp-1234").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        trm_jax.load_checkpoint(str(tmp_path / "interrupted"))
    (tmp_path / "other" / "5").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no state/ item"):
        trm_jax.load_checkpoint(str(tmp_path / "other" / "5"))
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="from_torch"):
        trm_jax.load_checkpoint(str(f))


def test_act_trace_equals_step_by_step_model_calls(ckpt):
    """solve's trace (the evaluation function with its per-step record) matches calling the model
    step by step: the last step's predictions, and every step's halting logit."""
    from trm_jax.families import get_family

    solver = solve_lib.load_solver(ckpt["workdir"])
    family = get_family("trm")
    model = family.build_model(family.config_cls.from_any(solver.config.model))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(1, 11, (3, 81)).astype(np.int32),
             "labels": rng.integers(2, 11, (3, 81)).astype(np.int32),
             "puzzle_identifiers": np.zeros(3, np.int32)}
    variables = {"params": solver.params, "buffers": solver.buffers}
    carry, q_steps = trm_jax.initial_carry(model.config, batch), []
    for _ in range(model.config.halt_max_steps):
        carry, out = model.apply(variables, carry, batch, train=False)
        q_steps.append(np.asarray(out["q_halt_logits"]))
    trace = solver.run(batch)
    np.testing.assert_array_equal(trace.preds, np.asarray(jnp.argmax(out["logits"], -1)))
    assert trace.q_halt_per_step.shape == (3, 3)
    np.testing.assert_allclose(trace.q_halt_per_step, np.stack(q_steps, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(trace.q_halt, q_steps[-1], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ checks
def test_sudoku_check_on_hand_made_grids():
    puzzle, solution = _digits(PUZZLE), _digits(SOLUTION)
    assert boards.check_sudoku(puzzle, solution).solved
    swapped = solution.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # 5 and 3 swapped in row 1: columns 1 and 2 now repeat digits
    check = boards.check_sudoku(puzzle, swapped)
    assert not check.valid and not check.givens_kept
    # A valid grid that is another solution: relabel digits 1 <-> 2 everywhere; the givens change.
    relabelled = np.where(solution == 1, 2, np.where(solution == 2, 1, solution))
    check = boards.check_sudoku(puzzle, relabelled)
    assert check.valid and not check.givens_kept and not check.solved
    blanks = solution.copy()
    blanks[40] = 0
    assert not boards.check_sudoku(puzzle, blanks).valid


MAZE = ["#######",
        "#S    #",
        "# ### #",
        "#   #G#",
        "#######"]


def _board(rows):
    return np.frombuffer("".join(rows).encode(), np.uint8).reshape(len(rows), -1)


def test_maze_check_on_a_hand_made_maze():
    q = _board(MAZE)
    shortest = _board(["#######", "#Soooo#", "# ### #", "#   #G#", "#######"])[:]  # S..(1,5) then down
    shortest = shortest.copy()
    shortest[2, 5] = ord("o")
    assert boards.check_maze(q, shortest) == boards.MazeCheck(True, True, True)
    broken = shortest.copy()
    broken[1, 3] = ord(" ")
    assert not boards.check_maze(q, broken).connected
    detour = shortest.copy()
    detour[2, 1] = detour[3, 1] = ord("o")  # connected, with extra path cells
    check = boards.check_maze(q, detour)
    assert check.connected and not check.shortest and check.kept
    through_wall = _board(["#######", "#S    #", "#o### #", "#ooooG#", "#######"])
    assert not boards.check_maze(q, through_wall).kept  # (3, 4) is a wall


# --------------------------------------------------------------------------------------- ARC voting
def test_arc_vote_uncrops_unaugments_and_breaks_ties_by_q():
    truth = np.array([[1, 2, 0], [3, 4, 5]], np.uint8)
    other = np.array([[7]], np.uint8)
    augs = [Augmentation.identity(), Augmentation(1, (0, 2, 1, 4, 3, 6, 5, 8, 7, 9)), Augmentation(6, tuple(range(10))),
            Augmentation(2, tuple(range(10)))]
    preds = [encode_grid(a.apply(truth)).ravel() for a in augs[:2]] + [encode_grid(other).ravel(),
                                                                        np.zeros(900, np.int64)]  # no grid
    ranked = vote(np.stack(preds), np.array([0.0, 2.0, 5.0, 9.0]), augs)
    assert len(ranked) == 2
    np.testing.assert_array_equal(ranked[0].grid, truth)  # two votes beat one confident vote
    assert ranked[0].count == 2 and abs(ranked[0].q_mean - (0.5 + 1 / (1 + np.exp(-2.0))) / 2) < 1e-12
    # Tie (one vote each): the higher sigmoid(q_halt) wins.
    tied = vote(np.stack([preds[0], preds[2]]), np.array([-1.0, 1.0]), [augs[0], augs[0]])
    np.testing.assert_array_equal(tied[0].grid, other)


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, message", [
    (PUZZLE[:80], "expected 81 cells"),
    (PUZZLE[:40] + "x" + PUZZLE[41:], "bad character 'x' at position 41"),
    ("55" + PUZZLE[2:], "digit 5 appears twice in row 1"),
])
def test_sudoku_parse_errors(text, message):
    with pytest.raises(solve_lib.PuzzleError, match=message):
        solve_lib.parse_sudoku(text)


def test_sudoku_parse_accepts_dots_zeros_and_layout():
    drawn = "\n".join(PUZZLE.replace(".", "0")[i:i + 9] for i in range(0, 81, 9))
    np.testing.assert_array_equal(solve_lib.parse_sudoku(drawn), _digits(PUZZLE))


def test_maze_parse_errors():
    np.testing.assert_array_equal(solve_lib.parse_maze("\n".join(MAZE) + "\n"), _board(MAZE))
    with pytest.raises(solve_lib.PuzzleError, match="ragged rows: row 2 has 6"):
        solve_lib.parse_maze("\n".join([MAZE[0], MAZE[1][:6]] + MAZE[2:]))
    with pytest.raises(solve_lib.PuzzleError, match=r"row 2, column 3: 'x'"):
        solve_lib.parse_maze("\n".join([MAZE[0], "#Sx   #"] + MAZE[2:]))
    with pytest.raises(solve_lib.PuzzleError, match="expected one G"):
        solve_lib.parse_maze("\n".join(MAZE).replace("G", " "))
    with pytest.raises(solve_lib.PuzzleError, match="solves 30x30 mazes; this one is 5x7"):
        solve_lib.parse_maze("\n".join(MAZE), size=30)


def test_arc_task_files(tmp_path):
    from data_pipeline import DataError

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        solve_lib.load_arc_task(str(bad))
    task = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3, 4]]}]}
    challenges = tmp_path / "x_eval_challenges.json"
    challenges.write_text(json.dumps({"aaa": task, "bbb": task}))
    (tmp_path / "x_eval_solutions.json").write_text(json.dumps({"aaa": [[[4, 3]]], "bbb": [[[9, 9]]]}))
    with pytest.raises(solve_lib.PuzzleError, match="holds 2 tasks; pick one with --task"):
        solve_lib.load_arc_task(str(challenges))
    puzzle = solve_lib.load_arc_task(str(challenges), "bbb")
    np.testing.assert_array_equal(puzzle.test_outputs[0], [[9, 9]])
    ragged = dict(task, test=[{"input": [[1, 2], [3]]}])
    single = tmp_path / "ragged.json"
    single.write_text(json.dumps(ragged))
    with pytest.raises(DataError, match="ragged grid"):
        solve_lib.load_arc_task(str(single))


# ------------------------------------------------------------------------------------- the command
def _solve_cmd(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "trm_jax.solve", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_solve_json_and_drawing(run):
    workdir, _, _ = run
    proc = _solve_cmd(f"--workdir={workdir}", "--json", PUZZLE)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kind"] == "sudoku" and out["step"] == 4 and out["input"] == PUZZLE
    assert len(out["prediction"]) == 81 and len(out["q_halt_per_step"]) == 3
    # The reported verdict is the checker's on the reported grid.
    check = boards.check_sudoku(_digits(PUZZLE), _digits(out["prediction"]))
    assert (out["valid"], out["solved"]) == (check.valid, check.solved)
    first = next((i + 1 for i, q in enumerate(out["q_halt_per_step"]) if q > 0.5), None)
    assert out["steps"] == first and out["q_halt"] == out["q_halt_per_step"][-1]
    # Drawing: the 9x9 grid with box separators, no colour codes when NO_COLOR is set.
    solver = solve_lib.load_solver(workdir)
    result = solve_lib.solve(solver, PUZZLE)
    text = solve_lib.render(result, 3, color=False)
    assert "------+-------+------" in text and "5 3 . | . 7 . | . . ." in text and "\x1b[" not in text
    assert "\x1b[36m" in solve_lib.render(result, 3, color=True) or result["solved"] is not None


@pytest.mark.slow
def test_solve_malformed_puzzle_exits_with_one_line(run):
    workdir, _, _ = run
    proc = _solve_cmd(f"--workdir={workdir}", PUZZLE[:79])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: Sudoku: expected 81 cells (9 rows of 9), got 79"]
    proc = _solve_cmd(f"--workdir={os.path.join(workdir, 'missing')}", PUZZLE)
    assert proc.returncode == 1 and "does not exist" in proc.stderr


# ------------------------------------------------------------------------------ predictions.jsonl
@pytest.mark.slow
def test_predictions_jsonl_matches_the_eval_metrics(run):
    workdir, _, metrics = run
    path = os.path.join(workdir, "eval", "4", "sudoku", "predictions.jsonl")
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == metrics["eval/count"] == 100
    assert [r["index"] for r in rows] == list(range(100))
    assert sum(r["exact"] for r in rows) / len(rows) == pytest.approx(metrics["eval/exact_accuracy"], abs=1e-9)
    assert sum(r["valid"] for r in rows) / len(rows) == pytest.approx(metrics["eval/sudoku/valid_fraction"])
    logged = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval/exact_accuracy" in r][-1]
    assert logged["eval/exact_accuracy"] == metrics["eval/exact_accuracy"]
    import data_pipeline as dp
    source = dp.load("sudoku", "test", metrics_data_dir(run), preset="tiny")
    for r in rows[:10]:  # each row is its test example; ``exact`` recomputed from the strings
        assert r["input"] == boards.sudoku_text(source.columns["inputs"][r["index"]])
        assert r["label"] == boards.sudoku_text(source.columns["labels"][r["index"]])
        assert r["exact"] == (r["prediction"] == r["label"])
        assert r["valid"] == boards.check_sudoku(_digits(r["input"]), _digits(r["prediction"])).solved


def metrics_data_dir(run):
    return run[1].data.data_dir


def test_board_predictions_rows_without_a_run():
    """The evaluator alone: padding-free rows in example order, exactness per the eval metric."""
    ev = boards.BoardPredictions("maze")
    q = _board(MAZE)
    from data_pipeline.maze import CHAR_TO_TOKEN
    size = 7
    square = np.full((size, size), ord("#"), np.uint8)
    square[:5] = q
    tokens = CHAR_TO_TOKEN[square].reshape(1, -1).astype(np.int32)
    labels = tokens.copy()
    labels[0, 0] = -100  # an unlabelled cell does not count
    pred = tokens.copy()
    pred[0, 0] = 5
    ev.update({"inputs": np.repeat(tokens, 2, 0), "labels": np.repeat(labels, 2, 0),
               "example_index": np.array([1, 0])}, np.concatenate([pred, tokens + (tokens == 2)]), np.zeros(2))
    rows = ev.rows()
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[1]["exact"] and not rows[0]["exact"]
    assert rows[1]["input"][:5] == MAZE and not rows[1]["valid"]  # an "o" on a wall, and no route from S to G
