"""Deterministic rejection sampling of puzzles, optionally on several CPU cores.

A generator is a picklable function ``attempt(j) -> result | None`` whose randomness is
seeded from the attempt number ``j`` alone. ``accept_first`` runs attempts 0, 1, 2, ... and
returns the first ``count`` accepted results in attempt order, so the output is the same
for any number of workers.
"""
from __future__ import annotations

import multiprocessing
import random
import sys
from typing import Callable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


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
    accepted: list[T] = []
    next_attempt = 0
    pool = None
    if num_workers > 1 and count > 1:
        # fork is cheapest, but forking a process in which JAX runs its threads can deadlock:
        # then start fresh interpreters (the attempt functions live in light modules).
        method = "fork" if sys.platform.startswith("linux") and "jax" not in sys.modules else "spawn"
        pool = multiprocessing.get_context(method).Pool(num_workers)
    try:
        with tqdm(total=count, desc=desc, unit="puzzle", leave=False) as bar:
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
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return accepted
