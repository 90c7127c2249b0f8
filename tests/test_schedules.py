"""Tests for trm_jax.schedules: reference lr schedule and ratio-based annealing."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax import schedules


def reference_lr(step: int, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Transcription of the reference's cosine_schedule_with_warmup_lr_lambda (num_cycles=0.5)."""
    if step < warmup:
        return base_lr * float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


# --------------------------------------------------------------------------- #
# Learning rate
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "base_lr,warmup,total,min_ratio",
    [(1e-4, 2000, 50_000, 1.0), (7e-4, 100, 1000, 0.1), (1e-2, 0, 300, 0.0), (1e-3, 50, 40, 0.1)],
)
def test_reference_lr_matches_transcription(base_lr, warmup, total, min_ratio):
    sched = jax.jit(schedules.reference_lr_schedule(base_lr, warmup, total, min_ratio))
    steps = sorted(set(np.linspace(0, total, 257).astype(int).tolist()) | {0, 1, 2, warmup - 1, warmup, warmup + 1, total})
    steps = [s for s in steps if s >= 0]
    got = np.array([float(sched(jnp.int32(s))) for s in steps])
    want = np.array([reference_lr(s, base_lr, warmup, total, min_ratio) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * base_lr)


def test_lr_landmarks_and_shift():
    base_lr, warmup, total, min_ratio = 1e-4, 2000, 10_000, 0.1
    sched = schedules.warmup_cosine_lr_schedule(base_lr, warmup, total, min_ratio)
    # optax count 0 is the reference's step 1: lr / warmup, not 0; tight because no cancellation.
    np.testing.assert_allclose(float(sched(0)), base_lr / warmup, rtol=1e-6)
    np.testing.assert_allclose(float(sched(warmup - 1)), base_lr, rtol=1e-6)  # peak at step W
    np.testing.assert_allclose(float(sched(total - 1)), base_lr * min_ratio, rtol=1e-6)  # floor at step T
    np.testing.assert_allclose(float(sched(5 * total)), base_lr * min_ratio, rtol=1e-6)  # held after
    counts = jnp.arange(0, total, 37)
    ref = schedules.reference_lr_schedule(base_lr, warmup, total, min_ratio)
    np.testing.assert_array_equal(np.asarray(jax.vmap(sched)(counts)), np.asarray(ref(counts + 1)))


def test_warmup_rounds_like_reference():
    # The reference rounds lr_warmup_steps: 10.4 -> 10.
    sched = schedules.reference_lr_schedule(1.0, 10.4, 100, 0.0)
    np.testing.assert_allclose(float(sched(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)


def test_compute_total_steps():
    # int(epochs * total_groups * mean_puzzle_examples / global_batch_size), truncating.
    assert schedules.compute_total_steps(100, 1000, 3.3, 768) == int(100 * 1000 * 3.3 / 768)
    assert schedules.compute_total_steps(1, 10, 1.0, 3) == 3
    with pytest.raises(ValueError):
        schedules.compute_total_steps(1, 10, 1.0, 0)


# --------------------------------------------------------------------------- #
# Annealing
# --------------------------------------------------------------------------- #
def closed_form(kind: str, start: float, end: float, step: float, total: int, r0: float, r1: float) -> float:
    b, e = r0 * total, r1 * total
    t = min(max((step - b) / (e - b), 0.0), 1.0) if e > b else float(step >= b)
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))
    if kind == "exponential":
        return start * (end / start) ** t
    return start


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
@pytest.mark.parametrize("r0,r1", [(0.0, 0.1), (0.2, 0.7), (0.5, 1.0)])
def test_anneal_matches_closed_form(kind, r0, r1):
    total, start, end = 1000, 1.0, 0.05
    b, e = r0 * total, r1 * total
    steps = [0, int(b), int(b) + 1, int((b + e) / 2), int(b + 0.25 * (e - b)), int(e) - 1, int(e), int(e) + 1, total, 3 * total]
    fn = jax.jit(schedules.make_annealer(kind, start, end, total, start_ratio=r0, end_ratio=r1))
    for s in steps:
        want = closed_form(kind, start, end, s, total, r0, r1)
        np.testing.assert_allclose(float(fn(jnp.int32(s))), want, rtol=1e-5, atol=1e-6, err_msg=f"{kind} step {s}")
        direct = schedules.anneal(kind, start=start, end=end, step=s, total_steps=total, start_ratio=r0, end_ratio=r1)
        np.testing.assert_allclose(float(direct), want, rtol=1e-5, atol=1e-6)
    # Exactly start at/before the window, exactly end at/after it.
    assert float(fn(int(b))) == pytest.approx(start, abs=1e-7)
    assert float(fn(int(e))) == pytest.approx(end, abs=1e-6)


def test_anneal_increasing_and_dtype():
    # Temperature going up (start < end), cosine, mid-point is the mean.
    v = schedules.anneal("cosine", start=0.5, end=2.0, step=jnp.int32(50), total_steps=100)
    assert v.dtype == jnp.float32 and v.shape == ()
    np.testing.assert_allclose(float(v), 1.25, rtol=1e-6)
    v = schedules.anneal("exponential", start=0.1, end=10.0, step=50, total_steps=100)
    np.testing.assert_allclose(float(v), 1.0, rtol=1e-5)
    assert float(schedules.anneal("exponential", start=0.1, end=10.0, step=10**6, total_steps=100)) == pytest.approx(10.0)


def test_anneal_zero_length_window_and_constant():
    fn = schedules.make_annealer("linear", 1.0, 0.0, total_steps=100, start_ratio=0.3, end_ratio=0.3)
    assert [float(fn(s)) for s in (0, 29, 30, 31)] == [1.0, 1.0, 0.0, 0.0]
    const = schedules.make_annealer("constant", 3.0, 0.0, total_steps=100)
    assert [float(const(s)) for s in (0, 50, 500)] == [3.0, 3.0, 3.0]


def test_anneal_vmaps_over_steps():
    fn = schedules.make_annealer("linear", 1.0, 0.0, total_steps=10)
    np.testing.assert_allclose(np.asarray(jax.vmap(fn)(jnp.arange(12))), np.clip(1 - np.arange(12) / 10, 0, 1), atol=1e-6)


def test_anneal_rejects_bad_arguments():
    with pytest.raises(ValueError):
        schedules.make_annealer("quadratic", 1.0, 0.0, 10)
    with pytest.raises(ValueError):
        schedules.make_annealer("linear", 1.0, 0.0, 10, start_ratio=0.6, end_ratio=0.5)
    with pytest.raises(ValueError):
        schedules.make_annealer("exponential", 1.0, 0.0, 10)
    with pytest.raises(ValueError):
        schedules.make_annealer("exponential", -1.0, 1.0, 10)
