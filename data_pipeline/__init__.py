"""trm_jax data pipeline: TFDS builders (ArrayRecord) and Grain input pipelines.

Datasets: ``sudoku`` (generator with a backtrack rating, Sudoku-Extreme CSV importer) and
``maze`` (generator of mazes with a unique shortest path, Maze-Hard CSV importer); a dataset
module ``data_pipeline/NAME.py`` registers a ``PuzzleDatasetBuilder`` subclass with
``@register_dataset`` (see ``builder.py`` for what a new dataset such as ARC implements).

Typical use by a trainer::

    import data_pipeline as dp
    meta = dp.ensure_built(cfg.data.name, cfg.data.data_dir, dict(cfg.data.options),
                           rebuild=flag)                        # {split: PuzzleDatasetMetadata}
    train = dp.train_iterator(cfg.data.name, cfg.data.data_dir, dict(cfg.data.options),
                              global_batch_size=768, seed=cfg.seed)
    batch = next(train)          # inputs/labels int32 [768 / processes, L], puzzle_identifiers
    state = train.get_state()    # save with the checkpoint; later: train.set_state(state)
    for batch in dp.eval_iterator(cfg.data.name, cfg.data.data_dir, dict(cfg.data.options),
                                  global_batch_size=768):
        ...                      # + mask bool [b], example_index int32 [b]

Data lives in ``<data_dir>/<name>/<config>/<version>/`` (``data_dir`` defaults to
``$TRM_DATA_DIR`` or ``~/.cache/trm_jax/datasets``; ``<config>`` is derived from the options).
See docs/data.md.
"""
import importlib
from typing import Any

# Public name -> module. Imported on first use (PEP 562), so that light modules such as
# ``data_pipeline.sudoku_logic`` can be imported (e.g. by generation worker processes)
# without TFDS, Grain and JAX.
_EXPORTS = {
    "default_num_workers": "data_pipeline.ensure",
    "ensure_built": "data_pipeline.ensure",
    "PuzzleBuilderConfig": "data_pipeline.builder",
    "PuzzleDatasetBuilder": "data_pipeline.builder",
    "IGNORE_LABEL_ID": "data_pipeline.common",
    "DataError": "data_pipeline.common",
    "Puzzle": "data_pipeline.common",
    "PuzzleDatasetMetadata": "data_pipeline.common",
    "PuzzleGroup": "data_pipeline.common",
    "StaticMetadata": "data_pipeline.common",
    "single_example_puzzle": "data_pipeline.common",
    "eval_dataset": "data_pipeline.loader",
    "eval_iterator": "data_pipeline.loader",
    "process_slice": "data_pipeline.loader",
    "train_dataset": "data_pipeline.loader",
    "train_iterator": "data_pipeline.loader",
    "dataset_names": "data_pipeline.registry",
    "default_data_dir": "data_pipeline.registry",
    "get_builder_cls": "data_pipeline.registry",
    "make_builder": "data_pipeline.registry",
    "register_dataset": "data_pipeline.registry",
    "TrainSchedule": "data_pipeline.sampling",
    "PuzzleSource": "data_pipeline.source",
    "SplitIndex": "data_pipeline.source",
    "load": "data_pipeline.source",
    "load_metadata": "data_pipeline.source",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
