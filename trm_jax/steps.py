"""The compiled computations: one training step and one full evaluation of a batch, for every family.

There is one train step (:func:`make_train_step`): it owns the RNG fold-in, the ACT forward, the
row-sparse puzzle-table gradient, the guarded optimizer update, the skip counting, the EMA and the
state replacement. What a model family adds goes through its :class:`Objective`: the loss, the
inputs the model takes each step, and the non-differentiated state it keeps in ``TrainState.aux``
(HESC: trm_jax/hesc/objective.py). The TRM's objective is this module's :class:`Objective`, the
reference's ACT loss with no extra state. Both steps are pure functions of explicit state, jitted by
the caller with the shardings of :mod:`trm_jax.sharding`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from trm_jax import optim, puzzle_rows
from trm_jax.losses import act_loss
from trm_jax.models import vision
from trm_jax.models.act import row_where
from trm_jax.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]

# Metrics that are sums over rows (normalised on the host: losses by the batch, the rest by count).
SUM_METRICS = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps",
               "lm_loss", "q_halt_loss", "q_continue_loss",
               "token_nll", "tokens", "bytes")  # (a language model's: trm_jax/lm/objective.py)


class Objective:
    """What a model family adds to the train step and the evaluation; these defaults are the TRM's.

    A family subclasses this (big_vision-style: override only what differs). Every method is a
    pure function of its arguments and runs inside the compiled step.
    """

    def rngs(self, key: jax.Array) -> Dict[str, jax.Array]:
        """The model's RNG streams for one train step from the step's key."""
        return {"exploration": key}

    def init_inputs(self, cfg: Any) -> Dict[str, Any]:
        """Keyword inputs of ``model.init`` (HESC: an empty memory bank)."""
        return {}

    def init_aux(self, cfg: Any, params: Any, buffers: Any, key: jax.Array) -> Any:
        """The family's non-differentiated state for a fresh run (``TrainState.aux``); the TRM has none."""
        return {}

    def step_inputs(self, cfg: Any, state: TrainState, total_steps: int) -> Dict[str, Any]:
        """Keyword inputs of ``model.apply`` for one train step (HESC: schedules, memory bank)."""
        return {}

    def step_metrics(self, cfg: Any, carry: Any, outputs: Mapping[str, Any]) -> Tuple[jax.Array, Metrics]:
        """``(loss summed over rows, metric sums)`` of one ACT step's outputs: the reference's ACT
        loss head (training, and every evaluated batch)."""
        return act_loss(carry, outputs, cfg.loss_type)

    def loss(self, cfg: Any, state: TrainState, params: Any, new_carry: Any, outputs: Mapping[str, Any],
             inputs: Mapping[str, Any], total_steps: int) -> Tuple[jax.Array, Metrics, Any]:
        """``(loss summed over rows, metric sums, extra)``; ``extra`` reaches :meth:`update`."""
        loss, metrics = self.step_metrics(cfg, new_carry, outputs)
        return loss, metrics, None

    def update(self, cfg: Any, state: TrainState, params: Any, carry: Any, outputs: Mapping[str, Any],
               extra: Any, key: jax.Array, total_steps: int) -> Tuple[Any, Any, Any, Any, Metrics]:
        """After the optimizer step (``params`` new, ``state`` the step's input): ``(params, buffers,
        aux, carry, metrics)`` (the TRM: unchanged)."""
        return params, state.buffers, state.aux, carry, {}

    def eval_inputs(self, cfg: Any, aux: Any) -> Dict[str, Any]:
        """Keyword inputs of ``model.apply`` in evaluation (HESC: the memory bank, read-only)."""
        return {}

    def eval_metrics(self, cfg: Any, halted_B: jax.Array, last: Mapping[str, Any],
                     per_step: Mapping[str, Any]) -> Metrics:
        """Extra metric sums of an evaluated batch from the halting outputs and the per-step ones."""
        return {}


def optimizer_step(tx: optax.GradientTransformationExtraArgs, state: TrainState, grads: Any, carry: Any,
                   config: Any, total_steps: int) -> Tuple[Any, Any, jax.Array, Metrics]:
    """One optimizer update behind the non-finite guard: ``(params, opt_state, finite, metrics)``.

    ``finite`` is False when the guard refused the update (parameters unchanged); the metrics are
    the gradient statistics, the learning rates and the skipped-step counters.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   puzzle_identifiers=carry.current_data["puzzle_identifiers"])
    params = optax.apply_updates(state.params, updates)
    guard = optim.guard_counters(opt_state)
    metrics = dict(optim.grad_stats(grads))
    clip = float(config.get("grad_clip_norm", 0.0) or 0.0)
    # 1 on a step whose gradient norm exceeds the clip threshold: averaged over a log window, the
    # fraction of steps clipped (the PyTorch system's train/grad_clip_ratio).
    metrics["grad_clip_ratio"] = (metrics["grad_norm"] > clip).astype(jnp.float32) if clip > 0 else jnp.zeros(())
    metrics.update({k.split("/", 1)[1]: v for k, v in optim.current_learning_rates(opt_state, config, total_steps).items()})
    metrics["skipped_steps"] = guard["total_notfinite"].astype(jnp.float32)
    metrics["consecutive_skipped"] = guard["notfinite_count"].astype(jnp.float32)
    return params, opt_state, guard["last_finite"], metrics


def make_train_step(model: Any, tx: optax.GradientTransformationExtraArgs, config: Any,
                    total_steps: int) -> Callable[[TrainState, Batch], Tuple[TrainState, Metrics]]:
    """``train_step(state, batch) -> (state, metrics)``: one ACT step and one optimizer step.

    As in the reference, the loss is summed over rows and scaled by ``1 / global_batch_size``;
    every carried row advances one supervision step and halted rows take the batch's new examples.
    A non-finite gradient is refused by the optimizer's guard (parameters unchanged) and every carry
    row is marked halted, so no NaN state survives into the next step. The model's family
    (``model.config``) supplies the :class:`Objective`.
    """
    from trm_jax.families import objective_of

    cfg = model.config
    objective: Objective = objective_of(cfg)
    use_ema = bool(config.ema)

    def loss_fn(params, row_offsets, state: TrainState, batch: Batch, key, inputs):
        variables = {"params": params, "buffers": state.buffers, puzzle_rows.COLLECTION: row_offsets}
        new_carry, outputs = model.apply(variables, state.carry, batch, train=True, rngs=objective.rngs(key), **inputs)
        loss, metrics, extra = objective.loss(cfg, state, params, new_carry, outputs, inputs, total_steps)
        return loss / config.global_batch_size, (new_carry, outputs, metrics, extra)

    def train_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)
        inputs = objective.step_inputs(cfg, state, total_steps)
        # Row-sparse puzzle-table gradient: no [num_ids, D] all-reduce (trm_jax/puzzle_rows.py).
        grad_fn = puzzle_rows.value_and_grad(loss_fn, lambda aux: aux[0].current_data["puzzle_identifiers"],
                                             state.carry.halted.shape[0])
        (_, (carry, outputs, metrics, extra)), grads = grad_fn(state.params, state, batch, key, inputs)
        params, opt_state, finite, opt_metrics = optimizer_step(tx, state, grads, carry, config, total_steps)
        params, buffers, aux, carry, aux_metrics = objective.update(
            cfg, state, params, carry, jax.lax.stop_gradient(outputs), extra, key, total_steps)
        carry = carry.replace(halted=carry.halted | ~finite)
        ema = optim.ema_update(state.ema_params, params, config.ema_rate) if use_ema else state.ema_params
        new_state = state.replace(step=state.step + 1, params=params, buffers=buffers, opt_state=opt_state,
                                  ema_params=ema, carry=carry, aux=aux)
        return new_state, {**metrics, **aux_metrics, **opt_metrics}

    return train_step


def make_eval_batch(model: Any, adaptive: bool = False, with_trace: bool = False) -> Callable[..., Tuple]:
    """``eval_batch(params, buffers, aux, batch) -> (metric sums, preds [B, L], q_halt_logits [B])``.

    Every row starts fresh. By default each runs exactly ``halt_max_steps`` supervision steps (the
    reference's evaluation) and the metrics are those of the last step. ``adaptive``: a row stops at
    the first step its policy halts (the TRM's halting head, HESC's HALT action), its prediction is
    that step's, and the batch stops once every row has halted; ``steps`` then counts the steps each
    row used. ``with_trace``: a fourth result, the per-step record ``{"active", "q_halt_logits"[,
    "actions", "expanded"]}``, each ``[halt_max_steps, B]`` (``active``: the row had not halted yet).
    """
    from trm_jax.families import objective_of

    cfg = model.config
    objective: Objective = objective_of(cfg)

    def eval_batch(params, buffers, aux, batch: Batch):
        variables = {"params": params, "buffers": buffers}
        inputs = objective.eval_inputs(cfg, aux)
        apply = lambda carry: model.apply(variables, carry, batch, train=False, adaptive=adaptive, **inputs)  # noqa: E731
        carry = model.initial_carry(batch)

        def fixed_steps(batch):
            """Exactly ``halt_max_steps`` supervision steps of every row from a fresh carry."""
            apply = lambda carry: model.apply(variables, carry, batch, train=False, **inputs)  # noqa: E731

            def one_step(carry, _):
                carry, out = apply(carry)
                return carry, _per_step(out, jnp.ones_like(carry.halted))

            carry, per_step = jax.lax.scan(one_step, model.initial_carry(batch), None, length=cfg.halt_max_steps - 1)
            final_carry, out = apply(carry)
            per_step = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), per_step,
                                    _per_step(out, jnp.ones_like(final_carry.halted)))
            return final_carry, out, per_step

        if not adaptive:
            final_carry, out, per_step = fixed_steps(batch)
        else:
            carry, out = apply(carry)  # step 1: every row starts; the loop's state has the outputs' structure
            first = _per_step(out, jnp.ones_like(carry.halted))
            per_step = jax.tree.map(lambda s: jnp.zeros((cfg.halt_max_steps,) + s.shape, s.dtype).at[0].set(s), first)

            def cond(c):
                return (c[0] < cfg.halt_max_steps) & ~jnp.all(c[2])

            def body(c):
                i, carry, done, final_carry, final_out, per_step = c
                # Rows that halted keep running (their results are kept from their halting step); the
                # batch stops when every row has halted.
                carry, out = apply(carry.replace(halted=jnp.zeros_like(carry.halted)))
                now = ~done & carry.halted
                final_carry = jax.tree.map(lambda n, o: row_where(now, n, o), carry, final_carry)
                final_out = jax.tree.map(lambda n, o: row_where(now, n, o), _final_outputs(out), final_out)
                per_step = jax.tree.map(lambda acc, x: acc.at[i].set(x), per_step, _per_step(out, ~done))
                return i + 1, carry, done | carry.halted, final_carry, final_out, per_step

            _, _, _, final_carry, out, per_step = jax.lax.while_loop(
                cond, body, (jnp.ones((), jnp.int32), carry, carry.halted, carry, _final_outputs(out), per_step))
            final_carry = final_carry.replace(halted=jnp.ones_like(final_carry.halted))
        _, metrics = objective.step_metrics(cfg, final_carry, out)
        metrics.update(objective.eval_metrics(cfg, final_carry.halted, out, per_step))
        preds = jnp.argmax(out["logits"], axis=-1).astype(jnp.int32)
        if getattr(cfg, "prefix_lm", False):
            # Rows read left to right are also generated greedily, each token from the model's own
            # earlier ones (the teacher-forced metrics above see the true earlier tokens).
            gen = vision.greedy_read(lambda tokens: fixed_steps({**batch, "inputs": tokens})[1]["logits"],
                                     batch["inputs"], vision.read_length(batch["labels"], batch["causal"]))
            metrics.update(vision.reading_metrics(gen, batch["labels"], batch["causal"]))
            preds = jnp.where(batch["causal"].astype(bool)[:, None], gen, preds)
        if with_trace:
            return metrics, preds, out["q_halt_logits"], per_step
        return metrics, preds, out["q_halt_logits"]

    return eval_batch


def _per_step(out: Mapping[str, Any], active_B: jax.Array) -> Dict[str, jax.Array]:
    """What evaluation keeps of every step: which rows were still running, the halting logit, the
    action and whether a capsule was expanded."""
    kept = {"active": active_B, "q_halt_logits": out["q_halt_logits"]}
    if "actions" in out:
        kept["actions"] = out["actions"]
    if "expanded_index" in out:
        kept["expanded"] = out["expanded_index"] >= 0
    return kept


def _final_outputs(out: Mapping[str, Any]) -> Dict[str, jax.Array]:
    """The per-row outputs an evaluation reads at each row's halting step."""
    return {k: out[k] for k in ("logits", "q_halt_logits", "q_continue_logits", "num_expansions", "label_counts")
            if k in out}
