"""Deterministic rejection sampling of puzzles, optionally on several CPU cores.

A generator is a picklable function ``attempt(j) -> result | None`` whose randomness is
seeded from the attempt number ``j`` alone. ``accept_first`` runs attempts 0, 1, 2, ... and
returns the first ``count`` accepted results in attempt order, so the output is the same
for any number of workers.

Inside ``with resumable(directory):`` (the board builders use their ``build_state`` directory)
``accept_first`` saves its progress (the next attempt number and the results so far) every
``SAVE_SECONDS`` and at the end; a re-run after an interruption continues from there and
returns the same results, since attempt j's randomness depends on j alone.
"""
from __future__ import annotations

import contextlib
import contextvars
import multiprocessing
import os
import pickle
import random
import re
import sys
import time
import uuid
from typing import Any, Callable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

SAVE_SECONDS = 30.0  # how often a resumable run saves its progress
_STATE_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("generation_state_dir",
                                                                        default=None)


@contextlib.contextmanager
def resumable(directory: str) -> Iterator[None]:
    """Make ``accept_first`` calls in this block save / resume their progress in ``directory``
    (one file per ``desc``; the caller deletes the directory when its build is complete)."""
    token = _STATE_DIR.set(directory)
    try:
        yield
    finally:
        _STATE_DIR.reset(token)


def _progress_path(desc: str) -> str | None:
    directory = _STATE_DIR.get()
    if directory is None:
        return None
    return os.path.join(directory, re.sub(r"[^A-Za-z0-9_.-]+", "_", desc) + ".pkl")


def _load_progress(path: str | None) -> tuple[int, list[Any]]:
    if path is None or not os.path.isfile(path):
        return 0, []
    with open(path, "rb") as f:
        state = pickle.load(f)
    return int(state["next_attempt"]), list(state["accepted"])


def _save_progress(path: str | None, next_attempt: int, accepted: list[Any]) -> None:
    if path is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{uuid.uuid4().hex[:6]}"
    with open(tmp, "wb") as f:
        pickle.dump({"next_attempt": next_attempt, "accepted": accepted}, f)
    os.replace(tmp, path)


def attempt_rng(seed: int, split: str, attempt: int, salt: str = "") -> random.Random:
    """A ``random.Random`` for one attempt; string seeds hash with SHA-512, stable across runs."""
    return random.Random(f"{salt}/{seed}/{split}/{attempt}")


def accept_first(count: int, attempt: Callable[[int], T | None], *, num_workers: int = 1,
                 desc: str = "generating", max_attempts: int | None = None) -> list[T]:
    """First ``count`` non-None results of ``attempt(0), attempt(1), ...``, in attempt order.

    Raises ValueError after ``max_attempts`` attempts (default ``1000 * count + 1000``) so an
    impossible filter (e.g. a too high minimum rating) fails instead of running forever.
    """
    max_attempts = max_attempts if max_attempts is not None else 1000 * count + 1000
    state_path = _progress_path(desc)
    next_attempt, accepted = _load_progress(state_path)
    if len(accepted) >= count:  # an earlier run got this far (or further)
        return accepted[:count]
    last_save = time.monotonic()
    pool = None
    if num_workers > 1 and count > 1:
        # fork is cheapest, but forking a process in which JAX runs its threads can deadlock:
        # then start fresh interpreters (the attempt functions live in light modules).
        method = "fork" if sys.platform.startswith("linux") and "jax" not in sys.modules else "spawn"
        pool = multiprocessing.get_context(method).Pool(num_workers)
    try:
        with tqdm(total=count, initial=len(accepted), desc=desc, unit="puzzle", leave=False) as bar:
            while len(accepted) < count:
                if next_attempt >= max_attempts:
                    raise ValueError(f"{desc}: only {len(accepted)} of {count} puzzles accepted in "
                                     f"{max_attempts} attempts; relax the filter options")
                # A bounded round of attempts (Pool.imap would drain an endless iterator).
                # Size the round from the acceptance rate so far, so little work is wasted
                # past the last accepted puzzle.
                rate = max(len(accepted) / next_attempt, 0.01) if next_attempt else 1.0
                needed = int((count - len(accepted)) / rate) + 1
                todo = min(max_attempts, next_attempt + min(max(needed, num_workers), 64 * num_workers))
                indices = range(next_attempt, todo)
                results = pool.map(attempt, indices, chunksize=4) if pool else map(attempt, indices)
                for result in results:
                    next_attempt += 1
                    if result is not None:
                        accepted.append(result)
                        bar.update(1)
                        if len(accepted) == count:
                            break
                if time.monotonic() - last_save > SAVE_SECONDS:
                    _save_progress(state_path, next_attempt, accepted)
                    last_save = time.monotonic()
        _save_progress(state_path, next_attempt, accepted)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return accepted
