"""Grain pipelines: reference sampling, determinism, process shards, exact resume, eval padding."""
from __future__ import annotations

import json

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline.common import IGNORE_LABEL_ID, PuzzleDatasetMetadata
from data_pipeline.loader import eval_dataset, train_dataset
from data_pipeline.sampling import iteration_batches


def synthetic_source(groups: list[list[int]], set_of_group: list[int] | None = None,
                     num_sets: int = 1) -> dp.PuzzleSource:
    """groups[g] = sizes of the puzzles of group g. inputs[:, 0] is the example index, so a batch
    tells which examples it holds; labels hold some 0s (the ignore id on disk)."""
    set_of_group = set_of_group or [0] * len(groups)
    rows = []
    puzzle = 0
    for g, sizes in enumerate(groups):
        for size in sizes:
            for _ in range(size):
                rows.append((g, puzzle, set_of_group[g]))
            puzzle += 1
    n = len(rows)
    group_id, puzzle_index, set_index = (np.array(c, dtype=np.int32) for c in zip(*rows))
    inputs = np.stack([np.arange(n), group_id, puzzle_index, np.ones(n)], axis=1).astype(np.int32)
    labels = np.stack([np.arange(n) % 3, np.zeros(n), np.full(n, 5), puzzle_index], axis=1).astype(np.int32)
    meta = PuzzleDatasetMetadata(seq_len=4, vocab_size=1 << 20, pad_id=0, ignore_label_id=0,
                                 blank_identifier_id=0, num_puzzle_identifiers=8,
                                 total_groups=len(groups), mean_puzzle_examples=n / puzzle,
                                 total_puzzles=puzzle, sets=tuple(f"s{i}" for i in range(num_sets)),
                                 num_examples=n)
    columns = {"inputs": inputs, "labels": labels, "puzzle_identifier": puzzle_index % 7 + 1,
               "group_id": group_id, "puzzle_index": puzzle_index, "set_index": set_index}
    return dp.PuzzleSource(columns, meta)


def batches(dataset, count: int) -> list[dict]:
    it = iter(dataset.to_iter_dataset())
    return [next(it) for _ in range(count)]


VARIED = [[3, 1], [2], [5, 2, 4], [1, 1, 1], [4], [2, 6], [3], [1, 2], [7], [2, 2]]


# ----------------------------------------------------------------------------- sampling semantics
def test_iteration_follows_the_reference_packing():
    source = synthetic_source(VARIED)
    index = source.index
    seed, batch = 3, 6
    for iteration in (1, 2):
        plan = iteration_batches(index, 0, seed, iteration, batch, epochs_per_iter=1)
        assert plan.shape[1] == batch and len(plan) >= 1
        group_of = source.columns["group_id"]
        puzzle_of = source.columns["puzzle_index"]
        # Split every batch into runs of one group each (a group is visited once per epoch).
        visited = []
        for row in plan:
            runs = np.split(row, np.flatnonzero(np.diff(group_of[row])) + 1)
            for k, run in enumerate(runs):
                groups = set(group_of[run].tolist())
                puzzles = set(puzzle_of[run].tolist())
                assert len(groups) == 1 and len(puzzles) == 1  # one puzzle of one group
                assert len(set(run.tolist())) == len(run)       # distinct examples
                p = puzzles.pop()
                size = index.puzzle_indices[p + 1] - index.puzzle_indices[p]
                if k < len(runs) - 1:
                    assert len(run) == size                     # whole puzzle ...
                else:
                    assert len(run) <= size                     # ... except the cut last one
                visited.append(groups.pop())
        # Groups come in the order of the reference's seeded permutation.
        order = np.random.Generator(np.random.Philox(seed + iteration)).permutation(len(VARIED))
        assert visited == order[: len(visited)].tolist()
        # The dropped remainder could not have filled another batch.
        rest = order[len(visited):]
        smallest = [min(VARIED[g]) for g in rest]
        assert sum(smallest) < batch


def test_every_puzzle_of_a_group_gets_sampled():
    source = synthetic_source([[1, 1, 1, 1]] * 4)
    schedule = dp.TrainSchedule(source.index, seed=0, global_batch_size=4)
    seen = {int(source.columns["puzzle_index"][i]) for k in range(40) for i in schedule[k]}
    assert seen == set(range(16))


def test_sets_alternate_by_iteration():
    source = synthetic_source([[1]] * 6 + [[2]] * 4, set_of_group=[0] * 6 + [1] * 4, num_sets=2)
    index = source.index
    assert index.set_groups.tolist() == [0, 6, 10] and index.set_examples.tolist() == [0, 6, 14]
    for iteration, expected_set in ((1, 0), (2, 1), (3, 0)):
        plan = iteration_batches(index, (iteration - 1) % 2, 0, iteration, 2)
        assert set(source.columns["set_index"][plan.reshape(-1)].tolist()) == {expected_set}


def test_epochs_per_iter_concatenates_permutations():
    source = synthetic_source([[1]] * 5)
    plan = iteration_batches(source.index, 0, 9, 1, 5, epochs_per_iter=3)
    assert plan.shape == (3, 5)
    rng = np.random.Generator(np.random.Philox(9 + 1))
    expected = np.concatenate([rng.permutation(5) for _ in range(3)])
    np.testing.assert_array_equal(plan.reshape(-1), expected)


def test_batch_larger_than_an_iteration_raises():
    source = synthetic_source([[1]] * 3)
    with pytest.raises(ValueError, match="epochs_per_iter"):
        batches(train_dataset(source, global_batch_size=8, epochs_per_iter=1, process_index=0,
                              process_count=1), 1)


def test_default_epochs_per_iter_fills_a_batch():
    source = synthetic_source([[1]] * 3 + [[2, 3]])  # one iteration supplies >= 5 examples
    assert dp.TrainSchedule(source.index, 0, 8).epochs_per_iter == 2
    assert dp.TrainSchedule(source.index, 0, 8, epochs_per_iter=7).epochs_per_iter == 7
    out = batches(train_dataset(source, global_batch_size=8, process_index=0, process_count=1), 5)
    assert all(b["inputs"].shape == (8, 4) for b in out)


# ----------------------------------------------------------------------------- Grain pipeline
def test_same_seed_same_batches():
    source = synthetic_source(VARIED)
    kwargs = dict(global_batch_size=6, epochs_per_iter=2, process_index=0, process_count=1)
    a = batches(train_dataset(source, seed=1, **kwargs), 12)
    b = batches(train_dataset(source, seed=1, **kwargs), 12)
    c = batches(train_dataset(source, seed=2, **kwargs), 12)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


def test_batches_have_the_model_schema():
    source = synthetic_source(VARIED)
    (batch,) = batches(train_dataset(source, global_batch_size=6, process_index=0, process_count=1), 1)
    assert set(batch) == {"inputs", "labels", "puzzle_identifiers"}
    assert batch["inputs"].shape == (6, 4) and batch["labels"].shape == (6, 4)
    assert batch["puzzle_identifiers"].shape == (6,)
    assert all(v.dtype == np.int32 for v in batch.values())
    assert np.all(batch["labels"][:, 1] == IGNORE_LABEL_ID)  # stored 0 = ignore id
    np.testing.assert_array_equal(batch["puzzle_identifiers"], batch["inputs"][:, 2] % 7 + 1)


def test_two_processes_split_the_global_batch():
    source = synthetic_source(VARIED)
    kwargs = dict(global_batch_size=8, seed=4, epochs_per_iter=3)
    whole = batches(train_dataset(source, process_index=0, process_count=1, **kwargs), 10)
    halves = [batches(train_dataset(source, process_index=r, process_count=2, **kwargs), 10)
              for r in range(2)]
    for k in range(10):
        first, second = halves[0][k], halves[1][k]
        assert first["inputs"].shape == (4, 4) and second["inputs"].shape == (4, 4)
        for key in whole[k]:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[k][key])
    # Within one iteration a group is visited once, so the shards hold different examples.
    single = batches(train_dataset(source, process_index=0, process_count=1, global_batch_size=8,
                                   seed=4), 1)[0]
    parts = [batches(train_dataset(source, process_index=r, process_count=2, global_batch_size=8,
                                   seed=4), 1)[0] for r in range(2)]
    ids = [set(p["inputs"][:, 0].tolist()) for p in parts]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(single["inputs"][:, 0].tolist())


def test_process_defaults_come_from_jax():
    import jax
    assert dp.process_slice(8, None, None) == (jax.process_index(), 8 // jax.process_count())
    assert dp.process_slice(8, 1, 2) == (1, 4)
    with pytest.raises(ValueError, match="process_index"):
        dp.process_slice(8, 2, 2)


def test_schedule_survives_pickling():
    import pickle
    schedule = dp.TrainSchedule(synthetic_source(VARIED).index, seed=2, global_batch_size=4)
    copy = pickle.loads(pickle.dumps(schedule))
    np.testing.assert_array_equal(copy[7], schedule[7])


def test_indivisible_batch_raises():
    source = synthetic_source(VARIED)
    with pytest.raises(ValueError, match="multiple of the process count"):
        train_dataset(source, global_batch_size=10, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="multiple of the process count"):
        eval_dataset(source, global_batch_size=10, process_index=1, process_count=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("loader_data"))
    options = {"size": 10, "num_train": 20, "num_test": 13, "aug": True, "min_path_length": 6}
    dp.ensure_built("maze", data_dir, options, num_workers=1)
    return data_dir, options


def test_resume_mid_epoch_gives_the_next_batches(built):
    data_dir, options = built
    kwargs = dict(global_batch_size=16, seed=5, epochs_per_iter=1, process_index=1, process_count=2)
    it = dp.train_iterator("maze", data_dir, options, **kwargs)
    for _ in range(13):  # 20 groups / 16 = 1 batch per iteration: crosses iterations too
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(4)]
    fresh = dp.train_iterator("maze", data_dir, options, **kwargs)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert expected[0]["inputs"].shape == (8, 100)


def test_resume_inside_a_long_iteration(built):
    data_dir, options = built
    kwargs = dict(global_batch_size=8, seed=0, epochs_per_iter=4, process_index=0, process_count=1)
    it = dp.train_iterator("maze", data_dir, options, **kwargs)
    for _ in range(5):  # iteration 1 has 80 / 8 = 10 batches: stop in its middle
        next(it)
    state = it.get_state()
    want = next(it)
    fresh = dp.train_iterator("maze", data_dir, options, **kwargs)
    fresh.set_state(state)
    got = next(fresh)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])


def test_eval_visits_every_example_once_and_pads(built):
    data_dir, options = built
    source = dp.load("maze", "test", data_dir, **options)
    meta = source.metadata
    n = len(source)
    assert n == 13
    seen = []
    for count in (1, 2):
        per_process = [list(dp.eval_iterator("maze", data_dir, options, global_batch_size=8,
                                             process_index=r, process_count=count))
                       for r in range(count)]
        assert len({len(b) for b in per_process}) == 1  # same number of batches everywhere
        ids = []
        for rank_batches in per_process:
            for batch in rank_batches:
                assert batch["inputs"].shape == (8 // count, 100)
                real = batch["mask"]
                ids.extend(batch["example_index"][real].tolist())
                np.testing.assert_array_equal(batch["inputs"][real],
                                              source.gather(batch["example_index"][real])["inputs"])
                assert np.all(batch["inputs"][~real] == meta.pad_id)
                assert np.all(batch["labels"][~real] == IGNORE_LABEL_ID)
                assert np.all(batch["puzzle_identifiers"][~real] == meta.blank_identifier_id)
                assert np.all(batch["example_index"][~real] == -1)
        assert sorted(ids) == list(range(n))
        seen.append(per_process)
    single = seen[0][0]
    assert [int(b["mask"].sum()) for b in single] == [8, 5]
    assert single[0]["example_index"].tolist() == list(range(8))


def test_eval_batches_never_mix_sets():
    source = synthetic_source([[1]] * 5 + [[2]] * 2, set_of_group=[0] * 5 + [1] * 2, num_sets=2)
    ds = eval_dataset(source, global_batch_size=4, process_index=0, process_count=1)
    out = [ds[k] for k in range(len(ds))]
    assert [b["example_index"][b["mask"]].tolist() for b in out] == [[0, 1, 2, 3], [4], [5, 6, 7, 8]]
