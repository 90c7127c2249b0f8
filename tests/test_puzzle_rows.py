"""The puzzle table's gradient built from row gradients equals JAX's dense gradient, and a
data-parallel step all-gathers the batch's rows instead of all-reducing the table."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import trm_jax
from tests.conftest import REPO
from trm_jax import puzzle_rows
from trm_jax.losses import act_loss

CFG = dict(seq_len=9, vocab_size=6, num_puzzle_identifiers=13, hidden_size=16, num_heads=2, expansion=2.0,
           H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=16, puzzle_emb_len=1, halt_max_steps=3,
           forward_dtype="float32")
TABLE = ("inner", "puzzle_emb", "embedding")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def test_row_gradients_scatter_to_the_dense_table_gradient():
    cfg = trm_jax.TRMConfig.from_any(CFG)
    model = trm_jax.build_model(cfg)
    variables = trm_jax.init_variables(cfg, jax.random.PRNGKey(0))
    params = variables["params"]
    # A non-zero table (the default init is zeros) so every row's gradient is distinct.
    params["inner"]["puzzle_emb"]["embedding"] = jax.random.normal(jax.random.PRNGKey(1), (13, 16))
    batch = trm_jax.random_batch(cfg, 8, jax.random.PRNGKey(2))
    batch["puzzle_identifiers"] = jnp.asarray([3, 7, 3, 0, 12, 7, 3, 5], jnp.int32)  # repeats on purpose
    carry = trm_jax.initial_carry(cfg, batch)

    def loss(params, offsets):
        extra = {puzzle_rows.COLLECTION: offsets} if offsets else {}
        new_carry, out = model.apply({**variables, "params": params, **extra}, carry, batch, train=False)
        return act_loss(new_carry, out, cfg.loss_type)[0]

    dense = jax.grad(loss)(params, {})
    offsets = puzzle_rows.zero_offsets(params, 8)
    assert offsets["inner"]["puzzle_emb"]["delta"].shape == (8, 16)
    grads, offset_grads = jax.grad(loss, argnums=(0, 1))(params, offsets)
    # The table sits behind stop_gradient on this path: its direct gradient is exactly zero.
    assert not np.any(_get(grads, TABLE))
    sparse = puzzle_rows.with_table_grads(grads, offset_grads, batch["puzzle_identifiers"])

    want, got = _get(dense, TABLE), _get(sparse, TABLE)
    assert np.abs(want).sum() > 0 and not np.any(want[[1, 2, 4]])  # only the batch's rows have gradients
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for path, leaf in jax.tree_util.tree_flatten_with_path(dense)[0]:
        keys = tuple(k.key for k in path)
        if keys != TABLE:
            np.testing.assert_array_equal(_get(sparse, keys), np.asarray(leaf))


_HLO_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from configs import sudoku
    from trm_jax import optim, puzzle_rows, sharding
    from trm_jax.models import TRMConfig, build_model, random_batch
    from trm_jax.steps import make_train_step
    from trm_jax.train_state import create_train_state, init_sharded_state

    if sys.argv[1] == "dense":  # the plain gather gradient, for contrast
        puzzle_rows.zero_offsets = lambda params, batch_size: {}
    config = sudoku.get_config("tiny")
    config.model.update(num_puzzle_identifiers=509, puzzle_emb_ndim=64)
    config.global_batch_size = 8
    cfg = TRMConfig.from_any(config.model)
    model, tx = build_model(cfg), optim.build_optimizer(config, 100)
    mesh = sharding.create_mesh(-1, 1)
    state, shardings = init_sharded_state(lambda: create_train_state(cfg, tx, 8, 0, False), mesh, 2 ** 14)
    batch_sh = sharding.batch_tree_shardings(state.carry.current_data, mesh)
    step = jax.jit(make_train_step(model, tx, config, 100), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, sharding.replicated(mesh)))
    batch = jax.device_put(random_batch(cfg, 8, jax.random.PRNGKey(0)), batch_sh)
    with jax.set_mesh(mesh):  # traced as the trainer traces it
        hlo = step.lower(state, batch).compile().as_text()
    table_reductions = [line for line in hlo.splitlines() if "all-reduce" in line and "509,64" in line]
    print("TABLE_ALL_REDUCES", len(table_reductions))
""")


def _table_all_reduces(mode: str) -> int:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _HLO_SCRIPT, mode], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("TABLE_ALL_REDUCES")[1].split()[0])


def test_data_parallel_step_does_not_all_reduce_the_puzzle_table():
    assert _table_all_reduces("rows") == 0
    assert _table_all_reduces("dense") > 0  # the check can fail: the plain gradient all-reduces the table
