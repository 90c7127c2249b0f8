"""``python -m trm_jax.check``: parameter counts equal a hand count of the reference's architecture, one
real step runs, and a config that does not build fails with exit status 1 naming the problem."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trm_jax import check
from trm_jax.families import family_of

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}


def _block_params(D: int, heads: int, expansion: float) -> int:
    """One reference block: qkv + o projections, then the SwiGLU (inner size rounded up to 256)."""
    hk = heads * (D // heads)
    inter = -(-round(expansion * D * 2 / 3) // 256) * 256
    return 3 * hk * D + hk * D + 3 * D * inter


@pytest.mark.parametrize("variant,blocks,heads", [("", 2, 8), ("hrm", 8, 8), ("trm_singlez", 2, 8),
                                                  ("trm_hier6", 2, 8), ("transformer", 8, 12)])
def test_parameter_counts_at_the_paper_sudoku_size_match_a_hand_count(variant, blocks, heads):
    model_cfg = check.load_config(f"configs/sudoku.py:{variant}").model
    counts = check.count_params(family_of(model_cfg).config_cls.from_any(model_cfg))
    D, V = 512, 11
    io = V * D + D * V + 512 * 1 + (2 * D + 2)  # embed_tokens, lm_head, one puzzle embedding row, q_head
    assert sum(counts.values()) == blocks * _block_params(D, heads, 4.0) + io
    level = [m for m in counts if m.endswith("_level")]
    assert level and all(counts[m] % _block_params(D, heads, 4.0) == 0 for m in level)


def test_an_architecture_name_is_that_architecture_on_the_paper_sudoku():
    assert check.resolve_target("hrm") == "configs/sudoku.py:hrm"
    assert check.resolve_target("trm_hier6:tiny") == "configs/sudoku.py:trm_hier6,tiny"
    assert check.resolve_target("trm") == "configs/sudoku.py"
    assert check.resolve_target("hesc") == "hesc"  # a config file of that name comes first
    assert check.load_config("transformer").model.name == "transformer"


@pytest.mark.slow
def test_one_config_reports_memory_and_runs_a_step():
    report = check.check("configs/sudoku.py:trm_singlez,tiny")
    assert report.ok, report.error
    assert report.memory["arguments"] > 4 * report.total_params  # float32 parameters alone
    assert report.memory["temporaries"] > 0
    assert report.tiny == "configs/sudoku.py:trm_singlez,tiny"
    assert 0 < report.tiny_loss < 10


def test_a_config_that_does_not_build_fails_with_status_1(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from configs import sudoku\n\nVARIANTS = ('tiny',)\n\n\ndef get_config(arg=''):\n"
                   "    config = sudoku.get_config(arg)\n    config.model.num_heads = 64\n    return config\n")
    proc = subprocess.run([sys.executable, "-m", "trm_jax.check", f"--config={bad}:tiny", "--quiet"], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "num_heads=64" in proc.stdout
    assert "0/1 configs OK" in proc.stdout


@pytest.mark.slow
def test_check_all_passes():
    """Every config file and variant builds, compiles at its real size and takes one tiny step."""
    proc = subprocess.run([sys.executable, "-m", "trm_jax.check", "--all", "--quiet"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    assert len(lines) == len(check.all_targets()) and all(line.startswith("OK") for line in lines)
