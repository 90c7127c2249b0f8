"""HESC at tiny size through the CLI on the tiny ARC-AGI dataset (`hesc.py:tiny,arc`; slow)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trm_jax.metrics_logger import read_metrics

# End-to-end runs (minutes on 2 cores): the second CI step, `pytest -m slow`.
pytestmark = pytest.mark.slow


def test_hesc_tiny_cli_run_shows_every_mechanism(tmp_path):
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    steps = 10
    cmd = [sys.executable, "-m", "trm_jax.main", "--config=configs/hesc.py:tiny,arc", f"--workdir={workdir}",
           f"--config.max_steps={steps}", "--config.log_interval=1", f"--config.data.data_dir={data_dir}",
           "--config.wandb_mode=disabled", "--config.model.dqn_buffer_min_size=32"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train = {r["step"]: r for r in records if "train/lm_loss" in r}
    assert sorted(train) == list(range(1, steps + 1))
    # DQN loss after the buffer holds the minimum; every action taken; expansions; several VQ codes.
    after = [train[s]["train/dqn_loss"] for s in train if s > 1 and train[s - 1]["train/dqn_buffer_size"] >= 32]
    assert after and min(after) > 0
    for name in ("train/action_0_continue", "train/action_1_halt", "train/action_2_expand"):
        assert sum(r[name] for r in train.values()) > 0, name
    assert sum(r["train/expansions_this_step"] for r in train.values()) > 0
    assert max(r["train/vq_usage"] for r in train.values()) * 64 > 1
    # The ARC evaluator ran at the end and wrote a Kaggle submission.
    evals = [r for r in records if "eval/ARC/pass@2" in r]
    assert evals and os.path.exists(os.path.join(workdir, "eval", str(steps), "ARC", "submission.json"))
