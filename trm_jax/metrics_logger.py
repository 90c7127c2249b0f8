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
