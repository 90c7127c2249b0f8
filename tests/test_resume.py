"""Exact resume through the CLI: SIGINT (graceful) and SIGKILL (hard) interruptions.

Each interrupted run is resumed with the same command; every step's metrics
must equal those of an uninterrupted run bit for bit (CPU is deterministic).
"""
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO, main_command
from trm_jax.metrics_logger import read_metrics

# End-to-end runs (minutes on 2 cores): the second CI step, `pytest -m slow`.
pytestmark = pytest.mark.slow

TOTAL_STEPS = 120
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
TIMING_KEYS = ("train/examples_per_s", "train/samples_per_sec")


def _train_records(workdir):
    """step -> list of records (a step replayed after a hard kill appears twice)."""
    path = os.path.join(workdir, "metrics.jsonl")
    out = {}
    for rec in read_metrics(path) if os.path.exists(path) else []:
        if "train/lm_loss" in rec:
            out.setdefault(rec["step"], []).append({k: v for k, v in rec.items() if k not in TIMING_KEYS})
    return out


def _logged_steps(workdir) -> int:
    records = _train_records(workdir)
    return max(records) if records else 0


def _checkpoint_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _run(cmd, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before the condition:\n"
                                 f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the run")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run(main_command(workdir, data_dir, max_steps=TOTAL_STEPS, checkpoint_interval=1000))
    records = _train_records(workdir)
    assert sorted(records) == list(range(1, TOTAL_STEPS + 1))
    return {step: recs[0] for step, recs in records.items()}


def _assert_matches_reference(records, reference):
    assert sorted(records) == sorted(reference), "every step must be logged"
    for step, recs in records.items():
        for rec in recs:
            assert rec == reference[step], f"step {step} differs after resume"


def test_sigint_saves_and_resume_is_exact(data_dir, tmp_path, reference):
    workdir = str(tmp_path)
    cmd = main_command(workdir, data_dir, max_steps=TOTAL_STEPS, checkpoint_interval=1000)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(workdir) >= 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "checkpoint saved" in out
    stopped = _checkpoint_steps(workdir)
    assert len(stopped) == 1 and 5 <= stopped[0] < TOTAL_STEPS, stopped  # saved where it stopped
    assert _logged_steps(workdir) == stopped[0]

    resumed = _run(cmd)
    assert "Resumed from" in resumed.stdout and f"(step {stopped[0]})" in resumed.stdout
    _assert_matches_reference(_train_records(workdir), reference)


def test_sigkill_after_a_save_loses_only_the_steps_since_it(data_dir, tmp_path, reference):
    workdir = str(tmp_path)
    cmd = main_command(workdir, data_dir, max_steps=TOTAL_STEPS, checkpoint_interval=10)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: 20 in _checkpoint_steps(workdir) and _logged_steps(workdir) >= 23, proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=60)
    complete = max(_checkpoint_steps(workdir))
    logged = _logged_steps(workdir)
    assert 20 <= complete <= logged < TOTAL_STEPS

    resumed = _run(cmd)
    assert f"(step {complete})" in resumed.stdout
    records = _train_records(workdir)
    # Steps after the last complete checkpoint were run twice; both times identically.
    assert all(len(records[s]) == 2 for s in range(complete + 1, logged + 1))
    _assert_matches_reference(records, reference)
