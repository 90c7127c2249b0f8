"""Capsules: state and expansion, checksums, the grid encoder, the attention bias, the heads."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trm_jax.hesc.capsules import (CapsuleConfidence, GridCapsuleEncoder, ReconstructionHead, capsule_state_init,
                                   checksum_projection, effective_content, expand_capsules, grid_region_ids,
                                   hierarchical_attention_bias, reconstruction_loss, region_accuracy,
                                   with_content)

B, K, M, DC, R = 4, 5, 3, 6, 7


def _state(seed=0, expanded=None):
    rng = np.random.default_rng(seed)
    sk = rng.normal(size=(B, K, DC)).astype(np.float32)
    ch = rng.normal(size=(B, K, M, DC)).astype(np.float32)
    cs = rng.normal(size=(B, K, R)).astype(np.float32)
    state = capsule_state_init(jnp.asarray(sk), jnp.asarray(ch), jnp.asarray(cs))
    if expanded is not None:
        state = state.replace(expanded_mask=jnp.asarray(expanded), num_expansions=jnp.asarray(expanded.sum(1), jnp.int32))
    return state, sk, ch


# ------------------------------------------------------------------ state and expansion


def test_init_and_with_content():
    state, sk, ch = _state()
    assert state.expanded_mask.shape == (B, K) and not bool(state.expanded_mask.any())
    assert state.num_expansions.dtype == jnp.int32 and int(state.num_expansions.sum()) == 0
    state = state.replace(expanded_mask=state.expanded_mask.at[1, 2].set(True), num_expansions=state.num_expansions + 1)
    new = with_content(state, state.sketches + 1, state.children * 2, state.checksums - 1)
    np.testing.assert_array_equal(new.expanded_mask, state.expanded_mask)
    np.testing.assert_array_equal(new.num_expansions, state.num_expansions)
    np.testing.assert_allclose(new.sketches, sk + 1)
    np.testing.assert_allclose(new.children, ch * 2)
    with pytest.raises(ValueError):
        capsule_state_init(jnp.zeros((B, K, DC)), jnp.zeros((B, K + 1, M, DC)), jnp.zeros((B, K, R)))


def test_expand_changes_exactly_the_least_confident_unexpanded_capsule():
    expanded = np.zeros((B, K), bool)
    expanded[0, [1, 3]] = True  # row 0's two least-confident capsules are already open
    expanded[2] = True          # row 2 is fully expanded
    state, _, _ = _state(expanded=expanded)
    conf = np.array([[0.5, 0.1, 0.9, 0.0, 0.7],
                     [0.3, 0.2, 0.8, 0.4, 0.6],
                     [0.1, 0.2, 0.3, 0.4, 0.5],
                     [0.9, 0.8, 0.7, 0.6, -1.0]], np.float32)
    do = np.array([True, False, True, True])
    new, idx, cost = jax.jit(expand_capsules, static_argnums=3)(state, jnp.asarray(do), jnp.asarray(conf), 0.25)

    np.testing.assert_array_equal(idx, [0, -1, -1, 4])
    np.testing.assert_allclose(cost, [0.25 * M, 0.0, 0.0, 0.25 * M])
    assert idx.dtype == jnp.int32 and cost.dtype == jnp.float32
    want = expanded.copy()
    want[0, 0] = want[3, 4] = True
    np.testing.assert_array_equal(new.expanded_mask, want)
    np.testing.assert_array_equal(new.num_expansions, expanded.sum(1) + np.array([1, 0, 0, 1]))
    # Exactly one capsule flips per expanding row; the content itself is untouched.
    np.testing.assert_array_equal((np.asarray(new.expanded_mask) != expanded).sum(1), [1, 0, 0, 1])
    np.testing.assert_array_equal(new.sketches, state.sketches)
    # The effective content changes at exactly those capsules.
    diff = np.abs(np.asarray(effective_content(new)) - np.asarray(effective_content(state))).sum(-1) > 0
    np.testing.assert_array_equal(diff, want != expanded)


def test_repeated_expansions_follow_confidence_order():
    state, _, _ = _state(seed=3)
    conf = np.random.default_rng(1).normal(size=(B, K)).astype(np.float32)
    conf[1, :] = np.inf  # +inf everywhere: still walks through unexpanded capsules by index
    conf[2, 4] = np.nan  # NaN counts as most confident
    order = []
    for _ in range(K + 1):
        state, idx, cost = expand_capsules(state, jnp.ones((B,), bool), jnp.asarray(conf), 1.0)
        order.append(np.asarray(idx))
    order = np.stack(order, 1)  # [B, K+1]
    want = np.argsort(np.where(np.isnan(conf), np.inf, conf), axis=1, kind="stable")
    np.testing.assert_array_equal(order[:, :K], want)
    np.testing.assert_array_equal(order[:, K], -1)  # all open: a no-op
    np.testing.assert_array_equal(cost, 0.0)
    assert bool(state.expanded_mask.all())
    np.testing.assert_array_equal(state.num_expansions, K)


@pytest.mark.parametrize("aggregate", ["mean", "max", "sum"])
def test_effective_content_matches_numpy(aggregate):
    expanded = np.random.default_rng(2).random((B, K)) < 0.5
    state, sk, ch = _state(seed=4, expanded=expanded)
    agg = {"mean": ch.mean(2), "max": ch.max(2), "sum": ch.sum(2)}[aggregate]
    want = np.where(expanded[..., None], agg, sk)
    np.testing.assert_allclose(effective_content(state, aggregate), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        effective_content(state, "median")


# ------------------------------------------------------------------ checksums


def test_checksum_projection_deterministic_linear():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, M, DC)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, 3, M, DC)), jnp.float32)
    a = checksum_projection(x, R, seed=5)
    assert a.shape == (2, 3, R) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, checksum_projection(x, R, seed=5))
    # (jit may fuse the scaling differently: equal up to float rounding)
    np.testing.assert_allclose(a, jax.jit(checksum_projection, static_argnums=(1, 2))(x, R, 5), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, checksum_projection(x, R, seed=6))
    np.testing.assert_allclose(checksum_projection(2.0 * x - 3.0 * y, R, 5),
                               2.0 * a - 3.0 * checksum_projection(y, R, 5), rtol=1e-5, atol=1e-5)
    # The same matrix on every leading index: equal children give equal checksums.
    z = jnp.broadcast_to(x[:1, :1], x.shape)
    np.testing.assert_allclose(checksum_projection(z, R, 5), jnp.broadcast_to(a[:1, :1], a.shape), rtol=1e-6)


# ------------------------------------------------------------------ grid encoder


def test_grid_region_ids_tiny():
    np.testing.assert_array_equal(grid_region_ids(4, 2), [0, 0, 1, 1,
                                                           0, 0, 1, 1,
                                                           2, 2, 3, 3,
                                                           2, 2, 3, 3])
    np.testing.assert_array_equal(grid_region_ids(3, 3), np.arange(9))
    np.testing.assert_array_equal(grid_region_ids(6, 3).reshape(6, 6)[4], [6, 6, 7, 7, 8, 8])
    with pytest.raises(ValueError):
        grid_region_ids(5, 2)


GRID, REG, SUB, DIN, DIM, CS = 8, 2, 2, 5, 6, 4  # regions of 4x4, sub-regions of 2x2 cells


def _encoder_inputs(seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(2, GRID * GRID, DIN)).astype(np.float32)
    valid = rng.random((2, GRID * GRID)) < 0.7
    valid[1, :] = True
    grid_valid = valid[0].reshape(GRID, GRID)
    grid_valid[0:2, 0:2] = False  # an empty sub-region (mean 0)
    return emb, valid


def _numpy_encoder(params, emb, valid):
    def silu(v):
        return v / (1.0 + np.exp(-v))

    p = jax.tree.map(np.asarray, params)
    rs, c = GRID // REG, GRID // (REG * SUB)
    Bn = emb.shape[0]
    sk = np.zeros((Bn, REG * REG, DIM), np.float32)
    ch = np.zeros((Bn, REG * REG, SUB * SUB, DIM), np.float32)
    e, v = emb.reshape(Bn, GRID, GRID, DIN), valid.reshape(Bn, GRID, GRID)
    for b in range(Bn):
        for r in range(REG):
            for cc in range(REG):
                rows, cols = slice(r * rs, (r + 1) * rs), slice(cc * rs, (cc + 1) * rs)
                w = v[b, rows, cols]
                mean = (e[b, rows, cols] * w[..., None]).sum((0, 1)) / max(w.sum(), 1)
                sk[b, r * REG + cc] = (mean @ p["sketch_proj"]["kernel"] + p["sketch_proj"]["bias"]
                                       + p["region_row"][r] + p["region_col"][cc])
                for i in range(SUB):
                    for j in range(SUB):
                        R0, C0 = r * SUB + i, cc * SUB + j  # global sub-region position
                        sr, sc = slice(R0 * c, (R0 + 1) * c), slice(C0 * c, (C0 + 1) * c)
                        w = v[b, sr, sc]
                        mean = (e[b, sr, sc] * w[..., None]).sum((0, 1)) / max(w.sum(), 1)
                        h = silu(mean @ p["child_hidden"]["kernel"] + p["child_hidden"]["bias"])
                        ch[b, r * REG + cc, i * SUB + j] = (h @ p["child_out"]["kernel"] + p["child_out"]["bias"]
                                                            + p["sub_row"][R0] + p["sub_col"][C0])
    return sk, ch


def _encoder():
    return GridCapsuleEncoder(grid=GRID, regions=REG, subregions=SUB, dim=DIM, checksum_dim=CS, checksum_seed=3)


def test_grid_encoder_matches_numpy_and_ignores_padding():
    emb, valid = _encoder_inputs()
    enc = _encoder()
    params = enc.init(jax.random.key(0), jnp.asarray(emb), jnp.asarray(valid))["params"]
    apply = jax.jit(enc.apply)
    sk, ch, cs = apply({"params": params}, jnp.asarray(emb), jnp.asarray(valid))
    assert sk.shape == (2, 4, DIM) and ch.shape == (2, 4, 4, DIM) and cs.shape == (2, 4, CS)
    want_sk, want_ch = _numpy_encoder(params, emb, valid)
    np.testing.assert_allclose(sk, want_sk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ch, want_ch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cs, checksum_projection(jnp.asarray(want_ch), CS, 3), rtol=1e-5, atol=1e-5)

    # Padding is ignored: garbage at invalid positions changes nothing.
    noisy = np.where(valid[..., None], emb, 1e3 * np.random.default_rng(9).normal(size=emb.shape)).astype(np.float32)
    out = apply({"params": params}, jnp.asarray(noisy), jnp.asarray(valid))
    for got, ref in zip(out, (sk, ch, cs)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

    # The aggregate of the (nonlinear) children is not the sketch.
    assert np.abs(np.asarray(ch).mean(2) - np.asarray(sk)).max() > 1e-2

    # bfloat16 activations keep float32 params and stay close.
    enc16 = GridCapsuleEncoder(grid=GRID, regions=REG, subregions=SUB, dim=DIM, checksum_dim=CS,
                               checksum_seed=3, dtype=jnp.bfloat16)
    sk16, ch16, _ = jax.jit(enc16.apply)({"params": params}, jnp.asarray(emb), jnp.asarray(valid))
    assert sk16.dtype == jnp.bfloat16 and ch16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(sk16, np.float32), sk, atol=0.1)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_grid_encoder_gradients_reach_valid_tokens_only():
    emb, valid = _encoder_inputs(1)
    enc = _encoder()
    params = enc.init(jax.random.key(1), jnp.asarray(emb), jnp.asarray(valid))

    def f(e):
        sk, ch, cs = enc.apply(params, e, jnp.asarray(valid))
        return jnp.sum(sk ** 2) + jnp.sum(ch ** 2) + jnp.sum(cs ** 2)

    g = np.abs(np.asarray(jax.grad(f)(jnp.asarray(emb)))).sum(-1)
    assert (g[valid] > 0).all()
    np.testing.assert_array_equal(g[~valid], 0.0)


@pytest.mark.parametrize("grid,regions,sub", [(8, 3, 1), (8, 2, 3), (9, 3, 2)])
def test_grid_encoder_rejects_non_tiling(grid, regions, sub):
    enc = GridCapsuleEncoder(grid=grid, regions=regions, subregions=sub, dim=4, checksum_dim=2)
    x = jnp.zeros((1, grid * grid, 3))
    with pytest.raises(ValueError):
        enc.init(jax.random.key(0), x, jnp.ones((1, grid * grid), bool))


def test_grid_encoder_sudoku_and_arc_shapes():
    for grid, regions, sub in [(9, 3, 3), (30, 3, 2)]:
        enc = GridCapsuleEncoder(grid=grid, regions=regions, subregions=sub, dim=8, checksum_dim=4)
        L = grid * grid
        out = jax.eval_shape(lambda e, v, enc=enc: enc.init_with_output(jax.random.key(0), e, v)[0],
                             jnp.zeros((2, L, 8)), jnp.ones((2, L), bool))
        assert [o.shape for o in out] == [(2, regions ** 2, 8), (2, regions ** 2, sub ** 2, 8), (2, regions ** 2, 4)]


# ------------------------------------------------------------------ attention bias


def test_hierarchical_attention_bias_tiny():
    # P=1, k=2 capsules, L=4 tokens: tokens 0, 1 in region 0; tokens 2, 3 in region 1.
    s, w = 0.0, -1.0
    bias = hierarchical_attention_bias(1, 2, jnp.array([0, 0, 1, 1]), strong=s, weak=w)
    want = np.array([
        # P  c0 c1 t0 t1 t2 t3
        [s, s, s, s, s, s, s],  # prefix
        [s, s, s, s, s, w, w],  # capsule 0
        [s, s, s, w, w, s, s],  # capsule 1
        [s, s, w, s, s, w, w],  # token 0 (region 0)
        [s, s, w, s, s, w, w],  # token 1 (region 0)
        [s, w, s, w, w, s, s],  # token 2 (region 1)
        [s, w, s, w, w, s, s],  # token 3 (region 1)
    ], np.float32)
    np.testing.assert_array_equal(bias, want)
    assert bias.dtype == jnp.float32

    # A token of region -1 is unbiased; other strengths; a grid's region ids; under jit.
    bias = jax.jit(hierarchical_attention_bias, static_argnums=(0, 1))(0, 1, jnp.array([0, -1, 2]), 1.0, -5.0)
    np.testing.assert_array_equal(bias, [[1, 1, 1, -5], [1, 1, 1, -5], [1, 1, 1, 1], [-5, -5, 1, 1]])
    bias = np.asarray(hierarchical_attention_bias(2, 4, grid_region_ids(4, 2)))
    assert bias.shape == (22, 22)
    assert bias[2 + 3, 6 + 15] == 0.0 and bias[2 + 0, 6 + 15] == -1.0 and bias[6 + 0, 6 + 5] == 0.0
    np.testing.assert_array_equal(bias, bias.T)


# ------------------------------------------------------------------ heads


def _np_recon_loss(recon, target, pred, tsum, mask):
    cos = (recon * target).sum(-1) / (np.linalg.norm(recon, axis=-1) * np.linalg.norm(target, axis=-1))
    mse = ((pred - tsum) ** 2).mean(-1)
    return (1 - cos[mask].mean()) + mse[mask].mean(), cos[mask].mean(), mse[mask].mean()


def test_reconstruction_loss_matches_numpy():
    rng = np.random.default_rng(0)
    recon, target = rng.normal(size=(2, 3, DC)).astype(np.float32), rng.normal(size=(2, 3, DC)).astype(np.float32)
    pred, tsum = rng.normal(size=(2, 3, R)).astype(np.float32), rng.normal(size=(2, 3, R)).astype(np.float32)
    mask = np.array([[True, False, True], [False, True, True]])
    for m in (mask, np.ones_like(mask)):
        loss, met = reconstruction_loss(*map(jnp.asarray, (recon, target, pred, tsum)),
                                        None if m.all() else jnp.asarray(m))
        want, cos, mse = _np_recon_loss(recon, target, pred, tsum, m)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(met["reconstruction_loss"], want, rtol=1e-5)
        np.testing.assert_allclose(met["cos_sim_mean"], cos, rtol=1e-5)
        np.testing.assert_allclose(met["checksum_mse"], mse, rtol=1e-5)
    loss, _ = reconstruction_loss(*map(jnp.asarray, (recon, target, pred, tsum)), jnp.zeros((2, 3), bool))
    assert float(loss) == 0.0
    # Zero vectors give finite gradients.
    g = jax.grad(lambda r: reconstruction_loss(r, jnp.zeros((1, 1, DC)), jnp.zeros((1, 1, R)),
                                               jnp.zeros((1, 1, R)))[0])(jnp.zeros((1, 1, DC)))
    assert np.isfinite(np.asarray(g)).all()


def test_reconstruction_head_learns():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(4, 3, 8)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(4, 3, DC)), jnp.float32)
    tsum = jnp.asarray(rng.normal(size=(4, 3, R)), jnp.float32)
    head = ReconstructionHead(out_dim=DC, checksum_dim=R)
    params = head.init(jax.random.key(0), z)["params"]
    recon, pred = head.apply({"params": params}, z)
    assert recon.shape == (4, 3, DC) and pred.shape == (4, 3, R)
    opt = optax.adam(0.05)
    opt_state = opt.init(params)

    def loss_fn(p):
        recon, pred = head.apply({"params": p}, z)
        return reconstruction_loss(recon, target, pred, tsum)[0]

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss, g

    losses = []
    for _ in range(30):
        params, opt_state, loss, g = step(params, opt_state)
        losses.append(float(loss))
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))
    assert losses[-1] < 0.5 * losses[0]


def test_confidence_head_and_region_accuracy():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.bfloat16)
    head = CapsuleConfidence(dtype=jnp.bfloat16)
    params = head.init(jax.random.key(0), z)
    conf = head.apply(params, z)
    assert conf.shape == (2, 5) and conf.dtype == jnp.float32
    p = params["params"]["confidence_proj"]
    want = np.asarray(z, np.float32) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(conf, want[..., 0], atol=0.05)

    correct = jnp.array([[True, False, True, True], [False, False, True, True]])
    valid = jnp.array([[True, True, True, False], [False, False, True, False]])
    acc = region_accuracy(correct, valid, jnp.array([0, 0, 1, 1]), 3)
    np.testing.assert_allclose(acc, [[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])
