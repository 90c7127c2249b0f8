"""Checkpoints with Orbax: the whole train state, the data iterator position and the config.

Layout (``WORKDIR/checkpoints/<step>/``), one Orbax ``CheckpointManager`` item each:

* ``state``  — the :class:`~trm_jax.train_state.TrainState` (params, optimizer,
  EMA, ACT carry, RNG, step), written collectively by every process;
* ``data``   — the Grain iterator state (JSON). Every process computes the same
  global batch schedule, so one position describes all processes and the
  checkpoint restores under any process count;
* ``config`` — the run's config (JSON), checked against the new config on restore.

Saves are asynchronous; Orbax finalises a step directory atomically, so an
interrupted save never becomes "latest".
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import orbax.checkpoint as ocp

# Config fields that change array shapes or the state's structure: a checkpoint
# cannot be restored under a config that differs in any of them.
SHAPE_FIELDS = (
    "model.name", "model.hidden_size", "model.num_heads", "model.expansion", "model.L_layers", "model.H_layers",
    "model.puzzle_emb_ndim",
    "model.puzzle_emb_len", "model.num_puzzle_identifiers", "model.vocab_size", "model.seq_len",
    "model.pos_encodings", "model.mlp_t", "model.forward_dtype", "global_batch_size", "ema",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, incomplete, or made under another config."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any],
                      fields: Tuple[str, ...] = SHAPE_FIELDS) -> List[str]:
    """``"field: checkpoint X vs config Y"`` for every shape-relevant field that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{f}: checkpoint {a.get(f)!r} vs config {b.get(f)!r}" for f in fields if a.get(f) != b.get(f)]


def _shape_mismatches(saved_tree: Any, abstract: Any) -> List[str]:
    """Leaves missing from, extra in, or of another shape in the checkpoint (paths named)."""
    saved = ocp.tree.to_flat_dict(saved_tree)
    wanted = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
    problems = []
    for path, leaf in wanted.items():
        name = "/".join(map(str, path))
        meta = saved.get(path)
        if meta is None:
            problems.append(f"{name}: not in the checkpoint")
        elif tuple(getattr(meta, "shape", ())) != tuple(getattr(leaf, "shape", ())):
            problems.append(f"{name}: checkpoint {tuple(meta.shape)} vs model {tuple(leaf.shape)}")
    problems += [f"{'/'.join(map(str, p))}: in the checkpoint but not in the model" for p in saved if p not in wanted]
    return problems


class Checkpointer:
    """Save/restore the train state, the data position and the config under ``directory``."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True,
                 best_metric: str = "", best_mode: str = "max"):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()})
        self.best = None
        if best_metric:
            best_options = ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=async_save,
                best_fn=lambda m: m[best_metric], best_mode=best_mode)
            self.best = ocp.CheckpointManager(os.path.join(os.path.dirname(self.directory), "best"),
                                              options=best_options, item_handlers={
                                                  "state": ocp.StandardCheckpointHandler(),
                                                  "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> List[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Mapping[str, Any], config: Mapping[str, Any],
             force: bool = False) -> bool:
        """Start an (async) save of ``step``; returns whether a save was started."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave(dict(config)),
        ), force=force)

    def save_best(self, step: int, state: Any, config: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Keep ``state`` if ``metrics`` make it the best so far (no-op without ``best_metric``)."""
        if self.best is None or step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     config=ocp.args.JsonSave(dict(config))),
                       metrics={k: float(v) for k, v in metrics.items()})

    def saved_config(self, step: int) -> Dict[str, Any]:
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
        except Exception as e:  # noqa: BLE001 - re-raised with the path named
            raise CheckpointError(f"checkpoint {self.directory}/{step} has no readable config: {_short(e)}") from e

    def restore(self, step: int, abstract_state: Any, config: Mapping[str, Any]) -> Tuple[Any, Dict[str, Any]]:
        """Restore ``(state, data_state)`` of ``step`` onto ``abstract_state``'s shapes and shardings.

        Raises:
          CheckpointError: the config differs in a shape-relevant field, a saved
            array has another shape, or the checkpoint is unreadable.
        """
        path = f"{self.directory}/{step}"
        mismatches = config_mismatches(self.saved_config(step), config)
        if mismatches:
            raise CheckpointError(f"checkpoint {path} was written under another config; mismatched fields: "
                                  + "; ".join(mismatches))
        try:
            saved_meta = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path} is unreadable (metadata): {_short(e)}") from e
        saved_tree = getattr(saved_meta, "tree", saved_meta)
        if not saved_tree:
            raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: the state's metadata is missing")
        shape_problems = _shape_mismatches(saved_tree, abstract_state)
        if shape_problems:
            more = f" (and {len(shape_problems) - 10} more)" if len(shape_problems) > 10 else ""
            raise CheckpointError(f"checkpoint {path} does not match the model: " + "; ".join(shape_problems[:10])
                                  + more)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {_short(e)}") from e
        return restored["state"], dict(restored["data"])

    def restore_params(self, step: int, sharding: Any,
                       keys: Sequence[str] = ("params", "buffers", "ema_params")) -> Dict[str, Any]:
        """Only ``params``/``buffers`` (and ``ema_params`` if saved) of a checkpoint, for ``--restore_from``.

        Restored with ``sharding`` whatever mesh wrote them; the optimizer, carry
        and data position of the other run are not read. ``keys`` picks other parts of the
        state; ``"aux/memory"`` names a nested entry (restored as ``{"aux": {"memory": ...}}``).
        Keys the checkpoint lacks are left out.
        """
        path = os.path.join(self.directory, str(step), "state")
        try:
            meta = self.manager.item_metadata(step)["state"]
            meta = getattr(meta, "tree", meta)
            target = _select(meta, keys)
            abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), target)
            restore_args = jax.tree.map(
                lambda m: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=m.shape, dtype=m.dtype), target)
            return dict(ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True)))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot read parameters from {path}: {_short(e)}") from e

    def wait(self) -> None:
        self.manager.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        if self.best is not None:
            self.best.close()


def _select(tree: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    """The entries of ``tree`` named by ``keys`` ("a/b" = ``tree["a"]["b"]``), nesting kept; absent ones skipped."""
    out: Dict[str, Any] = {}
    for key in keys:
        node, parts = tree, key.split("/")
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
            if node is None:
                break
        if node is None:
            continue
        dest = out
        for part in parts[:-1]:
            dest = dest.setdefault(part, {})
        dest[parts[-1]] = node
    return out


def _short(e: BaseException, limit: int = 400) -> str:
    """An exception as one bounded line (Orbax errors can print whole trees)."""
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."
