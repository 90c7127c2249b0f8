"""Large splits: writing must not need TensorFlow, must keep memory bounded, and must resume.

TFDS's writer spills a split larger than ``shuffle.MAX_MEM_BUFFER_SIZE`` (1 GB) through
``tf.io.gfile``; ``builder.KeyOrderSpool`` replaces that path. The builds here lower the
budget to a few bytes so that a tiny dataset takes the large-split path, in a child process in
which ``import tensorflow`` fails (so the check means the same on a machine that has TF), and
compare the result record for record with TFDS's own in-memory writer (the oracle: a split
under the budget never touches TensorFlow).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import arrays, generation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAZE = {"size": 9, "num_train": 12, "num_test": 5, "min_path_length": 6, "aug": True}

# Runs in a fresh interpreter with TensorFlow blocked; exits non-zero with a message on failure.
CHILD = textwrap.dedent(r"""
    import os, sys, glob
    import importlib.abc, importlib.machinery

    class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # Every `import tensorflow[.x]` fails as if it were not installed, whether or not it
        # is. (A None entry in sys.modules would make TFDS believe TensorFlow is loaded; a
        # finder that raises would break etils' harmless find_spec probe.)
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)")

        def exec_module(self, module):
            raise AssertionError("unreachable")

    sys.modules.pop("tensorflow", None)
    sys.meta_path.insert(0, NoTensorFlow())
    try:
        import tensorflow  # noqa: F401
        sys.exit("tensorflow is importable although blocked")
    except ImportError:
        pass
    import numpy as np
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import shuffle
    from array_record.python.array_record_module import ArrayRecordReader
    import data_pipeline as dp
    from data_pipeline import arrays, builder as builder_lib

    root, options = sys.argv[1], eval(sys.argv[2])
    config = tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3)  # several shards

    def build(data_dir, spool=True, budget=None):
        saved_budget, saved_split = shuffle.MAX_MEM_BUFFER_SIZE, builder_lib.PuzzleDatasetBuilder._generate_splits
        if budget is not None:
            shuffle.MAX_MEM_BUFFER_SIZE = budget
        if not spool:  # TFDS's own writer path, as before KeyOrderSpool
            builder_lib.PuzzleDatasetBuilder._generate_splits = tfds.core.GeneratorBasedBuilder._generate_splits
        try:
            b = dp.make_builder("maze", data_dir, options)
            b.download_and_prepare(download_config=config)
            return b
        finally:
            shuffle.MAX_MEM_BUFFER_SIZE = saved_budget
            builder_lib.PuzzleDatasetBuilder._generate_splits = saved_split

    # 1. TFDS's writer with a 64-byte budget spills, and without TensorFlow that fails:
    #    the situation of a full-size recipe.
    try:
        build(os.path.join(root, "tfds_spill"), spool=False, budget=64)
        sys.exit("TFDS spilled a split without TensorFlow; the test no longer exercises the bug")
    except Exception as e:
        if "tensorflow" not in repr(e):
            raise
    # 2. Ours with the same budget; 3. the oracle: TFDS in memory (default budget, no spill).
    ours = build(os.path.join(root, "ours"), spool=True, budget=64)
    oracle = build(os.path.join(root, "oracle"), spool=False)
    assert "tensorflow" not in sys.modules
    for split in ("train", "test"):
        def records(b):
            paths = sorted(glob.glob(os.path.join(os.fspath(b.data_path), f"maze-{split}.array_record-*")))
            out = []
            for p in paths:
                reader = ArrayRecordReader(p)
                out += list(reader.read_all())
                reader.close()
            return paths, out
        ours_paths, ours_records = records(ours)
        oracle_paths, oracle_records = records(oracle)
        assert len(ours_paths) == len(oracle_paths) == 3, (ours_paths, oracle_paths)
        assert len(ours_records) == len(oracle_records) > 0, split
        for i, (a, b) in enumerate(zip(ours_records, oracle_records)):
            assert a == b, f"{split} record {i} differs"
        cols = arrays.load_columns(os.fspath(ours.data_path), split)
        ref = arrays.load_columns(os.fspath(oracle.data_path), split)
        assert set(cols) == set(ref), (sorted(cols), sorted(ref))
        for k in ref:
            assert cols[k].dtype == ref[k].dtype, k
            np.testing.assert_array_equal(cols[k], ref[k], err_msg=f"{split} column {k}")
        assert ours.split_metadata() == oracle.split_metadata()
        assert ours.info.splits[split].num_examples == oracle.info.splits[split].num_examples
    assert not os.path.exists(ours.build_state_dir), "build state left after a complete build"
    print("CHILD OK")
""")


def test_large_split_path_needs_no_tensorflow_and_equals_in_memory_build(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), repr(MAZE)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "CHILD OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def _columns(data_dir: str, split: str, options: dict) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in dp.load(name="maze", split=split, data_dir=data_dir,
                                                **options).columns.items()}


class Interrupt(Exception):
    pass


def test_interrupted_build_resumes_from_its_last_commit(tmp_path, monkeypatch):
    # Small chunks so that a tiny build commits often: a commit after every 3+ examples.
    monkeypatch.setattr(arrays, "_CHUNK_ROWS", 3)
    maze_cls = dp.get_builder_cls("maze")
    original = maze_cls.generate_groups_from
    starts: list[tuple[str, int]] = []

    def failing(self, split, start):
        starts.append((split, start))
        for n, group in enumerate(original(self, split, start)):
            if split == "train" and start + n == 7:  # dies in the middle of the train split
                raise Interrupt("simulated interruption")
            yield group

    monkeypatch.setattr(maze_cls, "generate_groups_from", failing)
    data_dir = str(tmp_path / "resumed")
    with pytest.raises(Interrupt):
        dp.ensure_built("maze", data_dir, MAZE, num_workers=1)
    assert starts == [("train", 0)]
    b = dp.make_builder("maze", data_dir, MAZE)
    assert not b.is_built()
    with open(os.path.join(b.build_state_dir, "train", "state.json")) as f:
        progress = json.load(f)["progress"]
    # 8 examples per group (aug) >= 3: a commit before every group; the last one before group 6
    # (group 6 was written, then fetching group 7 failed).
    assert (progress["groups"], progress["examples"], progress["complete"]) == (6, 48, False)

    calls: list[tuple[str, int]] = []

    def recording(self, split, start):
        calls.append((split, start))
        return original(self, split, start)

    monkeypatch.setattr(maze_cls, "generate_groups_from", recording)
    dp.ensure_built("maze", data_dir, MAZE, num_workers=1)
    assert calls == [("train", 6), ("test", 0)]  # groups 0-5 were not generated again
    assert not os.path.exists(b.build_state_dir)
    leftovers = [e for e in os.listdir(os.path.dirname(os.fspath(b.data_path))) if "incomplete" in e]
    assert leftovers == []

    reference = str(tmp_path / "reference")
    monkeypatch.setattr(maze_cls, "generate_groups_from", original)
    dp.ensure_built("maze", reference, MAZE, num_workers=1)
    for split in ("train", "test"):
        ours, ref = _columns(data_dir, split, MAZE), _columns(reference, split, MAZE)
        assert set(ours) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=f"{split} {k}")
        assert (dp.load_metadata("maze", split, data_dir, **MAZE)
                == dp.load_metadata("maze", split, reference, **MAZE))


def test_accept_first_resumes_without_repeating_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "SAVE_SECONDS", 0.0)  # save after every round
    calls: list[int] = []

    def attempt(j: int) -> int | None:
        calls.append(j)
        if j == 150 and fail[0]:
            raise Interrupt
        return j * j if j % 3 == 0 else None  # accepts every third attempt

    fail = [True]
    directory = str(tmp_path / "state")
    with generation.resumable(directory), pytest.raises(Interrupt):
        generation.accept_first(80, attempt, desc="squares")
    done_before = max(calls)
    fail[0] = False
    calls.clear()
    with generation.resumable(directory):
        resumed = generation.accept_first(80, attempt, desc="squares")
    assert resumed == [(3 * i) ** 2 for i in range(80)]  # the uninterrupted answer
    assert calls and min(calls) > 0 and min(calls) <= done_before  # continued, not restarted
    calls.clear()
    with generation.resumable(directory):
        assert generation.accept_first(80, attempt, desc="squares") == resumed
    assert calls == []  # finished: nothing recomputed


def test_column_writer_streams_chunks_with_widening_types(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "_CHUNK_ROWS", 4)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):  # later chunks need wider types / longer strings than earlier ones
        rows.append({"tokens": rng.integers(0, 5 if i < 8 else 300, size=6).astype(np.int64),
                     "value": -i * 1000 if i > 15 else i,
                     "name": "t" * (1 + i // 5)})
    os.makedirs(tmp_path / arrays.ARRAYS_DIR)
    writer = arrays.ColumnWriter(tmp_path / arrays.ARRAYS_DIR, "train")
    for r in rows:
        writer.add(r)
    assert len(writer.chunks["tokens"]) == 5  # flushed every 4 rows
    writer.finish()
    cols = arrays.load_columns(tmp_path, "train")
    np.testing.assert_array_equal(cols["tokens"], np.stack([r["tokens"] for r in rows]))
    np.testing.assert_array_equal(cols["value"], [r["value"] for r in rows])
    assert cols["tokens"].dtype == np.uint16 and cols["value"].dtype == np.int16
    assert cols["name"].tolist() == [r["name"] for r in rows]
    assert not any(name.startswith(".spool") for name in os.listdir(tmp_path / arrays.ARRAYS_DIR))
