"""Every architecture of the family trains through ``python -m trm_jax.main`` (``configs/sudoku.py:ARCH,tiny``)
and resumes exactly: a run stopped at a checkpoint and continued logs the same metrics, step for step,
as one uninterrupted run (CPU is deterministic)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trm_jax.metrics_logger import read_metrics

pytestmark = pytest.mark.slow

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
TIMING_KEYS = ("train/examples_per_s", "train/samples_per_sec")
STEPS = 8


def _command(arch: str, workdir: str, data_dir: str, **overrides) -> list:
    flags = {"model.hidden_size": 32, "model.num_heads": 2, "model.puzzle_emb_ndim": 32, "model.halt_max_steps": 3,
             "global_batch_size": 16, "log_interval": 1, "eval_interval": 0, "wandb_mode": "disabled",
             "data.options.preset": "tiny", "data.data_dir": data_dir}
    if arch != "transformer":
        flags.update({"model.H_cycles": 2, "model.L_cycles": 2, "model.L_layers": 1})
    if arch in ("hrm", "transformer"):
        flags["model.H_layers"] = 1
    flags.update(overrides)
    return [sys.executable, "-m", "trm_jax.main", f"--config=configs/sudoku.py:{arch},tiny",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _run(cmd):
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_records(workdir):
    out = {}
    for rec in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if "train/lm_loss" in rec:
            out.setdefault(rec["step"], []).append({k: v for k, v in rec.items() if k not in TIMING_KEYS})
    return out


@pytest.mark.parametrize("arch", ["hrm", "trm_singlez", "trm_hier6", "transformer"])
def test_trains_through_the_cli_and_resumes_exactly(arch, data_dir, tmp_path):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    _run(_command(arch, whole, data_dir, max_steps=STEPS, checkpoint_interval=1000))
    reference = _train_records(whole)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert all(len(v) == 1 for v in reference.values())
    first, last = reference[1][0], reference[STEPS][0]
    assert last["train/lm_loss"] < first["train/lm_loss"], "the model should learn something in a few steps"
    if arch == "hrm":  # the HRM learns its continue logit (bootstrapped target); the others do not
        assert "train/q_continue_loss" in last

    _run(_command(arch, split, data_dir, max_steps=STEPS // 2, checkpoint_interval=STEPS // 2))
    resumed = _run(_command(arch, split, data_dir, max_steps=STEPS, checkpoint_interval=1000))
    assert f"step {STEPS // 2}" in resumed.stdout + resumed.stderr
    records = _train_records(split)
    assert sorted(records) == sorted(reference)
    for step, recs in records.items():
        assert recs == reference[step], f"{arch}: step {step} differs after resume"
