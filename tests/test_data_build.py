"""Embedded default (ensure_built), option -> directory mapping, metadata and the command line."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import build as build_cli

TINY_MAZE = {"size": 9, "num_train": 8, "num_test": 3, "min_path_length": 6}


def info_file(name: str, data_dir: str, options: dict) -> str:
    return os.path.join(os.fspath(dp.make_builder(name, data_dir, options).data_path),
                        "dataset_info.json")


def test_ensure_built_builds_reuses_and_rebuilds(tmp_path):
    data_dir = str(tmp_path)
    path = info_file("maze", data_dir, TINY_MAZE)
    assert not os.path.exists(path)
    meta = dp.ensure_built("maze", data_dir, TINY_MAZE)
    assert os.path.exists(path)
    assert meta["train"].total_groups == 8 and meta["test"].total_groups == 3
    first = os.stat(path).st_mtime_ns
    marker = os.path.join(os.path.dirname(path), "marker")
    open(marker, "w").close()
    again = dp.ensure_built("maze", data_dir, TINY_MAZE)  # reuse: nothing rewritten
    assert again == meta and os.path.exists(marker) and os.stat(path).st_mtime_ns == first
    rebuilt = dp.ensure_built("maze", data_dir, TINY_MAZE, rebuild=True)
    assert rebuilt == meta and not os.path.exists(marker)  # a fresh directory
    # Deterministic generation: the rebuilt data equals the first build.
    source = dp.load("maze", "train", data_dir, **TINY_MAZE)
    assert len(source) == 8


def test_default_data_dir_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TRM_DATA_DIR", str(tmp_path / "env_dir"))
    assert dp.default_data_dir() == str(tmp_path / "env_dir")
    dp.ensure_built("maze", None, TINY_MAZE)
    assert os.path.isdir(tmp_path / "env_dir" / "maze")
    assert len(dp.load("maze", "test", **TINY_MAZE)) == 3
    monkeypatch.delenv("TRM_DATA_DIR")
    assert dp.default_data_dir().endswith(os.path.join(".cache", "trm_jax", "datasets"))


def test_options_select_distinct_directories(tmp_path):
    def path(name, **options):
        return os.fspath(dp.make_builder(name, str(tmp_path), options).data_path)

    tiny = path("sudoku", preset="tiny")
    assert tiny == path("sudoku", num_train=200, num_test=100, num_aug=4)  # preset == spelled out
    assert tiny == path("sudoku", num_aug="4", num_test=100, num_train="200")  # CLI strings, order
    others = {path("sudoku"), path("sudoku", preset="full"), path("sudoku", min_rating=1),
              path("sudoku", seed=1), path("sudoku", num_aug=5), path("sudoku", source=str(tmp_path)),
              path("sudoku", source=str(tmp_path / "other"))}
    assert tiny not in others and len(others) == 7
    assert path("maze") != path("maze", aug=True) != path("maze", size=12)
    with pytest.raises(ValueError, match="unknown options"):
        dp.make_builder("sudoku", str(tmp_path), {"num_trian": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        dp.make_builder("sudoku", str(tmp_path), {"preset": "huge"})
    with pytest.raises(ValueError, match="num_aug"):
        dp.make_builder("sudoku", str(tmp_path), {"num_aug": "many"})
    with pytest.raises(KeyError, match="unknown dataset"):
        dp.make_builder("chess", str(tmp_path))


def test_metadata_is_stored_next_to_the_data(tmp_path):
    meta = dp.ensure_built("maze", str(tmp_path), TINY_MAZE)
    data_path = os.fspath(dp.make_builder("maze", str(tmp_path), TINY_MAZE).data_path)
    with open(os.path.join(data_path, "metadata.json")) as f:
        stored = json.load(f)
    assert stored["puzzle_metadata"]["train"] == meta["train"].to_json()
    assert stored["options"]["size"] == 9
    train = dp.load_metadata("maze", "train", str(tmp_path), **TINY_MAZE)
    assert train == meta["train"]
    assert (train.seq_len, train.vocab_size, train.pad_id, train.ignore_label_id) == (81, 6, 0, 0)
    assert train.mean_puzzle_examples == 1.0 and train.total_puzzles == train.num_examples == 8
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(data_path))


def test_column_store_is_rebuilt_from_array_record(tmp_path):
    dp.ensure_built("maze", str(tmp_path), TINY_MAZE)
    before = dp.load("maze", "train", str(tmp_path), **TINY_MAZE)
    expected = {k: np.array(v) for k, v in before.columns.items()}
    data_path = os.fspath(dp.make_builder("maze", str(tmp_path), TINY_MAZE).data_path)
    shutil.rmtree(os.path.join(data_path, "arrays"))
    after = dp.load("maze", "train", str(tmp_path), **TINY_MAZE)  # decodes the ArrayRecord files
    assert set(after.columns) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(after.columns[key], value)


def test_load_before_build_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_built"):
        dp.load("maze", "train", str(tmp_path), **TINY_MAZE)


def test_command_line_builds(tmp_path, capsys):
    argv = ["maze", "--data_dir", str(tmp_path), "--size", "9", "--num_train", "8", "--num_test", "3",
            "--min_path_length", "6", "--aug", "--num_workers", "1"]
    assert build_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 64 examples" in out and "test: 3 examples" in out
    meta = dp.load_metadata("maze", "train", str(tmp_path), **TINY_MAZE, aug=True)
    assert meta.total_puzzles == 64
    assert build_cli.main(["--list"]) == 0
    assert "maze" in capsys.readouterr().out


def test_registry_finds_dataset_modules():
    assert {"maze", "sudoku"} <= set(dp.dataset_names())
    assert dp.get_builder_cls("sudoku").name == "sudoku"
