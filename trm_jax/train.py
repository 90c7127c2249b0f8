"""The training run: data, state, the jitted step, evaluation, checkpoints, logging, signals.

``train_and_evaluate(config, workdir)`` is what ``python -m trm_jax.main`` calls.
A workdir holding a checkpoint is resumed from its latest complete checkpoint:
train state, data position and RNG continue exactly, so the metrics after a
resume equal those of an uninterrupted run.

Workdir layout::

    WORKDIR/config.json        the resolved config of the run
    WORKDIR/checkpoints/<step> Orbax checkpoints (state, data position, config)
    WORKDIR/best/<step>        the best checkpoint by ``keep_best_metric`` (if set)
    WORKDIR/metrics.jsonl      one JSON object per logged step (train/* and eval/*)
    WORKDIR/eval/<step>/       evaluator outputs (e.g. ARC submission.json); metrics.json of an --eval_only run
    WORKDIR/learning_curve.png accuracy and loss over the run (written at the end of training)
    WORKDIR/wandb/             the W&B run (offline by default)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

import data_pipeline as dp
from data_pipeline import streaming
from trm_jax import optim, sharding
from trm_jax.families import ARCHITECTURES, get_family
from trm_jax.checkpoint import Checkpointer, CheckpointError
from trm_jax.evaluation import evaluate
from trm_jax.evaluators import make_evaluators
from trm_jax.lm.objective import language_metrics
from trm_jax.metrics_logger import MetricsLogger, read_metrics, run_summary
from trm_jax.pt_format import PtFormatError
from trm_jax.signals import StopRequest
from trm_jax.steps import SUM_METRICS, make_eval_batch, make_train_step
from trm_jax.torch_io import StateDictError, from_torch
from trm_jax.train_state import TrainState, create_train_state, init_sharded_state, param_count


def _primary() -> bool:
    return jax.process_index() == 0


def _print(*args: Any) -> None:
    if _primary():
        print(*args, flush=True)


def prepare_data(config: ml_collections.ConfigDict, rebuild: bool = False) -> Dict[str, Any]:
    """Build the configured dataset if absent (process 0 first, then the others)."""
    name, options = config.data.name, dict(config.data.options)
    data_dir = config.data.data_dir or None
    if _primary():
        meta = dp.ensure_built(name, data_dir, options, rebuild=rebuild)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("trm_jax:dataset_built")
    if not _primary():
        meta = dp.ensure_built(name, data_dir, options)
    return meta


def copy_artifacts(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Copy the dataset's artifacts (a language dataset's ``tokenizer.json``) into the workdir, so a
    checkpoint is usable (``generate``, ``chat``) with nothing but its workdir."""
    builder = dp.make_builder(config.data.name, config.data.data_dir or None, dict(config.data.options))
    if not _primary():
        return
    for name in builder.artifacts:
        shutil.copyfile(os.path.join(os.fspath(builder.data_path), name), os.path.join(workdir, name))


def resolve_config(config: ml_collections.ConfigDict, train_meta: Any,
                   example: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose model shapes come from the dataset: its metadata and, for data
    capsules (HESC capsules mode), the shapes of one ``example``'s capsule arrays."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.seq_len = int(train_meta.seq_len)
    config.model.vocab_size = int(train_meta.vocab_size)
    config.model.num_puzzle_identifiers = int(train_meta.num_puzzle_identifiers)
    if example is not None and config.model.get("mode") == "capsules" and "children" in example:
        k, m, dim = np.shape(example["children"])  # [k, m, Dc]
        config.model.update(dict(num_capsules=int(k), capsule_children=int(m), capsule_dim=int(dim),
                                 checksum_dim=int(np.shape(example["checksums"])[-1])))
    return config


def schedule_lengths(config: ml_collections.ConfigDict, train_meta: Any) -> Dict[str, int]:
    """``total_steps`` (the LR schedule's length), the steps to run, and the eval/checkpoint periods.

    ``eval_interval`` is in epochs, as in the reference (0: evaluate only at the end of the
    run); ``checkpoint_interval`` is in steps (0: only at evaluations and at the end).
    """
    total = optim.compute_total_steps(config.epochs, train_meta.total_groups, train_meta.mean_puzzle_examples,
                                      config.global_batch_size)
    if total < 1:
        raise ValueError(f"the run has no steps: epochs={config.epochs} x {train_meta.total_groups} groups x "
                         f"{train_meta.mean_puzzle_examples:.2f} examples / batch {config.global_batch_size} < 1")
    steps_per_epoch = train_meta.total_groups * train_meta.mean_puzzle_examples / config.global_batch_size
    run = min(total, config.max_steps) if config.max_steps else total
    # A period in (fractional) steps: evaluations fall at round(k * period), so the last one of a run whose
    # epochs are a multiple of eval_interval is its final step (as the reference's iterations), not a step before.
    eval_period = max(1.0, config.eval_interval * steps_per_epoch) if config.eval_interval else 0.0
    return dict(total_steps=total, run_steps=run, eval_period=eval_period,
                checkpoint_every=int(config.checkpoint_interval))


def is_eval_step(step: int, eval_period: float) -> bool:
    """Whether a periodic evaluation falls on ``step``: ``step == round(k * eval_period)`` for some k >= 1."""
    if not eval_period:
        return False
    k = max(1, round(step / eval_period))
    return round(k * eval_period) == step


class Trainer:
    """Owns the mesh, the compiled steps, the state, the data iterator and the checkpointer."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, rebuild_dataset: bool = False):
        self.workdir = os.path.abspath(workdir)
        get_family(config.model.name).config_cls.check_fields(config.model)  # misspelt fields: before any work
        os.makedirs(self.workdir, exist_ok=True)
        self.incremental = bool(config.data.get("incremental", False))
        self.build: Any = None  # the background dataset build of an incremental run
        if self.incremental:
            meta = self.start_incremental_data(config, rebuild_dataset)
        else:
            meta = prepare_data(config, rebuild_dataset)
            copy_artifacts(config, self.workdir)
        self.train_meta = meta["train"]
        self.has_eval = "test" in meta
        example = None
        if config.model.get("mode") == "capsules":  # the capsule arrays' shapes are the data's
            example = dp.load(config.data.name, "train", config.data.data_dir or None, **dict(config.data.options))[0]
        self.config = resolve_config(config, self.train_meta, example)
        self.lengths = schedule_lengths(self.config, self.train_meta)
        self.family = get_family(self.config.model.name)
        self.model_cfg = self.family.config_cls.from_any(self.config.model)
        self.model = self.family.build_model(self.model_cfg)

        self.mesh = sharding.create_mesh(self.config.mesh.data, self.config.mesh.fsdp)
        sharding.check_global_batch(self.config.global_batch_size, self.mesh)
        self.tx = optim.build_optimizer(self.config, self.lengths["total_steps"])
        make = lambda: create_train_state(self.model_cfg, self.tx,  # noqa: E731
                                          self.config.global_batch_size, self.config.seed, bool(self.config.ema))
        self.state, self.shardings = init_sharded_state(make, self.mesh, self.config.mesh.fsdp_min_size)
        batch_shardings = sharding.batch_tree_shardings(self.state.carry.current_data, self.mesh)
        self.train_step = jax.jit(make_train_step(self.model, self.tx, self.config, self.lengths["total_steps"]),
                                  in_shardings=(self.shardings, batch_shardings),
                                  out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                                  donate_argnums=0)
        self.eval_batch = jax.jit(make_eval_batch(self.model), out_shardings=sharding.replicated(self.mesh))
        self.eval_batch_adaptive = jax.jit(make_eval_batch(self.model, adaptive=True),
                                           out_shardings=sharding.replicated(self.mesh))
        data_args = (self.config.data.name, self.config.data.data_dir or None, dict(self.config.data.options))
        # The reference samples eval_interval epochs per iteration.
        sampling = dict(global_batch_size=self.config.global_batch_size, seed=self.config.seed,
                        epochs_per_iter=int(self.config.eval_interval) or None)
        if self.incremental:
            self.train_iter = streaming.IncrementalTrainIterator(
                *data_args, **sampling, first_examples=self.first_shard_rows(),
                on_stage=lambda i, n: _print(f"training data: stage {i} on the first {n} examples "
                                             f"(of {self.train_meta.num_examples} planned)"),
                wait=lambda ready, what: streaming.wait_until(ready, what, self.build,
                                                              os.path.join(self.workdir, "dataset_build.log"),
                                                              report=_print))
        else:
            self.train_iter = dp.train_iterator(*data_args, **sampling)
        # Last: from here on close() must run (the manager owns background threads).
        self.checkpointer = Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                         max_to_keep=self.config.max_to_keep,
                                         async_save=self.config.async_checkpointing,
                                         best_metric=self.config.keep_best_metric)

    def start_incremental_data(self, config: ml_collections.ConfigDict, rebuild: bool) -> Dict[str, Any]:
        """``data.incremental``: build the dataset in a background process (unless built) and return
        the planned metadata once the test split is complete and the first shard of the training
        split is committed (data_pipeline/streaming.py)."""
        if jax.process_count() > 1:
            raise ValueError("data.incremental=True runs on one process (every process would have to see the "
                             "same shards at the same step); build the dataset first with data.incremental=False")
        name, data_dir, options = config.data.name, config.data.data_dir or None, dict(config.data.options)
        if rebuild:
            dp.ensure_built(name, data_dir, options, rebuild=True)
        builder = dp.make_builder(name, data_dir, options)
        log_path = os.path.join(self.workdir, "dataset_build.log")
        if not builder.is_built():
            _print(f"building {name} in the background (log: {log_path}); training starts on its first shards")
            self.build = streaming.start_background_build(name, data_dir, options, log_path,
                                                          int(config.data.get("shard_rows", 0)) or None)
            splits = builder.splits()
            for split in [s for s in splits if s != "train"]:
                streaming.wait_until(lambda: streaming.progress(builder, split).complete, f"the {split} split",
                                     self.build, log_path, report=_print)
            first = self.first_shard_rows(builder, config)
            streaming.wait_until(lambda: (lambda p: p.examples >= first or p.complete)(streaming.progress(builder, "train")),
                                 "the first training shard", self.build, log_path, report=_print)
        meta = {"train": streaming.planned_metadata(builder, "train")}
        if "test" in builder.splits():
            meta["test"] = streaming.prefix_source(builder, "test", streaming.progress(builder, "test").examples).metadata
        return meta

    def first_shard_rows(self, builder: Any = None, config: Any = None) -> int:
        """Rows of an incremental run's first stage: a shard of the build, at least one global batch."""
        config = config or self.config
        builder = builder or dp.make_builder(config.data.name, config.data.data_dir or None, dict(config.data.options))
        return max(int(config.global_batch_size), int(config.data.get("shard_rows", 0)) or int(builder.SHARD_ROWS or 0))

    def test_source(self) -> Any:
        """The test split (a dataset still building: its complete, committed test split)."""
        data = self.config.data
        if not self.incremental:
            return dp.load(data.name, "test", data.data_dir or None, **dict(data.options))
        builder = dp.make_builder(data.name, data.data_dir or None, dict(data.options))
        return streaming.prefix_source(builder, "test", streaming.progress(builder, "test").examples)

    # ------------------------------------------------------------------ state
    def model_inputs(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The batch fields the model reads (those the carry holds); other loader fields are dropped."""
        keys = self.state.carry.current_data.keys()
        missing = [k for k in keys if k not in batch]
        if missing:
            raise dp.DataError(f"dataset {self.config.data.name!r} batches lack the fields {missing} that "
                               f"model {self.config.model.name!r} reads")
        return {k: batch[k] for k in keys}

    @property
    def step(self) -> int:
        return int(self.state.step)

    def abstract_state(self) -> TrainState:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state,
                            self.shardings)

    def restore_latest(self) -> Optional[int]:
        """Resume from this workdir's latest complete checkpoint, if any."""
        step = self.checkpointer.latest_step()
        if step is None:
            return None
        self.check_same_family(self.checkpointer.saved_config(step), f"{self.checkpointer.directory}/{step}")
        self.state, data_state = self.checkpointer.restore(step, self.abstract_state(), self.config.to_dict())
        self.train_iter.set_state(data_state)
        return step

    def check_same_family(self, saved_config: Dict[str, Any], origin: str) -> None:
        """Refuse a checkpoint of another model family, named from its saved config (before any
        shape comparison, whose key-by-key dump would hide the real cause)."""
        saved = str((saved_config.get("model") or {}).get("name", "trm"))
        want = str(self.config.model.name)
        if saved != want:
            example = "configs/hesc.py" if saved == "hesc" else \
                "configs/sudoku.py" if saved == "trm" else f"configs/sudoku.py:{saved}"
            raise CheckpointError(f"{origin}: this checkpoint is a {saved.upper()} model (config.model.name="
                                  f"{saved!r}); the config is a {want.upper()} ({want!r}). Use a {saved!r} config "
                                  f"(e.g. {example}) with this checkpoint, or another workdir.")

    def load_params_from(self, source: str, trust_pickle: bool = False) -> str:
        """Start from another run's parameters (a workdir or checkpoints dir) or a PyTorch checkpoint file."""
        if not os.path.exists(source):  # before anything that could create it (the Orbax manager does)
            raise CheckpointError(f"--restore_from={source}: no such file or directory")
        if os.path.isfile(source):
            if not self.family.loads_torch:
                raise CheckpointError(f"--restore_from={source}: PyTorch checkpoints load into the reference's "
                                      f"architectures {ARCHITECTURES} only (config.model.name="
                                      f"{self.config.model.name!r})")
            try:
                variables = from_torch(source, self.model_cfg, trust_pickle=trust_pickle)
            except (PtFormatError, StateDictError) as e:
                raise CheckpointError(f"--restore_from={source}: {e}") from e
            params, buffers, ema = variables["params"], variables["buffers"], None
            origin = f"PyTorch checkpoint {source}"
        else:
            directory = os.path.join(source, "checkpoints") if os.path.isdir(os.path.join(source, "checkpoints")) \
                else source
            other = Checkpointer(directory, async_save=False)
            try:
                step = other.latest_step()
                if step is None:
                    raise CheckpointError(f"--restore_from={source}: no complete checkpoint in {directory}")
                self.check_same_family(other.saved_config(step), f"--restore_from={source} ({directory}/{step})")
                loaded = other.restore_params(step, sharding.replicated(self.mesh))
            finally:
                other.close()
            params, buffers, ema = loaded["params"], loaded["buffers"], loaded.get("ema_params") or None
            origin = f"{directory}/{step}"
        params = _fit_puzzle_table(params, self.state.params)
        _check_same_shapes(params, self.state.params, origin)
        new = self.state.replace(params=params, buffers=buffers)
        if self.config.ema:
            new = new.replace(ema_params=optim.ema_init(params) if ema is None else ema)
        _check_same_shapes(new.ema_params, self.state.ema_params, origin)
        self.state = jax.device_put(new, self.shardings)
        return origin

    def eval_variables(self) -> tuple:
        params = optim.eval_params(self.state.ema_params, self.state.params) if self.config.ema else self.state.params
        return params, self.state.buffers

    # ------------------------------------------------------------- evaluation
    def run_evaluation(self) -> Dict[str, float]:
        if not self.has_eval:
            return {}
        data = self.config.data
        source = self.test_source()
        batches = dp.eval_dataset(source, global_batch_size=self.config.global_batch_size)
        evaluators = make_evaluators(data.name, data.data_dir or None, dict(data.options))
        params, buffers = self.eval_variables()
        results = evaluate(self.eval_batch, params, buffers, batches, self.mesh, evaluators,
                           output_dir=os.path.join(self.workdir, "eval", str(self.step)), num_batches=len(batches),
                           aux=self.state.aux)
        if self.config.adaptive_eval:
            adaptive = evaluate(self.eval_batch_adaptive, params, buffers, batches, self.mesh, (),
                                num_batches=len(batches), aux=self.state.aux)
            results.update({"eval_adaptive/" + k.split("/", 1)[1]: v for k, v in adaptive.items()})
            # The share of the fixed evaluation's ACT steps that adaptive halting did not run.
            results["eval_adaptive/compute_saved"] = 1.0 - adaptive.get("eval/steps", 0.0) / self.model_cfg.halt_max_steps
        return results

    # -------------------------------------------------------------- checkpoint
    def save(self, force: bool = False) -> None:
        self.checkpointer.save(self.step, self.state, self.train_iter.get_state(), self.config.to_dict(),
                               force=force)

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
        if self.build is not None and self.build.poll() is None:
            # The build continues from its last committed shard next time (the same command).
            self.build.terminate()
            self.build.wait()


def _fit_puzzle_table(params: Dict[str, Any], target: Dict[str, Any]) -> Dict[str, Any]:
    """Reference fine-tuning rule: a puzzle table of another size restarts as the mean of the old rows."""
    inner, want = params.get("inner", {}), target.get("inner", {})
    if "puzzle_emb" in inner and "puzzle_emb" in want:
        old, new = inner["puzzle_emb"]["embedding"], want["puzzle_emb"]["embedding"]
        if old.shape != new.shape and old.shape[1:] == new.shape[1:]:
            _print(f"Puzzle embeddings: {old.shape[0]} rows in the checkpoint, {new.shape[0]} here; "
                   "starting every row from the mean of the old ones.")
            mean = jnp.mean(jnp.asarray(old), axis=0, keepdims=True)
            params = {**params, "inner": {**inner, "puzzle_emb": {"embedding": jnp.broadcast_to(mean, new.shape)}}}
    return params


def _check_same_shapes(loaded: Any, target: Any, origin: str) -> None:
    a = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    b = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
    problems = [f"{k}: missing" for k in b if k not in a] + [f"{k}: unexpected" for k in a if k not in b]
    problems += [f"{k}: {tuple(a[k])} vs model {tuple(b[k])}" for k in b if k in a and tuple(a[k]) != tuple(b[k])]
    if problems:
        raise CheckpointError(f"parameters from {origin} do not fit this model config: " + "; ".join(problems))


def _normalize_train(sums: Dict[str, float], n_steps: int, global_batch_size: int) -> Dict[str, float]:
    """Reference normalisation over ``n_steps`` accumulated steps; other metrics averaged."""
    count = max(sums.get("count", 0.0), 1.0)
    out = {}
    for k, v in sums.items():
        if k in ("skipped_steps", "consecutive_skipped"):
            continue
        if k in SUM_METRICS:
            if k == "count":
                out["train/count"] = v / n_steps
            elif k.endswith("loss"):
                out[f"train/{k}"] = v / (global_batch_size * n_steps)
            else:
                out[f"train/{k}"] = v / count
        else:
            out[f"train/{k}"] = v / n_steps
    out.update(language_metrics(out, "train"))  # a language model's perplexity and bits per byte
    if "train/token_nll" in out and "train/lm_loss" in out:
        # Over every row and supervision step of the window (language_metrics' is over finished rows).
        out["train/perplexity"] = float(np.exp(min(out["train/lm_loss"], 700.0)))
    return out


def _any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (one coordinated stop)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def _eval_summary(step: int, metrics: Dict[str, float]) -> str:
    keys = ["eval/exact_accuracy", "eval/accuracy", "eval/q_halt_accuracy", "eval/steps", "eval/lm_loss"]
    keys += sorted(k for k in metrics if k not in keys and k != "eval/count")
    lines = [f"Evaluation at step {step} ({int(metrics.get('eval/count', 0))} examples):"]
    lines += [f"  {k:<28} {metrics[k]:.4f}" for k in keys if k in metrics]
    return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, restore_from: str = "",
                       eval_only: bool = False, rebuild_dataset: bool = False,
                       trust_pickle: bool = False) -> Dict[str, float]:
    """Train (or only evaluate) under ``workdir``; returns the last evaluation's metrics.

    ``trust_pickle``: a ``--restore_from`` PyTorch file is trusted (its pickle may run code).
    The run ends with a summary on the console (best evaluation metrics and their steps, the
    final train loss, the checkpoints, ``learning_curve.png``).
    """
    if restore_from and not os.path.exists(restore_from):  # before the workdir or dataset are touched
        raise CheckpointError(f"--restore_from={restore_from}: no such file or directory")
    trainer = Trainer(config, workdir, rebuild_dataset=rebuild_dataset)
    logger: Optional[MetricsLogger] = None
    try:  # whatever fails below, the checkpointer's threads and the logger are closed
        _start(trainer, restore_from, eval_only, trust_pickle)
        logger = _open_logger(trainer)
        with jax.set_mesh(trainer.mesh):  # activations follow the mesh's batch axes while tracing
            if eval_only:
                metrics = trainer.run_evaluation()
                extra = _log_eval_only(trainer, logger, metrics)
                _print(_eval_summary(trainer.step, metrics))
                _finish(trainer, logger, extra_records=extra, plot=False)
                return metrics
            last_eval = _train_loop(trainer, logger)
            _finish(trainer, logger, plot=True)
            return last_eval
    finally:
        trainer.close()
        if logger is not None:
            logger.close()


def _log_eval_only(trainer: Trainer, logger: MetricsLogger, metrics: Dict[str, float]) -> list:
    """Record an ``--eval_only`` evaluation without duplicating one already in metrics.jsonl.

    The metrics always go to ``eval/<step>/metrics.json``. ``metrics.jsonl`` (and W&B) get a
    record only if no evaluation of this step is logged yet: a log has one evaluation per step,
    and W&B refuses steps it has passed. Returns the records the summary should add (this
    evaluation, when it was not logged).
    """
    if not metrics or not _primary():
        return []
    step = trainer.step
    out_dir = os.path.join(trainer.workdir, "eval", str(step))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, **{k: float(v) for k, v in metrics.items()}}, f, indent=2)
    logged = read_metrics(logger.path) if os.path.exists(logger.path) else []
    if any(r.get("step") == step and any(k.startswith("eval/") for k in r) for r in logged):
        _print(f"{logger.path} already holds an evaluation of step {step}; this one is in {out_dir}/metrics.json.")
        return [{"step": step, **metrics}]
    logger.log(step, metrics)
    return []


def _finish(trainer: Trainer, logger: MetricsLogger, extra_records: Optional[list] = None, plot: bool = True) -> None:
    """Print what the run achieved; write ``learning_curve.png`` from metrics.jsonl (process 0)."""
    trainer.checkpointer.wait()  # the final save is complete: "latest" below is on disk
    if not _primary():
        return
    records = (read_metrics(logger.path) if os.path.exists(logger.path) else []) + list(extra_records or [])
    plot_path = os.path.join(trainer.workdir, "learning_curve.png")
    if plot and records:
        from trm_jax.plots import plot_learning_curve

        try:
            plot_learning_curve(records, plot_path, title=os.path.basename(trainer.workdir))
        except Exception as e:  # noqa: BLE001 - a finished run must not fail on its plot
            _print(f"warning: could not write {plot_path}: {type(e).__name__}: {e}")
    latest = trainer.checkpointer.latest_step()
    best = trainer.checkpointer.best.best_step() if trainer.checkpointer.best is not None else None
    _print(run_summary(
        records,
        latest_checkpoint=None if latest is None else f"{trainer.checkpointer.directory}/{latest}",
        best_checkpoint=None if best is None else os.path.join(trainer.workdir, "best", str(best)),
        best_metric=trainer.config.keep_best_metric,
        plot_path=plot_path if os.path.exists(plot_path) else None))


def _start(trainer: Trainer, restore_from: str, eval_only: bool, trust_pickle: bool = False) -> None:
    """Write config.json; resume, or load other weights; say what the run is."""
    config, lengths = trainer.config, trainer.lengths
    if _primary():
        with open(os.path.join(trainer.workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)
    resumed = trainer.restore_latest()
    if resumed is not None:
        _print(f"Resumed from {trainer.checkpointer.directory}/{resumed} (step {resumed}).")
    elif restore_from:
        _print(f"Initialised from {trainer.load_params_from(restore_from, trust_pickle)}.")
    elif eval_only:
        raise CheckpointError(f"--eval_only: no checkpoint in {trainer.workdir}/checkpoints and no --restore_from")
    _print(f"{config.model.name.upper()} {param_count(trainer.state.params):,} parameters | dataset {config.data.name}: "
           f"{trainer.train_meta.total_groups} groups, seq_len {config.model.seq_len}, vocab {config.model.vocab_size} "
           f"| global batch {config.global_batch_size} on mesh {dict(trainer.mesh.shape)} | "
           f"{lengths['run_steps']} of {lengths['total_steps']} steps")


def _open_logger(trainer: Trainer) -> MetricsLogger:
    """W&B + metrics.jsonl on process 0; a resumed run continues the same W&B run."""
    config = trainer.config
    run_id_path = os.path.join(trainer.workdir, "wandb_run_id.txt")
    run_id = open(run_id_path).read().strip() if os.path.exists(run_id_path) else None
    logger = MetricsLogger(trainer.workdir, config.to_dict(), wandb_mode=config.wandb_mode,
                           run_name=config.run_name or os.path.basename(trainer.workdir),
                           project=config.wandb_project, tags=[config.data.name, config.model.name],
                           run_id=run_id, enabled=_primary())
    if _primary() and logger.run_id and run_id is None:
        with open(run_id_path, "w") as f:
            f.write(logger.run_id)
    return logger


def _train_loop(trainer: Trainer, logger: MetricsLogger) -> Dict[str, float]:
    config, lengths = trainer.config, trainer.lengths
    run_steps, eval_period, ckpt_every = lengths["run_steps"], lengths["eval_period"], lengths["checkpoint_every"]
    log_every = max(1, int(config.log_interval))
    step = trainer.step
    last_eval: Dict[str, float] = {}
    pending = None  # (step, accumulated sums, n steps, last metrics): read after the next dispatch
    acc, acc_n = None, 0
    # Throughput of a log window: its n steps' examples over the time from the previous log
    # point's values being ready to this one's (device_get blocks until its last step is done).
    # Counting examples per window, not per flush, keeps a window flushed right after the
    # previous one (log_interval=1 before an evaluation) from reading 0 examples.
    t_window = time.perf_counter()

    def flush(item) -> None:
        nonlocal t_window
        at, sums, n, last = item
        sums = {k: float(v) for k, v in jax.device_get(sums).items()}
        record = _normalize_train(sums, n, config.global_batch_size)
        last = {k: float(v) for k, v in jax.device_get(last).items()}
        record["train/skipped_steps"] = last["skipped_steps"]
        now = time.perf_counter()
        record["train/examples_per_s"] = n * config.global_batch_size / max(now - t_window, 1e-9)
        record["train/samples_per_sec"] = record["train/examples_per_s"]  # the PyTorch system's name
        if trainer.model_cfg.causal:  # positions processed per second (each row is seq_len tokens)
            record["train/tokens_per_s"] = record["train/examples_per_s"] * trainer.model_cfg.seq_len
        t_window = now
        logger.log(at, record)
        bar.set_postfix(loss=f"{record.get('train/lm_loss', 0):.3f}", acc=f"{record.get('train/accuracy', 0):.3f}",
                        ex_s=f"{record['train/examples_per_s']:.0f}", refresh=False)
        if last["consecutive_skipped"] >= config.max_consecutive_skipped:
            raise FloatingPointError(
                f"{int(last['consecutive_skipped'])} consecutive steps had a non-finite loss or gradient (up to step "
                f"{at}); their updates were refused, so the parameters are intact. Lower lr or check the data; "
                f"the run resumes from {trainer.checkpointer.directory}/{trainer.checkpointer.latest_step()}.")

    with StopRequest() as stop, tqdm(total=run_steps, initial=step, desc="train", unit="step",
                                     disable=not _primary(), dynamic_ncols=True) as bar:
        while step < run_steps:
            batch = sharding.make_global_batch(trainer.model_inputs(next(trainer.train_iter)), trainer.mesh)
            trainer.state, metrics = trainer.train_step(trainer.state, batch)  # async dispatch
            step += 1
            acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
            acc_n += 1
            if pending is not None:  # the previous log point's values are ready by now
                flush(pending)
                pending = None
            if step % log_every == 0 or step == run_steps:
                pending, acc, acc_n = (step, acc, acc_n, metrics), None, 0
            bar.update(1)

            evaluate_now = is_eval_step(step, eval_period) or step == run_steps
            if evaluate_now:
                if pending is not None:
                    flush(pending)
                    pending = None
                last_eval = trainer.run_evaluation()
                if last_eval:
                    logger.log(step, last_eval)
                    if _primary():
                        bar.write(_eval_summary(step, last_eval))
                    trainer.checkpointer.save_best(step, trainer.state, config.to_dict(), last_eval)
                t_window = time.perf_counter()  # nothing in flight: the next window excludes the evaluation
            if evaluate_now or (ckpt_every and step % ckpt_every == 0) or step == run_steps:
                trainer.save()
            if _any_process(stop.requested):
                if pending is not None:
                    flush(pending)
                trainer.save(force=True)
                trainer.checkpointer.wait()
                _print(f"Stopped by {stop.signal_name} at step {step}; checkpoint saved. "
                       "Run the same command to resume.")
                return last_eval
        if pending is not None:
            flush(pending)
    _print(f"Finished {run_steps} steps.")
    return last_eval
