"""VQ concept codebook: nearest codes, straight-through, losses, statistics, EMA, restarts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trm_jax.hesc.vq import (VectorQuantizer, VQStats, codebook_metrics, dead_code_count, ema_codebook,
                             restart_dead_codes, vq_stats_init, vq_stats_update)

K, D = 16, 8


@functools.lru_cache(maxsize=None)
def _apply(vq):
    """One jitted forward per quantiser config (eager op-by-op dispatch is slow on CPU)."""
    return jax.jit(vq.apply)


def _normal(seed, shape):
    """Test data from NumPy (eager jax.random ops would each compile on CPU)."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _init(vq, z, seed=0):
    return jax.jit(vq.init)(jax.random.PRNGKey(seed), z)


def _np_perplexity(counts):
    p = counts / counts.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_codes_are_numpy_nearest_and_zq_is_the_code(chunk_size):
    vq = VectorQuantizer(K, D, chunk_size=chunk_size)
    z = _normal(1, (3, 10, D))
    variables = _init(vq, z)
    z_q, codes, _ = _apply(vq)(variables, z)
    cb = np.asarray(variables["params"]["codebook"])
    dist = ((np.asarray(z)[..., None, :] - cb) ** 2).sum(-1)
    assert codes.shape == (3, 10) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(codes), dist.argmin(-1))
    np.testing.assert_allclose(np.asarray(z_q), cb[np.asarray(codes)], rtol=1e-6, atol=1e-6)


def test_straight_through_gradient_reaches_the_encoder():
    vq = VectorQuantizer(K, D)
    z = _normal(2, (4, 5, D))
    w = _normal(3, z.shape)
    variables = _init(vq, z)
    grad_z = jax.jit(jax.grad(lambda z: jnp.sum(vq.apply(variables, z)[0] * w)))(z)
    np.testing.assert_allclose(np.asarray(grad_z), np.asarray(w), rtol=1e-6)


def test_losses_and_codebook_gradient_equal_numpy():
    vq = VectorQuantizer(K, D, commitment_cost=0.25)
    z = _normal(4, (6, 7, D))
    variables = _init(vq, z)
    _, codes, aux = _apply(vq)(variables, z)
    zn, cb, cn = np.asarray(z).reshape(-1, D), np.asarray(variables["params"]["codebook"]), np.asarray(codes).reshape(-1)
    mse = ((zn - cb[cn]) ** 2).mean()
    np.testing.assert_allclose(float(aux["codebook_loss"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(aux["commitment_loss"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss"]), 1.25 * mse, rtol=1e-5)

    # d loss / d codebook: only the codebook term reaches the codebook, -2 (z - c) / (N D) per row.
    g = jax.jit(jax.grad(lambda p: vq.apply({"params": p}, z)[2]["loss"]))(variables["params"])["codebook"]
    expected = np.zeros_like(cb)
    np.add.at(expected, cn, -2.0 * (zn - cb[cn]) / zn.size)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-4, atol=1e-7)
    # d loss / d z: only the commitment term, 0.25 * 2 (z - c) / (N D) (plus the straight-through 0).
    gz = jax.jit(jax.grad(lambda z: vq.apply(variables, z)[2]["loss"]))(z)
    np.testing.assert_allclose(np.asarray(gz).reshape(-1, D), 0.5 * (zn - cb[cn]) / zn.size, rtol=1e-4, atol=1e-8)


def test_codebook_moves_towards_assigned_vectors_under_optax():
    vq = VectorQuantizer(K, D)
    z = _normal(5, (64, D)) + 3.0
    params = _init(vq, z)["params"]
    cb0, codes0 = np.asarray(params["codebook"]), np.asarray(_apply(vq)({"params": params}, z)[1])
    opt = optax.adam(0.2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: vq.apply({"params": p}, z)[2]["codebook_loss"])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(20):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # The codes that were chosen moved towards the mean of the vectors assigned to them.
    used = np.unique(codes0)
    means = np.stack([np.asarray(z)[codes0 == c].mean(0) for c in used])
    before = np.linalg.norm(cb0[used] - means, axis=-1)
    after = np.linalg.norm(np.asarray(params["codebook"])[used] - means, axis=-1)
    assert np.all(after < before)


def test_counts_sums_perplexity_usage_on_known_assignment():
    vq = VectorQuantizer(K, D)
    cb = _normal(6, (K, D)) * 5.0
    assign = np.array([0, 0, 0, 3, 3, 5, 9, 9, 9, 9, 2])
    noise = _normal(7, (assign.size, D)) * 0.01
    z = cb[assign] + noise
    _, codes, aux = _apply(vq)({"params": {"codebook": jnp.asarray(cb)}}, z)
    np.testing.assert_array_equal(np.asarray(codes), assign)
    counts = np.bincount(assign, minlength=K).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(aux["counts"]), counts)
    sums = np.zeros((K, D), np.float32)
    np.add.at(sums, assign, np.asarray(z))
    np.testing.assert_allclose(np.asarray(aux["sums"]), sums, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(aux["perplexity"]), _np_perplexity(counts), rtol=1e-5)
    np.testing.assert_allclose(float(aux["usage"]), 5 / K)
    metrics = codebook_metrics(aux["counts"])
    np.testing.assert_allclose(float(metrics["vq_perplexity"]), _np_perplexity(counts), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["vq_usage"]), 5 / K)


def test_masked_positions_are_ignored():
    vq = VectorQuantizer(K, D)
    z = _normal(8, (2, 9, D))
    mask = np.random.default_rng(9).random((2, 9)) < 0.6
    variables = _init(vq, z)
    z_garbage = np.where(mask[..., None], z, 1e3).astype(np.float32)  # masked positions far from every code
    _, _, aux_m = _apply(vq)(variables, z_garbage, mask)
    _, _, aux_ref = _apply(vq)(variables, z[mask])
    for name in ("loss", "codebook_loss", "commitment_loss", "perplexity", "usage"):
        np.testing.assert_allclose(float(aux_m[name]), float(aux_ref[name]), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(aux_m["counts"]), np.asarray(aux_ref["counts"]))
    np.testing.assert_allclose(np.asarray(aux_m["sums"]), np.asarray(aux_ref["sums"]), rtol=1e-6, atol=1e-6)
    assert float(aux_m["counts"].sum()) == float(mask.sum())
    # A fully masked call is finite: no loss, perplexity 1, usage 0.
    _, _, aux0 = _apply(vq)(variables, z, np.zeros((2, 9), bool))
    assert float(aux0["loss"]) == 0.0 and float(aux0["perplexity"]) == 1.0 and float(aux0["usage"]) == 0.0


def test_bfloat16_activations_keep_dtype_and_codes():
    vq = VectorQuantizer(K, D)
    z = jnp.asarray(_normal(10, (3, 4, D)), jnp.bfloat16)
    variables = _init(vq, z)
    z_q, codes, aux = _apply(vq)(variables, z)
    assert z_q.dtype == jnp.bfloat16 and aux["loss"].dtype == jnp.float32
    cb = np.asarray(variables["params"]["codebook"])
    dist = ((np.asarray(z.astype(jnp.float32))[..., None, :] - cb) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(codes), dist.argmin(-1))


def test_ema_mode_codebook_is_a_variable_and_loss_is_commitment_only():
    vq = VectorQuantizer(K, D, commitment_cost=0.5, use_ema=True)
    z = _normal(11, (5, D))
    variables = _init(vq, z)
    assert "params" not in variables or "codebook" not in variables.get("params", {})
    cb = variables["buffers"]["codebook"]
    assert cb.shape == (K, D)
    _, codes, aux = _apply(vq)(variables, z)
    np.testing.assert_allclose(float(aux["loss"]), 0.5 * float(aux["commitment_loss"]), rtol=1e-6)
    # The train step swaps in a new codebook: the forward reads it.
    new_cb = np.asarray(cb)[::-1].copy()
    _, codes_new, _ = _apply(vq)({"buffers": {"codebook": new_cb}}, z)
    np.testing.assert_array_equal(np.asarray(codes_new), K - 1 - np.asarray(codes))


def test_ema_codebook_after_updates_equals_numpy():
    rng = np.random.default_rng(0)
    cb0 = rng.normal(size=(K, D)).astype(np.float32)
    stats = vq_stats_init(K, D, jnp.asarray(cb0))
    np.testing.assert_allclose(np.asarray(ema_codebook(stats)), cb0, rtol=1e-6)

    decay, eps = 0.9, 1e-5
    n_np, s_np, u_np = np.ones(K), cb0.astype(np.float64).copy(), np.zeros(K)
    unused = np.zeros(K, np.int64)
    update = jax.jit(vq_stats_update, static_argnames="decay")
    for _ in range(4):
        counts = rng.integers(0, 3, size=K).astype(np.float32)
        sums = rng.normal(size=(K, D)).astype(np.float32) * counts[:, None]
        stats = update(stats, jnp.asarray(counts), jnp.asarray(sums), decay=decay)
        n_np = decay * n_np + (1 - decay) * counts
        s_np = decay * s_np + (1 - decay) * sums
        u_np = decay * u_np + (1 - decay) * counts
        unused = np.where(counts > 0, 0, unused + 1)
    total = n_np.sum()
    smoothed = (n_np + eps) / (total + K * eps) * total
    np.testing.assert_allclose(np.asarray(ema_codebook(stats, eps)), s_np / smoothed[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.usage), u_np, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(stats.steps_unused), unused)


def test_restart_replaces_exactly_the_dead_codes_with_candidates():
    rng = np.random.default_rng(1)
    cb = jnp.asarray(rng.normal(size=(K, D)).astype(np.float32))
    steps_unused = np.array([0, 5, 2, 9, 3, 4, 0, 0, 12, 1, 0, 0, 3, 7, 0, 0], np.int32)
    stats = vq_stats_init(K, D, cb).replace(usage=np.full((K,), 0.3, np.float32), ema_count=np.full((K,), 2.0, np.float32),
                                             steps_unused=jnp.asarray(steps_unused))
    candidates = jnp.asarray(rng.normal(size=(10, D)).astype(np.float32))
    cand_mask = jnp.asarray(np.arange(10) % 2 == 0)  # only even rows are real
    restart = jax.jit(restart_dead_codes, static_argnames="max_unused_steps")
    new_cb, new_stats, n = restart(cb, stats, candidates, jax.random.PRNGKey(0), max_unused_steps=3,
                                   candidate_mask=cand_mask)
    dead = steps_unused > 3
    assert int(n) == dead.sum() == int(dead_code_count(stats, 3))
    new_cb, cb_np, cand = np.asarray(new_cb), np.asarray(cb), np.asarray(candidates)
    np.testing.assert_array_equal(new_cb[~dead], cb_np[~dead])
    picked = [int(np.argmin(((cand - row) ** 2).sum(-1))) for row in new_cb[dead]]
    for row, j in zip(new_cb[dead], picked):
        np.testing.assert_array_equal(row, cand[j])
    assert all(j % 2 == 0 for j in picked) and len(set(picked)) == len(picked)  # valid and distinct
    np.testing.assert_array_equal(np.asarray(new_stats.steps_unused), np.where(dead, 0, steps_unused))
    np.testing.assert_array_equal(np.asarray(new_stats.usage), np.where(dead, 0.0, 0.3).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(new_stats.ema_count), np.where(dead, 1.0, 2.0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(new_stats.ema_sum)[dead], new_cb[dead])
    assert isinstance(new_stats, VQStats)

    # No valid candidate: nothing restarts.
    cb2, _, n2 = restart(cb, stats, candidates, jax.random.PRNGKey(0), max_unused_steps=3,
                         candidate_mask=jnp.zeros((10,), bool))
    assert int(n2) == 0
    np.testing.assert_array_equal(np.asarray(cb2), cb_np)


def test_stats_from_forward_drive_restart_in_a_jitted_step():
    """The intended train-step flow: forward -> update stats -> restart; codes never hit become fresh."""
    vq = VectorQuantizer(K, D)
    z = _normal(12, (32, D)) * 0.1  # close to the origin
    params = _init(vq, z)["params"]
    stats = vq_stats_init(K, D)

    @jax.jit
    def step(params, stats, key):
        _, _, aux = vq.apply({"params": params}, z)
        stats = vq_stats_update(stats, aux["counts"], aux["sums"])
        cb, stats, n = restart_dead_codes(params["codebook"], stats, z, key, max_unused_steps=2)
        return {"codebook": cb}, stats, n, aux["usage"]

    usage0 = None
    for i in range(4):
        params, stats, n, usage = step(params, stats, jax.random.PRNGKey(i))
        usage0 = usage if usage0 is None else usage0
    # After the restart (step 3) the restarted codes are data points, so usage goes up.
    _, _, aux = _apply(vq)({"params": params}, z)
    assert float(aux["usage"]) > float(usage0)


@pytest.mark.parametrize("use_ema", [False, True])
def test_pure_forward_inside_nn_scan(use_ema):
    """The H-cycle use: ``nn.scan`` with the codebook broadcast; no mutable collection needed."""
    import flax.linen as nn

    class Cycles(nn.Module):
        @nn.compact
        def __call__(self, z):
            def body(vq, z, _):
                z_q, codes, aux = vq(z)
                return 0.5 * z + 0.5 * z_q, (codes, aux["counts"])

            scan = nn.scan(body, variable_broadcast=["params", "buffers"], split_rngs={"params": False}, length=3)
            return scan(VectorQuantizer(K, D, use_ema=use_ema, name="vq"), z, None)

    z = _normal(13, (2, 5, D))
    model = Cycles()
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), z)
    z_out, (codes, counts) = jax.jit(model.apply)(variables, z)
    assert codes.shape == (3, 2, 5) and counts.shape == (3, K)
    np.testing.assert_array_equal(np.asarray(counts).sum(-1), 10.0)
    # Cycle by cycle equals three direct calls on the same codebook.
    vq = VectorQuantizer(K, D, use_ema=use_ema)
    inner = {c: v["vq"] for c, v in variables.items()}
    zz = z
    for t in range(3):
        z_q, c, _ = _apply(vq)(inner, zz)
        np.testing.assert_array_equal(np.asarray(codes[t]), np.asarray(c))
        zz = 0.5 * zz + 0.5 * z_q
    np.testing.assert_allclose(np.asarray(z_out), np.asarray(zz), rtol=1e-6)
