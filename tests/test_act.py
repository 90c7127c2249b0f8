"""ACT wrapper semantics: resets, step counting, halting rule, exploration, evaluation length."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax

BASE = dict(seq_len=6, vocab_size=5, num_puzzle_identifiers=3, hidden_size=16, num_heads=2, expansion=2.0,
            H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="float32",
            halt_max_steps=4, halt_exploration_prob=0.0)


def _batch(B, seed):
    rng = np.random.default_rng(seed)
    return {"inputs": jnp.asarray(rng.integers(0, 5, (B, 6)), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 5, (B, 6)), jnp.int32),
            "puzzle_identifiers": jnp.asarray(rng.integers(0, 3, (B,)), jnp.int32)}


def _setup(q_bias=None, **overrides):
    cfg = {**BASE, **overrides}
    variables = trm_jax.init_variables(cfg, jax.random.PRNGKey(0))
    # Random puzzle embeddings and a non-zero q-head so every input matters.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["inner"]["puzzle_emb"]["embedding"] = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
    if q_bias is not None:
        params["inner"]["q_head"]["bias"] = jnp.asarray(q_bias, jnp.float32)
    variables = {**variables, "params": params}
    model = trm_jax.build_model(cfg)
    step = jax.jit(lambda c, b, train, key: model.apply(variables, c, b, train=train, rngs={"exploration": key}),
                   static_argnums=2)
    return cfg, variables, model, step


def test_halted_rows_reset_state_and_data_others_continue():
    cfg, _, _, step = _setup()
    key = jax.random.PRNGKey(0)
    b1, b2 = _batch(4, 1), _batch(4, 2)
    carry, _ = step(trm_jax.initial_carry(cfg, b1), b1, False, key)
    carry, _ = step(carry, b1, False, key)
    halted = jnp.array([True, False, True, False])
    carry = carry.replace(halted=halted)
    new, out = step(carry, b2, False, key)

    # Data: halted rows took the new batch's rows, the others kept theirs.
    for k in b1:
        want = np.where(np.asarray(halted).reshape((-1,) + (1,) * (b1[k].ndim - 1)), b2[k], b1[k])
        np.testing.assert_array_equal(new.current_data[k], want)
    np.testing.assert_array_equal(new.steps, [1, 3, 1, 3])

    # State: a reset row computes exactly what a fresh carry computes on the same example.
    fresh, fresh_out = step(trm_jax.initial_carry(cfg, b2), b2, False, key)
    for r in (0, 2):
        np.testing.assert_array_equal(out["logits"][r], fresh_out["logits"][r])
        np.testing.assert_array_equal(new.z_H[r], fresh.z_H[r])
    for r in (1, 3):
        assert not np.allclose(out["logits"][r], fresh_out["logits"][r])


def test_evaluation_runs_exactly_halt_max_steps_whatever_q_says():
    cfg, _, _, step = _setup(q_bias=[10.0, -10.0])  # Q says "halt now"
    b = _batch(3, 0)
    carry = trm_jax.initial_carry(cfg, b)
    for n in range(1, cfg["halt_max_steps"] + 1):
        carry, _ = step(carry, b, False, jax.random.PRNGKey(n))
        np.testing.assert_array_equal(carry.steps, [n] * 3)
        assert bool(carry.halted.all()) == (n == cfg["halt_max_steps"])
    carry, _ = step(carry, _batch(3, 9), False, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(carry.steps, [1, 1, 1])  # every row restarted on new data


@pytest.mark.parametrize("no_act_continue,q_bias,halts", [
    (True, [5.0, -5.0], True),     # q_halt > 0
    (True, [-5.0, 9.0], False),    # q_halt < 0
    (False, [1.0, 0.5], True),     # q_halt > q_continue
    (False, [1.0, 2.0], False),    # q_halt < q_continue although q_halt > 0
])
def test_training_halting_rule(no_act_continue, q_bias, halts):
    cfg, _, _, step = _setup(q_bias=q_bias, no_ACT_continue=no_act_continue)
    b = _batch(5, 0)
    carry, _ = step(trm_jax.initial_carry(cfg, b), b, True, jax.random.PRNGKey(0))
    assert bool(carry.halted.all()) is halts and bool(carry.halted.any()) is halts
    if not halts:
        for _ in range(cfg["halt_max_steps"] - 1):
            carry, _ = step(carry, b, True, jax.random.PRNGKey(1))
        assert bool(carry.halted.all())  # the step limit always halts


def test_exploration_min_steps_are_uniform_on_2_to_max():
    # Q says "halt" at every step and every row explores: at each step a row
    # draws min_steps ~ U{2..5} and halts iff steps >= min_steps.
    cfg, _, _, step = _setup(q_bias=[5.0, -5.0], halt_exploration_prob=1.0, halt_max_steps=5)
    B = 2000
    b = _batch(B, 0)
    carry = trm_jax.initial_carry(cfg, b)
    halt_step = np.zeros(B, int)
    for n in range(1, 6):
        carry, _ = step(carry, b, True, jax.random.PRNGKey(100 + n))
        halt_step[np.asarray(carry.halted) & (halt_step == 0)] = n
    assert (halt_step >= 2).all() and (halt_step <= 5).all()
    # P(halt at 2) = P(draw = 2) = 1/4; P(halt at 3) = 3/4 * 2/4; at 4: 3/4 * 2/4 * 3/4.
    expected = np.array([1 / 4, 3 / 4 * 2 / 4, 3 / 4 * 2 / 4 * 3 / 4])
    observed = np.bincount(halt_step, minlength=6)[2:5] / B
    np.testing.assert_allclose(observed, expected, atol=0.04)


def test_exploration_probability_controls_early_halting():
    cfg, _, _, step = _setup(q_bias=[5.0, -5.0], halt_exploration_prob=0.3, halt_max_steps=6)
    b = _batch(4000, 0)
    carry, _ = step(trm_jax.initial_carry(cfg, b), b, True, jax.random.PRNGKey(3))
    # Without exploration every row would halt at step 1; exploring rows (30%) may not.
    frac_continue = 1.0 - float(carry.halted.mean())
    assert abs(frac_continue - 0.3) < 0.03


def test_training_without_rng_fails_clearly():
    cfg, variables, model, _ = _setup(halt_exploration_prob=0.1)
    b = _batch(2, 0)
    with pytest.raises(ValueError, match="exploration"):
        model.apply(variables, trm_jax.initial_carry(cfg, b), b, train=True)


def test_q_continue_target_is_bootstrapped_from_the_next_state():
    cfg, variables, model, step = _setup(q_bias=[-1.0, 1.0], no_ACT_continue=False)
    params = variables["params"]
    params["inner"]["q_head"]["kernel"] = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (16, 2))
    variables = {**variables, "params": params}
    b = _batch(3, 0)
    carry = trm_jax.initial_carry(cfg, b)
    for _ in range(cfg["halt_max_steps"] - 1):  # bring rows to the last step
        carry, out = model.apply(variables, carry, b, train=True, rngs={"exploration": jax.random.PRNGKey(0)})
        assert "target_q_continue" in out
        # Independent recomputation: one more (evaluation) recursion from the new state.
        _, nxt = model.apply(variables, carry.replace(halted=jnp.zeros(3, bool)), b, train=False)
        is_last = carry.steps >= cfg["halt_max_steps"]
        want = jax.nn.sigmoid(jnp.where(is_last, nxt["q_halt_logits"],
                                        jnp.maximum(nxt["q_halt_logits"], nxt["q_continue_logits"])))
        np.testing.assert_allclose(out["target_q_continue"], want, rtol=1e-5, atol=1e-6)
    _, out = model.apply(variables, carry, b, train=False)
    assert "target_q_continue" not in out
