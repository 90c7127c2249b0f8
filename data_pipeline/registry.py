"""Registry of dataset names -> builder classes.

A dataset module registers its builder with ``@register_dataset``; the builder's TFDS
``name`` is the dataset name. Modules are imported on first lookup: the name ``NAME`` is
looked for in ``data_pipeline/NAME.py`` unless an alias in ``_MODULES`` says otherwise, so a
new dataset (e.g. ``data_pipeline/arc.py`` registering ``arc``) needs no edit here.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from typing import Any, Mapping, TypeVar

from data_pipeline.builder import PuzzleDatasetBuilder

_REGISTRY: dict[str, type[PuzzleDatasetBuilder]] = {}
# Dataset name -> module, for names that do not match their module's file name.
_MODULES: dict[str, str] = {"code": "data_pipeline.language", "text": "data_pipeline.language",
                             "rendered_text": "data_pipeline.vision", "arc_pixels": "data_pipeline.vision",
                             "vision_unified": "data_pipeline.vision"}
_NOT_DATASET_MODULES = {"arrays", "board_builder", "builder", "build", "common", "csv_format", "ensure", "generation", "grids",
                        "loader", "registry", "sampling", "source", "sudoku_logic", "maze_logic",
                        "language", "lm_sources", "tokenizer", "vision", "render"}

B = TypeVar("B", bound=type[PuzzleDatasetBuilder])


def register_dataset(cls: B) -> B:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"dataset {cls.name!r} already registered by {existing.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def get_builder_cls(name: str) -> type[PuzzleDatasetBuilder]:
    """Builder class of dataset ``name``, importing its module if needed."""
    if name not in _REGISTRY:
        module = _MODULES.get(name, f"data_pipeline.{name}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known: {dataset_names()}")
    return _REGISTRY[name]


def dataset_names() -> list[str]:
    """Names of all datasets whose modules exist in the package (importing them)."""
    import data_pipeline
    modules = [f"data_pipeline.{info.name}" for info in pkgutil.iter_modules(data_pipeline.__path__)
               if info.name not in _NOT_DATASET_MODULES and not info.name.startswith("_")]
    for module in modules + list(_MODULES.values()):
        try:
            importlib.import_module(module)
        except Exception as e:  # a broken dataset module must not hide the others
            warnings.warn(f"could not import dataset module {module}: {e!r}")
    return sorted(_REGISTRY)


DATA_DIR_ENV = "TRM_DATA_DIR"


def default_data_dir() -> str:
    """``$TRM_DATA_DIR`` if set, else ``~/.cache/trm_jax/datasets``."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "trm_jax",
                                                         "datasets")


def make_builder(name: str, data_dir: str | None = None, options: Mapping[str, Any] | None = None,
                 num_workers: int = 1, shard_rows: int | None = None) -> PuzzleDatasetBuilder:
    """The TFDS builder of dataset ``name`` with ``options`` under ``data_dir`` (default above).

    Its ``data_path`` is ``<data_dir>/<name>/<config name derived from options>/<version>``.
    """
    cls = get_builder_cls(name)
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    return cls(options=options, data_dir=data_dir, num_workers=num_workers, shard_rows=shard_rows)
