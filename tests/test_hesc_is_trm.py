"""HESC with every extension off and two actions is the TRM: the same parameter tree, the same
outputs on the same variables, the same metrics and parameters over several train steps.

HESC is written as the TRM plus hooks (trm_jax/hesc/model.py); this is the check that the hooks'
defaults leave nothing of a second implementation behind.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from trm_jax import optim
from trm_jax.families import get_family
from trm_jax.hesc.config import HESCConfig
from trm_jax.models.config import TRMConfig
from trm_jax.steps import make_eval_batch, make_train_step
from trm_jax.train_state import create_train_state

TRM_FIELDS = dict(seq_len=16, vocab_size=7, num_puzzle_identifiers=5, hidden_size=32, num_heads=2, expansion=2.0,
                  H_cycles=2, L_cycles=2, L_layers=1, puzzle_emb_ndim=32, puzzle_emb_len=2,
                  forward_dtype="float32", halt_max_steps=3, halt_exploration_prob=0.5, remat="none")
EXTENSIONS_OFF = dict(enable_capsules=False, enable_capsule_expansion=False, enable_reconstruction=False,
                      enable_hierarchical_attention=False, q_head_num_actions=2, enable_dqn=False,
                      enable_entropy_regularization=False, enable_vq=False, enable_latent_planning=False,
                      enable_memory=False, enable_mtp=False, enable_adaptive_hcycles=False)


def _configs(**trm_overrides):
    trm = TRMConfig(**{**TRM_FIELDS, **trm_overrides})
    hesc = HESCConfig(**{**TRM_FIELDS, **trm_overrides, **EXTENSIONS_OFF})
    return trm, hesc


def _batches(n, B=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"inputs": jnp.asarray(rng.integers(1, 7, (B, 16)), jnp.int32),
             "labels": jnp.asarray(rng.integers(1, 7, (B, 16)), jnp.int32),
             "puzzle_identifiers": jnp.asarray(rng.integers(0, 5, (B,)), jnp.int32)} for _ in range(n)]


def _paths(tree):
    return {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("no_act_continue", [True, False])
def test_hesc_with_every_extension_off_is_the_trm(no_act_continue):
    trm_cfg, hesc_cfg = _configs(no_ACT_continue=no_act_continue)
    config = common.training(global_batch_size=4, lr=1e-3, lr_warmup_steps=2, ema=False)
    tx = optim.build_optimizer(config, total_steps=100)
    trm_state = create_train_state(trm_cfg, tx, 4, seed=3, use_ema=False)
    hesc_state = create_train_state(hesc_cfg, tx, 4, seed=3, use_ema=False)

    # Same parameter tree (paths and shapes) and, from the same seed, the same initial values.
    assert _paths(hesc_state.params) == _paths(trm_state.params)
    assert _paths(hesc_state.buffers) == _paths(trm_state.buffers)
    jax.tree.map(np.testing.assert_array_equal, hesc_state.params, trm_state.params)

    # Same outputs on the same variables, in evaluation and in training (same exploration key).
    trm_model, hesc_model = get_family("trm").build_model(trm_cfg), get_family("hesc").build_model(hesc_cfg)
    variables = {"params": trm_state.params, "buffers": trm_state.buffers}
    batch = _batches(1)[0]
    for train in (False, True):
        rngs = {"exploration": jax.random.PRNGKey(7)} if train else {}
        c_trm, c_hesc = trm_model.initial_carry(batch), hesc_model.initial_carry(batch)
        for _ in range(3):
            c_trm, o_trm = trm_model.apply(variables, c_trm, batch, train=train, rngs=rngs)
            c_hesc, o_hesc = hesc_model.apply(variables, c_hesc, batch, train=train, rngs=rngs)
            for key in o_trm:
                np.testing.assert_allclose(o_hesc[key], o_trm[key], rtol=1e-6, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(c_hesc.z_H, c_trm.z_H, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(c_hesc.halted, c_trm.halted)
            np.testing.assert_array_equal(c_hesc.steps, c_trm.steps)

    # Same metrics and parameters over several train steps of the one train step.
    trm_step = jax.jit(make_train_step(trm_model, tx, config, 100))
    hesc_step = jax.jit(make_train_step(hesc_model, tx, config, 100))
    for batch in _batches(4, seed=1):
        trm_state, m_trm = trm_step(trm_state, batch)
        hesc_state, m_hesc = hesc_step(hesc_state, batch)
        for key, value in m_trm.items():
            np.testing.assert_allclose(m_hesc[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), hesc_state.params,
                 trm_state.params)
    assert int(trm_state.step) == 4

    # And the same evaluation.
    eval_trm = make_eval_batch(trm_model)(trm_state.params, trm_state.buffers, trm_state.aux, batch)
    eval_hesc = make_eval_batch(hesc_model)(hesc_state.params, hesc_state.buffers, hesc_state.aux, batch)
    for key, value in eval_trm[0].items():
        np.testing.assert_allclose(eval_hesc[0][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(eval_hesc[1], eval_trm[1])


def test_the_equivalence_check_can_fail():
    """One extension on (MTP) changes the parameter tree: the comparison above would see it."""
    trm_cfg, hesc_cfg = _configs()
    hesc_cfg = dataclasses.replace(hesc_cfg, enable_mtp=True)
    tx = optax.adam(1e-3)  # (the parameter tree does not depend on the optimizer)
    trm_state = create_train_state(trm_cfg, tx, 4, seed=3, use_ema=False)
    hesc_state = create_train_state(hesc_cfg, tx, 4, seed=3, use_ema=False)
    assert _paths(hesc_state.params) != _paths(trm_state.params)
