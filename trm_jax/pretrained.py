"""A trained model back in Python: ``load_checkpoint(path) -> (config, variables)``.

::

    import jax, trm_jax

    config, variables = trm_jax.load_checkpoint("runs/sudoku_tiny")        # latest complete checkpoint
    model = trm_jax.build_model(config.model)                              # (HESC: trm_jax.families)
    batch = trm_jax.dummy_batch(config.model, 1)
    carry = trm_jax.initial_carry(config.model, batch)
    carry, out = model.apply(variables, carry, batch, train=False)         # one ACT step

    config, variables, info = trm_jax.load_checkpoint("runs/sudoku_tiny/best/900", ema=False, return_info=True)
    info.step, info.path, info.ema                                         # 900, ".../best/900", False

``path`` is a run's workdir (its latest complete checkpoint under ``checkpoints/``), its
``checkpoints/`` directory, or one step directory (``checkpoints/<step>`` or ``best/<step>``).
The config is the run's resolved config (model shapes filled in from the dataset) as saved with
the checkpoint (``config.json`` of the workdir for an older checkpoint without one). The
variables are EMA weights when the run kept an EMA (``ema=False``: the raw parameters); the
puzzle-embedding table is never averaged, so it is the trained table either way, exactly what
evaluation uses (``optim.eval_params``). Which step was loaded is logged, and returned with
``return_info=True``.

The reading itself is :meth:`trm_jax.checkpoint.Checkpointer.restore_params` (as
``--restore_from=WORKDIR``); nothing of the optimizer, ACT carry or data position is read.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections

from trm_jax import optim

log = logging.getLogger(__name__)


def _error(message: str) -> Exception:
    """A ``trm_jax.checkpoint.CheckpointError`` (imported here: Orbax loads only when a checkpoint is read)."""
    from trm_jax.checkpoint import CheckpointError
    return CheckpointError(message)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """Where the weights came from.

    Attributes:
      path: the step directory read (absolute).
      step: its training step.
      ema: True when the returned parameters are the EMA weights.
      family: ``config.model.name`` (``"trm"`` or ``"hesc"``).
    """

    path: str
    step: int
    ema: bool
    family: str


@dataclasses.dataclass
class LoadedRun:
    """A checkpoint in the layout of the trainer's state, what ``family.make_eval_batch`` takes.

    ``params``: evaluation parameters (EMA or raw); ``buffers``: ``TrainState.buffers``
    (TRM: ``{"inner": {"H_init", "L_init"}}``; HESC: every non-parameter collection);
    ``aux``: the read-only evaluation state (HESC: ``{"memory": ...}`` when the model has
    a memory bank; ``{}`` otherwise).
    """

    config: ml_collections.ConfigDict
    params: Any
    buffers: Any
    aux: Dict[str, Any]
    info: CheckpointInfo

    @property
    def variables(self) -> Dict[str, Any]:
        """Variables for ``build_model(config.model).apply``."""
        return {"params": self.params, "buffers": self.buffers}


def _is_step_dir(path: str) -> bool:
    return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(path)


def _step_dirs(directory: str) -> list:
    return [d for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d))]


def resolve_checkpoint(path: str) -> Tuple[str, Optional[int]]:
    """``(checkpoint manager directory, step or None for the latest)`` that ``path`` names.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointError: ``path`` holds nothing that looks like a trm_jax checkpoint.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if not os.path.isdir(path):
        raise _error(f"{path} is a file, not a trm_jax checkpoint (a run's workdir, its checkpoints/ "
                              "directory or a checkpoints/<step> directory); PyTorch checkpoints load with "
                              "trm_jax.from_torch")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    if _is_step_dir(path):
        if not os.path.isdir(os.path.join(path, "state")):
            raise _error(f"{path} is not a trm_jax checkpoint: it has no state/ item")
        return os.path.dirname(path), int(os.path.basename(path))
    if _step_dirs(path) or any(".orbax-checkpoint-tmp" in d for d in os.listdir(path)):
        return path, None
    raise _error(f"{path} is not a trm_jax checkpoint: it holds no checkpoints/ directory and no "
                          "<step>/ directories (pass a run's workdir, its checkpoints/ or a step directory)")


def _config_of(checkpointer: Any, step: int, step_dir: str) -> ml_collections.ConfigDict:
    """The config saved with the checkpoint, else the run's ``config.json`` (workdir = two levels up)."""
    from trm_jax.checkpoint import CheckpointError

    try:
        return ml_collections.ConfigDict(checkpointer.saved_config(step))
    except CheckpointError as first:
        config_json = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json")
        if not os.path.isfile(config_json):
            raise _error(f"{first}; and no config.json at {config_json}") from None
        with open(config_json) as f:
            return ml_collections.ConfigDict(json.load(f))


def restore_run(path: str, *, ema: bool = True, sharding: Any = None) -> LoadedRun:
    """The evaluation state of a trm_jax checkpoint (see module docstring for ``path``).

    ``sharding``: where the arrays go (default: the first local device).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointError: not a trm_jax checkpoint, no complete checkpoint, or unreadable.
    """
    from trm_jax.checkpoint import Checkpointer

    directory, step = resolve_checkpoint(path)
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        steps = checkpointer.all_steps()
        if step is None:
            step = checkpointer.latest_step()
            if step is None:
                raise _error(f"no complete checkpoint in {directory} (a save interrupted before it "
                                      "finished is not used)")
        elif step not in steps:
            raise _error(f"checkpoint {directory}/{step} is incomplete (its save did not finish); "
                                  f"complete steps here: {sorted(steps) or 'none'}")
        step_dir = os.path.join(directory, str(step))
        config = _config_of(checkpointer, step, step_dir)
        if "model" not in config or "name" not in config.model:
            raise _error(f"{step_dir}: the saved config has no model.name; not a trm_jax checkpoint")
        keys = ("params", "buffers", "ema_params", "aux/memory")
        loaded = checkpointer.restore_params(
            step, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if sharding is None else sharding, keys)
    finally:
        checkpointer.close()
    if "params" not in loaded:
        raise _error(f"{step_dir} holds no parameters; not a trm_jax checkpoint")
    params, ema_params = loaded["params"], loaded.get("ema_params") or None
    use_ema = bool(ema and ema_params)
    if use_ema:
        params = optim.eval_params(ema_params, params)  # EMA weights + the trained puzzle table, as evaluation
    info = CheckpointInfo(path=step_dir, step=int(step), ema=use_ema, family=str(config.model.name))
    log.info("Loaded step %d from %s (%s weights).", info.step, step_dir, "EMA" if use_ema else "raw")
    return LoadedRun(config=config, params=params, buffers=loaded.get("buffers", {}),
                     aux=dict(loaded.get("aux", {})), info=info)


def load_checkpoint(path: str, *, ema: bool = True, return_info: bool = False):
    """``(config, variables)`` of a trm_jax checkpoint; ``(config, variables, info)`` with ``return_info``.

    Args:
      path: a run's workdir (latest complete checkpoint), its ``checkpoints/`` directory, or a
        step directory (``checkpoints/<step>``, ``best/<step>``).
      ema: EMA weights when the run kept an EMA (the default; a run without one gives its
        parameters); False: the raw parameters.
      return_info: also return a :class:`CheckpointInfo` (the step and directory loaded, and
        whether the weights are the EMA).

    Returns:
      config: the run's resolved ``ml_collections.ConfigDict``; ``config.model`` builds the model
        (``trm_jax.build_model`` for ``model.name == "trm"``, ``trm_jax.families.get_family`` for both).
      variables: ``{"params": ..., "buffers": ...}`` for ``model.apply`` (HESC: every non-parameter
        collection of the model at top level, as ``model.init`` returns them).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointError: not a trm_jax checkpoint, no complete checkpoint in it, or unreadable.
    """
    run = restore_run(path, ema=ema)
    return (run.config, run.variables, run.info) if return_info else (run.config, run.variables)
