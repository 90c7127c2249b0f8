"""Run-level behaviour: throughput records, --eval_only logging, --restore_from errors, the end-of-run summary."""
import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO, main_command, micro_config
from trm_jax.checkpoint import CheckpointError
from trm_jax.metrics_logger import read_metrics, run_summary
from trm_jax.train import train_and_evaluate

STEPS = 4


def _run(config, workdir, **kwargs):
    """train_and_evaluate with its console output captured: (returned metrics, stdout text)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = train_and_evaluate(config, workdir, **kwargs)
    return metrics, out.getvalue()


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A micro run logging every step and evaluating at its end: (workdir, config, metrics, stdout)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = micro_config(data_dir, max_steps=STEPS, log_interval=1, checkpoint_interval=2,
                          keep_best_metric="eval/accuracy")
    metrics, stdout = _run(config, workdir)
    return workdir, config, metrics, stdout


def _records(workdir):
    return read_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_every_logged_examples_per_s_is_positive(run):
    workdir, _, _, _ = run
    train = [r for r in _records(workdir) if "train/lm_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    # The last record is flushed right before the final evaluation, one step after the previous
    # record: it used to read 0 examples.
    assert all(r["train/examples_per_s"] > 0 for r in train), [r["train/examples_per_s"] for r in train]


def test_eval_only_does_not_log_a_second_evaluation_of_a_step(run, tmp_path):
    workdir, config, metrics, _ = run
    other = str(tmp_path / "copy")
    shutil.copytree(workdir, other)
    before = _records(other)
    again, stdout = _run(config, other, eval_only=True)
    assert again == metrics  # same checkpoint, same evaluation
    assert _records(other) == before  # no duplicate eval record for step STEPS
    assert "already holds an evaluation of step 4" in stdout
    saved = json.load(open(os.path.join(other, "eval", str(STEPS), "metrics.json")))
    assert saved == {"step": STEPS, **metrics}

    # The summary of an --eval_only run.
    assert "Run summary:" in stdout and f"latest checkpoint: {other}/checkpoints/{STEPS}" in stdout

    # A fresh workdir evaluating another run's weights: nothing logged yet, so the evaluation is logged.
    fresh = str(tmp_path / "fresh")
    first, _ = _run(config, fresh, restore_from=workdir, eval_only=True)
    evals = [r for r in _records(fresh) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0] and evals[0]["eval/accuracy"] == first["eval/accuracy"]


def test_mistyped_restore_from_fails_and_creates_nothing(run, tmp_path):
    _, config, _, _ = run
    typo, workdir = tmp_path / "runs" / "typo", tmp_path / "new_run"
    with pytest.raises(CheckpointError, match=f"--restore_from={typo}: no such file or directory"):
        train_and_evaluate(config, str(workdir), restore_from=str(typo))
    assert not typo.exists() and not typo.parent.exists() and not workdir.exists()


def test_cli_mistyped_restore_from_is_one_line(run, tmp_path, data_dir):
    typo, workdir = tmp_path / "typo", tmp_path / "run"
    proc = subprocess.run(main_command(str(workdir), data_dir) + [f"--restore_from={typo}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1
    assert f"error: --restore_from={typo}: no such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr and not typo.exists() and not workdir.exists()


def test_restore_from_a_pickle_that_runs_code_is_refused(run, tmp_path):
    import torch

    _, config, _, _ = run
    marker = tmp_path / "PWNED"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "step_6.pt"
    torch.save({"inner.q_head.bias": torch.zeros(2), "x": RunsCode()}, evil)
    with pytest.raises(CheckpointError, match=f"--restore_from={evil}: refusing to load {evil}: it needs "
                                              r"'(posix|os)\.system'.*trust_pickle"):
        train_and_evaluate(config, str(tmp_path / "w"), restore_from=str(evil), eval_only=True)
    assert not marker.exists()


def _expected_best(records, key):
    """Oracle: the highest value and the first step that reached it."""
    series = [(r["step"], r[key]) for r in records if key in r]
    best = max(v for _, v in series)
    return best, min(s for s, v in series if v == best)


def test_summary_names_best_metrics_checkpoints_and_plot(run):
    workdir, _, _, stdout = run
    records = _records(workdir)
    summary = stdout[stdout.index("Run summary:"):]
    for key in ("eval/exact_accuracy", "eval/accuracy"):
        value, step = _expected_best(records, key)
        assert f"best {key:<26} {value:.4f} at step {step} (1 evaluations)" in summary, summary
    last = [r for r in records if "train/lm_loss" in r][-1]
    assert (f"final train (step {STEPS}): lm_loss {last['train/lm_loss']:.4f}, "
            f"accuracy {last['train/accuracy']:.4f}") in summary
    assert f"latest checkpoint: {workdir}/checkpoints/{STEPS}" in summary
    assert f"best checkpoint:   {workdir}/best/{STEPS} (by eval/accuracy)" in summary
    plot = os.path.join(workdir, "learning_curve.png")
    assert f"learning curve:    {plot}" in summary
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    exact = [r["eval/exact_accuracy"] for r in records if "eval/exact_accuracy" in r]
    assert ("Exact accuracy is 0 everywhere" in summary) == (max(exact) == 0.0)
    if max(exact) == 0.0:  # four steps: nothing solved; the hint follows train token accuracy
        train = [r for r in records if "train/accuracy" in r]
        first, final = train[0]["train/accuracy"], train[-1]["train/accuracy"]
        verb = "rose" if final > first else "went"
        assert (f"train token accuracy {verb} from {first:.4f} (step 1) to {final:.4f} (step {STEPS})"
                in summary), summary


def test_run_summary_hand_made_records():
    records = [
        {"step": 10, "train/lm_loss": 2.0, "train/accuracy": 0.4},
        {"step": 10, "eval/exact_accuracy": 0.1, "eval/accuracy": 0.5, "eval/ARC/pass@2": 0.0},
        {"step": 20, "train/lm_loss": 1.5, "train/accuracy": 0.6},
        {"step": 20, "eval/exact_accuracy": 0.3, "eval/accuracy": 0.7, "eval/ARC/pass@2": 0.25},
        {"step": 30, "train/lm_loss": 1.25, "train/accuracy": 0.65, "train/exact_accuracy": 0.125},
        {"step": 30, "eval/exact_accuracy": 0.3, "eval/accuracy": 0.6, "eval/ARC/pass@2": "nan"},
    ]
    text = run_summary(records, latest_checkpoint="w/checkpoints/30", plot_path="w/learning_curve.png")
    assert f"best {'eval/exact_accuracy':<26} 0.3000 at step 20 (3 evaluations)" in text  # first step at 0.3
    assert f"best {'eval/accuracy':<26} 0.7000 at step 20 (3 evaluations)" in text
    assert f"best {'eval/ARC/pass@2':<26} 0.2500 at step 20 (2 evaluations)" in text  # "nan" skipped
    assert "final train (step 30): lm_loss 1.2500, accuracy 0.6500, exact_accuracy 0.1250" in text
    assert "latest checkpoint: w/checkpoints/30" in text and "best checkpoint" not in text
    assert "Exact accuracy is 0" not in text

    zero = [{"step": 5, "eval/exact_accuracy": 0.0, "eval/accuracy": 0.2},
            {"step": 9, "eval/exact_accuracy": 0.0, "eval/accuracy": 0.45}]
    text = run_summary(zero)
    assert ("Exact accuracy is 0 everywhere: no answer was entirely right yet. Exact accuracy needs longer "
            "training; eval token accuracy rose from 0.2000 (step 5) to 0.4500 (step 9).") in text
    assert "no evaluation was logged" in run_summary([{"step": 1, "train/lm_loss": 2.0, "train/accuracy": 0.1}])


@pytest.mark.slow  # compiles a HESC step (minutes on 2 cores)
def test_a_hesc_checkpoint_under_a_trm_config_is_named_as_such(run, data_dir, tmp_path, capsys):
    from tests.test_hesc_train import hesc_config

    _, trm_config, _, _ = run
    hesc_dir = str(tmp_path / "hesc")
    train_and_evaluate(hesc_config(data_dir, max_steps=1, checkpoint_interval=1), hesc_dir)
    expected = ("this checkpoint is a HESC model (config.model.name='hesc'); the config is a TRM ('trm')")
    # Its weights as the start of a TRM run, and a TRM run resumed in its workdir: the same one-line cause,
    # not a puzzle-embedding message and a dump of every mismatched key.
    capsys.readouterr()
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(trm_config, str(tmp_path / "trm"), restore_from=hesc_dir)
    assert expected in str(err.value) and f"{hesc_dir}/checkpoints/1" in str(err.value)
    assert len(str(err.value)) < 400 and "Puzzle embeddings" not in capsys.readouterr().out
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(trm_config, hesc_dir)
    assert expected in str(err.value) and len(str(err.value)) < 400
