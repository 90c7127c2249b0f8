"""Command line: ``python -m trm_jax.main --config=configs/sudoku.py:tiny [--config.model.hidden_size=64 ...]``.

Until the trainer lands this runs the configured model forward and backward
for a few ACT steps on puzzle-shaped random input and reports what it did.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

import trm_jax

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sudoku.py:tiny.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("smoke_steps", 3, "ACT steps to run.")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    cfg = trm_jax.TRMConfig.from_any(config.model)
    model = trm_jax.build_model(cfg)
    key = jax.random.PRNGKey(config.seed)
    variables = trm_jax.init_variables(cfg, key)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    B = min(config.global_batch_size, 8)
    batch = trm_jax.dummy_batch(cfg, B)
    batch["inputs"] = jax.random.randint(key, batch["inputs"].shape, 1, cfg.vocab_size, jnp.int32)
    batch["labels"] = batch["inputs"]
    carry = trm_jax.initial_carry(cfg, batch)

    def loss_fn(params, carry, key):
        new, out = model.apply({**variables, "params": params}, carry, batch, train=True, rngs={"exploration": key})
        loss, metrics = trm_jax.act_loss(new, out, cfg.loss_type)
        return loss, (new, metrics)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    print(f"TRM: {n_params:,} parameters, sequence {cfg.seq_len}+{cfg.puzzle_len}, "
          f"H_cycles={cfg.H_cycles} L_cycles={cfg.L_cycles}, {cfg.forward_dtype}, batch {B}")
    for i in range(_STEPS.value):
        t0 = time.perf_counter()
        (loss, (carry, metrics)), grads = step(variables["params"], carry, jax.random.fold_in(key, i))
        gnorm = float(jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree_util.tree_leaves(grads))))
        print(f"ACT step {i + 1}: loss {float(loss):.4f}  grad norm {gnorm:.4f}  "
              f"halted {int(carry.halted.sum())}/{B}  {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    app.run(main)
