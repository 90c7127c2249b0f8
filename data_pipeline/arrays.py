"""Column store of a split as ``.npy`` files next to the ArrayRecord files.

Reading 768 ArrayRecord examples one by one and decoding them costs ~0.1 s (TFDS's decoder
spends ~100 µs of Python per example), far slower than a training step. So every split is
also kept as one ``.npy`` file per field in ``<dataset dir>/arrays/``, memory-mapped at load
time; batches are numpy gathers from these columns.

The builder writes the columns while it generates (``ColumnWriter``: spooled to disk in
chunks, so memory stays bounded for large datasets); for a dataset without them (built by an
older version, or the directory was pruned) ``materialise_from_records`` rebuilds them once
from the ArrayRecord files. Token columns are stored in the narrowest integer type that
holds them (uint8 for every dataset here) and widened to int32 per batch.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Iterable, Mapping

import numpy as np

ARRAYS_DIR = "arrays"
_MANIFEST = "{split}__manifest.json"
_CHUNK_ROWS = 65536


def _narrow_dtype(lo: int, hi: int) -> np.dtype:
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise ValueError(f"integer range [{lo}, {hi}] does not fit in int64")


class ColumnWriter:
    """Accumulates records (dicts of scalars / 1-D arrays) and writes one .npy per field."""

    def __init__(self, out_dir: str | os.PathLike, split: str):
        self.out_dir = os.fspath(out_dir)
        self.split = split
        self.spool = os.path.join(self.out_dir, f".spool_{split}_{uuid.uuid4().hex[:8]}")
        self.rows: dict[str, list[Any]] = {}
        self.chunks: dict[str, list[str]] = {}
        self.ranges: dict[str, tuple[int, int]] = {}
        self.count = 0

    def add(self, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            self.rows.setdefault(key, []).append(value)
        self.count += 1
        if self.count % _CHUNK_ROWS == 0:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        os.makedirs(self.spool, exist_ok=True)
        for key, values in self.rows.items():
            arr = np.asarray(values)
            if arr.dtype.kind in "iub":
                lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
                old = self.ranges.get(key, (lo, hi))
                self.ranges[key] = (min(lo, old[0]), max(hi, old[1]))
            path = os.path.join(self.spool, f"{key}.{len(self.chunks.get(key, []))}.npy")
            np.save(path, arr)
            self.chunks.setdefault(key, []).append(path)
        self.rows = {}

    def finish(self) -> None:
        """Write ``<split>__<field>.npy`` for every field and the manifest; remove the spool."""
        self._flush()
        fields = {}
        for key, paths in self.chunks.items():
            parts = [np.load(p, mmap_mode="r") for p in paths]
            if parts[0].dtype.kind in "iub":
                dtype = _narrow_dtype(*self.ranges[key])
            else:  # strings: the widest chunk decides
                dtype = np.result_type(*[p.dtype for p in parts])
            shape = (sum(len(p) for p in parts),) + parts[0].shape[1:]
            final = os.path.join(self.out_dir, f"{self.split}__{key}.npy")
            tmp = final + f".tmp{uuid.uuid4().hex[:6]}"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            start = 0
            for p in parts:
                out[start:start + len(p)] = p
                start += len(p)
            out.flush()
            del out
            os.replace(tmp, final)
            fields[key] = {"dtype": dtype.str, "shape": list(shape)}
        shutil.rmtree(self.spool, ignore_errors=True)
        write_manifest(self.out_dir, self.split, self.count, fields)


def write_manifest(out_dir: str, split: str, count: int, fields: Mapping[str, Any]) -> None:
    """The manifest is written last: its presence marks a complete column store."""
    path = os.path.join(out_dir, _MANIFEST.format(split=split))
    tmp = path + f".tmp{uuid.uuid4().hex[:6]}"
    with open(tmp, "w") as f:
        json.dump({"num_examples": count, "fields": fields}, f, indent=1)
    os.replace(tmp, path)


def has_columns(dataset_dir: str | os.PathLike, split: str) -> bool:
    return os.path.isfile(os.path.join(dataset_dir, ARRAYS_DIR, _MANIFEST.format(split=split)))


def load_columns(dataset_dir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """Memory-mapped columns of ``split``: field -> array [num_examples, ...]."""
    adir = os.path.join(dataset_dir, ARRAYS_DIR)
    with open(os.path.join(adir, _MANIFEST.format(split=split))) as f:
        manifest = json.load(f)
    columns = {}
    for key, spec in manifest["fields"].items():
        arr = np.load(os.path.join(adir, f"{split}__{key}.npy"), mmap_mode="r")
        if list(arr.shape) != spec["shape"] or len(arr) != manifest["num_examples"]:
            raise OSError(f"column {key} of {split} in {adir} is corrupt: shape {arr.shape} vs "
                          f"manifest {spec['shape']}")
        columns[key] = arr
    return columns


def materialise_from_records(records: Iterable[Mapping[str, Any]], dataset_dir: str | os.PathLike,
                             split: str) -> None:
    """Write the column store of ``split`` from decoded records (slow path, once)."""
    adir = os.path.join(dataset_dir, ARRAYS_DIR)
    os.makedirs(adir, exist_ok=True)
    writer = ColumnWriter(adir, split)
    for record in records:
        writer.add(record)
    writer.finish()
