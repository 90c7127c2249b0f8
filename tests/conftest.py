"""Test-wide settings (CPU, float32 matmuls, no W&B) and shared fixtures."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A micro TRM on the tiny Sudoku preset: small enough that a subprocess compiles and runs
# tens of steps in seconds on 2 cores.
MICRO_OVERRIDES = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.puzzle_emb_ndim": 32, "model.H_cycles": 2,
    "model.L_cycles": 1, "model.L_layers": 1, "model.halt_max_steps": 3, "global_batch_size": 16,
    "log_interval": 1, "eval_interval": 0, "wandb_mode": "disabled",
    # The tiny preset (200 minimal puzzles x 5), built once per session by the data_dir fixture.
    "data.options.preset": "tiny",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer-running tests (run in a separate CI step)")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir with the tiny Sudoku preset built once for the whole session."""
    import data_pipeline as dp

    path = str(tmp_path_factory.mktemp("trm_data"))
    dp.ensure_built("sudoku", path, {"preset": "tiny"})
    return path


def micro_config(data_dir: str, **overrides):
    """The micro config as an ml_collections ConfigDict (in-process runs)."""
    from configs import sudoku

    config = sudoku.get_config("tiny")
    for key, value in {**MICRO_OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return config


def main_command(workdir: str, data_dir: str, **overrides) -> list:
    """``python -m trm_jax.main`` with the micro config (subprocess runs)."""
    flags = {**MICRO_OVERRIDES, "data.data_dir": data_dir, **overrides}
    return [sys.executable, "-m", "trm_jax.main", "--config=configs/sudoku.py:tiny", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in flags.items()]
