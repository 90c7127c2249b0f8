"""The compiled HESC train step: the replay buffer is written in place and each step learns from
the minibatch prefetched from the buffer as it stood at the end of the previous step."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax import optim
from trm_jax.hesc import replay as replay_lib
from trm_jax.hesc.config import HESCConfig
from trm_jax.families import get_family
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state

CAPACITY, HIDDEN = 1031, 24  # a capacity no other array has, so its copies can be found in the HLO


def _config():
    from configs import hesc

    config = hesc.get_config("text,tiny")
    config.model.update(dict(hidden_size=HIDDEN, num_heads=2, capsule_dim=HIDDEN, q_head_hidden=HIDDEN,
                             num_capsules=4, seq_len=4, capsule_children=2, checksum_dim=4, num_concepts=8,
                             memory_capacity=8, rnd_hidden=8, curiosity_hash_bits=4, halt_max_steps=3,
                             latent_num_paths=1, mtp_num_depths=1, dqn_buffer_capacity=CAPACITY,
                             dqn_buffer_min_size=4, dqn_batch_size=8))
    config.global_batch_size = 4
    return config


def _storage_copies(hlo: str) -> int:
    """Copies of a [CAPACITY, HIDDEN] replay storage array in compiled HLO text."""
    return len(re.findall(rf"f32\[{CAPACITY},{HIDDEN}\]\{{1,0\}} copy\(", hlo))


@pytest.fixture(scope="module")
def compiled_step():
    """(cfg, compiled donated train step, its HLO text, a fresh state, a batch); compiled once."""
    config = _config()
    cfg = HESCConfig.from_any(config.model)
    model, tx = get_family("hesc").build_model(cfg), optim.build_optimizer(config, 100)
    state = create_train_state(cfg, tx, config.global_batch_size, 0, False)
    batch = model.example_batch(config.global_batch_size)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    batch.update(inputs=jax.random.randint(k1, batch["inputs"].shape, 4, cfg.vocab_size, jnp.int32),
                 sketches=jax.random.normal(k2, batch["sketches"].shape))
    batch["labels"] = batch["inputs"]
    compiled = jax.jit(make_train_step(model, tx, config, 100), donate_argnums=0).lower(state, batch).compile()
    return cfg, compiled, compiled.as_text(), state, batch


def test_replay_storage_is_updated_in_place_and_the_check_can_fail(compiled_step):
    _, _, hlo, _, _ = compiled_step
    assert _storage_copies(hlo) == 0

    # The check finds copies where they exist: sampling the buffer and then writing it in one
    # donated function (the order the step avoids) copies the storage.
    def sample_then_add(buf, key, rows):
        _, transitions, _ = replay_lib.replay_sample(buf, key, 8, 0.6, 0.4)
        n = rows.shape[0]
        buf = replay_lib.replay_add(buf, {"x": rows}, jnp.zeros(n, jnp.int32), jnp.zeros(n), {"x": rows},
                                    jnp.zeros(n, bool), jnp.ones(n, bool))
        return buf, transitions

    buf = replay_lib.replay_init(CAPACITY, {"x": jnp.zeros(HIDDEN)})
    old_order = jax.jit(sample_then_add, donate_argnums=0).lower(buf, jax.random.PRNGKey(0), jnp.ones((4, HIDDEN)))
    assert _storage_copies(old_order.compile().as_text()) > 0


def test_each_step_learns_from_the_minibatch_sampled_at_the_end_of_the_previous_step(compiled_step):
    # The state is made eagerly (not under jit), as a user would, and donated to the step.
    cfg, step, _, state, batch = compiled_step
    first = state.aux.dqn_batch
    assert not bool(first.ready) and float(jnp.abs(first.is_weights).sum()) == 0.0  # empty buffer
    sizes = []
    for _ in range(4):
        state, metrics = step(state, batch)
        buf, mb = state.aux.replay, state.aux.dqn_batch
        sizes.append(int(buf.size))
        # The prefetched minibatch holds rows of the buffer as written by this step.
        idx = np.asarray(mb.indices)
        assert (idx < int(buf.size)).all()
        np.testing.assert_array_equal(np.asarray(mb.transitions["state"]["x"]), np.asarray(buf.state["x"])[idx])
        np.testing.assert_array_equal(np.asarray(mb.transitions["action"]), np.asarray(buf.action)[idx])
        assert bool(mb.ready) == (int(buf.size) >= cfg.dqn_buffer_min_size)
    assert sizes[-1] > sizes[0] > 0
    # Once the prefetched minibatch is ready, the step's TD loss is live.
    assert float(metrics["dqn_loss"]) > 0
