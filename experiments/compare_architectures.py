"""Train every architecture on the same data for the same steps and plot the learning curves together.

    python experiments/compare_architectures.py --out=experiments/results/architectures_sudoku_tiny \\
        [--config=configs/sudoku.py --variant=tiny --steps=300 --archs=trm,hrm,trm_singlez,trm_hier6,transformer]

Each architecture runs ``python -m trm_jax.main --config=CONFIG:ARCH,VARIANT`` (the TRM: ``CONFIG:VARIANT``)
with ``max_steps=STEPS`` and the same seed, so every run sees the same batches in the same order
(the data order depends on the seed and the batch size only). The workdirs are ``OUT/<arch>/``; the
plot is ``OUT.png`` (train loss and accuracy, eval accuracy and exact accuracy against the step) and the
final figures are printed as a Markdown table. A workdir that already finished is not run again.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trm_jax.metrics_logger import read_metrics  # noqa: E402

_OUT = flags.DEFINE_string("out", "experiments/results/architectures_sudoku_tiny", "Output prefix.")
_CONFIG = flags.DEFINE_string("config", "configs/sudoku.py", "Config file.")
_VARIANT = flags.DEFINE_string("variant", "tiny", "Variants added to every architecture.")
_STEPS = flags.DEFINE_integer("steps", 300, "Train steps per architecture.")
_ARCHS = flags.DEFINE_list("archs", ["trm", "hrm", "trm_singlez", "trm_hier6", "transformer"], "Architectures.")
_EXTRA = flags.DEFINE_multi_string("flag", [], "Extra flags for every run, e.g. --flag=--config.eval_interval=10.")


def _series(records, key):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def main(_):
    rows = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arch in _ARCHS.value:
        variants = _VARIANT.value if arch == "trm" else ",".join(v for v in (arch, _VARIANT.value) if v)
        workdir = os.path.join(_OUT.value, arch)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        done = os.path.exists(os.path.join(workdir, "learning_curve.png"))
        seconds = float("nan")
        if not done:
            cmd = [sys.executable, "-m", "trm_jax.main", f"--config={_CONFIG.value}:{variants}", f"--workdir={workdir}",
                   f"--config.max_steps={_STEPS.value}", "--config.wandb_mode=disabled", *_EXTRA.value]
            print(" ".join(cmd), flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            seconds = time.perf_counter() - start
        records = read_metrics(metrics_path)
        final = {}
        for key, ax in (("train/lm_loss", axes[0]), ("eval/accuracy", axes[1]), ("eval/exact_accuracy", axes[2])):
            steps, values = _series(records, key)
            ax.plot(steps, values, "o-" if key.startswith("eval") else "-", label=arch, markersize=3)
            ax.set_title(key)
            ax.set_xlabel("step")
            final[key] = values[-1] if values else float("nan")
        rows.append((arch, variants, final, seconds))
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"{_CONFIG.value}:<arch>,{_VARIANT.value}, {_STEPS.value} steps, same data order")
    fig.tight_layout()
    fig.savefig(_OUT.value + ".png", dpi=100)
    print(f"\nwrote {_OUT.value}.png\n")
    print("| architecture | config | final train lm_loss | eval accuracy | eval exact accuracy | wall time |")
    print("|---|---|---|---|---|---|")
    for arch, variants, final, seconds in rows:
        wall = f"{seconds / 60:.1f} min" if seconds == seconds else "(earlier run)"
        print(f"| {arch} | `{_CONFIG.value}:{variants}` | {final['train/lm_loss']:.4f} | {final['eval/accuracy']:.4f} | "
              f"{final['eval/exact_accuracy']:.4f} | {wall} |")


if __name__ == "__main__":
    app.run(main)
