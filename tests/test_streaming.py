"""Training on a dataset while it builds (data_pipeline/streaming.py): the committed prefix of an
interrupted build, the growing training iterator and its exact resume."""
from __future__ import annotations

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import streaming
from data_pipeline.common import DataError

MAZE = {"size": 9, "num_train": 24, "num_test": 5, "min_path_length": 6, "aug": True}  # 8 examples per group
BATCH = 2


class Interrupt(Exception):
    pass


def interrupted_build(data_dir: str, monkeypatch, stop_group: int) -> None:
    """Build ``maze`` with a shard per group (8 examples), dying when train group ``stop_group`` is
    fetched: groups ``0 .. stop_group - 2`` are committed (the last one written is not)."""
    cls = dp.get_builder_cls("maze")
    monkeypatch.setattr(cls, "SHARD_ROWS", 3)
    original = cls.generate_groups_from

    def failing(self, split, start):
        for n, group in enumerate(original(self, split, start)):
            if split == "train" and start + n == stop_group:
                raise Interrupt("simulated interruption")
            yield group

    monkeypatch.setattr(cls, "generate_groups_from", failing)
    with pytest.raises(Interrupt):
        dp.ensure_built("maze", data_dir, MAZE, num_workers=1)
    monkeypatch.setattr(cls, "generate_groups_from", original)


def columns_of(source) -> dict:
    return {k: np.array(v) for k, v in source.columns.items()}


def take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_the_committed_prefix_is_the_finished_datasets_prefix(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    interrupted_build(data_dir, monkeypatch, stop_group=5)
    builder = dp.make_builder("maze", data_dir, MAZE)
    progress = streaming.progress(builder, "train")
    assert (progress.groups, progress.examples, progress.complete, progress.built) == (4, 32, False, False)
    partial = streaming.prefix_source(builder, "train", 32)
    assert len(partial) == 32 and partial.metadata.total_groups == 4
    with pytest.raises(DataError, match="33 examples asked for, 32 committed"):
        streaming.prefix_source(builder, "train", 33)
    partial_columns = columns_of(partial)
    dp.ensure_built("maze", data_dir, MAZE, num_workers=1)  # continues from the last commit
    final = dp.load("maze", "train", data_dir, **MAZE)
    assert streaming.progress(builder, "train").built and len(final) == 24 * 8
    for k, v in partial_columns.items():
        np.testing.assert_array_equal(v, np.array(final.columns[k][:32]), err_msg=k)
    # No row twice, none missing: the resumed build equals one built in one go.
    reference = str(tmp_path / "one_go")
    dp.ensure_built("maze", reference, MAZE, num_workers=1)
    ref = dp.load("maze", "train", reference, **MAZE)
    for k in ref.columns:
        np.testing.assert_array_equal(np.array(final.columns[k]), np.array(ref.columns[k]), err_msg=k)


def test_the_iterator_doubles_its_data_at_iteration_boundaries_and_resumes_exactly(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    interrupted_build(data_dir, monkeypatch, stop_group=6)  # 5 groups (40 examples) committed
    stages, waits = [], []

    def no_wait(ready, what):  # the build is not running: say what the iterator waits for
        waits.append(what)
        raise TimeoutError(what)

    make = lambda wait=no_wait: streaming.IncrementalTrainIterator(  # noqa: E731
        "maze", data_dir, MAZE, global_batch_size=BATCH, seed=3, epochs_per_iter=1, process_index=0,
        process_count=1, first_examples=16, on_stage=lambda i, n: stages.append((i, n)), wait=wait)
    it = make()
    # Stage 0: the groups within the first 16 rows (2 groups of 8; an epoch visits each group once,
    # one of its 8 puzzles): 1 batch of 2 per iteration.
    first = take(it, 1)
    assert stages == [(0, 16)]
    assert int(np.max(it._map.schedule[0])) < 16  # only the stage's rows
    saved_stage0 = it.get_state()
    # Stage 1 (32 rows, 4 groups: 2 batches an iteration) is committed; stage 2 (64 rows) is not.
    stage1 = take(it, 2)
    assert stages == [(0, 16), (1, 32)] and it.get_state() == {"stages": [16, 32], "batch": 2}
    with pytest.raises(TimeoutError):
        next(it)
    assert waits == ["the training data of stage 2 (the first 64 examples)"]

    dp.ensure_built("maze", data_dir, MAZE, num_workers=1)  # the build finishes
    later = take(it, 8)  # stage 2: 8 groups = 4 batches an iteration; then stage 3 (128 rows)
    assert stages[2:] == [(2, 64), (3, 128)]
    mid = it.get_state()
    tail = take(it, 30)  # stage 3: 8 batches an iteration; then stage 4 = the whole split (192 rows)
    assert stages[4:] == [(4, 192)] and it.get_state()["stages"] == [16, 32, 64, 128, 192]
    more = take(it, 30)  # the whole split: no more stages
    assert len(stages) == 5

    # A run restored from a stage-0 checkpoint replays the same batches, whenever the data arrived.
    replay = make()
    replay.set_state(saved_stage0)
    same_batches(take(replay, 2 + 8 + 30 + 30), stage1 + later + tail + more)
    # ... and from a checkpoint inside stage 3.
    again = make()
    again.set_state(mid)
    same_batches(take(again, 30), tail)
    assert len(first) == 1 and first[0]["inputs"].shape == (BATCH, 81)


def test_the_iterator_refuses_a_non_incremental_state(tmp_path):
    dp.ensure_built("maze", str(tmp_path), MAZE, num_workers=1)
    it = streaming.IncrementalTrainIterator("maze", str(tmp_path), MAZE, global_batch_size=BATCH,
                                            process_index=0, process_count=1)
    with pytest.raises(DataError, match="data.incremental=False"):
        it.set_state({"next_index": 3})


def test_the_build_command_reproduces_the_options():
    cmd = streaming.build_command("maze", "/d", {"size": 9, "aug": True, "translate": False, "source": None})
    assert cmd[1:] == ["-m", "data_pipeline.build", "maze", "--data_dir", "/d", "--size", "9", "--aug",
                       "--no-translate"]
