"""Tests for trm_jax.optim against adam_atan2_pytorch, NumPy and the reference's semantics."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from adam_atan2_pytorch import AdamAtan2

from trm_jax import optim
from trm_jax.schedules import reference_lr_schedule


def reference_lr(step: int, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """The reference's cosine_schedule_with_warmup_lr_lambda, in float64."""
    if step < warmup:
        return base_lr * float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def make_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(lr=1e-3, lr_min_ratio=0.1, lr_warmup_steps=5, beta1=0.9, beta2=0.95, weight_decay=0.1,
               puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, grad_clip_norm=0.0, ema=True, ema_rate=0.999)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def make_params(rng: np.random.Generator, num_ids: int = 12, with_puzzle: bool = True) -> dict:
    inner = {
        "embed_tokens": {"embedding": rng.normal(size=(6, 4)).astype(np.float32)},
        "lm_head": {"kernel": rng.normal(size=(4, 6)).astype(np.float32)},
        "q_head": {"kernel": rng.normal(size=(4, 2)).astype(np.float32), "bias": np.full((2,), -5.0, np.float32)},
        "L_level": {"layers_0": {"mlp": {"kernel": rng.normal(size=(4, 8)).astype(np.float32)}}},
    }
    if with_puzzle:
        inner["puzzle_emb"] = {"embedding": rng.normal(size=(num_ids, 4)).astype(np.float32)}
    return jax.tree.map(jnp.asarray, {"inner": inner})


def random_grads(rng: np.random.Generator, params: dict) -> dict:
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)


def find_states(opt_state, cls):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls)) if isinstance(s, cls)]


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# --------------------------------------------------------------------------- #
# AdamAtan2 vs adam_atan2_pytorch
# --------------------------------------------------------------------------- #
SHAPES = [(7,), (5, 3), (2, 3, 4)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("betas", [(0.9, 0.95), (0.9, 0.999)])
def test_adam_atan2_matches_torch(weight_decay, scheduled, betas):
    rng = np.random.default_rng(0)
    base_lr, warmup, total, steps = 1e-2, 6, 20, 20
    init = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    # Mixed scales, and one exactly-zero gradient coordinate (atan2(0, 0) = 0 on both sides).
    grads = [[(rng.normal(size=s) * 10.0 ** rng.integers(-3, 2)).astype(np.float32) for s in SHAPES]
             for _ in range(steps)]
    for g in grads:
        g[0][0] = 0.0

    t_params = [torch.tensor(p, requires_grad=True) for p in init]
    t_opt = AdamAtan2(t_params, lr=base_lr, betas=betas, weight_decay=weight_decay)

    lr = optim.warmup_cosine_lr_schedule(base_lr, warmup, total, 0.1) if scheduled else base_lr
    tx = optim.adam_atan2(lr, b1=betas[0], b2=betas[1], weight_decay=weight_decay)
    params = [jnp.asarray(p) for p in init]
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for k, g in enumerate(grads, start=1):
        for tp, gk in zip(t_params, g):
            tp.grad = torch.tensor(gk)
        if scheduled:
            for group in t_opt.param_groups:
                group["lr"] = reference_lr(k, base_lr, warmup, total, 0.1)  # reference step k
        t_opt.step()
        params, state = step(params, state, [jnp.asarray(x) for x in g])
        for tp, p in zip(t_params, params):
            np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), rtol=1e-6, atol=1e-7,
                                       err_msg=f"step {k}")
    # The moments too, not only the parameters.
    (atan2_state,) = find_states(state, optim.ScaleByAtan2State)
    assert int(atan2_state.count) == steps
    for tp, m, v in zip(t_params, atan2_state.mu, atan2_state.nu):
        np.testing.assert_allclose(np.asarray(m), t_opt.state[tp]["exp_avg"].numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(v), t_opt.state[tp]["exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-12)


def test_adam_atan2_first_step_closed_form():
    # Step 1: m_hat = g, v_hat = g^2 -> update = a * atan2(g, |g|) = a * pi/4 * sign(g).
    g = jnp.array([3.0, -0.5, 1e-4], jnp.float32)
    p = jnp.array([1.0, 2.0, -1.0], jnp.float32)
    tx = optim.adam_atan2(0.1, weight_decay=0.5)
    updates, _ = tx.update(g, tx.init(p), p)
    want = np.asarray(p) * (1 - 0.1 * 0.5) - 0.1 * 1.27 * (math.pi / 4) * np.sign(np.asarray(g))
    np.testing.assert_allclose(np.asarray(optax.apply_updates(p, updates)), want, rtol=1e-6)


# --------------------------------------------------------------------------- #
# Sparse sign-SGD
# --------------------------------------------------------------------------- #
def test_sparse_sign_sgd_rows():
    rng = np.random.default_rng(1)
    num_ids, dim, lr, wd = 10, 4, 0.01, 0.1
    table = rng.normal(size=(num_ids, dim)).astype(np.float32)
    table[8] = -0.0  # an absent row of negative zeros must stay -0.0
    ids = np.array([2, 5, 5, 7], np.int32)  # 5 twice; 7 gets an all-zero gradient
    per_example = rng.normal(size=(4, dim)).astype(np.float32)
    per_example[3] = 0.0
    per_example[2] = -per_example[1] + np.array([1e-3, -1e-3, 2.0, -2.0], np.float32)  # sum flips sign vs row 1
    grad = np.zeros_like(table)
    np.add.at(grad, ids, per_example)  # what the gather's VJP produces
    grad[9] = 1.0  # a row not in the batch, even with a (spurious) gradient, must not move

    tx = optim.sparse_sign_sgd(lr, weight_decay=wd)
    p = jnp.asarray(table)
    updates, state = jax.jit(lambda g, s, p, i: tx.update(g, s, p, puzzle_identifiers=i))(
        jnp.asarray(grad), tx.init(p), p, jnp.asarray(ids))
    new = np.asarray(optax.apply_updates(p, updates))

    absent = np.setdiff1d(np.arange(num_ids), ids)
    assert new[absent].tobytes() == table[absent].tobytes()  # bit-identical, -0.0 included
    present = np.unique(ids)
    want = table[present] * np.float32(1 - lr * wd) - np.float32(lr) * np.sign(grad[present])
    np.testing.assert_allclose(new[present], want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(new[7], table[7] * np.float32(1 - lr * wd), rtol=1e-6)  # decay only
    np.testing.assert_array_equal(np.sign(new[5] - table[5] * np.float32(1 - lr * wd)), -np.sign(per_example[1] + per_example[2]))
    assert int(state.count) == 1


def test_sparse_sign_sgd_schedule_and_2d_ids():
    sched = lambda count: 0.1 * (count + 1)  # 0.1 then 0.2
    tx = optim.sparse_sign_sgd(sched, weight_decay=0.0)
    p = jnp.zeros((4, 2), jnp.float32)
    g = jnp.ones((4, 2), jnp.float32)
    state = tx.init(p)
    for _ in range(2):
        u, state = tx.update(g, state, p, puzzle_identifiers=jnp.array([[1], [3]], jnp.int32))
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(p), [[0, 0], [-0.3, -0.3], [0, 0], [-0.3, -0.3]], rtol=1e-6)
    with pytest.raises(ValueError, match="puzzle_identifiers"):
        tx.update(g, state, p)


# --------------------------------------------------------------------------- #
# Full optimizer: routing, clipping, guard, learning rates
# --------------------------------------------------------------------------- #
def _split(params):
    dense = {"inner": {k: v for k, v in params["inner"].items() if k != "puzzle_emb"}}
    return dense, params["inner"]["puzzle_emb"]["embedding"]


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_build_optimizer_routes_by_path(clip):
    rng = np.random.default_rng(2)
    cfg = make_config(grad_clip_norm=clip)
    total = 50
    params = make_params(rng)
    tx = optim.build_optimizer(cfg, total)
    state = tx.init(params)
    labels = optim.param_labels(params)
    assert labels["inner"]["puzzle_emb"]["embedding"] == optim.SIGN_SGD_LABEL
    assert labels["inner"]["L_level"]["layers_0"]["mlp"]["kernel"] == optim.ADAM_LABEL

    # Separately-built pieces on the two halves of the tree.
    dense_tx = optim.adam_atan2(optim.warmup_cosine_lr_schedule(cfg.lr, cfg.lr_warmup_steps, total, cfg.lr_min_ratio),
                                b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay)
    if clip > 0:
        dense_tx = optax.chain(optax.clip_by_global_norm(clip), dense_tx)  # norm over dense leaves only
    sparse_tx = optim.sparse_sign_sgd(
        optim.warmup_cosine_lr_schedule(cfg.puzzle_emb_lr, cfg.lr_warmup_steps, total, cfg.lr_min_ratio),
        cfg.puzzle_emb_weight_decay)
    dense, table = _split(params)
    d_state, s_state = dense_tx.init(dense), sparse_tx.init(table)

    update = jax.jit(lambda g, s, p, i: tx.update(g, s, p, puzzle_identifiers=i))
    dense_update = jax.jit(dense_tx.update)
    sparse_update = jax.jit(lambda g, s, p, i: sparse_tx.update(g, s, p, puzzle_identifiers=i))
    for _ in range(3):
        grads = random_grads(rng, params)
        grads["inner"]["puzzle_emb"]["embedding"] = grads["inner"]["puzzle_emb"]["embedding"] * 100.0
        ids = jnp.asarray(rng.integers(0, 12, size=5), jnp.int32)
        u, state = update(grads, state, params, ids)
        params = optax.apply_updates(params, u)

        g_dense, g_table = _split(grads)
        du, d_state = dense_update(g_dense, d_state, dense)
        su, s_state = sparse_update(g_table, s_state, table, ids)
        dense, table = optax.apply_updates(dense, du), optax.apply_updates(table, su)

        got_dense, got_table = _split(params)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8),
                     got_dense, dense)
        np.testing.assert_allclose(np.asarray(got_table), np.asarray(table), rtol=1e-6)  # jit may fuse to FMA
    assert int(optim.applied_steps(state)) == 3
    # The Adam moments never hold the (large) puzzle table.
    (atan2_state,) = find_states(state, optim.ScaleByAtan2State)
    assert all(getattr(leaf, "shape", None) != table.shape for leaf in jax.tree.leaves(atan2_state.mu))


def test_build_optimizer_without_puzzle_emb():
    rng = np.random.default_rng(3)
    params = make_params(rng, with_puzzle=False)
    tx = optim.build_optimizer(make_config(), 50)
    state = tx.init(params)
    grads = random_grads(rng, params)
    u, state = jax.jit(tx.update)(grads, state, params)  # no puzzle_identifiers needed
    ref_tx = optim.adam_atan2(optim.warmup_cosine_lr_schedule(1e-3, 5, 50, 0.1), b1=0.9, b2=0.95, weight_decay=0.1)
    ref_u, _ = ref_tx.update(grads, ref_tx.init(params), params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6), u, ref_u)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_guard_skips_update(bad):
    rng = np.random.default_rng(4)
    params0 = make_params(rng)
    tx = optim.build_optimizer(make_config(), 50)
    update = jax.jit(lambda g, s, p, i: tx.update(g, s, p, puzzle_identifiers=i))
    ids = jnp.array([0, 3, 3], jnp.int32)
    g1, g3 = random_grads(rng, params0), random_grads(rng, params0)
    g_bad = random_grads(rng, params0)
    g_bad["inner"]["lm_head"]["kernel"] = g_bad["inner"]["lm_head"]["kernel"].at[1, 2].set(bad)

    state = tx.init(params0)
    u, state = update(g1, state, params0, ids)
    params1 = optax.apply_updates(params0, u)

    u, state_bad = update(g_bad, state, params1, ids)
    params2 = optax.apply_updates(params1, u)
    assert_trees_equal(params2, params1)  # nothing moved, puzzle table included
    assert_trees_equal(state_bad.inner_state, state.inner_state)  # moments and counts untouched
    counters = optim.guard_counters(state_bad)
    assert int(counters["notfinite_count"]) == 1 and int(counters["total_notfinite"]) == 1
    assert not bool(counters["last_finite"])
    assert optim.too_many_consecutive_failures(state_bad, 1)
    assert not optim.too_many_consecutive_failures(state_bad, 2)

    # A following finite step applies exactly as if the bad step never happened.
    u, state3 = update(g3, state_bad, params2, ids)
    params3 = optax.apply_updates(params2, u)
    u_ref, state_ref = update(g3, state, params1, ids)
    assert_trees_equal(params3, optax.apply_updates(params1, u_ref))
    assert_trees_equal(state3.inner_state, state_ref.inner_state)
    counters = optim.guard_counters(state3)
    assert int(counters["notfinite_count"]) == 0 and int(counters["total_notfinite"]) == 1
    assert int(optim.applied_steps(state3)) == 2


def test_nan_guard_never_gives_in():
    # optax.apply_if_finite applies the update after max_consecutive_errors failures; ours never does.
    rng = np.random.default_rng(5)
    params = make_params(rng)
    tx = optim.build_optimizer(make_config(), 50)
    state = tx.init(params)
    state = state._replace(notfinite_count=jnp.array(np.iinfo(np.int32).max - 2, jnp.int32))
    grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, puzzle_identifiers=jnp.array([1], jnp.int32)))
    for _ in range(4):  # runs the counter into saturation
        u, state = update(grads, state, params)
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    assert int(optim.guard_counters(state)["notfinite_count"]) == np.iinfo(np.int32).max


def test_current_learning_rates():
    cfg = make_config(lr=1e-4, puzzle_emb_lr=1e-2, lr_warmup_steps=2000, lr_min_ratio=0.1)
    total = 10_000
    rates = optim.current_learning_rates(1, cfg, total)
    np.testing.assert_allclose(float(rates["train/lr"]), 1e-4 / 2000, rtol=1e-6)
    np.testing.assert_allclose(float(rates["train/puzzle_emb_lr"]), 1e-2 / 2000, rtol=1e-6)
    for step in (2000, 6000, total):
        rates = optim.current_learning_rates(jnp.int32(step), cfg, total)
        np.testing.assert_allclose(float(rates["train/lr"]), reference_lr(step, 1e-4, 2000, total, 0.1), rtol=1e-5)

    # From an optimizer state: the lr the latest applied update used (reference step = applied count).
    rng = np.random.default_rng(6)
    params = make_params(rng)
    tx = optim.build_optimizer(cfg, total)
    state = tx.init(params)
    for k in range(1, 3):
        _, state = tx.update(random_grads(rng, params), state, params, puzzle_identifiers=jnp.array([1], jnp.int32))
        rates = jax.jit(lambda s: optim.current_learning_rates(s, cfg, total))(state)
        np.testing.assert_allclose(float(rates["train/lr"]), 1e-4 * k / 2000, rtol=1e-6)
    assert float(reference_lr_schedule(1e-4, 2000, total, 0.1)(2)) == pytest.approx(1e-4 * 2 / 2000)


# --------------------------------------------------------------------------- #
# EMA
# --------------------------------------------------------------------------- #
def test_ema_recurrence_and_eval_params():
    rng = np.random.default_rng(7)
    rate, k = 0.9, 6
    params = make_params(rng)
    ema = optim.ema_init(params)
    assert "puzzle_emb" not in ema["inner"]  # no second copy of the table
    want = jax.tree.map(lambda x: np.asarray(x, np.float64), optim.ema_init(params))
    update = jax.jit(optim.ema_update)
    for _ in range(k):
        params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        ema = update(ema, params, rate)
        dense, _ = _split(params)
        want = jax.tree.map(lambda e, p: rate * e + (1 - rate) * np.asarray(p, np.float64), want, dense)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5, atol=1e-6), ema, want)

    evaluated = optim.eval_params(ema, params)
    assert jax.tree.structure(evaluated) == jax.tree.structure(params)
    assert evaluated["inner"]["puzzle_emb"]["embedding"] is params["inner"]["puzzle_emb"]["embedding"]
    e_dense, _ = _split(evaluated)
    assert_trees_equal(e_dense, ema)
    assert not np.allclose(np.asarray(ema["inner"]["lm_head"]["kernel"]), np.asarray(params["inner"]["lm_head"]["kernel"]))


# --------------------------------------------------------------------------- #
# Gradient statistics
# --------------------------------------------------------------------------- #
def test_grad_stats():
    rng = np.random.default_rng(8)
    grads = random_grads(rng, make_params(rng))
    stats = jax.jit(optim.grad_stats)(grads)
    flat = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x, np.float64)
            for p, x in jax.tree_util.tree_flatten_with_path(grads)[0]}
    np.testing.assert_allclose(float(stats["grad_norm"]), math.sqrt(sum((x ** 2).sum() for x in flat.values())), rtol=1e-6)
    modules = {"/".join(name.split("/")[:2]) for name in flat}
    tensor_stats = {"grad/mean_norm", "grad/max_norm", "grad/num_zero", "grad/num_nan"}
    assert set(stats) == {"grad_norm"} | {f"grad/{m}" for m in modules} | tensor_stats
    for m in modules:
        want = math.sqrt(sum((x ** 2).sum() for name, x in flat.items() if name.startswith(m + "/")))
        np.testing.assert_allclose(float(stats[f"grad/{m}"]), want, rtol=1e-6)
    assert "grad/inner/L_level" in stats and "grad/inner/puzzle_emb" in stats
    # Per-tensor statistics (the PyTorch system's gradient monitor), against NumPy.
    norms = [math.sqrt((x ** 2).sum()) for x in flat.values()]
    np.testing.assert_allclose(float(stats["grad/mean_norm"]), np.mean(norms), rtol=1e-5)
    np.testing.assert_allclose(float(stats["grad/max_norm"]), max(norms), rtol=1e-6)
    assert float(stats["grad/num_zero"]) == 0 and float(stats["grad/num_nan"]) == 0
    first = next(iter(flat))
    poisoned = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if jax.tree_util.keystr(p, simple=True, separator="/") == first else x, grads)
    second = list(flat)[1]
    poisoned = jax.tree_util.tree_map_with_path(
        lambda p, x: x * np.nan if jax.tree_util.keystr(p, simple=True, separator="/") == second else x, poisoned)
    bad = optim.grad_stats(poisoned)
    assert float(bad["grad/num_zero"]) == 1 and float(bad["grad/num_nan"]) == 1
