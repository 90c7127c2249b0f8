"""``python -m trm_jax.main`` with ``data.incremental=True``: the dataset builds in a background
process while the run trains on its committed shards; a run stopped on partial data resumes
exactly (every step's metrics equal those of an uninterrupted run)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trm_jax.metrics_logger import read_metrics

pytestmark = pytest.mark.slow

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
TIMING_KEYS = ("train/examples_per_s", "train/samples_per_sec")
STEPS = 30


def command(workdir: str, data_dir: str, **overrides) -> list:
    flags = {"data.data_dir": data_dir, "data.incremental": True, "data.shard_rows": 32,
             "data.options.max_train": 600, "data.options.max_test": 16, "global_batch_size": 16,
             "eval_interval": 1, "log_interval": 1, "checkpoint_interval": 1000, "model.hidden_size": 32,
             "model.num_heads": 2, "model.L_layers": 1, "model.vision_layers": 1, "max_steps": STEPS, **overrides}
    return [sys.executable, "-m", "trm_jax.main", "--config=configs/vision.py:tiny", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in flags.items()]


def run(cmd) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_records(workdir: str) -> dict:
    out = {}
    for rec in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if "train/lm_loss" in rec:
            out[rec["step"]] = {k: v for k, v in rec.items() if k not in TIMING_KEYS}
    return out


def test_a_run_started_on_partial_data_resumes_exactly(tmp_path):
    # Uninterrupted: its own fresh data directory, built in the background while it trains.
    ref_dir = str(tmp_path / "ref")
    ref = run(command(ref_dir, str(tmp_path / "data_ref")))
    assert "building rendered_text in the background" in ref.stdout
    assert "stage 0 on the first 32 examples (of 600 planned)" in ref.stdout
    assert "stage 1 on the first 64 examples" in ref.stdout
    with open(os.path.join(ref_dir, "dataset_build.log")) as f:
        assert "train: 600 examples" in f.read()  # the background build finished
    reference = train_records(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))

    # Interrupted after 12 steps (inside the stages, on a data directory still being built), then
    # resumed with the same command: the same batches, so the same metrics, bit for bit.
    work = str(tmp_path / "resumed")
    data = str(tmp_path / "data")
    first = run(command(work, data, max_steps=12))
    assert "stage 0 on the first 32 examples" in first.stdout
    resumed = run(command(work, data))
    assert "Resumed from" in resumed.stdout and "(step 12)" in resumed.stdout
    records = train_records(work)
    assert sorted(records) == sorted(reference)
    for step, rec in records.items():
        assert rec == reference[step], f"step {step} differs after resume"
