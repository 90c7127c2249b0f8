"""Encoding capsule windows in shards that survive an interrupted build.

Encoding is the slow part of building the capsule dataset, so the documents of a split are
cut into shards of ``docs_per_shard`` documents; each finished shard is saved atomically as
``<work_dir>/<split>-<shard:05d>.npz`` (sketches, children and the window keys), and a
restarted build loads the finished shards instead of encoding them again. A shard file whose
keys (document, window, hash of the texts) do not match the windows it should hold is
encoded again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from typing import Callable, Sequence

import numpy as np

from data_pipeline.capsule_windows import Window

log = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str]], np.ndarray]  # texts -> float32 [n, D]


def window_keys(windows: Sequence[Window]) -> np.ndarray:
    """One string per window, ``doc_id#index#<hash of its texts>``: what a shard file must
    hold (the hash catches a document whose text changed, e.g. under another Python)."""
    def digest(w: Window) -> str:
        texts = "\x00".join(w.capsules + tuple(c for kids in w.children for c in kids))
        return hashlib.sha1(texts.encode()).hexdigest()[:12]
    return np.asarray([f"{w.doc_id}#{w.index}#{digest(w)}" for w in windows], dtype=np.str_)


def encode_windows(windows: Sequence[Window], k: int, m: int, encode: EncodeFn,
                   dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Embed every capsule and child of ``windows`` (each distinct text once).

    Returns sketches float32 [n, k, D] and children float32 [n, k, m, D]; the capsule slots
    past a short window's last capsule are zero.
    """
    texts: dict[str, int] = {}
    for w in windows:
        for capsule, kids in zip(w.capsules, w.children):
            texts.setdefault(capsule, len(texts))
            for child in kids:
                texts.setdefault(child, len(texts))
    vectors = encode(list(texts)) if texts else np.zeros((0, dim), np.float32)
    sketches = np.zeros((len(windows), k, dim), dtype=np.float32)
    children = np.zeros((len(windows), k, m, dim), dtype=np.float32)
    for i, w in enumerate(windows):
        for j, (capsule, kids) in enumerate(zip(w.capsules, w.children)):
            sketches[i, j] = vectors[texts[capsule]]
            children[i, j] = vectors[[texts[c] for c in kids]]
    return sketches, children


class ShardStore:
    """Finished shards of one dataset configuration in ``work_dir`` (see module docstring)."""

    def __init__(self, work_dir: str, k: int, m: int, dim: int):
        self.work_dir, self.k, self.m, self.dim = work_dir, k, m, dim
        self.encoded_shards = 0  # shards encoded (not loaded) by this store: resume telemetry
        self.encoded_texts = 0
        self.encode_seconds = 0.0

    def path(self, split: str, shard: int) -> str:
        return os.path.join(self.work_dir, f"{split}-{shard:05d}.npz")

    def _load(self, path: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(path) as f:
                if not np.array_equal(f["keys"], keys):
                    log.warning("%s holds other windows than expected; encoding it again", path)
                    return None
                return f["sketches"], f["children"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as e:  # truncated / foreign file
            log.warning("cannot read %s (%s); encoding it again", path, e)
            return None

    def get(self, split: str, shard: int, windows: Sequence[Window],
            encode: EncodeFn) -> tuple[np.ndarray, np.ndarray]:
        """Sketches [n, k, D] and children [n, k, m, D] of ``windows`` = shard ``shard`` of
        ``split``: loaded when a matching shard file exists, else encoded and saved."""
        keys = window_keys(windows)
        path = self.path(split, shard)
        found = self._load(path, keys)
        if found is not None:
            return found
        start = time.perf_counter()
        counter = _CountingEncode(encode)
        sketches, children = encode_windows(windows, self.k, self.m, counter, self.dim)
        self.encode_seconds += time.perf_counter() - start
        self.encoded_texts += counter.count
        self.encoded_shards += 1
        os.makedirs(self.work_dir, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp.npz"
        np.savez(tmp, keys=keys, sketches=sketches, children=children)
        os.replace(tmp, path)  # a shard file exists only once it is complete
        return sketches, children


class _CountingEncode:
    def __init__(self, encode: EncodeFn):
        self.encode, self.count = encode, 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.count += len(texts)
        return self.encode(texts)
