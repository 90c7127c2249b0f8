"""Subprocess worker for the scaling tests (needs XLA_FLAGS set before JAX starts).

    python -m tests.scale_worker meshes
    python -m tests.scale_worker restore WORKDIR STEP DATA_DIR

Prints one JSON object on the last line of stdout.
"""
import json
import sys

import jax
import numpy as np

from tests.conftest import micro_config
from trm_jax import optim, sharding
from trm_jax.checkpoint import Checkpointer
from trm_jax.models import TRMConfig, build_model
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state, init_sharded_state, state_shardings

MESHES = [(1, 1, 1), (8, 1, 8), (4, 2, 8), (2, 4, 8), (1, 8, 8)]


def _setup(config):
    cfg = TRMConfig.from_any(config.model)
    tx = optim.build_optimizer(config, 100)
    return cfg, build_model(cfg), tx


def meshes() -> dict:
    """A few training steps on every mesh from the same state and batches."""
    config = micro_config("", global_batch_size=16)
    cfg, model, tx = _setup(config)
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.integers(1, 11, (16, 81)).astype(np.int32),
                "labels": rng.integers(1, 11, (16, 81)).astype(np.int32),
                "puzzle_identifiers": np.zeros(16, np.int32)} for _ in range(3)]
    out = {}
    for data, fsdp, ndev in MESHES:
        mesh = sharding.create_mesh(data, fsdp, devices=jax.devices()[:ndev])
        state, sh = init_sharded_state(lambda: create_train_state(cfg, tx, 16, 0, False), mesh, fsdp_min_size=1)
        bsh = sharding.batch_tree_shardings(state.carry.current_data, mesh)
        step = jax.jit(make_train_step(model, tx, config, 100), in_shardings=(sh, bsh),
                       out_shardings=(sh, sharding.replicated(mesh)), donate_argnums=0)
        losses = []
        for b in batches:
            state, m = step(state, sharding.make_global_batch(b, mesh))
            losses.append(float(m["lm_loss"]))
        specs = {jax.tree_util.keystr(p): str(x.sharding.spec)
                 for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
        carry_spec = str(state.carry.z_H.sharding.spec)
        out[f"{data}x{fsdp}"] = {"losses": losses, "param_specs": specs, "carry_spec": carry_spec,
                                 "devices": len(state.carry.z_H.sharding.device_set)}
    return out


def restore(workdir: str, step: int, data_dir: str) -> dict:
    """Restore a checkpoint onto a 1x1 and a 1x8 (FSDP) mesh; compare every leaf."""
    config = micro_config(data_dir)
    config.model.update(seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
    cfg, model, tx = _setup(config)
    ck = Checkpointer(f"{workdir}/checkpoints", async_save=False)
    saved = ck.saved_config(step)
    config = config.__class__(saved)  # the run's own config, exactly
    cfg, model, tx = _setup(config)
    results = {}
    for name, (data, fsdp, ndev) in {"1x1": (1, 1, 1), "1x8": (1, 8, 8)}.items():
        mesh = sharding.create_mesh(data, fsdp, devices=jax.devices()[:ndev])
        abstract = jax.eval_shape(lambda: create_train_state(cfg, tx, config.global_batch_size, 0, bool(config.ema)))
        sh = state_shardings(abstract, mesh, fsdp_min_size=1)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sh)
        state, data_state = ck.restore(step, target, saved)
        results[name] = (state, data_state, mesh)
    a, b = results["1x1"][0], results["1x8"][0]
    equal = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    kernel = b.params["inner"]["L_level"]["layers_0"]["mlp"]["gate_up_proj"]["kernel"]
    return {"equal": equal, "step": int(a.step), "data_state": results["1x1"][1],
            "param_sum": float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(a.params))),
            "fsdp_spec": str(kernel.sharding.spec), "fsdp_devices": len(kernel.sharding.device_set)}


if __name__ == "__main__":
    mode = sys.argv[1]
    result = meshes() if mode == "meshes" else restore(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    print(json.dumps(result))
