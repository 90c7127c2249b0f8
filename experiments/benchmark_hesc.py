"""Cost of the DQN and of capsule expansion inside the compiled HESC train step.

    python experiments/benchmark_hesc.py --steps=2 --rounds=8 [--batch_size=96] [--out=experiments/results/hesc_overhead_cpu.md]

The PyTorch HESC notes' benchmark shape: batch 96, k = 12 capsules, D = 512, H_cycles 3,
L_cycles 2, on capsule data (random capsules of the dataset's shape here, so no dataset is
needed). Four settings: DQN off/on x expansion off/on; every other extension stays as in
``configs/hesc.py``. The PyTorch system reports +20% step time for the DQN and +12% for
expansion on an A100; with the replay buffer inside the compiled step the aim is < 5% each.

The settings run in interleaved rounds (rotating order); each setting is reported by its best
round and by its per-round ratio to "both off" (paired, so slow drifts of a shared machine
cancel), with the MB per step of whole-array copies in the compiled step.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time

import jax
import jax.numpy as jnp

from configs import hesc
from trm_jax import optim
from trm_jax.hesc.config import HESCConfig
from trm_jax.families import get_family
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state

SETTINGS = {"dqn off, expansion off": (False, False), "dqn on, expansion off": (True, False),
            "dqn off, expansion on": (False, True), "dqn on, expansion on": (True, True)}


def setup(dqn: bool, expansion: bool, batch_size: int, dtype: str):
    """A compiled train step, its state and a batch for one setting (past the DQN's start)."""
    config = hesc.get_config("text")
    config.model.update(dict(hidden_size=512, num_heads=8, H_cycles=3, L_cycles=2, L_layers=2, capsule_dim=512,
                             num_capsules=12, seq_len=12, capsule_children=4, forward_dtype=dtype,
                             enable_dqn=dqn, enable_capsule_expansion=expansion, dqn_buffer_min_size=batch_size))
    config.global_batch_size = batch_size
    cfg = HESCConfig.from_any(config.model)
    model, tx = get_family("hesc").build_model(cfg), optim.build_optimizer(config, 100_000)
    state = jax.jit(lambda: create_train_state(cfg, tx, batch_size, 0, bool(config.ema)))()
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    batch = model.example_batch(batch_size)
    batch.update(inputs=jax.random.randint(k1, batch["inputs"].shape, 4, cfg.vocab_size, jnp.int32),
                 sketches=jax.random.normal(k2, batch["sketches"].shape),
                 children=jax.random.normal(k3, batch["children"].shape),
                 checksums=jax.random.normal(k4, batch["checksums"].shape))
    batch["labels"] = batch["inputs"]
    t0 = time.perf_counter()
    step = jax.jit(make_train_step(model, tx, config, 100_000), donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    copy_mb = entry_copy_mb(step.as_text())
    state, m = step(state, batch)
    for _ in range(3):  # past dqn_buffer_min_size: the TD update runs in the timed steps
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return {"step": step, "state": state, "batch": batch, "compile_s": compile_s, "copy_mb": copy_mb,
            "dqn_loss": float(m.get("dqn_loss", 0.0)), "times": []}


_COPY = re.compile(r"= (\w+)\[([\d,]*)\]\{[^}]*\} copy\(")
_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1, "u8": 1, "pred": 1}


def entry_copy_mb(hlo: str, min_mb: float = 1.0) -> float:
    """MB moved per step by ``copy`` instructions of at least ``min_mb`` in the compiled step's entry
    computation (the whole-array copies XLA adds when a buffer cannot be updated in place)."""
    total = 0.0
    for dtype, dims in _COPY.findall(hlo[hlo.index("\nENTRY"):]):
        mb = math.prod(int(d) for d in dims.split(",") if d) * _BYTES.get(dtype, 4) / 2 ** 20
        total += mb if mb >= min_mb else 0.0
    return total


def time_round(run: dict, steps: int) -> None:
    """Time ``steps`` steps of one setting; appends ms/step to ``run['times']``."""
    state = run["state"]
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = run["step"](state, run["batch"])
    jax.block_until_ready((state, m))
    run["state"] = state
    run["times"].append((time.perf_counter() - t0) / steps * 1e3)


def paired_ratios(times: list[float], base_times: list[float]) -> list[float]:
    """Per-round ratios ``times[r] / base_times[r]``, sorted: same-round pairs cancel slow drifts of the machine."""
    return sorted(t / b for t, b in zip(times, base_times))


def _pct(ratios: list[float]) -> str:
    """'+1.2% [-0.5%, +3.0%]': the median and quartiles of sorted ratios, as percent changes."""
    q = lambda f: 100 * (ratios[min(len(ratios) - 1, int(f * len(ratios)))] - 1)
    return f"{q(0.5):+.1f}% [{q(0.25):+.1f}%, {q(0.75):+.1f}%]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds per setting")
    args = parser.parse_args()
    runs = {name: setup(d, e, args.batch_size, args.dtype) for name, (d, e) in SETTINGS.items()}
    names = list(runs)
    for r in range(args.rounds):  # interleaved, so slow phases of a shared machine hit every setting;
        for name in names[r % 4:] + names[:r % 4]:  # the order rotates, so no setting always runs first
            time_round(runs[name], args.steps)
    best = {name: min(run["times"]) for name, run in runs.items()}
    base = best["dqn off, expansion off"]
    paired = {name: paired_ratios(runs[name]["times"], runs["dqn off, expansion off"]["times"]) for name in runs}
    lines = [f"Command: `python experiments/benchmark_hesc.py --batch_size={args.batch_size} --steps={args.steps} "
             f"--rounds={args.rounds} --dtype={args.dtype}`", "",
             f"Device: {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores visible). "
             f"{args.rounds} interleaved rounds of {args.steps} steps per setting; min and median ms/step.", "",
             "| setting | min ms/step | median ms/step | examples/s (min) | vs. both off (min) "
             "| vs. both off (paired median [quartiles]) | compile s | whole-array copies MB/step | dqn_loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        times = sorted(run["times"])
        median = times[len(times) // 2]
        lines.append(f"| {name} | {best[name]:.2f} | {median:.2f} | {args.batch_size / best[name] * 1e3:.1f} | "
                     f"{100 * (best[name] / base - 1):+.1f}% | {_pct(paired[name])} | {run['compile_s']:.1f} | "
                     f"{run['copy_mb']:.0f} | {run['dqn_loss']:.4f} |")
    # Main effects: each switch's paired ratio with the other switch off and on, pooled.
    t = {name: run["times"] for name, run in runs.items()}
    dqn = sorted(paired_ratios(t["dqn on, expansion off"], t["dqn off, expansion off"])
                 + paired_ratios(t["dqn on, expansion on"], t["dqn off, expansion on"]))
    exp = sorted(paired_ratios(t["dqn off, expansion on"], t["dqn off, expansion off"])
                 + paired_ratios(t["dqn on, expansion on"], t["dqn on, expansion off"]))
    lines += ["", f"Main effects (paired per round, both levels of the other switch pooled; median [quartiles]): "
                  f"DQN {_pct(dqn)}, expansion {_pct(exp)}."]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({name: run["times"] for name, run in runs.items()}))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# HESC: cost of the DQN and of capsule expansion\n\n" + text + "\n")


if __name__ == "__main__":
    main()
