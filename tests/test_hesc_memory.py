"""Episodic memory bank: top-k reader against NumPy, empty bank, replacement order, touches, gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax.hesc.memory import MemoryBank, MemoryReader, memory_init, memory_metrics, memory_touch, memory_write

D, H, TOP_K, M = 32, 2, 3, 8
write = jax.jit(memory_write)
touch = jax.jit(memory_touch)


def _normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _apply(reader):
    return jax.jit(reader.apply)


def _reader_and_params(similarity="cosine", seed=0):
    reader = MemoryReader(D, TOP_K, H, similarity=similarity)
    params = jax.jit(reader.init)(jax.random.PRNGKey(seed), np.zeros((1, 2, D), np.float32), memory_init(M, D))["params"]
    return reader, params


def _bank(num_filled, seed=1, values=None):
    keys = _normal(seed, (num_filled, D))
    values = _normal(seed + 1, (num_filled, D)) if values is None else values
    scores = np.arange(num_filled, dtype=np.float32)
    return write(memory_init(M, D), keys, values, scores, np.ones(num_filled, bool), 1)


def _np_read(params, h, bank, similarity):
    """NumPy statement of the read: shared query/key projection, top-k on the head-mean
    similarity, per-head softmax over the valid chosen slots, gated add."""
    p = jax.tree_util.tree_map(np.asarray, params)
    Kh = D // H
    h = np.asarray(h, np.float64)
    keys, values, filled = (np.asarray(x) for x in (bank.keys, bank.values, bank.filled))
    q, k = h @ p["q_proj"]["kernel"], keys @ p["q_proj"]["kernel"]
    q, k = q.reshape(*q.shape[:-1], H, Kh), k.reshape(M, H, Kh)
    if similarity == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-30)
        k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-30)
        scale = np.exp(p["logit_scale"])
    else:
        scale = np.full(H, 1 / np.sqrt(Kh))
    per_head = np.einsum("bshd,mhd->bsmh", q, k) * scale  # [B, S, M, H]
    sel = np.einsum("bshd,mhd->bsm", q, k) / H * (1.0 if similarity == "cosine" else 1 / np.sqrt(Kh))
    sel = np.where(filled, sel, -np.inf)
    idx = np.argsort(-sel, axis=-1, kind="stable")[..., :TOP_K]
    valid = filled[idx]
    logits = np.take_along_axis(per_head, idx[..., None], axis=2)  # [B, S, k, H]
    logits = np.where(valid[..., None], logits, -np.inf)
    w = np.exp(logits - logits.max(2, keepdims=True))
    w = np.nan_to_num(w / w.sum(2, keepdims=True))
    v = (values @ p["v_proj"]["kernel"]).reshape(M, H, Kh)
    read = np.einsum("bskh,bskhd->bshd", w, v[idx]).reshape(*h.shape[:-1], D) @ p["o_proj"]["kernel"]
    gate_in = np.concatenate([h, read], axis=-1)
    gate = 1 / (1 + np.exp(-(gate_in @ p["gate_proj"]["kernel"] + p["gate_proj"]["bias"])))
    sim = np.where(valid[..., 0], np.take_along_axis(sel, idx[..., :1], -1)[..., 0], 0.0)
    return h + gate * read, idx, sim


@pytest.mark.parametrize("similarity,num_filled", [("cosine", 6), ("cosine", 2), ("dot", 6)])
def test_read_equals_numpy(similarity, num_filled):
    reader, params = _reader_and_params(similarity)
    # A non-trivial gate kernel so the gate's input path is checked too.
    params = {**params, "gate_proj": {**params["gate_proj"], "kernel": _normal(5, (2 * D, 1)) * 0.1}}
    bank = _bank(num_filled)
    h = _normal(3, (2, 4, D))
    h_out, info = _apply(reader)({"params": params}, h, bank)
    ref_out, ref_idx, ref_sim = _np_read(params, h, bank, similarity)
    np.testing.assert_allclose(np.asarray(h_out), ref_out, rtol=1e-4, atol=1e-5)
    valid = np.asarray(info["valid"])
    np.testing.assert_array_equal(valid, np.asarray(bank.filled)[ref_idx])
    np.testing.assert_array_equal(np.asarray(info["indices"])[valid], ref_idx[valid])  # empty picks are arbitrary
    np.testing.assert_allclose(np.asarray(info["similarity"]), ref_sim, rtol=1e-4, atol=1e-5)
    assert info["indices"].shape == (2, 4, TOP_K) and info["indices"].dtype == jnp.int32
    np.testing.assert_allclose(float(info["read_norm"]),
                               np.linalg.norm(np.asarray(h_out) - h, axis=-1).mean(), rtol=1e-4)


def test_written_value_is_retrieved_by_its_key():
    values = np.eye(D, dtype=np.float32)[:5] * 4.0  # one-hot values: the read's coordinates are the weights
    keys = _normal(11, (5, D))
    bank = write(memory_init(M, D), keys, values, np.zeros(5, np.float32), np.ones(5, bool), 1)
    slot_of = [int(np.flatnonzero((np.asarray(bank.keys) == k).all(-1))[0]) for k in keys]
    reader, params = _reader_and_params()
    eye = np.eye(D, dtype=np.float32)
    params = {**params, "v_proj": {"kernel": eye}, "o_proj": {"kernel": eye},
              "gate_proj": {"kernel": np.zeros((2 * D, 1), np.float32), "bias": np.full((1,), 30.0, np.float32)}}
    h = keys[None, [2, 4]]  # queries equal to the keys of rows 2 and 4
    h_out, info = _apply(reader)({"params": params}, h, bank)
    read = np.asarray(h_out - h)[0]  # gate ~ 1
    for pos, row in enumerate([2, 4]):
        assert int(info["indices"][0, pos, 0]) == slot_of[row]
        np.testing.assert_allclose(float(info["similarity"][0, pos]), 1.0, rtol=1e-5)
        weights = read[pos, :5] / 4.0
        assert weights[row] > 0.9 and weights.argmax() == row
        assert np.linalg.norm(read[pos] - values[row]) < np.linalg.norm(read[pos] - values[(row + 1) % 5])


def test_empty_bank_reads_exactly_zero_without_nan():
    reader, params = _reader_and_params()
    h = _normal(4, (2, 3, D))
    h_out, info = _apply(reader)({"params": params}, h, memory_init(M, D))
    np.testing.assert_array_equal(np.asarray(h_out), h)
    # Slots marked empty are ignored whatever stale content they hold.
    stale = memory_init(M, D).replace(keys=_normal(9, (M, D)), values=_normal(10, (M, D)))
    h_stale, _ = _apply(reader)({"params": params}, h, stale)
    np.testing.assert_array_equal(np.asarray(h_stale), h)
    assert float(info["read_norm"]) == 0.0 and not np.asarray(info["valid"]).any()
    np.testing.assert_array_equal(np.asarray(info["similarity"]), 0.0)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(reader.apply({"params": p}, h, memory_init(M, D))[0] ** 2)))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_closed_gate_at_init_barely_perturbs():
    reader, params = _reader_and_params()
    bank = _bank(M)
    h = _normal(6, (1, 4, D))
    h_out, info = _apply(reader)({"params": params}, h, bank)
    closed = 1 / (1 + np.exp(2.0))
    np.testing.assert_allclose(float(info["gate_mean"]), closed, rtol=1e-5)
    opened = {**params, "gate_proj": {**params["gate_proj"], "bias": np.full((1,), 40.0, np.float32)}}
    h_open, _ = _apply(reader)({"params": opened}, h, bank)
    read = np.asarray(h_open) - h
    assert np.linalg.norm(read) > 0
    np.testing.assert_allclose(np.asarray(h_out) - h, closed * read, rtol=1e-4, atol=1e-6)


def test_read_is_differentiable_wrt_params_not_bank():
    reader, params = _reader_and_params()
    bank = _bank(6)
    h = _normal(7, (2, 3, D))
    w = _normal(8, (2, 3, D))

    def loss(params, keys, values):
        out, _ = reader.apply({"params": params}, h, bank.replace(keys=keys, values=values))
        return jnp.sum(out * w)

    g_params, g_keys, g_values = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, bank.keys, bank.values)
    for path, g in jax.tree_util.tree_leaves_with_path(g_params):
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(g_keys), 0.0)
    np.testing.assert_array_equal(np.asarray(g_values), 0.0)


def test_write_fills_empty_slots_first_then_lowest_score_then_oldest():
    keys = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, D), np.float32)
    bank = write(memory_init(4, D), keys[:2], keys[:2], np.array([1.0, 2.0], np.float32), np.ones(2, bool), 3)
    np.testing.assert_array_equal(np.asarray(bank.filled), [True, True, False, False])
    assert set(np.asarray(bank.keys)[:2, 0]) == {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(bank.last_access), [3, 3, 0, 0])

    full = MemoryBank(keys=np.zeros((4, D), np.float32), values=np.zeros((4, D), np.float32),
                      scores=np.array([3.0, 1.0, 1.0, 2.0], np.float32), last_access=np.array([0, 7, 4, 1], np.int32),
                      access_count=np.array([5, 5, 5, 5], np.int32), filled=np.ones(4, bool))
    new = np.full((3, D), 9.0, np.float32)
    expected_order = [2, 1, 3]  # score 1 accessed at 4, score 1 accessed at 7, score 2
    for n in (1, 2, 3):
        out = write(full, new[:n], new[:n], np.full(n, 5.0, np.float32), np.ones(n, bool), 11)
        written = np.flatnonzero(np.asarray(out.keys)[:, 0] == 9.0)
        np.testing.assert_array_equal(np.sort(written), np.sort(expected_order[:n]))
        np.testing.assert_array_equal(np.asarray(out.last_access)[written], 11)
        np.testing.assert_array_equal(np.asarray(out.access_count)[written], 0)
        np.testing.assert_array_equal(np.asarray(out.scores)[written], 5.0)
        untouched = np.setdiff1d(np.arange(4), written)
        np.testing.assert_array_equal(np.asarray(out.access_count)[untouched], 5)

    # An empty slot beats the lowest score.
    holed = full.replace(filled=np.array([True, True, True, False]))
    out = write(holed, new[:2], new[:2], np.full(2, 5.0, np.float32), np.ones(2, bool), 11)
    np.testing.assert_array_equal(np.sort(np.flatnonzero(np.asarray(out.keys)[:, 0] == 9.0)), [2, 3])
    assert np.asarray(out.filled).all()


def test_many_rows_in_one_write_take_distinct_slots_and_best_scores_win():
    bank = _bank(M)  # full
    n = M + 3
    keys = 100.0 + np.arange(n, dtype=np.float32)[:, None] * np.ones((1, D), np.float32)
    scores = _normal(12, (n,))
    valid = np.ones(n, bool)
    valid[[0, 5]] = False
    out = write(bank, keys, keys * 2, scores, valid, 20)
    stored = np.asarray(out.keys)[:, 0]
    assert len(set(stored)) == M  # distinct slots
    rows = np.flatnonzero(valid)
    best = rows[np.argsort(-scores[rows])[:M]]
    np.testing.assert_array_equal(np.sort(stored), np.sort(keys[best, 0]))
    for slot, key in enumerate(stored):
        row = int(key - 100.0)
        np.testing.assert_allclose(np.asarray(out.values)[slot], keys[row] * 2)
        assert float(out.scores[slot]) == scores[row]
    # Invalid rows alone write nothing.
    same = write(bank, keys, keys, scores, np.zeros(n, bool), 21)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(bank)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_touch_updates_access_statistics():
    bank = _bank(3)  # slots 0..2 filled, rest empty
    indices = np.array([[0, 0, 2], [3, 2, 1]], np.int32)
    valid = np.array([[True, True, True], [True, True, False]])
    out = touch(bank, indices, 9, valid)
    np.testing.assert_array_equal(np.asarray(out.last_access)[:4], [9, 1, 9, 0])  # 1 masked, 3 empty
    np.testing.assert_array_equal(np.asarray(out.access_count)[:4], [1, 0, 1, 0])  # duplicates count once
    out = touch(out, indices, 10, None)
    np.testing.assert_array_equal(np.asarray(out.last_access)[:4], [10, 10, 10, 0])
    np.testing.assert_array_equal(np.asarray(out.access_count)[:4], [2, 1, 2, 0])
    np.testing.assert_array_equal(np.asarray(out.keys), np.asarray(bank.keys))


def test_memory_metrics():
    bank = touch(_bank(3), np.array([0, 0, 2], np.int32), 5, None)
    m = memory_metrics(bank)
    np.testing.assert_allclose(float(m["memory_fill"]), 3 / M)
    np.testing.assert_allclose(float(m["memory_score_mean"]), 1.0)  # scores 0, 1, 2
    np.testing.assert_allclose(float(m["memory_access_mean"]), 2 / 3)
    assert float(memory_metrics(memory_init(M, D))["memory_score_mean"]) == 0.0
