"""Run logging: Weights & Biases (offline by default) and ``WORKDIR/metrics.jsonl``.

Only the primary process (``jax.process_index() == 0``) writes anything.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

WANDB_MODES = ("offline", "online", "disabled")


def _jsonable(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/Inf


class MetricsLogger:
    """Write metrics to W&B and one JSON object per logged step to ``metrics.jsonl``.

    Args:
      workdir: run directory (``metrics.jsonl`` and ``wandb/`` go there).
      config: the run config (a plain dict), recorded in W&B.
      wandb_mode: ``offline`` (default: no network needed; ``wandb sync`` later),
        ``online`` or ``disabled``.
      run_name, project, tags: W&B run identity. ``run_id`` makes a resumed run
        continue the same W&B run.
      enabled: False on non-primary processes.
    """

    def __init__(self, workdir: str, config: Mapping[str, Any], wandb_mode: str = "offline",
                 run_name: str = "", project: str = "trm_jax", tags: Sequence[str] = (),
                 run_id: Optional[str] = None, enabled: bool = True):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode={wandb_mode!r} not in {WANDB_MODES}")
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._run = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if wandb_mode != "disabled":
            import wandb

            self._run = wandb.init(project=project, name=run_name or None, config=dict(config), tags=list(tags),
                                   dir=workdir, mode=wandb_mode, id=run_id, resume="allow" if run_id else None,
                                   settings=wandb.Settings(silent=True, x_disable_stats=True))

    @property
    def run_id(self) -> Optional[str]:
        return None if self._run is None else self._run.id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._run is not None:
            self._run.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._run is not None:
            self._run.finish()
            self._run = None


def read_metrics(path: str) -> list[dict]:
    """All records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# The evaluation metrics a run summary reports (best value and its step), when present:
# exact (whole-answer) metrics first, then token accuracy.
_SUMMARY_EXACT = ("eval/exact_accuracy", "eval/ARC/pass@1", "eval/ARC/pass@2", "eval/ARC/partial_pass@1",
                  "eval/ARC/partial_pass@2")
_SUMMARY_TOKEN = ("eval/accuracy",)


def _numbers(records: Sequence[Mapping[str, Any]], key: str) -> list:
    """``(step, value)`` for every record holding a finite number under ``key``."""
    out = []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((int(r["step"]), float(v)))
    return out


def run_summary(records: Sequence[Mapping[str, Any]], *, latest_checkpoint: Optional[str] = None,
                best_checkpoint: Optional[str] = None, best_metric: str = "",
                plot_path: Optional[str] = None) -> str:
    """What a run achieved, as console text, from its ``metrics.jsonl`` records.

    The best value of each main evaluation metric (``eval/exact_accuracy``, ``eval/accuracy``,
    ARC ``pass@1/2`` when present) with the step it was reached at, the final train loss and
    accuracy, where the checkpoints and the learning curve are. If every exact metric is 0 it
    says so, with how token accuracy moved (exact accuracy needs every token of an answer right,
    so it rises long after token accuracy does).
    """
    lines = ["Run summary:"]
    exact_keys = [k for k in _SUMMARY_EXACT if _numbers(records, k)]
    for key in exact_keys + [k for k in _SUMMARY_TOKEN if _numbers(records, k)]:
        series = _numbers(records, key)
        step, value = max(series, key=lambda sv: (sv[1], -sv[0]))  # the first step reaching the best value
        lines.append(f"  best {key:<26} {value:.4f} at step {step} ({len(series)} evaluations)")
    if not exact_keys and not _numbers(records, "eval/accuracy"):
        lines.append("  no evaluation was logged (the dataset has no test split, or the run stopped before one)")
    train = [r for r in records if any(k.startswith("train/") for k in r)]
    if train:
        last = train[-1]
        parts = [f"{k[len('train/'):]} {last[k]:.4f}" for k in ("train/lm_loss", "train/accuracy",
                                                               "train/exact_accuracy") if k in last]
        lines.append(f"  final train (step {last['step']}): " + ", ".join(parts))
    if latest_checkpoint:
        lines.append(f"  latest checkpoint: {latest_checkpoint}")
    if best_checkpoint:
        lines.append(f"  best checkpoint:   {best_checkpoint}" + (f" (by {best_metric})" if best_metric else ""))
    if plot_path:
        lines.append(f"  learning curve:    {plot_path}")
    exact_values = [v for k in exact_keys for _, v in _numbers(records, k)]
    if not exact_values:  # no evaluation: judge by the train batches
        exact_values = [v for _, v in _numbers(records, "train/exact_accuracy")]
    if exact_values and max(exact_values) == 0.0:
        token = _numbers(records, "eval/accuracy")
        where = "eval"
        if len(token) < 2:
            token, where = _numbers(records, "train/accuracy"), "train"
        trend = ""
        if len(token) >= 2:
            verb = "rose" if token[-1][1] > token[0][1] else "went"
            trend = (f"; {where} token accuracy {verb} from {token[0][1]:.4f} (step {token[0][0]}) to "
                     f"{token[-1][1]:.4f} (step {token[-1][0]})")
        lines.append(f"  Exact accuracy is 0 everywhere: no answer was entirely right yet. Exact accuracy needs "
                     f"longer training{trend}.")
    return "\n".join(lines)
