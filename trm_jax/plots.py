"""Learning-curve plot of a run (``WORKDIR/learning_curve.png``), from its ``metrics.jsonl`` records.

    from trm_jax.plots import plot_learning_curve
    plot_learning_curve(read_metrics("runs/x/metrics.jsonl"), "runs/x/learning_curve.png")

The trainer writes it at the end of a run; ``experiments/plot_learning_curve.py`` is the
command-line front end. matplotlib runs with the Agg backend (no display needed).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Accuracy panel: (metric suffix, line style); train curves as lines, evaluations as markers.
_ACCURACY = (("accuracy", "-"), ("exact_accuracy", "--"))
_ARC = ("eval/ARC/pass@2", "eval/ARC/partial_pass@2")
_LOSSES = ("train/lm_loss", "train/q_halt_loss", "train/q_continue_loss", "train/dqn_loss", "train/vq_loss")


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple:
    """Steps and values of the records holding a number under ``key`` (NaN/Inf are logged as strings)."""
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_learning_curve(records: Sequence[Mapping[str, Any]], out_path: str, title: str = "") -> str:
    """Write accuracy (train lines, eval markers, ARC pass@2 when present) and train losses (log
    scale) against the optimizer step to ``out_path``; returns ``out_path``.

    Metrics a run does not log (e.g. ``q_continue_loss`` without ACT continue, HESC's DQN loss
    in a TRM run) are left out.

    Raises:
      ValueError: the records hold no train or eval metric to plot.
    """
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        drawn = 0
        for key, style in _ACCURACY:
            for split, marker in (("train", ""), ("eval", "o")):
                steps, values = _series(records, f"{split}/{key}")
                if steps:
                    ax_acc.plot(steps, values, style + marker, label=f"{split}/{key}")
                    drawn += 1
        for key in _ARC:
            steps, values = _series(records, key)
            if steps:
                ax_acc.plot(steps, values, ":s", label=key)
                drawn += 1
        ax_acc.set_xlabel("optimizer step")
        ax_acc.set_ylabel("accuracy")
        for key in _LOSSES:
            # Log scale: positive values only (HESC's DQN loss is 0 until its replay buffer fills).
            points = [(s, v) for s, v in zip(*_series(records, key)) if v > 0]
            if points:
                ax_loss.plot([p[0] for p in points], [p[1] for p in points], label=key)
                drawn += 1
        if drawn == 0:
            raise ValueError("no train/* or eval/* accuracy or loss metric in the records to plot")
        ax_loss.set_xlabel("optimizer step")
        ax_loss.set_yscale("log")
        for ax in (ax_acc, ax_loss):
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_path, dpi=110)
    finally:
        plt.close(fig)  # a long-lived process (the trainer) must not accumulate figures
    return out_path
