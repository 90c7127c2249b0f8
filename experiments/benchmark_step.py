"""Forward+backward time of one ACT step (the model's share of a training step).

    python experiments/benchmark_step.py --config=configs/sudoku.py --batch_size=32 --steps=10

Reports compile seconds, ms per step, examples/s, XLA's memory estimate for the
compiled step and the process's peak RSS. Inputs are random tokens of the
config's shapes, so no dataset is needed.
"""
from __future__ import annotations

import json
import platform
import resource
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

import trm_jax

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sudoku.py", "Config file[:variant].")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_JSON = flags.DEFINE_string("json_out", "", "Optional path to append the result as a JSON line.")


def make_step(model, loss_type: str):
    """jit(grad) of the ACT loss for one supervision step in training mode."""

    def loss_fn(params, buffers, carry, batch, key):
        new_carry, out = model.apply({"params": params, "buffers": buffers}, carry, batch, train=True,
                                     rngs={"exploration": key})
        loss, metrics = trm_jax.act_loss(new_carry, out, loss_type)
        return loss, (new_carry, metrics)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def step(params, buffers, carry, batch, key):
        (loss, (new_carry, _)), grads = grad_fn(params, buffers, carry, batch, key)
        return loss, grads, new_carry

    return step


def main(_):
    cfg = trm_jax.TRMConfig.from_any(_CONFIG.value.model)
    model = trm_jax.build_model(cfg)
    key = jax.random.PRNGKey(0)
    variables = trm_jax.init_variables(cfg, key)
    B = _BATCH.value
    batch = trm_jax.random_batch(cfg, B, key)
    carry = trm_jax.initial_carry(cfg, batch)
    step = make_step(model, cfg.loss_type)
    args = (variables["params"], variables["buffers"], carry, batch, key)

    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    loss, grads, carry = compiled(variables["params"], variables["buffers"], carry, batch, key)
    jax.block_until_ready(grads)
    t0 = time.perf_counter()
    for i in range(_STEPS.value):
        loss, grads, carry = compiled(variables["params"], variables["buffers"], carry, batch, jax.random.PRNGKey(i))
    jax.block_until_ready((loss, grads))
    step_s = (time.perf_counter() - t0) / _STEPS.value

    result = {
        "command": " ".join(sys.argv),
        "device": str(jax.devices()[0]),
        "machine": f"{platform.processor() or platform.machine()}, {jax.local_device_count()} device(s)",
        "batch_size": B,
        "compile_s": round(compile_s, 2),
        "ms_per_step": round(step_s * 1000, 2),
        "examples_per_s": round(B / step_s, 1),
        "xla_flops_per_step": flops,
        "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "xla_argument_bytes": getattr(mem, "argument_size_in_bytes", None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])),
    }
    print(json.dumps(result, indent=2))
    if _JSON.value:
        with open(_JSON.value, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    app.run(main)
