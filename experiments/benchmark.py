"""Throughput of the full training step (ACT step + backward + optimizer) of a config.

    python experiments/benchmark.py --config=configs/sudoku.py --steps=10 [--batch_size=64]
    python experiments/benchmark.py --config=configs/sudoku.py:hrm ...   # any architecture (config variant)

Reports examples/s, ms per step, compile seconds, XLA's memory estimate, the
process's peak RSS (or the device's peak memory on GPU) and the model FLOP
utilisation: matmul FLOPs per step counted from the architecture over the device's peak
(bf16 dense peak for known GPUs; on CPU, the float32 matmul rate measured here).
Inputs are random tokens of the config's shapes, so no dataset is needed; the
train step is the one the trainer compiles (``trm_jax.steps.make_train_step``).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from trm_jax import optim, sharding
from trm_jax.losses import act_loss
from trm_jax.models.layers import resolve_attention_impl
from trm_jax.families import get_family
from trm_jax.models import HRMConfig, ModelConfig, TransformerConfig, random_batch
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state, init_sharded_state, param_count

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sudoku.py", "Config file[:variant].")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (0: the config's global_batch_size).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: known GPU table / CPU measure).")
_JSON = flags.DEFINE_string("json_out", "", "Append the result as one JSON line to this file.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "Also time one ACT forward (eval mode) and forward+backward "
                               "alone, so the step splits into forward / backward / optimizer and the rest.")
_PROFILE = flags.DEFINE_string("profile_dir", "", "Also trace 3 steps with jax.profiler into this folder and "
                               "print where the device time goes (see profile_summary.py).")

# Dense bf16 tensor-core peaks (TFLOP/s, SXM parts).
_GPU_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "V100": 125.0}


def measured_cpu_tflops(n: int = 2048) -> float:
    """float32 matmul rate of this CPU (an empirical 'peak' for MFU on CPU)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(5):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * 5 / (time.perf_counter() - t0) / 1e12


def device_peak_tflops() -> tuple[float, str]:
    if _PEAK.value:
        return _PEAK.value, "given"
    kind = jax.devices()[0].device_kind
    for name, peak in _GPU_PEAKS.items():
        if name in kind:
            return peak, f"{name} bf16 dense"
    return measured_cpu_tflops(), "measured f32 matmul"


def _swiglu_inner(width: int, expansion: float) -> int:
    return -(-round(expansion * width * 2 / 3) // 256) * 256


def layer_applications(cfg: ModelConfig) -> tuple[int, int]:
    """``(forward, graded)`` block applications of one ACT step of the architecture: every block run,
    and those run with gradient (their backward costs twice their forward)."""
    if isinstance(cfg, TransformerConfig):
        return cfg.H_layers, cfg.H_layers
    if isinstance(cfg, HRMConfig):
        forward = cfg.H_cycles * (cfg.L_cycles * cfg.L_layers + cfg.H_layers)
        return forward, cfg.L_layers + cfg.H_layers
    # TRM, single-z, 6-level (and HESC's backbone): (L_cycles + 1) updates per H-cycle, the last cycle graded.
    per_cycle = (cfg.L_cycles + 1) * cfg.L_layers
    return cfg.H_cycles * per_cycle, per_cycle


def model_flops_per_step(cfg: ModelConfig, batch_size: int, bootstraps_q: bool = False) -> float:
    """Matmul FLOPs of one training step, counted from the architecture.

    XLA's cost analysis counts a loop body once, so with the recursion inside ``scan`` it
    under-reports by the cycle counts; this count is what MFU is computed from: the forward's
    block applications (:func:`layer_applications`), twice the graded ones for the backward, a
    second forward where the step bootstraps the continue logit (``bootstraps_q``), and the LM
    head forward and backward.
    """
    D, S = cfg.hidden_size, cfg.total_len
    heads_x_dim = cfg.num_heads * (D // cfg.num_heads)
    mixer = (6 * _swiglu_inner(S, cfg.expansion) * D if getattr(cfg, "mlp_t", False)  # SwiGLU over the sequence
             else 8 * D * heads_x_dim + 4 * S * heads_x_dim)            # qkv + out projections, QK^T and AV
    per_layer = mixer + 6 * D * _swiglu_inner(D, cfg.expansion)
    forward, graded = layer_applications(cfg)
    applications = forward * (2 if bootstraps_q else 1) + 2 * graded
    per_token = applications * per_layer + 3 * 2 * D * cfg.vocab_size
    return float(per_token) * batch_size * S


def seconds_per_call(fn, args, steps: int) -> float:
    """Mean wall seconds of ``fn(*args)`` over ``steps`` calls after one warm-up call."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


def step_breakdown(model, state, batch, loss_type: str, steps: int) -> dict:
    """ms of one ACT forward (eval mode) and of forward+backward of the ACT loss (train mode)."""
    variables = {"params": state.params, "buffers": state.buffers}
    forward = jax.jit(lambda v, c, b: model.apply(v, c, b, train=False))

    def loss_fn(params, carry, b, key):
        new_carry, out = model.apply({"params": params, "buffers": state.buffers}, carry, b, train=True,
                                     rngs={"exploration": key})
        return act_loss(new_carry, out, loss_type)[0]

    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.PRNGKey(1)
    return {
        "forward_ms": round(seconds_per_call(forward, (variables, state.carry, batch), steps) * 1e3, 2),
        "forward_backward_ms": round(seconds_per_call(fwd_bwd, (state.params, state.carry, batch, key), steps) * 1e3,
                                     2),
    }


def main(_):
    config = _CONFIG.value.unlock() if hasattr(_CONFIG.value, "unlock") else _CONFIG.value
    if _BATCH.value:
        config.global_batch_size = _BATCH.value
    B = config.global_batch_size
    family = get_family(config.model.name)
    model_cfg = family.config_cls.from_any(config.model)
    model = family.build_model(model_cfg)
    tx = optim.build_optimizer(config, total_steps=100_000)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    state, shardings = init_sharded_state(lambda: create_train_state(model_cfg, tx, B, config.seed, bool(config.ema)),
                                          mesh, config.mesh.fsdp_min_size)
    batch_sh = sharding.batch_tree_shardings(state.carry.current_data, mesh)
    step = jax.jit(make_train_step(model, tx, config, 100_000), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)

    batch = jax.device_put(random_batch(model_cfg, B, jax.random.PRNGKey(0)), batch_sh)

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # traced as the trainer traces it (activation and row-gradient shardings)
        compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    mem = compiled.memory_analysis()

    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / _STEPS.value

    if _PROFILE.value:
        from profile_summary import summarize_trace  # experiments/ is the script's folder
        with jax.profiler.trace(_PROFILE.value):
            for _ in range(3):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
        hlo = compiled.as_text()
        with open(os.path.join(_PROFILE.value, "step.hlo.txt"), "w") as f:
            f.write(hlo)
        print(summarize_trace(_PROFILE.value, top=40, steps=3, hlo_text=hlo))

    breakdown = step_breakdown(model, state, batch, model_cfg.loss_type, _STEPS.value) if _BREAKDOWN.value else {}
    peak, peak_source = device_peak_tflops()
    model_flops = model_flops_per_step(model_cfg, B, model.bootstraps_q(True))
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    result = {
        "command": " ".join(sys.argv),
        "device": f"{device.device_kind} x{jax.device_count()}",
        "host": f"{platform.machine()} {platform.processor()}".strip(),
        "model": config.model.name,
        "params": param_count(state.params),
        "global_batch_size": B,
        "forward_dtype": model_cfg.forward_dtype,
        "compile_s": round(compile_s, 2),
        "ms_per_step": round(step_s * 1e3, 2),
        "examples_per_s": round(B / step_s, 1),
        # A language model's rows are seq_len tokens each (configs/code.py, configs/text.py).
        "tokens_per_s": round(B * model_cfg.seq_len / step_s, 1) if model_cfg.causal else None,
        "attention": "none (mlp_t)" if getattr(model_cfg, "mlp_t", False) else resolve_attention_impl(
            model_cfg.attention_impl, model_cfg.dtype, model_cfg.hidden_size // model_cfg.num_heads),
        "model_tflops_per_step": round(model_flops / 1e12, 3),
        "xla_gflops_per_step": round(flops / 1e9, 3),  # loop bodies counted once: not used for MFU
        "achieved_tflops": round(model_flops / step_s / 1e12, 2),
        "peak_tflops": round(peak, 3),
        "peak_source": peak_source,
        "mfu": round(model_flops / step_s / 1e12 / peak, 4) if peak else None,
        # The definition (XLA cost analysis over the peak): an underestimate by the cycle counts.
        "mfu_xla_cost_analysis": round(flops / step_s / 1e12 / peak, 5) if peak else None,
        "xla_temp_mb": round(getattr(mem, "temp_size_in_bytes", 0) / 2 ** 20, 1),
        "device_peak_mb": round(stats["peak_bytes_in_use"] / 2 ** 20, 1) if stats and "peak_bytes_in_use" in stats
        else None,
        "host_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **breakdown,
    }
    print(json.dumps(result, indent=2))
    if _JSON.value:
        with open(_JSON.value, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    app.run(main)
