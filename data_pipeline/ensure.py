"""The embedded default: ``ensure_built`` builds a dataset on first use and reuses it after.

Multi-host: generation is deterministic, so every host may build into its own local
``data_dir``; on a shared file system let process 0 call ``ensure_built`` first and the
others after a barrier (TFDS writes into a temporary directory and renames it when done, so
a reader never sees a half-written dataset).

An interrupted build (Ctrl-C, a killed job) keeps its progress in
``<data_dir>/<name>/<config>/build_state/`` (``builder.py``); calling ``ensure_built`` again
with the same options continues from there, ``rebuild=True`` starts from zero.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from typing import Any, Iterator, Mapping

import tensorflow_datasets as tfds

from data_pipeline import arrays
from data_pipeline.common import PuzzleDatasetMetadata
from data_pipeline.registry import make_builder
from data_pipeline.source import open_split


def default_num_workers() -> int:
    """Generation worker processes: the CPU cores available to this process (at most 16)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def ensure_built(name: str, data_dir: str | None = None, options: Mapping[str, Any] | None = None,
                 rebuild: bool = False, num_workers: int | None = None,
                 shard_rows: int | None = None) -> dict[str, PuzzleDatasetMetadata]:
    """Build dataset ``name`` with ``options`` unless it is already built; return its metadata.

    Args:
      name: a registered dataset ("sudoku", "maze", ...).
      data_dir: root directory (default ``default_data_dir()``: ``$TRM_DATA_DIR`` or
        ``~/.cache/trm_jax/datasets``); the data goes to ``<data_dir>/<name>/<config>/<version>``
        where ``<config>`` is derived from the options.
      options: the dataset's builder options, e.g. ``{"preset": "tiny"}`` or
        ``{"num_train": 200, "num_aug": 8}``; importer paths such as ``{"source": DIR}``.
      rebuild: delete and rebuild even if present (also discards an interrupted build's
        progress, which is otherwise resumed).
      num_workers: generation processes (default: the available cores); does not change data.
      shard_rows: examples per committed shard of the build (default: the dataset's
        ``SHARD_ROWS``); does not change data (data_pipeline/streaming.py).

    Returns:
      ``{split: PuzzleDatasetMetadata}``, e.g. ``ensure_built("sudoku")["train"].seq_len``.
    """
    workers = num_workers or default_num_workers()
    builder = make_builder(name, data_dir, options, num_workers=workers, shard_rows=shard_rows)
    with build_lock(builder):
        return _ensure_built(builder, name, data_dir, options, rebuild, workers, shard_rows)


@contextlib.contextmanager
def build_lock(builder: Any) -> Iterator[None]:
    """Hold ``<data_dir>/<name>/<config>.lock`` exclusively: one build of a configuration at a time
    on this machine (a second caller waits, then finds the dataset built or continues its
    committed progress). A background build and a run's own ``ensure_built`` may meet here."""
    path = os.path.dirname(os.fspath(builder.build_state_dir)) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_built(builder: Any, name: str, data_dir: str | None, options: Mapping[str, Any] | None,
                  rebuild: bool, workers: int, shard_rows: int | None) -> dict[str, PuzzleDatasetMetadata]:
    path = os.fspath(builder.data_path)
    # A directory without dataset_info.json is not a finished build (TFDS would "reuse" it).
    if rebuild:  # start from zero: no progress of an interrupted build either
        shutil.rmtree(builder.build_state_dir, ignore_errors=True)
    if os.path.exists(path) and (rebuild or not builder.is_built()):
        shutil.rmtree(path)
        builder = make_builder(name, data_dir, options, num_workers=workers,  # forget cached info
                               shard_rows=shard_rows)
    if not builder.is_built():
        builder.download_and_prepare(
            download_dir=os.path.join(builder.data_dir_root, "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    metadata = builder.split_metadata()
    for split in metadata:  # column store (written by the builder; rebuilt here if missing)
        if not arrays.has_columns(os.fspath(builder.data_path), split):
            open_split(builder, split)
    return metadata
