"""Tests for trm_jax.hesc.replay: ring writes, prioritized sampling, IS weights, priority updates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax.hesc.replay import (
    ReplayBuffer,
    replay_add,
    replay_init,
    replay_sample,
    replay_update_priorities,
)

D, H = 3, 2
EXAMPLE = {"x": jnp.zeros(D), "h": jnp.zeros(H, jnp.int32)}

add = jax.jit(replay_add)
sample = jax.jit(replay_sample, static_argnames="batch_size")
update = jax.jit(replay_update_priorities)


def make_rows(start: int, n: int):
    """Rows whose every field encodes the row id ``start + i`` so slots can be identified."""
    ids = np.arange(start, start + n)
    state = {"x": np.tile(ids[:, None], (1, D)).astype(np.float32), "h": np.tile(ids[:, None], (1, H)).astype(np.int32)}
    nxt = {"x": state["x"] + 0.5, "h": state["h"] + 1000}
    return ids, state, (ids % 3).astype(np.int32), ids.astype(np.float32) * 0.1, nxt, ids % 2 == 0


class NumpyRing:
    """Reference ring buffer: a slot array of row ids written in order, wrapping."""

    def __init__(self, capacity: int):
        self.slots = np.full(capacity, -1)
        self.prio = np.zeros(capacity, np.float32)
        self.pointer = 0
        self.size = 0

    def add(self, ids, valid, max_priority):
        for i, v in zip(ids, valid):
            if v:
                self.slots[self.pointer] = i
                self.prio[self.pointer] = max_priority
                self.pointer = (self.pointer + 1) % len(self.slots)
                self.size = min(self.size + 1, len(self.slots))


def check_against(buf: ReplayBuffer, ref: NumpyRing):
    assert int(buf.pointer) == ref.pointer
    assert int(buf.size) == ref.size
    np.testing.assert_allclose(np.asarray(buf.priority), ref.prio)
    filled = ref.slots >= 0
    ids = ref.slots[filled]
    np.testing.assert_array_equal(np.asarray(buf.state["x"])[filled], np.tile(ids[:, None], (1, D)))
    np.testing.assert_array_equal(np.asarray(buf.state["h"])[filled], np.tile(ids[:, None], (1, H)))
    np.testing.assert_array_equal(np.asarray(buf.next_state["h"])[filled], np.tile(ids[:, None], (1, H)) + 1000)
    np.testing.assert_array_equal(np.asarray(buf.action)[filled], ids % 3)
    np.testing.assert_allclose(np.asarray(buf.reward)[filled], ids * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(buf.done)[filled], ids % 2 == 0)
    # Slots never written stay zero with zero priority.
    assert not np.asarray(buf.state["x"])[~filled].any()
    assert not np.asarray(buf.priority)[~filled].any()


def test_init_shapes_and_dtypes():
    buf = replay_init(7, EXAMPLE)
    assert buf.capacity == 7
    assert buf.state["x"].shape == (7, D) and buf.state["x"].dtype == jnp.float32
    assert buf.state["h"].shape == (7, H) and buf.state["h"].dtype == jnp.int32
    assert buf.action.dtype == jnp.int32 and buf.done.dtype == jnp.bool_
    assert int(buf.size) == 0 and int(buf.pointer) == 0 and float(buf.max_priority) == 1.0


def test_add_wraps_in_ring_order_and_skips_invalid_rows():
    C = 5
    buf, ref = replay_init(C, EXAMPLE), NumpyRing(C)
    rng = np.random.default_rng(0)
    start = 0
    for n in (4, 3, 6, 2, 5):
        ids, s, a, r, ns, d = make_rows(start, n)
        valid = rng.random(n) < 0.7
        # Change max_priority between adds: new rows must take the current one.
        buf = buf.replace(max_priority=jnp.float32(1.0 + start))
        buf = add(buf, s, a, r, ns, d, valid)
        ref.add(ids, valid, 1.0 + start)
        check_against(buf, ref)
        start += n
    assert ref.size == C  # the sequence did wrap


def test_add_more_valid_rows_than_capacity_keeps_the_last_ones():
    C = 4
    buf, ref = replay_init(C, EXAMPLE), NumpyRing(C)
    ids, s, a, r, ns, d = make_rows(0, 2)
    buf = add(buf, s, a, r, ns, d, np.ones(2, bool))
    ref.add(ids, np.ones(2, bool), 1.0)
    ids, s, a, r, ns, d = make_rows(100, 11)
    valid = np.ones(11, bool)
    valid[[3, 9]] = False
    buf = add(buf, s, a, r, ns, d, valid)
    ref.add(ids, valid, 1.0)
    check_against(buf, ref)


def test_all_invalid_add_changes_nothing():
    buf = replay_init(4, EXAMPLE)
    _, s, a, r, ns, d = make_rows(0, 3)
    buf = add(buf, s, a, r, ns, d, np.array([True, False, True]))
    after = add(buf, *make_rows(50, 3)[1:], np.zeros(3, bool))
    for x, y in zip(jax.tree.leaves(buf), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def filled_buffer(priorities, capacity: int) -> ReplayBuffer:
    n = len(priorities)
    buf = replay_init(capacity, EXAMPLE)
    buf = add(buf, *make_rows(0, n)[1:], np.ones(n, bool))
    return buf.replace(priority=buf.priority.at[:n].set(jnp.asarray(priorities, jnp.float32)))


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_sampling_follows_priorities(alpha):
    prios = np.array([1.0, 0.0, 9.0, 4.0, 2.0, 0.5], np.float32)
    buf = filled_buffer(prios, capacity=10)  # slots 6..9 empty
    n = 40_000
    idx, batch, _ = sample(buf, jax.random.key(1), batch_size=n, alpha=alpha, beta=0.4)
    idx = np.asarray(idx)
    assert idx.shape == (n,) and idx.dtype == np.int32
    counts = np.bincount(idx, minlength=10)
    assert counts[1] == 0 and counts[6:].sum() == 0  # zero priority / empty slots never drawn
    p = prios ** alpha
    expected = n * p / p.sum()
    pos = expected > 0
    chi2 = np.sum((counts[:6][pos] - expected[pos]) ** 2 / expected[pos])
    assert chi2 < 20.5, (chi2, counts, expected)  # 4 dof: p(chi2 > 20.5) ~ 4e-4
    # The batch holds the sampled slots' contents.
    np.testing.assert_array_equal(np.asarray(batch["state"]["h"])[:, 0], idx)
    np.testing.assert_array_equal(np.asarray(batch["next_state"]["h"])[:, 0], idx + 1000)
    np.testing.assert_array_equal(np.asarray(batch["action"]), idx % 3)


@pytest.mark.parametrize("alpha,beta", [(0.6, 0.4), (1.0, 1.0), (0.0, 0.7)])
def test_importance_weights_match_numpy(alpha, beta):
    prios = np.array([1.0, 3.0, 9.0, 0.25, 2.0], np.float32)
    buf = filled_buffer(prios, capacity=8)
    idx, _, w = sample(buf, jax.random.key(2), batch_size=64, alpha=alpha, beta=beta)
    P = prios.astype(np.float64) ** alpha
    P /= P.sum()
    w_all = (len(prios) * P) ** -beta
    want = w_all[np.asarray(idx)] / w_all.max()
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-5)
    assert np.asarray(w).max() <= 1.0 + 1e-6


def test_uniform_when_alpha_zero():
    buf = filled_buffer(np.array([1.0, 100.0, 0.01], np.float32), capacity=3)
    idx, _, w = sample(buf, jax.random.key(3), batch_size=30_000, alpha=0.0, beta=1.0)
    freq = np.bincount(np.asarray(idx), minlength=3) / 30_000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.015)
    np.testing.assert_allclose(np.asarray(w), 1.0, rtol=1e-6)


def test_sampling_an_empty_buffer_is_safe():
    buf = replay_init(6, EXAMPLE)
    idx, batch, w = sample(buf, jax.random.key(0), batch_size=5, alpha=0.6, beta=0.4)
    assert idx.shape == (5,) and w.shape == (5,) and batch["state"]["x"].shape == (5, D)
    assert np.all(np.asarray(idx) == 0) and np.all(np.asarray(w) == 0.0)
    assert np.all(np.isfinite(np.asarray(batch["state"]["x"])))
    # Updating with the dummy draws must not mark empty slots as filled.
    buf2 = update(buf, idx, jnp.full(5, 7.0))
    assert not np.asarray(buf2.priority).any() and float(buf2.max_priority) == 1.0


def test_update_priorities_and_max_priority():
    buf = filled_buffer(np.ones(4, np.float32), capacity=6)
    idx = jnp.array([2, 0, 5], jnp.int32)  # slot 5 is empty: ignored
    td = jnp.array([-3.0, 0.5, 50.0])
    buf = update(buf, idx, td)
    np.testing.assert_allclose(np.asarray(buf.priority), [0.5 + 1e-6, 1.0, 3.0 + 1e-6, 1.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(float(buf.max_priority), 3.0 + 1e-6, rtol=1e-6)
    # max_priority never decreases, and new rows get it.
    buf = update(buf, jnp.array([2], jnp.int32), jnp.array([0.0]), eps=0.01)
    np.testing.assert_allclose(float(buf.priority[2]), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(buf.max_priority), 3.0 + 1e-6, rtol=1e-6)
    buf = add(buf, *make_rows(10, 1)[1:], np.ones(1, bool))
    np.testing.assert_allclose(float(buf.priority[4]), 3.0 + 1e-6, rtol=1e-6)


def test_add_sample_update_inside_one_jit():
    @jax.jit
    def step(buf, key, rows_x, td_scale):
        n = rows_x.shape[0]
        state = {"x": rows_x, "h": jnp.zeros((n, H), jnp.int32)}
        buf = replay_add(buf, state, jnp.zeros(n, jnp.int32), jnp.ones(n), state, jnp.zeros(n, bool),
                         jnp.arange(n) % 2 == 0)
        idx, batch, w = replay_sample(buf, key, 4, 0.6, 0.4)
        td = td_scale * jnp.sum(batch["state"]["x"], axis=-1)
        return replay_update_priorities(buf, idx, td), w

    buf = replay_init(5, EXAMPLE)
    for i in range(4):
        buf, w = step(buf, jax.random.key(i), jnp.full((4, D), float(i + 1)), 2.0)
        assert np.all(np.asarray(w) > 0) and np.all(np.asarray(w) <= 1.0 + 1e-6)
    assert int(buf.size) == 5 and int(buf.pointer) == 8 % 5
    assert np.all(np.asarray(buf.priority) > 0)
