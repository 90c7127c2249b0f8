"""Plot train/eval accuracy and loss from a run's metrics.jsonl.

    python experiments/plot_learning_curve.py --workdir=runs/sudoku_tiny --out=experiments/results/curve.png
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trm_jax.metrics_logger import read_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    records = read_metrics(os.path.join(args.workdir, "metrics.jsonl"))
    train = [r for r in records if "train/accuracy" in r]
    evals = [r for r in records if "eval/accuracy" in r]

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("accuracy", "-"), ("exact_accuracy", "--")):
        ax_acc.plot([r["step"] for r in train], [r[f"train/{key}"] for r in train], style, label=f"train/{key}")
        if evals:
            ax_acc.plot([r["step"] for r in evals], [r[f"eval/{key}"] for r in evals], style + "o",
                        label=f"eval/{key}")
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    ax_loss.plot([r["step"] for r in train], [r["train/lm_loss"] for r in train], label="train/lm_loss")
    ax_loss.plot([r["step"] for r in train], [r["train/q_halt_loss"] for r in train], label="train/q_halt_loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    fig.suptitle(args.title or args.workdir)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
