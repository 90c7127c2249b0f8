"""ARC evaluator on hand-made predictions: voting, un-augmenting, tie-breaks, scoring, submission."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipeline import arc
from trm_jax.evaluators.arc import ArcEvaluator, ArcTestSet

ID = arc.Augmentation.identity()
ROT = arc.Augmentation(1, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1))
FLIP = arc.Augmentation(7, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
AUGS = (ID, ROT, FLIP)

G = lambda rows: np.asarray(rows, dtype=np.uint8)  # noqa: E731
# Task "two" has two test inputs, task "one" one; answers in the original frame.
ANSWERS = {"two": [G([[1, 2, 3], [4, 5, 6]]), G([[7, 0], [0, 7], [8, 8]])],
           "one": [G([[3, 3], [0, 1]])]}
WRONG = G([[5]])


def make_columns():
    """A test split as the builder stores it: group = task, puzzles = augmentations, one example
    per test pair, labels = augmented answers."""
    cols = {k: [] for k in ("group_id", "task_id", "test_index", "dihedral", "color_perm", "labels")}
    rows = []  # (task, test index, augmentation) of each example
    for g, (task, answers) in enumerate(ANSWERS.items()):
        for aug in AUGS:
            for k, answer in enumerate(answers):
                cols["group_id"].append(g)
                cols["task_id"].append(task)
                cols["test_index"].append(k)
                cols["dihedral"].append(aug.dihedral)
                cols["color_perm"].append(aug.color_array)
                cols["labels"].append(arc.encode_grid(aug.apply(answer)).ravel())
                rows.append((task, k, aug))
    return {k: np.asarray(v) for k, v in cols.items()}, rows


@pytest.fixture
def setup():
    columns, rows = make_columns()
    return ArcEvaluator(ArcTestSet.from_columns(columns)), rows


def predict(evaluator, rows, answer_of, q_of=lambda i: 0.0, batch=4):
    """Feed predictions in batches: ``answer_of(task, k, aug, i)`` -> original-frame grid or None
    (a prediction without a grid)."""
    preds, qs = [], []
    for i, (task, k, aug) in enumerate(rows):
        grid = answer_of(task, k, aug, i)
        preds.append(np.zeros(900, np.int32) if grid is None
                     else arc.encode_grid(aug.apply(grid)).ravel().astype(np.int32))
        qs.append(q_of(i))
    for s in range(0, len(rows), batch):
        idx = np.arange(s, min(s + batch, len(rows)))
        evaluator.update({"example_index": idx}, np.stack(preds)[idx], np.asarray(qs, np.float32)[idx])


def test_test_set_reads_truths_in_original_frame(setup):
    ev, _ = setup
    ts = ev.test_set
    assert list(ts.tasks) == ["two", "one"] and [len(v) for v in ts.tasks.values()] == [2, 1]
    for task, pair_ids in ts.tasks.items():
        for k, p in enumerate(pair_ids):
            assert ts.pairs[p] == (task, k)
            np.testing.assert_array_equal(ts.truths[p], ANSWERS[task][k])


def test_all_right_under_every_augmentation(setup, tmp_path):
    ev, rows = setup
    predict(ev, rows, lambda t, k, a, i: ANSWERS[t][k])
    scores = ev.result(str(tmp_path))
    assert scores["ARC/pass@1"] == scores["ARC/pass@2"] == scores["ARC/pass@1000"] == 1.0
    # the same answer under three augmentations merges into one candidate with three votes
    assert [len(v) for v in ev.votes] == [1, 1, 1]
    assert all(c.count == 3 for v in ev.votes for c in v.values())


def test_task_counts_only_when_every_test_output_is_right(setup):
    ev, rows = setup
    # "two": first test output right, second wrong; "one": right.
    predict(ev, rows, lambda t, k, a, i: WRONG if (t, k) == ("two", 1) else ANSWERS[t][k])
    scores = ev.result("")
    assert scores["ARC/pass@2"] == 0.5 and scores["ARC/pass@1"] == 0.5
    assert scores["ARC/partial_pass@2"] == pytest.approx((0.5 + 1.0) / 2)


def test_pass_at_2_uses_the_second_attempt(setup):
    ev, rows = setup
    # Every pair: the wrong grid twice (ID, ROT) and the right one once (FLIP).
    predict(ev, rows, lambda t, k, a, i: ANSWERS[t][k] if a is FLIP else WRONG)
    scores = ev.result("")
    assert scores["ARC/pass@1"] == 0.0 and scores["ARC/pass@2"] == 1.0


def test_votes_beat_confidence_and_ties_go_to_higher_q_halt(setup, tmp_path):
    ev, rows = setup
    other = G([[9, 9]])

    def answer(t, k, a, i):
        if t == "one":  # 1 vote each for right/other/wrong; the right one has the top q_halt
            return {ID: other, ROT: ANSWERS[t][k], FLIP: WRONG}[a]
        return WRONG if a is ID else ANSWERS[t][k]  # 2 votes right, 1 vote wrong

    q = lambda i: 10.0 if rows[i][2] is ROT else (50.0 if rows[i][2] is ID else -3.0)  # noqa: E731
    predict(ev, rows, answer, q)
    scores = ev.result(str(tmp_path))
    assert scores["ARC/pass@1"] == 0.5 and scores["ARC/pass@2"] == 1.0
    sub = json.loads((tmp_path / "submission.json").read_text())
    # "two": two votes beat one vote with a far higher q_halt.
    assert [e["attempt_1"] for e in sub["two"]] == [a.tolist() for a in ANSWERS["two"]]
    # "one": ROT's answer (q 10) and ID's (q 50) tie on votes; the higher mean sigmoid(q) wins.
    assert sub["one"][0]["attempt_1"] == G([[9, 9]]).tolist()
    assert sub["one"][0]["attempt_2"] == ANSWERS["one"][0].tolist()


def test_tie_break_decides_pass_at_1(setup):
    ev, rows = setup
    # "one": right answer once (q low) vs wrong once (q high) and once more wrong elsewhere
    predict(ev, rows, lambda t, k, a, i: ANSWERS[t][k] if a is ID else (WRONG if a is ROT else None),
            q_of=lambda i: -5.0 if rows[i][2] is ID else 5.0)
    scores = ev.result("")
    assert scores["ARC/pass@1"] == 0.0 and scores["ARC/pass@2"] == 1.0
    assert scores["ARC/valid_fraction"] == pytest.approx(2 / 3)


def test_submission_has_kaggle_structure(setup, tmp_path):
    ev, rows = setup
    # Only task "two" gets predictions, and only under the identity; "one" gets none.
    predict(ev, rows, lambda t, k, a, i: ANSWERS[t][k] if (t == "two" and a is ID) else None)
    scores = ev.result(str(tmp_path))
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert set(sub) == {"two", "one"}
    assert [len(sub["two"]), len(sub["one"])] == [2, 1]
    for entries in sub.values():
        for entry in entries:
            assert set(entry) == {"attempt_1", "attempt_2"}
            for grid in entry.values():
                assert isinstance(grid, list) and all(isinstance(r, list) for r in grid)
                assert all(isinstance(x, int) and 0 <= x <= 9 for r in grid for x in r)
    assert sub["two"][1]["attempt_1"] == sub["two"][1]["attempt_2"] == ANSWERS["two"][1].tolist()
    assert sub["one"][0] == {"attempt_1": [[0]], "attempt_2": [[0]]}
    assert scores["ARC/pass@2"] == 0.5


def test_begin_forgets_earlier_predictions(setup):
    ev, rows = setup
    predict(ev, rows, lambda t, k, a, i: ANSWERS[t][k])
    ev.begin()
    predict(ev, rows, lambda t, k, a, i: WRONG)
    assert ev.result("")["ARC/pass@1000"] == 0.0
