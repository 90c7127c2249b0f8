"""HESC model mechanisms at the ACT-step level: expansion, RNN Q-head state, adaptive H-cycles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.model import HESC, initial_carry
from trm_jax.hesc.qheads import CONTINUE, EXPAND
from trm_jax.models.config import ConfigError

# A 6x6 token grid, 3x3 regions (k = 9 capsules), 2x2 sub-regions (m = 4 children).
BASE = dict(seq_len=36, vocab_size=12, num_puzzle_identifiers=3, hidden_size=32, num_heads=2, expansion=2.0,
            H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=32, puzzle_emb_len=1, forward_dtype="float32",
            halt_max_steps=4, capsule_grid=6, capsule_regions=3, capsule_subregions=2, q_head_hidden=32,
            checksum_dim=8, num_concepts=16, memory_capacity=16, memory_top_k=2, memory_num_heads=2,
            latent_num_paths=2, latent_planning_depth=1, mtp_num_depths=1, rnd_hidden=8, curiosity_hash_bits=6,
            dqn_buffer_capacity=64, dqn_buffer_min_size=8, dqn_batch_size=8)


def _batch(B=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": jnp.asarray(rng.integers(1, 12, (B, 36)), jnp.int32),
            "labels": jnp.asarray(rng.integers(1, 12, (B, 36)), jnp.int32),
            "puzzle_identifiers": jnp.asarray(rng.integers(0, 3, (B,)), jnp.int32)}


def _init(**overrides):
    cfg = HESCConfig.from_any({**BASE, **overrides})
    model = HESC(cfg)
    batch = _batch()
    from trm_jax.hesc.memory import memory_init

    memory = memory_init(cfg.memory_capacity, cfg.hidden_size) if cfg.enable_memory else None
    variables = model.init({"params": jax.random.PRNGKey(0)}, initial_carry(cfg, batch), batch, memory=memory)
    return cfg, model, dict(variables), batch, memory


def _with_action_bias(variables, bias):
    params = jax.tree.map(lambda x: x, variables["params"])
    params["inner"]["action_head"]["q_out"]["bias"] = jnp.asarray(bias, jnp.float32)
    return {**variables, "params": params}


# Slow step: one of the heaviest fast tests (the fast suite's time is near its ~15 minute budget).
@pytest.mark.slow
def test_expand_changes_exactly_one_capsule_per_row_and_costs():
    cfg, model, variables, batch, memory = _init()
    apply = jax.jit(lambda v, c: model.apply(v, c, batch, train=False, memory=memory))
    carry = initial_carry(cfg, batch)
    expand_v = _with_action_bias(variables, [0.0, 0.0, 5.0])   # greedy policy: EXPAND
    stay_v = _with_action_bias(variables, [5.0, 0.0, 0.0])     # greedy policy: CONTINUE
    c_exp, out = apply(expand_v, carry)
    c_stay, out_stay = apply(stay_v, carry)

    assert (np.asarray(out["actions"]) == EXPAND).all() and (np.asarray(out_stay["actions"]) == CONTINUE).all()
    state = c_exp.extras.capsules  # the CapsuleState rides in the carry
    mask = np.asarray(state.expanded_mask)
    assert (mask.sum(-1) == 1).all() and (np.asarray(state.num_expansions) == 1).all()
    # Exactly one capsule's effective content changed: the expanded one now shows its children's mean.
    from trm_jax.hesc.capsules import effective_content

    changed = np.any(np.asarray(effective_content(state)) != np.asarray(state.sketches), axis=-1)
    np.testing.assert_array_equal(changed, mask)
    idx = np.asarray(out["expanded_index"])
    np.testing.assert_array_equal(idx, np.argmin(np.asarray(out["confidence"]), axis=-1))  # least confident
    np.testing.assert_allclose(out["expansion_cost"], cfg.m * cfg.expansion_cost_per_child, rtol=1e-6)
    assert not np.asarray(c_stay.extras.capsules.expanded_mask).any()

    # Only the expanded capsule's state changed, and it took the children's content.
    P = cfg.capsule_offset
    z_exp, z_stay = np.asarray(c_exp.z_H), np.asarray(c_stay.z_H)
    agg = np.asarray(out["capsule_agg_emb"])
    for b, i in enumerate(idx):
        np.testing.assert_allclose(z_exp[b, P + i], agg[b, i], rtol=1e-6)
        others = np.ones(cfg.total_len, bool)
        others[P + i] = False
        np.testing.assert_array_equal(z_exp[b, others], z_stay[b, others])

    # A second step expands another capsule; the expanded content now enters as input.
    c2, out2 = apply(expand_v, c_exp)
    assert (np.asarray(c2.extras.capsules.expanded_mask).sum(-1) == 2).all()
    assert (np.asarray(out2["expanded_index"]) != idx).all()


def test_rnn_head_state_rides_in_the_carry():
    cfg, model, variables, batch, memory = _init(q_head_type="rnn", enable_capsule_expansion=False,
                                                 q_head_num_actions=3)
    params = jax.tree.map(lambda x: x, variables["params"])
    params["inner"]["action_head"]["q_out"]["kernel"] = 0.5 * jax.random.normal(jax.random.PRNGKey(3), (32, 3))
    variables = {**variables, "params": params}
    apply = jax.jit(lambda c: model.apply(variables, c, batch, train=False, memory=memory))
    c1, _ = apply(initial_carry(cfg, batch))
    state1 = np.asarray(c1.extras.rnn_state)
    assert np.abs(state1).max() > 0
    c2, out2 = apply(c1)
    _, out2_reset = apply(c1.replace(extras=c1.extras.replace(rnn_state=jnp.zeros_like(c1.extras.rnn_state))))
    assert not np.allclose(out2["q_values"], out2_reset["q_values"])  # the carried state matters
    assert not np.allclose(np.asarray(c2.extras.rnn_state), state1)


def _core_bias(variables, halt_minus_continue):
    """The action head's Q(HALT) - Q(CONTINUE), the trained value the adaptive exit reads (3 actions)."""
    return _with_action_bias(variables, [0.0, halt_minus_continue, 0.0])


def test_adaptive_hcycles_freeze_exited_rows():
    kw = dict(enable_adaptive_hcycles=True, hcycle_confidence_threshold=2.0, enable_latent_planning=False,
              enable_memory=False, H_cycles=3)
    cfg, model, variables, batch, _ = _init(**kw)
    apply = jax.jit(lambda v: model.apply(v, initial_carry(cfg, batch), batch, train=False))
    _, confident = apply(_core_bias(variables, 5.0))   # every row exits after its first cycle
    _, unsure = apply(_core_bias(variables, -5.0))     # no row exits
    np.testing.assert_array_equal(confident["hcycles"], [1] * 4)
    np.testing.assert_array_equal(unsure["hcycles"], [3] * 4)
    # Frozen rows compute exactly what a 1-cycle model computes with the same weights.
    cfg1, model1, _, _, _ = _init(**{**kw, "H_cycles": 1})
    _, one = jax.jit(lambda v: model1.apply(v, initial_carry(cfg1, batch), batch, train=False))(
        _core_bias(variables, 5.0))
    np.testing.assert_allclose(confident["logits"], one["logits"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(unsure["logits"], one["logits"])
    # At inference the whole batch stops early: the loop runs no more cycles once all rows exited.
    jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, initial_carry(cfg, batch), batch, train=False))(variables))
    assert "while[" in jaxpr
    train_jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, initial_carry(cfg, batch), batch, train=True,
                                                           rngs={"exploration": jax.random.PRNGKey(0)}))(variables))
    assert "while[" not in train_jaxpr and "scan[" in train_jaxpr  # training keeps the fixed, masked scan


def _capsule_model(**overrides):
    """A capsules-mode HESC (k = 6 capsules of m = 3 children), its variables, a random batch and a memory bank."""
    k, m, Dc = 6, 3, 16
    cfg = HESCConfig.from_any({**BASE, "mode": "capsules", "seq_len": k, "num_capsules": k, "capsule_children": m,
                               "capsule_dim": Dc, "vocab_size": 20, "puzzle_emb_ndim": 0,
                               "enable_hierarchical_attention": False, **overrides})
    rng = np.random.default_rng(0)
    B = 4
    batch = {"inputs": jnp.asarray(rng.integers(4, 20, (B, k)), jnp.int32),
             "puzzle_identifiers": jnp.zeros((B,), jnp.int32),
             "sketches": jnp.asarray(rng.normal(size=(B, k, Dc)), jnp.float32),
             "children": jnp.asarray(rng.normal(size=(B, k, m, Dc)), jnp.float32),
             "checksums": jnp.asarray(rng.normal(size=(B, k, 8)), jnp.float32)}
    batch["labels"] = batch["inputs"]
    from trm_jax.hesc.memory import memory_init

    memory = memory_init(cfg.memory_capacity, cfg.hidden_size)
    model = HESC(cfg)
    variables = model.init({"params": jax.random.PRNGKey(0)}, initial_carry(cfg, batch), batch, memory=memory)
    return cfg, model, dict(variables), batch, memory


# Slow step: one of the heaviest fast tests (the fast suite's time is near its ~15 minute budget).
@pytest.mark.slow
def test_capsule_mode_predicts_masked_concepts_only():
    cfg, model, variables, batch, memory = _capsule_model()
    k, B = cfg.k, 4
    carry, out = model.apply(variables, initial_carry(cfg, batch), batch, train=False, memory=memory)
    target = np.asarray(carry.extras.capsule_target)
    labels = np.asarray(carry.current_data["labels"])
    assert (target.sum(-1) == round(cfg.capsule_mask_ratio * k)).all()
    np.testing.assert_array_equal(labels[target], np.asarray(batch["labels"])[target])  # real concept targets
    assert (labels[~target] == -100).all()
    assert out["logits"].shape == (B, k, 20)
    # The same example gets the same mask in evaluation (it is a function of the example).
    carry2, _ = model.apply(variables, initial_carry(cfg, batch), batch, train=False, memory=memory)
    np.testing.assert_array_equal(np.asarray(carry2.extras.capsule_target), target)


def test_invalid_combinations_are_refused():
    with pytest.raises(ConfigError, match="needs q_head_num_actions=3"):
        HESCConfig.from_any({**BASE, "q_head_num_actions": 2, "enable_entropy_regularization": False})
    with pytest.raises(ConfigError, match="do not tile"):
        HESCConfig.from_any({**BASE, "capsule_regions": 4})
    with pytest.raises(ConfigError, match="does not match seq_len"):
        HESCConfig.from_any({**BASE, "capsule_grid": 5})


def _run_steps(model, variables, batch, memory, train, n=3):
    """Every output and carry of ``n`` ACT steps (forced EXPAND), flattened to numpy."""
    cfg = model.config
    carry, outs = initial_carry(cfg, batch), []
    for i in range(n):
        rngs = {"exploration": jax.random.PRNGKey(i), "masking": jax.random.PRNGKey(9)} if train else {}
        carry, out = model.apply(variables, carry, batch, train=train, memory=memory, epsilon=0.0, rngs=rngs)
        outs.append((out, carry))
    return jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, outs))[0]


@pytest.mark.parametrize("train", [False, True])
def test_masked_capsules_never_reach_the_model(train):
    """Changing the content (sketches, children, checksums) of the masked target capsules changes no
    output and no carried state, over several steps in which every row EXPANDs."""
    cfg, model, variables, batch, memory = _capsule_model(capsule_mask_ratio=0.5)
    variables = _with_action_bias(variables, [0.0, -5.0, 5.0])  # greedy policy: EXPAND
    rngs = {"masking": jax.random.PRNGKey(9)} if train else {}
    carry, _ = model.apply(variables, initial_carry(cfg, batch), batch, train=train, memory=memory, epsilon=0.0,
                           rngs={**rngs, "exploration": jax.random.PRNGKey(0)} if train else {})
    target = np.asarray(carry.extras.capsule_target)
    assert target.any() and (~target).any()

    def perturbed(mask):
        rng = np.random.default_rng(1)
        out = dict(batch)
        for key in ("sketches", "children", "checksums"):
            x = np.asarray(batch[key]).copy()
            noise = rng.normal(size=x.shape).astype(np.float32) * 3.0
            where = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
            out[key] = jnp.asarray(np.where(where, x + noise, x))
        return out

    base = _run_steps(model, variables, batch, memory, train)
    expanded = [np.asarray(x) for p, x in base if "num_expansions" in jax.tree_util.keystr(p)]
    assert max(int(e.max()) for e in expanded) >= 2  # rows did expand, repeatedly
    changed = _run_steps(model, variables, perturbed(target), memory, train)
    for (path, a), (_, b) in zip(base, changed):
        if "current_data" in jax.tree_util.keystr(path):
            continue  # the batch itself, carried as the rows' example (not something the model computed)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # The check can fail: the same change on unmasked capsules changes the logits.
    visible = _run_steps(model, variables, perturbed(~target), memory, train)
    assert any(not np.array_equal(a, b) for (p, a), (_, b) in zip(base, visible) if "logits" in jax.tree_util.keystr(p))


def test_halt_exploration_delays_the_halt_action_as_for_the_trm():
    """halt_exploration_prob applies to HESC's HALT action: exploring rows may not halt before their
    drawn minimum number of steps (2..halt_max_steps), so a policy that always halts stops at step 1
    only without exploration."""
    kw = dict(enable_memory=False, enable_latent_planning=False, enable_capsule_expansion=False)
    for prob, expect_all_halted in ((0.0, True), (1.0, False)):
        cfg, model, variables, batch, _ = _init(halt_exploration_prob=prob, **kw)
        always_halt = _with_action_bias(variables, [0.0, 10.0, 0.0])
        carry, out = model.apply(always_halt, initial_carry(cfg, batch), batch, train=True, epsilon=0.0,
                                 rngs={"exploration": jax.random.PRNGKey(1)})
        assert (np.asarray(out["actions"]) == 1).all()  # the policy chose HALT everywhere
        assert bool(np.asarray(carry.halted).all()) == expect_all_halted


def test_the_adaptive_exit_reads_trained_values_that_receive_gradient():
    """With three actions the exit reads Q(HALT) - Q(CONTINUE) of the action head, which the TD
    loss trains; with two it reads the halting head, whose continue logit is trained when
    no_ACT_continue=False (the TRM's bootstrapped target) -- no decision rests on an untrained output."""
    from trm_jax.losses import act_loss

    kw = dict(enable_adaptive_hcycles=True, enable_latent_planning=False, enable_memory=False, H_cycles=3)
    # Two actions, no_ACT_continue=False: the exit compares q_halt - q_continue; both columns get gradient.
    cfg, model, variables, batch, _ = _init(q_head_num_actions=2, enable_capsule_expansion=False, enable_dqn=False,
                                            enable_entropy_regularization=False, no_ACT_continue=False, **kw)

    def loss(params):
        _, out = model.apply({**variables, "params": params}, initial_carry(cfg, batch), batch, train=True,
                             rngs={"exploration": jax.random.PRNGKey(0)})
        carry = initial_carry(cfg, batch).replace(halted=jnp.ones((4,), bool), current_data=batch)
        return act_loss(carry, out)[0]

    params = jax.tree.map(lambda x: x, variables["params"])
    # (At the reference init both logits are the bias -5 and the target equals the prediction.)
    params["inner"]["q_head"]["bias"] = jnp.asarray([0.5, -1.0], jnp.float32)
    grads = jax.grad(loss)(params)
    q_head_bias = np.asarray(grads["inner"]["q_head"]["bias"])
    assert np.abs(q_head_bias[0]) > 0 and np.abs(q_head_bias[1]) > 0  # halt and continue both trained

    def hcycles(bias):
        params = jax.tree.map(lambda x: x, variables["params"])
        params["inner"]["q_head"]["bias"] = jnp.asarray(bias, jnp.float32)
        _, out = model.apply({**variables, "params": params}, initial_carry(cfg, batch), batch, train=False)
        return np.asarray(out["hcycles"])

    # The exit changes with the continue logit alone (it is part of the decision).
    np.testing.assert_array_equal(hcycles([3.0, -3.0]), [1] * 4)   # q_halt - q_continue = 6 > 2
    np.testing.assert_array_equal(hcycles([3.0, 3.0]), [3] * 4)    # = 0: no row exits
