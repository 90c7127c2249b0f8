"""Plot train/eval accuracy and loss from a run's metrics.jsonl.

    python experiments/plot_learning_curve.py --workdir=runs/sudoku_tiny --out=experiments/results/curve.png

The trainer already writes ``WORKDIR/learning_curve.png`` at the end of a run; this redraws it
(e.g. for a run still in progress, or under another name). The plot is
:func:`trm_jax.plots.plot_learning_curve`.
"""
from __future__ import annotations

import argparse
import os

from trm_jax.metrics_logger import read_metrics
from trm_jax.plots import plot_learning_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    records = read_metrics(os.path.join(args.workdir, "metrics.jsonl"))
    plot_learning_curve(records, args.out, title=args.title or args.workdir)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
