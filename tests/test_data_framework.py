"""The shared builder framework as a new dataset (e.g. ARC) would use it: several examples per
puzzle, several sets, array and text extras, per-example extras."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_pipeline as dp
from data_pipeline.common import Puzzle, PuzzleGroup, StaticMetadata


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    num_tasks: int = 3
    num_aug: int = 2
    seed: int = 0


@dp.register_dataset
class ToyGrid(dp.PuzzleDatasetBuilder):
    """A miniature ARC-like dataset: task t has t + 2 examples; sets 'train' tasks then 'eval'."""

    name = "toy_grid"
    Options = ToyOptions

    def static_metadata(self) -> StaticMetadata:
        return StaticMetadata(seq_len=6, vocab_size=12, pad_id=0, ignore_label_id=0,
                              blank_identifier_id=0, num_puzzle_identifiers=1 + 10,
                              sets=("train_tasks", "eval_tasks"))

    def extra_features(self):
        return {"dihedral": tfds.features.Scalar(dtype=np.int32),
                "color_perm": tfds.features.Tensor(shape=(10,), dtype=np.int32),
                "task_name": tfds.features.Text(),
                "example_kind": tfds.features.Scalar(dtype=np.int32)}

    def generate_groups(self, split):
        rng = np.random.default_rng(self.options.seed)
        for t in range(self.options.num_tasks):
            puzzles = []
            for a in range(1 + self.options.num_aug):
                n = t + 2
                inputs = rng.integers(1, 12, size=(n, 6))
                labels = inputs.copy()
                labels[:, -1] = 0  # padding in labels: ignored
                puzzles.append(Puzzle(
                    inputs=inputs, labels=labels, identifier=1 + t * 3 + a,
                    extras={"dihedral": a, "color_perm": rng.permutation(10), "task_name": f"task{t}"},
                    example_extras={"example_kind": [int(i == n - 1) for i in range(n)]}))
            yield PuzzleGroup(puzzles, set_name="train_tasks" if t < 2 else "eval_tasks")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("toy"))
    meta = dp.ensure_built("toy_grid", data_dir, {"num_tasks": 3, "num_aug": 2})
    return data_dir, meta


def test_metadata_counts_groups_puzzles_and_examples(toy):
    _, meta = toy
    train = meta["train"]
    assert train.total_groups == 3 and train.total_puzzles == 9
    assert train.num_examples == 3 * (2 + 3 + 4)
    assert train.mean_puzzle_examples == pytest.approx(27 / 9)
    assert train.sets == ("train_tasks", "eval_tasks")


def test_structure_and_extras_round_trip(toy):
    data_dir, _ = toy
    source = dp.load("toy_grid", "train", data_dir, num_tasks=3, num_aug=2)
    index = source.index
    assert np.diff(index.puzzle_indices).tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert index.group_indices.tolist() == [0, 3, 6, 9]
    assert index.set_groups.tolist() == [0, 2, 3] and index.set_examples.tolist() == [0, 15, 27]
    ex = source[16]  # task 2, first augmentation, second example
    assert str(ex["task_name"]) == "task2" and int(ex["dihedral"]) == 0
    assert ex["color_perm"].shape == (10,) and sorted(ex["color_perm"].tolist()) == list(range(10))
    assert int(ex["puzzle_identifiers"]) == 7 and int(ex["set_index"]) == 1
    assert ex["labels"][-1] == dp.IGNORE_LABEL_ID
    kinds = [int(source[i]["example_kind"]) for i in range(15, 19)]
    assert kinds == [0, 0, 0, 1]


def test_column_store_fallback_keeps_extras(toy):
    data_dir, _ = toy
    options = {"num_tasks": 3, "num_aug": 2}
    built = dp.load("toy_grid", "train", data_dir, **options)
    builder = dp.make_builder("toy_grid", data_dir, options)
    decoded = open_split_without_columns(builder)
    for key, column in built.columns.items():
        np.testing.assert_array_equal(decoded.columns[key], column)


def open_split_without_columns(builder):
    import os
    import shutil
    from data_pipeline.source import open_split
    shutil.rmtree(os.path.join(os.fspath(builder.data_path), "arrays"))
    return open_split(builder, "train")


def test_pipelines_work_on_multi_example_puzzles(toy):
    data_dir, _ = toy
    options = {"num_tasks": 3, "num_aug": 2}
    it = dp.train_iterator("toy_grid", data_dir, options, global_batch_size=4, epochs_per_iter=2,
                           process_index=0, process_count=1)
    batch = next(it)
    assert batch["inputs"].shape == (4, 6)
    assert np.all(batch["puzzle_identifiers"] >= 1)
    evals = list(dp.eval_iterator("toy_grid", data_dir, options, global_batch_size=4,
                                  process_index=0, process_count=1))
    ids = np.concatenate([b["example_index"][b["mask"]] for b in evals])
    assert ids.tolist() == list(range(27))


def test_builder_rejects_inconsistent_puzzles(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class BadOptions:
        seed: int = 0

    class Bad(ToyGrid):
        name = "toy_bad"
        Options = BadOptions

        def extra_features(self):
            return {}

        def generate_groups(self, split):
            yield PuzzleGroup([Puzzle(inputs=np.ones((1, 5)), labels=np.ones((1, 5)))], "train_tasks")

    with pytest.raises(ValueError, match="must both be"):
        Bad(data_dir=str(tmp_path)).download_and_prepare()
