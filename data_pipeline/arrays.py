"""Column store of a split as ``.npy`` files next to the ArrayRecord files.

Reading 768 ArrayRecord examples one by one and decoding them costs ~0.1 s (TFDS's decoder
spends ~100 µs of Python per example), far slower than a training step. So every split is
also kept as one ``.npy`` file per field in ``<dataset dir>/arrays/``, memory-mapped at load
time; batches are numpy gathers from these columns.

The builder writes the columns while it generates (``ColumnWriter``: spooled to disk in
chunks and concatenated chunk by chunk, so memory stays bounded for large datasets; the
chunks can be checkpointed so an interrupted build continues); for a dataset without them (built by an
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
_CHUNK_BYTES = 128 << 20  # ... or this many bytes of values, whichever comes first


def _narrow_dtype(lo: int, hi: int) -> np.dtype:
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise ValueError(f"integer range [{lo}, {hi}] does not fit in int64")


class ColumnWriter:
    """Accumulates records (dicts of scalars / 1-D arrays) and writes one .npy per field.

    Rows are kept in memory until ``flush`` (automatic every ``_CHUNK_ROWS`` rows unless
    ``auto_flush`` is False, for a caller that flushes at its own commit points), then saved as
    chunk files in ``spool_dir``. ``checkpoint()`` / ``restore()`` describe / reload the flushed
    chunks, so an interrupted build can continue a column store (``builder.py``).
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, spool_dir: str | os.PathLike | None = None,
                 auto_flush: bool = True, chunk_rows: int | None = None):
        self.out_dir = os.fspath(out_dir)
        self.split = split
        # A caller-given spool outlives this writer (resumable builds); the default one is
        # private and removed by ``finish``.
        self.owns_spool = spool_dir is None
        self.spool = (os.path.join(self.out_dir, f".spool_{split}_{uuid.uuid4().hex[:8]}")
                      if spool_dir is None else os.fspath(spool_dir))
        self.auto_flush = auto_flush
        self.chunk_rows = chunk_rows or _CHUNK_ROWS
        self.rows: dict[str, list[Any]] = {}
        self.chunks: dict[str, list[str]] = {}   # field -> chunk file names inside the spool
        self.ranges: dict[str, tuple[int, int]] = {}
        self.count = 0
        self.flushed = 0                         # rows already in chunk files
        self.pending_bytes = 0                   # array bytes added since the last flush

    @property
    def pending(self) -> int:
        """Rows added since the last flush."""
        return self.count - self.flushed

    @property
    def chunk_full(self) -> bool:
        """Whether the pending rows make a chunk (``chunk_rows``, default ``_CHUNK_ROWS``, or ``_CHUNK_BYTES``)."""
        return self.pending >= self.chunk_rows or self.pending_bytes >= _CHUNK_BYTES

    def add(self, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            self.rows.setdefault(key, []).append(value)
            self.pending_bytes += getattr(value, "nbytes", 8)
        self.count += 1
        if self.auto_flush and self.chunk_full:
            self.flush()

    def flush(self) -> None:
        """Save the rows added since the last flush as one chunk file per field."""
        if not self.rows:
            return
        os.makedirs(self.spool, exist_ok=True)
        for key, values in self.rows.items():
            arr = np.asarray(values)
            if arr.dtype.kind in "iub":
                lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
                old = self.ranges.get(key, (lo, hi))
                self.ranges[key] = (min(lo, old[0]), max(hi, old[1]))
                arr = arr.astype(_narrow_dtype(lo, hi))  # chunks on disk as small as the values
            name = f"{self.split}__{key}.{len(self.chunks.get(key, []))}.npy"
            np.save(os.path.join(self.spool, name), arr)
            self.chunks.setdefault(key, []).append(name)
        self.rows = {}
        self.flushed = self.count
        self.pending_bytes = 0

    def checkpoint(self) -> dict[str, Any]:
        """JSON-able description of the flushed chunks (call right after ``flush``)."""
        if self.rows:
            raise RuntimeError("ColumnWriter.checkpoint: flush first (rows are pending)")
        return {"count": self.count, "chunks": self.chunks,
                "ranges": {k: list(v) for k, v in self.ranges.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue after the chunks of a ``checkpoint()`` (later chunk files are overwritten)."""
        self.rows = {}
        self.count = self.flushed = int(state["count"])
        self.chunks = {k: list(v) for k, v in state["chunks"].items()}
        self.ranges = {k: (int(v[0]), int(v[1])) for k, v in state["ranges"].items()}
        for names in self.chunks.values():
            for name in names:
                if not os.path.isfile(os.path.join(self.spool, name)):
                    raise OSError(f"column chunk {name} is missing from {self.spool}")

    def finish(self) -> None:
        """Write ``<split>__<field>.npy`` for every field and the manifest.

        Each file is written sequentially, one chunk in memory at a time (a memory map of the
        output would count the whole column towards the process's resident memory). A private
        spool is removed; a caller-given one is kept (the caller removes it when done).
        """
        self.flush()
        fields = {}
        for key, names in self.chunks.items():
            paths = [os.path.join(self.spool, n) for n in names]
            heads = [np.load(p, mmap_mode="r") for p in paths]  # headers: dtype and shape only
            if heads[0].dtype.kind in "iub":
                dtype = _narrow_dtype(*self.ranges[key])
            else:  # strings: the widest chunk decides
                dtype = np.result_type(*[h.dtype for h in heads])
            shape = (sum(len(h) for h in heads),) + heads[0].shape[1:]
            del heads
            final = os.path.join(self.out_dir, f"{self.split}__{key}.npy")
            tmp = final + f".tmp{uuid.uuid4().hex[:6]}"
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": shape}
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                for p in paths:
                    f.write(np.ascontiguousarray(np.load(p), dtype=dtype).tobytes())
            os.replace(tmp, final)
            fields[key] = {"dtype": dtype.str, "shape": list(shape)}
        if self.owns_spool:
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
