"""Examples/s of the training step over device meshes (each mesh measured in its own process).

    python experiments/benchmark_scaling.py --config=configs/sudoku.py:tiny --batch_size=64 --steps=5 \
        --meshes=1x1,2x1,4x1,8x1,4x2,1x8 --out=experiments/results/scaling_cpu.md

On CPU the devices are simulated (``--xla_force_host_platform_device_count``) and share
the same cores, so this shows the *overhead* of partitioning and collectives, not a
speed-up. ``1x1`` is the plain single-device run; ``sharding-off`` runs the same step
without any mesh or shardings, so the two give the cost of the sharding machinery on
one device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

_WORKER = r"""
import json, sys, time
import jax
from ml_collections.config_flags import config_flags as cf
from trm_jax import optim, sharding
from trm_jax.models import TRMConfig, build_model, random_batch
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state, init_sharded_state

spec, batch_size, steps, mesh_name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
path, _, arg = spec.partition(":")
config = cf._LoadConfigModule("cfg", path).get_config(arg)
config.global_batch_size = batch_size
cfg = TRMConfig.from_any(config.model)
model, tx = build_model(cfg), optim.build_optimizer(config, 100_000)
make = lambda: create_train_state(cfg, tx, batch_size, 0, bool(config.ema))
batch = random_batch(cfg, batch_size, jax.random.PRNGKey(0))
if mesh_name == "sharding-off":
    state = jax.jit(make)()
    step = jax.jit(make_train_step(model, tx, config, 100_000), donate_argnums=0)
    ctx = None
else:
    data, fsdp = map(int, mesh_name.split("x"))
    mesh = sharding.create_mesh(data, fsdp, devices=jax.devices()[: data * fsdp])
    state, sh = init_sharded_state(make, mesh)
    bsh = sharding.batch_tree_shardings(state.carry.current_data, mesh)
    step = jax.jit(make_train_step(model, tx, config, 100_000), in_shardings=(sh, bsh),
                   out_shardings=(sh, sharding.replicated(mesh)), donate_argnums=0)
    batch = jax.device_put(batch, bsh)
    ctx = jax.set_mesh(mesh)
    ctx.__enter__()
t0 = time.perf_counter()
state, m = step(state, batch)
jax.block_until_ready(m)
compile_s = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(steps):
    state, m = step(state, batch)
jax.block_until_ready((state, m))
dt = (time.perf_counter() - t0) / steps
print(json.dumps({"mesh": mesh_name, "ms_per_step": dt * 1e3, "examples_per_s": batch_size / dt,
                  "first_step_s": compile_s, "loss": float(m["lm_loss"])}))
"""


def run_one(config: str, batch_size: int, steps: int, mesh: str) -> dict:
    devices = 1 if mesh == "sharding-off" else eval(mesh.replace("x", "*"))  # noqa: S307 (digits only)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(devices, 1)}"}
    proc = subprocess.run([sys.executable, "-c", _WORKER, config, str(batch_size), str(steps), mesh],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sudoku.py:tiny")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--meshes", default="sharding-off,1x1,2x1,4x1,8x1,4x2,2x4,1x8")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows = [run_one(args.config, args.batch_size, args.steps, m) for m in args.meshes.split(",")]
    lines = [f"Command: `python experiments/benchmark_scaling.py --config={args.config} --batch_size={args.batch_size} "
             f"--steps={args.steps} --meshes={args.meshes}`", "",
             f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU cores; simulated devices "
             "share those cores.", "",
             "| mesh (data x fsdp) | ms/step | examples/s | first step (compile) s | loss |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mesh']} | {r['ms_per_step']:.1f} | {r['examples_per_s']:.1f} | {r['first_step_s']:.1f} | "
                     f"{r['loss']:.6f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Training-step throughput over CPU device meshes\n\n" + text + "\n")


if __name__ == "__main__":
    main()
