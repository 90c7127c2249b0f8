"""The trainer: NaN guard, checkpoint errors, restore/eval-only, logging, learning."""
import glob
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, main_command, micro_config
from trm_jax import optim
from trm_jax.checkpoint import CheckpointError
from trm_jax.metrics_logger import read_metrics
from trm_jax.models import TRMConfig, build_model, dummy_batch
from trm_jax.steps import make_train_step
from trm_jax.train import train_and_evaluate
from trm_jax.train_state import create_train_state
import trm_jax


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A short in-process run with evaluation and EMA: (workdir, config, last eval metrics)."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    config = micro_config(data_dir, max_steps=6, checkpoint_interval=3, ema=True, log_interval=2,
                          keep_best_metric="eval/accuracy")
    metrics = train_and_evaluate(config, workdir)
    return workdir, config, metrics


def test_run_writes_checkpoints_metrics_and_config(trained):
    workdir, config, metrics = trained
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [3, 6]
    assert os.listdir(os.path.join(workdir, "best")) == ["6"]  # kept by eval/accuracy
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train = [r for r in records if "train/lm_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("train/accuracy", "train/exact_accuracy", "train/lm_loss", "train/q_halt_loss", "train/lr",
                "train/puzzle_emb_lr", "train/grad_norm", "train/steps", "train/examples_per_s",
                "train/skipped_steps", "train/grad/inner/L_level"):
        assert key in train[-1], key
    assert train[-1]["train/lr"] > train[0]["train/lr"] > 0  # warm-up
    evals = [r for r in records if "eval/exact_accuracy" in r]
    assert [r["step"] for r in evals] == [6]
    assert evals[0]["eval/count"] == 100 and evals[0]["eval/steps"] == 3.0  # every test example, full steps
    assert metrics["eval/accuracy"] == evals[0]["eval/accuracy"]
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["seq_len"] == 81 and saved["model"]["vocab_size"] == 11  # from the dataset


def test_eval_only_reproduces_the_final_evaluation(trained):
    workdir, config, metrics = trained
    again = train_and_evaluate(config, workdir, eval_only=True)
    assert again == metrics


def test_restore_from_another_run_and_from_a_pytorch_file(trained, tmp_path):
    workdir, config, metrics = trained
    # Another run's workdir: same parameters, fresh optimizer -> same evaluation.
    fresh = str(tmp_path / "from_run")
    assert train_and_evaluate(config, fresh, restore_from=workdir, eval_only=True) == metrics
    # A PyTorch state dict exported from those parameters (EMA off: the raw parameters).
    from trm_jax.checkpoint import Checkpointer
    import torch

    ck = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    loaded = ck.restore_params(6, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    ck.close()
    model_cfg = dict(config.model, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
    path = str(tmp_path / "step_6.pt")
    torch.save(trm_jax.to_torch({"params": loaded["params"], "buffers": loaded["buffers"]}, model_cfg), path)
    no_ema = micro_config(config.data.data_dir, ema=False)
    from_torch_metrics = train_and_evaluate(no_ema, str(tmp_path / "from_torch"), restore_from=path, eval_only=True)
    from_run_metrics = train_and_evaluate(no_ema, str(tmp_path / "from_run2"), restore_from=workdir, eval_only=True)
    assert from_torch_metrics == from_run_metrics


def test_shape_mismatched_config_names_the_fields(trained, tmp_path):
    workdir, config, _ = trained
    other = str(tmp_path / "copy")
    shutil.copytree(workdir, other)
    bad = micro_config(config.data.data_dir, max_steps=8, ema=True)
    bad.model.hidden_size = 48
    bad.global_batch_size = 32
    with pytest.raises(CheckpointError, match=r"model\.hidden_size: checkpoint 32 vs config 48.*global_batch_size"):
        train_and_evaluate(bad, other)


@pytest.mark.parametrize("damage", ["data_files", "metadata"])
def test_corrupt_checkpoint_is_named(trained, tmp_path, damage):
    workdir, config, _ = trained
    other = str(tmp_path / "copy")
    shutil.copytree(workdir, other)
    state_dir = os.path.join(other, "checkpoints", "6", "state")
    if damage == "data_files":  # the array chunks are garbled
        targets = [p for p in glob.glob(os.path.join(state_dir, "**", "d", "*"), recursive=True) if os.path.isfile(p)]
    else:  # the tree metadata is gone
        targets = [os.path.join(state_dir, "_METADATA")]
    assert targets
    for path in targets:
        with open(path, "wb") as f:
            f.write(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoints/6"):
        train_and_evaluate(micro_config(config.data.data_dir, max_steps=8, checkpoint_interval=3, ema=True), other)


def test_cli_reports_checkpoint_errors_without_a_traceback(trained, tmp_path, data_dir):
    workdir, _, _ = trained
    other = str(tmp_path / "copy")
    shutil.copytree(workdir, other)
    proc = subprocess.run(main_command(other, data_dir, **{"model.hidden_size": 48, "ema": True, "max_steps": 8}),
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1
    assert "error: checkpoint" in proc.stderr and "model.hidden_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nan_guard_skips_a_poisoned_step():
    config = micro_config("", global_batch_size=4)
    cfg = TRMConfig.from_any(config.model)
    model = build_model(cfg)
    tx = optim.build_optimizer(config, total_steps=100)
    state = create_train_state(cfg, tx, 4, 0, use_ema=False)
    step = jax.jit(make_train_step(model, tx, config, 100))
    batch = dummy_batch(cfg, 4)
    batch["inputs"] = jnp.full((4, cfg.seq_len), 3, jnp.int32)
    batch["labels"] = jnp.full((4, cfg.seq_len), 5, jnp.int32)

    state, m = step(state, batch)  # a good step: rows now carry state
    assert m["skipped_steps"] == 0
    before = jax.tree.map(np.asarray, state.params)
    poisoned = state.replace(carry=state.carry.replace(z={**state.carry.z, "z_H": state.carry.z_H.at[0, 0, 0].set(jnp.nan)}))
    state, m = step(poisoned, batch)
    assert m["skipped_steps"] == 1 and m["consecutive_skipped"] == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    assert bool(state.carry.halted.all())  # every row restarts: no NaN state survives
    state, m = step(state, batch)
    assert m["skipped_steps"] == 1 and m["consecutive_skipped"] == 0 and np.isfinite(float(m["lm_loss"]))
    changed = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
    assert changed


def test_tiny_sudoku_learns(data_dir, tmp_path):
    """Token accuracy on the training data rises clearly above where it starts."""
    config = micro_config(data_dir, max_steps=120, log_interval=20, **{"model.hidden_size": 64,
                                                                       "model.puzzle_emb_ndim": 64})
    train_and_evaluate(config, str(tmp_path))
    train = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if "train/accuracy" in r]
    first, last = train[0]["train/accuracy"], train[-1]["train/accuracy"]
    assert first < 0.2 and last > first + 0.12, (first, last)
    assert train[-1]["train/lm_loss"] < train[0]["train/lm_loss"] * 0.85


def test_evaluations_fall_at_the_ends_of_eval_interval_epochs():
    from types import SimpleNamespace

    import ml_collections
    from trm_jax.train import is_eval_step, schedule_lengths

    # 1000 puzzles, batch 32: 31.25 steps per epoch, 20 epochs = 625 steps, eval every 5 epochs.
    config = ml_collections.ConfigDict(dict(epochs=20, global_batch_size=32, max_steps=0, eval_interval=5,
                                            checkpoint_interval=0))
    lengths = schedule_lengths(config, SimpleNamespace(total_groups=1000, mean_puzzle_examples=1.0))
    assert lengths["run_steps"] == 625
    evals = [s for s in range(1, 626) if is_eval_step(s, lengths["eval_period"])]
    assert evals == [156, 312, 469, 625]  # the last is the final step, not a second evaluation one step apart
    # Exactly one evaluation per period (2 every 3 steps at 1.5), never two on the same step.
    assert [s for s in range(1, 31) if is_eval_step(s, 1.5)] == sorted({round(k * 1.5) for k in range(1, 21)})
    assert not any(is_eval_step(s, 0.0) for s in range(1, 100))


def test_capsule_shapes_come_from_the_dataset():
    """HESC capsules mode on a capsule set built with other sizes (the default preset's 64-wide
    checksums under hesc.py:tiny,text, which sets 16): the model takes the data's shapes."""
    from types import SimpleNamespace

    from configs import hesc
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.train import resolve_config

    config = hesc.get_config("tiny,text")
    assert config.model.checksum_dim == 16
    meta = SimpleNamespace(seq_len=10, vocab_size=2052, num_puzzle_identifiers=1)
    example = {"sketches": np.zeros((10, 384)), "children": np.zeros((10, 3, 384)), "checksums": np.zeros((10, 64))}
    model = HESCConfig.from_any(resolve_config(config, meta, example).model)
    assert (model.num_capsules, model.capsule_children, model.capsule_dim, model.checksum_dim) == (10, 3, 384, 64)
    assert model.k == model.seq_len == 10 and config.model.checksum_dim == 16  # the input config is unchanged
    # Tokens mode (and the TRM) ignore capsule arrays.
    assert resolve_config(hesc.get_config("tiny"), meta, example).model.checksum_dim == 16
