"""Command line for training and evaluation.

    python -m trm_jax.main --config=configs/sudoku.py:tiny --workdir=runs/sudoku_tiny [--config.lr=3e-4 ...]

The same command in a workdir that holds a checkpoint resumes the run exactly.
Flags: ``--restore_from`` (another run's workdir, or a PyTorch checkpoint file)
starts from those parameters (a PyTorch file is read without running its pickle;
``--trust_pickle`` allows a trusted file that needs more); ``--eval_only`` evaluates and exits;
``--dataset_only`` builds the dataset and exits; ``--rebuild_dataset`` rebuilds it.
Multi-host: see ``trm_jax/distributed.py`` (launcher environments are detected;
``--coordinator_address/--num_processes/--process_id`` override).
"""
from __future__ import annotations

import re
import sys
from typing import List

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variants], e.g. configs/sudoku.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, W&B).")
_RESTORE_FROM = flags.DEFINE_string("restore_from", "", "Start from the parameters of another run's workdir "
                                    "(or its checkpoints dir), or of a PyTorch reference checkpoint file.")
_TRUST_PICKLE = flags.DEFINE_bool("trust_pickle", False, "Trust the --restore_from PyTorch file: if its pickle needs "
                                   "more than tensors, load it with torch.load(weights_only=False), which runs "
                                   "the code it names. Only for files from a trusted source.")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Evaluate the workdir's latest checkpoint (or --restore_from) "
                               "and exit.")
_DATASET_ONLY = flags.DEFINE_bool("dataset_only", False, "Build the configured dataset and exit.")
_REBUILD = flags.DEFINE_bool("rebuild_dataset", False, "Rebuild the configured dataset even if it exists.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-host).")
_INIT_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for all processes to join.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter (Orbax, TFDS) off by default
    from trm_jax import distributed

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value)
    except distributed.DistributedInitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

    from data_pipeline import DataError
    from trm_jax.checkpoint import CheckpointError
    from trm_jax.models.config import ConfigError
    from trm_jax.train import prepare_data, train_and_evaluate

    config = _CONFIG.value
    try:
        if _DATASET_ONLY.value:
            meta = prepare_data(config, rebuild=_REBUILD.value)
            for split, m in meta.items():
                print(f"{config.data.name}/{split}: {m.total_puzzles} puzzles in {m.total_groups} groups, "
                      f"seq_len {m.seq_len}, vocab {m.vocab_size}")
            return
        if not _WORKDIR.value:
            raise app.UsageError("--workdir is required (where checkpoints and metrics go)")
        train_and_evaluate(config, _WORKDIR.value, restore_from=_RESTORE_FROM.value, eval_only=_EVAL_ONLY.value,
                           rebuild_dataset=_REBUILD.value, trust_pickle=_TRUST_PICKLE.value)
    except (CheckpointError, ConfigError, DataError, FloatingPointError) as e:  # user-facing: no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing; a ``--config.X=V`` override naming no config field is one line, not a traceback.

    ml_collections raises an AttributeError/KeyError (not a flags error) for such an override.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        text = str(e).replace("\\'", "'")
        key = re.search(r"'([^'\\]+)'", text)
        close = re.search(r'Did you mean "([^"]+)"', text)
        if not key:
            print(f"error: a --config override: {' '.join(text.split())}", file=sys.stderr)
            sys.exit(1)
        flag = next((a for a in argv[1:] if a.startswith("--config.") and re.search(
            rf"\.{re.escape(key.group(1))}(\.|=|$)", a)), "--config")
        parts = flag.split("=", 1)[0][2:].split(".")
        path = ".".join(parts[:parts.index(key.group(1))]) if key.group(1) in parts else "config"
        hint = f" (did you mean {close.group(1)!r}?)" if close else ""
        print(f"error: {flag}: {path} has no field {key.group(1)!r}{hint}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
