"""HESC training through the trainer: the DQN, expansions, VQ and memory are live, and resume is exact."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from trm_jax.metrics_logger import read_metrics
from trm_jax.train import train_and_evaluate

# End-to-end runs (minutes on 2 cores): the second CI step, `pytest -m slow`.
pytestmark = pytest.mark.slow

STEPS = 12


def hesc_config(data_dir: str, **overrides):
    """configs/hesc.py:tiny on the tiny Sudoku grid (9x9: 3x3 regions of 3x3 cells), micro sizes."""
    from configs import hesc

    config = hesc.get_config("tiny")
    config.data = {"name": "sudoku", "data_dir": data_dir, "options": {"preset": "tiny"}}
    config.model.update(dict(seq_len=81, vocab_size=11, capsule_grid=9, capsule_regions=3, capsule_subregions=3,
                             hidden_size=32, num_heads=2, puzzle_emb_ndim=32, q_head_hidden=32, halt_max_steps=3,
                             dqn_buffer_capacity=256, dqn_buffer_min_size=16, dqn_batch_size=16,
                             dqn_target_update_freq=4, num_concepts=16, memory_capacity=32, rnd_hidden=16,
                             curiosity_hash_bits=8))
    config.update(dict(global_batch_size=16, log_interval=1, eval_interval=0, wandb_mode="disabled",
                       checkpoint_interval=6, max_steps=STEPS, epochs=100))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _train(workdir):
    return {r["step"]: r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train/lm_loss" in r}


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("hesc"))
    train_and_evaluate(hesc_config(data_dir), workdir)
    return workdir


def test_every_mechanism_is_live_in_a_short_run(run):
    records = _train(run)
    assert sorted(records) == list(range(1, STEPS + 1))
    min_size = 16
    ready = [r for r in records.values() if r["train/dqn_buffer_size"] >= min_size]
    assert ready and all(r["train/dqn_buffer_size"] <= 256 for r in ready)
    # TD learning starts once the buffer holds dqn_buffer_min_size transitions.
    later = [records[s]["train/dqn_loss"] for s in records if s > 1 and records[s - 1]["train/dqn_buffer_size"] >= min_size]
    assert later and all(v > 0 for v in later)
    assert records[1]["train/dqn_loss"] == 0.0
    for name in ("train/action_0_continue", "train/action_1_halt", "train/action_2_expand"):
        assert sum(r[name] for r in records.values()) > 0, name  # all three actions taken
    assert max(r["train/num_expansions"] for r in records.values()) > 0
    assert max(r["train/vq_usage"] for r in records.values()) * 16 > 1  # more than one code in use
    assert records[STEPS]["train/memory_fill"] > 0
    assert all(np.isfinite(r["train/lm_loss"]) and r["train/skipped_steps"] == 0 for r in records.values())


# The PyTorch HESC system's metric names (its W&B dashboards read them), beside trm_jax's own.
PYTORCH_METRIC_NAMES = ("entropy_bonus", "dqn_td_error_mean", "dqn_target_mean", "dqn_reward_intrinsic",
                        "dqn_reward_extrinsic", "dqn_accuracy_improvement", "grad/mean_norm", "grad/max_norm",
                        "grad/num_zero", "grad/num_nan", "grad_clip_ratio", "samples_per_sec")


def test_the_pytorch_systems_metric_names_are_logged(run):
    records = _train(run)
    for step, record in records.items():
        missing = [name for name in PYTORCH_METRIC_NAMES if f"train/{name}" not in record]
        assert not missing, (step, missing)
        assert record["train/grad/max_norm"] >= record["train/grad/mean_norm"] > 0
        assert record["train/grad/num_nan"] == 0 and record["train/samples_per_sec"] > 0
    # The names carry the same numbers as trm_jax's own ones.
    last = records[STEPS]
    assert last["train/dqn_td_error_mean"] == last["train/dqn_td_error"]
    assert last["train/entropy_bonus"] == pytest.approx(-0.01 * last["train/q_entropy"], rel=1e-5)


def test_epsilon_follows_the_global_step_schedule(run):
    records = _train(run)
    total = 100 * 200 // 16  # epochs x groups / batch (the tiny Sudoku has 200 groups of 1 example)
    decay_steps = 0.3 * total
    for step, rec in records.items():
        want = 1.0 + (0.05 - 1.0) * min((step - 1) / decay_steps, 1.0)  # logged step s used global step s - 1
        assert rec["train/dqn_epsilon"] == pytest.approx(want, rel=1e-5)


def _aux(workdir, step):
    state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return state["aux"], state["carry"]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_resume_restores_buffer_and_memory_exactly(run, data_dir, tmp_path):
    workdir = str(tmp_path)
    train_and_evaluate(hesc_config(data_dir, max_steps=6), workdir)
    train_and_evaluate(hesc_config(data_dir), workdir)  # resumes at 6
    a, b = _train(run), _train(workdir)
    for step in range(7, STEPS + 1):
        timing = ("train/examples_per_s", "train/samples_per_sec")
        ra = {k: v for k, v in a[step].items() if k not in timing}
        rb = {k: v for k, v in b[step].items() if k not in timing}
        assert ra == rb, step
    (aux_a, carry_a), (aux_b, carry_b) = _aux(run, STEPS), _aux(workdir, STEPS)
    parts = {f"aux/{p}": (aux_a[p], aux_b[p]) for p in ("replay", "memory", "reward_stats", "vq_stats", "counter",
                                                          "target_q")}
    parts["carry"] = (carry_a, carry_b)  # includes each row's pending transition and capsule expansions
    for part, (tree_a, tree_b) in parts.items():
        flat_a, flat_b = ocp.tree.to_flat_dict(tree_a), ocp.tree.to_flat_dict(tree_b)
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=f"{part}/{key}")
    assert int(np.asarray(aux_a["replay"]["size"])) > 0 and np.asarray(aux_a["memory"]["filled"]).any()


def test_solve_reads_a_hesc_run_with_its_memory_bank(run):
    """trm_jax.solve on a HESC checkpoint: the memory bank comes back from Orbax as plain dicts and
    must reach the model as a MemoryBank."""
    from trm_jax import solve as solve_lib

    solver = solve_lib.load_solver(run)
    assert np.asarray(solver.aux["memory"]["filled"]).any()
    batch = {"inputs": np.ones((2, 81), np.int32), "labels": np.ones((2, 81), np.int32),
             "puzzle_identifiers": np.zeros(2, np.int32)}
    trace = solver.run(batch)
    assert trace.preds.shape == (2, 81) and trace.q_halt_per_step.shape == (2, 3)
    assert np.isfinite(trace.q_halt_per_step).all()
