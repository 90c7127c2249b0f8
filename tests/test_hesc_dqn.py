"""Tests for trm_jax.hesc.dqn: TD loss, target refresh, actions, schedules, rewards, running
statistics and curiosity, each against a NumPy statement of the math."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trm_jax.hesc import dqn
from trm_jax.hesc.config import HESCConfig

N, D, A = 16, 4, 3


# --------------------------------------------------------------------------- #
# TD loss
# --------------------------------------------------------------------------- #
def q_apply(params, state):
    """A linear Q-network on a pytree state: Q = x @ W + b."""
    return jnp.asarray(state["x"]) @ params["W"] + params["b"]


def make_td_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    online = {"W": rng.normal(size=(D, A)).astype(np.float32), "b": rng.normal(size=A).astype(np.float32)}
    target = {"W": rng.normal(size=(D, A)).astype(np.float32), "b": rng.normal(size=A).astype(np.float32)}
    batch = {
        "state": {"x": rng.normal(size=(N, D)).astype(np.float32)},
        "action": rng.integers(0, A, N).astype(np.int32),
        "reward": rng.normal(size=N).astype(np.float32),
        "next_state": {"x": rng.normal(size=(N, D)).astype(np.float32)},
        "done": rng.random(N) < 0.3,
    }
    weights = rng.uniform(0.2, 1.0, N).astype(np.float32)
    return online, target, batch, weights


def numpy_td(online, target, batch, weights, gamma, double, delta):
    """TD errors, loss and d loss / d online params, in float64."""
    x, xn = batch["state"]["x"].astype(np.float64), batch["next_state"]["x"].astype(np.float64)
    q = x @ online["W"] + online["b"]
    q_sa = q[np.arange(N), batch["action"]]
    qn_t = xn @ target["W"] + target["b"]
    qn_o = xn @ online["W"] + online["b"]
    best = np.argmax(qn_o if double else qn_t, axis=1)
    y = batch["reward"] + gamma * (1 - batch["done"]) * qn_t[np.arange(N), best]
    td = q_sa - y
    huber = np.where(np.abs(td) <= delta, 0.5 * td ** 2, delta * (np.abs(td) - 0.5 * delta))
    loss = np.mean(weights * huber)
    # The target is a constant: only Q(s, a) carries gradient.
    g_td = weights * np.clip(td, -delta, delta) / N
    gW, gb = np.zeros((D, A)), np.zeros(A)
    for i in range(N):
        gW[:, batch["action"][i]] += g_td[i] * x[i]
        gb[batch["action"][i]] += g_td[i]
    return td, y, q_sa, loss, {"W": gW, "b": gb}


@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_td_loss_matches_numpy_and_uses_target_params(double, delta):
    online, target, batch, weights = make_td_problem()
    gamma = 0.9

    @jax.jit
    def f(on, tg):
        return dqn.td_loss(q_apply, on, tg, batch, weights, gamma, double_dqn=double, huber_delta=delta)

    loss, td, metrics = f(online, target)
    td_np, y_np, q_sa_np, loss_np, grads_np = numpy_td(online, target, batch, weights, gamma, double, delta)
    np.testing.assert_allclose(np.asarray(td), td_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss), loss_np, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["dqn_td_error"]), np.mean(np.abs(td_np)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["dqn_q_mean"]), np.mean(q_sa_np), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["dqn_target_q_mean"]), np.mean(y_np), rtol=1e-5, atol=1e-6)

    g_on, g_tg = jax.grad(lambda on, tg: f(on, tg)[0], argnums=(0, 1))(online, target)
    for k in ("W", "b"):
        np.testing.assert_allclose(np.asarray(g_on[k]), grads_np[k], rtol=1e-4, atol=1e-6)
        assert not np.asarray(g_tg[k]).any()

    # Bootstrapping from the online parameters instead would give a different answer.
    td_wrong = numpy_td(online, online, batch, weights, gamma, double, delta)[0]
    assert np.abs(td_wrong - td_np).max() > 1e-2


def test_double_dqn_picks_online_argmax_target_value():
    # One next state; online prefers action 0, target values action 0 at 1 and action 2 at 5.
    online = {"W": jnp.zeros((1, A)), "b": jnp.array([3.0, 0.0, 1.0])}
    target = {"W": jnp.zeros((1, A)), "b": jnp.array([1.0, -2.0, 5.0])}
    batch = {"state": {"x": jnp.zeros((1, 1))}, "action": jnp.array([1]), "reward": jnp.array([0.5]),
             "next_state": {"x": jnp.zeros((1, 1))}, "done": jnp.array([False])}
    _, _, m_double = dqn.td_loss(q_apply, online, target, batch, jnp.ones(1), 0.5, double_dqn=True)
    _, _, m_plain = dqn.td_loss(q_apply, online, target, batch, jnp.ones(1), 0.5, double_dqn=False)
    np.testing.assert_allclose(float(m_double["dqn_target_q_mean"]), 0.5 + 0.5 * 1.0)
    np.testing.assert_allclose(float(m_plain["dqn_target_q_mean"]), 0.5 + 0.5 * 5.0)


def test_done_transitions_ignore_next_state():
    online, target, batch, weights = make_td_problem(1)
    _, td, _ = dqn.td_loss(q_apply, online, target, batch, weights, 0.99)
    done = batch["done"]
    assert done.any() and (~done).any()
    poisoned = dict(batch, next_state={"x": np.where(done[:, None], np.inf, batch["next_state"]["x"])})
    _, td2, _ = dqn.td_loss(q_apply, online, target, poisoned, weights, 0.99)
    np.testing.assert_array_equal(np.asarray(td2), np.asarray(td))
    # For done rows the target is the reward alone.
    q_sa = (batch["state"]["x"] @ online["W"] + online["b"])[np.arange(N), batch["action"]]
    np.testing.assert_allclose(np.asarray(td)[done], (q_sa - batch["reward"])[done], rtol=1e-5, atol=1e-6)


def test_zero_weights_give_zero_loss():
    online, target, batch, _ = make_td_problem(2)
    loss, _, _ = dqn.td_loss(q_apply, online, target, batch, np.zeros(N, np.float32), 0.9)
    assert float(loss) == 0.0


# --------------------------------------------------------------------------- #
# Target refresh
# --------------------------------------------------------------------------- #
def test_hard_target_update_only_at_multiples_of_freq():
    upd = jax.jit(dqn.update_target, static_argnames=("update_freq", "tau"))
    target = {"w": jnp.zeros(3)}
    for step in range(10):
        online = {"w": jnp.full(3, float(step + 1))}
        target = upd(target, online, jnp.int32(step), update_freq=4, tau=0.0)
        expected = 4 * (step // 4) + 1  # last copy at the last multiple of 4
        np.testing.assert_array_equal(np.asarray(target["w"]), expected)


def test_polyak_target_update_matches_formula():
    rng = np.random.default_rng(0)
    t0 = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    on = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    upd = jax.jit(dqn.update_target, static_argnames=("update_freq", "tau"))
    t1 = upd(t0, on, jnp.int32(3), update_freq=100, tau=0.05)
    t2 = upd(t1, on, jnp.int32(4), update_freq=100, tau=0.05)
    for k, t0_k in t0.items():
        once = 0.95 * t0_k + 0.05 * on[k]
        np.testing.assert_allclose(np.asarray(t1[k]), once, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(t2[k]), 0.95 * once + 0.05 * on[k], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- #
# Schedules and actions
# --------------------------------------------------------------------------- #
def test_epsilon_temperature_and_weight_schedules():
    T = 1000
    eps = jax.jit(lambda s: dqn.dqn_epsilon(s, T, start=1.0, end=0.05, decay_ratio=0.2))
    np.testing.assert_allclose(float(eps(0)), 1.0)
    np.testing.assert_allclose(float(eps(100)), 1.0 + 0.5 * (0.05 - 1.0), rtol=1e-6)
    np.testing.assert_allclose(float(eps(200)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(eps(900)), 0.05, rtol=1e-6)
    temp = dqn.q_temperature(jnp.int32(250), T, start=2.0, end=0.5, anneal_ratio=0.5)
    np.testing.assert_allclose(float(temp), 1.25, rtol=1e-6)
    w = [float(dqn.dqn_loss_weight(s, T, weight=0.4, warmup_ratio=0.1)) for s in (0, 50, 100, 700)]
    np.testing.assert_allclose(w, [0.0, 0.2, 0.4, 0.4], rtol=1e-6, atol=1e-7)


def random_q(B: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, A)).astype(np.float32))


def test_epsilon_zero_is_greedy():
    q = random_q(500)
    acts = jax.jit(dqn.select_actions)(q, jax.random.key(0), 0.0, 1.0)
    assert acts.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(acts), np.argmax(np.asarray(q), axis=1))


def test_boltzmann_exploration_temperature():
    B = 30_000
    q = random_q(B, 1)
    greedy = np.argmax(np.asarray(q), axis=1)
    cold = np.asarray(dqn.select_actions(q, jax.random.key(1), 1.0, 1e-4))
    assert np.mean(cold == greedy) > 0.999
    hot = np.asarray(dqn.select_actions(q, jax.random.key(2), 1.0, 1e4))
    np.testing.assert_allclose(np.bincount(hot, minlength=A) / B, 1 / A, atol=0.015)
    # Partial exploration at high temperature: a row leaves the argmax w.p. eps * (1 - 1/A).
    mixed = np.asarray(dqn.select_actions(q, jax.random.key(3), 0.3, 1e4))
    np.testing.assert_allclose(np.mean(mixed != greedy), 0.3 * (1 - 1 / A), atol=0.015)


def test_action_entropy_matches_numpy_and_is_differentiable():
    q = random_q(8, 2)
    for T in (0.5, 1.0, 3.0):
        z = np.asarray(q, np.float64) / T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(np.asarray(dqn.action_entropy(q, T)), -(p * np.log(p)).sum(1), rtol=1e-5)
    g = jax.grad(lambda q: dqn.action_entropy(q, 1.0).sum())(q)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
    # Uniform Q -> maximal entropy log(A).
    np.testing.assert_allclose(np.asarray(dqn.action_entropy(jnp.zeros((2, A)))), np.log(A), rtol=1e-6)


def test_action_counts():
    acts = jnp.array([0, 2, 2, 1, 2, 0], jnp.int32)
    np.testing.assert_array_equal(np.asarray(dqn.action_counts(acts, A)), [2, 1, 3])
    valid = jnp.array([True, False, True, True, False, False])
    np.testing.assert_array_equal(np.asarray(dqn.action_counts(acts, A, valid)), [1, 1, 1])


# --------------------------------------------------------------------------- #
# Rewards
# --------------------------------------------------------------------------- #
def test_step_rewards_match_numpy():
    cfg = dqn.RewardConfig.from_config(HESCConfig(seq_len=900, vocab_size=12))  # the configured defaults
    rows = {  # improvement | halt correct | halt wrong | expand helped | expand no help | memory
        "acc_prev": np.array([0.2, 0.5, 0.5, 0.3, 0.6, 0.1], np.float32),
        "acc": np.array([0.4, 0.5, 0.4, 0.7, 0.6, 0.3], np.float32),
        "halted": np.array([False, True, True, False, False, False]),
        "seq_correct": np.array([False, True, False, False, True, False]),
        "expanded": np.array([False, False, False, True, True, False]),
        "expansion_cost": np.array([0.0, 0.0, 0.0, 0.02, 0.02, 0.0], np.float32),
        "memory_hit": np.array([False, False, False, False, True, True]),
        "intrinsic": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.03], np.float32),
    }
    got = np.asarray(jax.jit(lambda r: dqn.step_rewards(cfg, **r))(rows))
    r = rows
    improved = r["acc"] > r["acc_prev"]
    want = ((r["acc"] - r["acc_prev"]) - cfg.step_penalty
            + r["halted"] * np.where(r["seq_correct"], cfg.terminal_correct, cfg.terminal_incorrect)
            + r["expanded"] * cfg.expansion_bonus * improved - r["expansion_cost"]
            + r["memory_hit"] * cfg.memory_bonus * improved + r["intrinsic"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Hand values: expansion that helped gets the bonus, one that did not only pays the cost.
    np.testing.assert_allclose(got, [0.19, 0.99, -0.61, 0.47, -0.03, 0.27], atol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.step_penalty = 0.0


# --------------------------------------------------------------------------- #
# Running statistics
# --------------------------------------------------------------------------- #
def test_running_stats_match_numpy_over_masked_updates():
    rng = np.random.default_rng(0)
    stats = dqn.running_stats_init()
    np.testing.assert_allclose(np.asarray(dqn.normalize(stats, jnp.array([1.5, -2.0]))), [1.5, -2.0], rtol=1e-6)
    upd = jax.jit(dqn.running_stats_update)
    seen = []
    for i, n in enumerate((7, 1, 20, 5, 12)):
        x = (rng.normal(size=n) * 3 + 100).astype(np.float32)  # large offset: tests stability
        valid = rng.random(n) < 0.6 if i != 3 else np.zeros(n, bool)  # one batch with nothing valid
        x_poisoned = np.where(valid, x, np.nan).astype(np.float32)
        stats = upd(stats, x_poisoned, valid)
        seen.extend(x[valid])
        if seen:
            np.testing.assert_allclose(float(stats.count), len(seen))
            np.testing.assert_allclose(float(stats.mean), np.mean(seen), rtol=1e-6)
            np.testing.assert_allclose(float(stats.var), np.var(seen), rtol=1e-4, atol=1e-5)
    x = jnp.array([100.0, 103.0])
    np.testing.assert_allclose(np.asarray(dqn.normalize(stats, x)), (np.asarray(x) - np.mean(seen)) / np.sqrt(np.var(seen) + 1e-8), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dqn.normalize(stats, x, center=False)), np.asarray(x) / np.sqrt(np.var(seen) + 1e-8), rtol=1e-4)


# --------------------------------------------------------------------------- #
# Curiosity
# --------------------------------------------------------------------------- #
def test_rnd_predictor_learns_and_target_stays_fixed():
    rnd = dqn.RND(hidden=32, features=16)
    rng = np.random.default_rng(0)
    x_train = jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32))
    x_novel = jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32) * 3.0 + 2.0)
    variables = rnd.init(jax.random.key(0), x_train)
    assert set(variables) == {"params", "buffers"}
    assert set(variables["buffers"]) == {"target_w1", "target_w2"}
    assert not any("target" in k for k in variables["params"])
    buffers0 = jax.tree.map(np.asarray, variables["buffers"])
    # A different init key gives a different target network (it is drawn from the params rng).
    other = rnd.init(jax.random.key(1), x_train)["buffers"]["target_w1"]
    assert np.abs(np.asarray(other) - buffers0["target_w1"]).max() > 1e-3

    tx = optax.adam(1e-2)
    params, buffers = variables["params"], variables["buffers"]
    opt_state = tx.init(params)

    @jax.jit
    def train(params, opt_state):
        def loss_fn(p):
            return rnd.apply({"params": p, "buffers": buffers}, x_train)[1]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = train(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    intr_train, loss_train = rnd.apply({"params": params, "buffers": buffers}, x_train)
    intr_novel, _ = rnd.apply({"params": params, "buffers": buffers}, x_novel)
    assert intr_train.shape == (32,)
    np.testing.assert_allclose(float(loss_train), float(jnp.mean(intr_train)), rtol=1e-6)
    assert float(jnp.mean(intr_novel)) > 3 * float(jnp.mean(intr_train))
    for k in buffers0:
        np.testing.assert_array_equal(np.asarray(buffers[k]), buffers0[k])
    # intrinsic is a stop-gradient reward: no gradient reaches the predictor through it.
    g = jax.grad(lambda p: rnd.apply({"params": p, "buffers": buffers}, x_train)[0].sum())(params)
    assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(g))
    # rnd_loss does not push the model's state (the input) towards predictable states.
    gx = jax.grad(lambda x: rnd.apply({"params": params, "buffers": buffers}, x)[1])(x_novel)
    assert not np.asarray(gx).any()


def test_simhash_codes_match_numpy():
    counter = dqn.simhash_init(jax.random.key(0), 5, 6)
    x = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    bits = (x.astype(np.float64) @ np.asarray(counter.projection, np.float64)) > 0
    np.testing.assert_array_equal(np.asarray(dqn.simhash_codes(counter, x)), bits @ (1 << np.arange(6)))


def test_count_bonus_decays_as_inverse_sqrt_count():
    counter = dqn.simhash_init(jax.random.key(0), 4, 8)
    assert counter.counts.shape == (256,) and counter.counts.dtype == jnp.int32
    bonus_fn = jax.jit(dqn.count_bonus)
    rng = np.random.default_rng(1)
    s, other = rng.normal(size=(2, 4)).astype(np.float32)
    codes = np.asarray(dqn.simhash_codes(counter, np.stack([s, other])))
    assert codes[0] != codes[1]
    # The same state in three successive batches: 1, 1/sqrt(2), 1/sqrt(3).
    got = []
    for _ in range(3):
        b, counter = bonus_fn(counter, s[None], jnp.array([True]))
        got.append(float(b[0]))
    np.testing.assert_allclose(got, 1 / np.sqrt([1, 2, 3]), rtol=1e-6)
    # In one batch: two more copies of s each count (-> 5), a new state gets 1, invalid rows
    # neither count nor get a bonus.
    x = np.stack([s, other, s, other])
    b, counter = bonus_fn(counter, x, jnp.array([True, True, True, False]))
    np.testing.assert_allclose(np.asarray(b), [1 / np.sqrt(5), 1.0, 1 / np.sqrt(5), 0.0], rtol=1e-6)
    assert int(counter.counts[codes[0]]) == 5 and int(counter.counts[codes[1]]) == 1
    assert int(counter.counts.sum()) == 6
