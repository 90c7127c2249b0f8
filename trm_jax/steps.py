"""The compiled computations: one training step and one full evaluation of a batch.

Both are pure functions of explicit state, jitted by the caller with the
shardings of :mod:`trm_jax.sharding`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from trm_jax import optim, puzzle_rows
from trm_jax.losses import act_loss
from trm_jax.models import TRM, TRMConfig, initial_carry
from trm_jax.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]

# Metrics that are sums over rows (normalised on the host: losses by the batch, the rest by count).
SUM_METRICS = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps",
               "lm_loss", "q_halt_loss", "q_continue_loss")


def optimizer_step(tx: optax.GradientTransformationExtraArgs, state: TrainState, grads: Any, carry: Any,
                   config: Any, total_steps: int) -> Tuple[Any, Any, jax.Array, Metrics]:
    """One optimizer update behind the non-finite guard: ``(params, opt_state, finite, metrics)``.

    ``finite`` is False when the guard refused the update (parameters unchanged); the metrics are
    the gradient statistics, the learning rates and the skipped-step counters. Shared by the TRM
    and HESC train steps.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   puzzle_identifiers=carry.current_data["puzzle_identifiers"])
    params = optax.apply_updates(state.params, updates)
    guard = optim.guard_counters(opt_state)
    metrics = dict(optim.grad_stats(grads))
    metrics.update({k.split("/", 1)[1]: v for k, v in optim.current_learning_rates(opt_state, config, total_steps).items()})
    metrics["skipped_steps"] = guard["total_notfinite"].astype(jnp.float32)
    metrics["consecutive_skipped"] = guard["notfinite_count"].astype(jnp.float32)
    return params, opt_state, guard["last_finite"], metrics


def make_train_step(model: TRM, tx: optax.GradientTransformationExtraArgs, config: Any,
                    total_steps: int) -> Callable[[TrainState, Batch], Tuple[TrainState, Metrics]]:
    """``train_step(state, batch) -> (state, metrics)``: one ACT step and one optimizer step.

    As in the reference, the loss is summed over rows and scaled by
    ``1 / global_batch_size``; every carried row advances one supervision step
    and halted rows take the batch's new examples. A non-finite gradient is
    refused by the optimizer's guard (parameters unchanged) and every carry row
    is marked halted, so no NaN state survives into the next step.
    """
    cfg = model.config
    use_ema = bool(config.ema)

    def loss_fn(params, row_offsets, state: TrainState, batch: Batch, key):
        variables = {"params": params, "buffers": state.buffers, puzzle_rows.COLLECTION: row_offsets}
        new_carry, outputs = model.apply(variables, state.carry, batch, train=True, rngs={"exploration": key})
        loss, metrics = act_loss(new_carry, outputs, cfg.loss_type)
        return loss / config.global_batch_size, (new_carry, metrics)

    def train_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)
        # Row-sparse puzzle-table gradient: no [num_ids, D] all-reduce (trm_jax/puzzle_rows.py).
        grad_fn = puzzle_rows.value_and_grad(loss_fn, lambda aux: aux[0].current_data["puzzle_identifiers"],
                                             state.carry.halted.shape[0])
        (_, (carry, metrics)), grads = grad_fn(state.params, state, batch, key)
        params, opt_state, finite, opt_metrics = optimizer_step(tx, state, grads, carry, config, total_steps)
        carry = carry.replace(halted=carry.halted | ~finite)
        ema = optim.ema_update(state.ema_params, params, config.ema_rate) if use_ema else state.ema_params
        metrics = {**metrics, **opt_metrics}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema, carry=carry)
        return new_state, metrics

    return train_step


def make_eval_batch(model: TRM) -> Callable[[Any, Any, Any, Batch], Tuple[Metrics, jax.Array, jax.Array]]:
    """``eval_batch(params, buffers, aux, batch) -> (metric sums, preds [B, L], q_halt_logits [B])``.

    Every row starts fresh and runs exactly ``halt_max_steps`` supervision steps
    (the reference's evaluation); metrics are those of the last step.
    """
    cfg: TRMConfig = model.config

    def eval_batch(params, buffers, aux, batch: Batch):
        del aux  # the TRM has no extra state
        variables = {"params": params, "buffers": buffers}
        carry = initial_carry(cfg, batch)

        def one_step(carry, _):
            carry, _ = model.apply(variables, carry, batch, train=False)
            return carry, None

        carry, _ = jax.lax.scan(one_step, carry, None, length=cfg.halt_max_steps - 1)
        carry, outputs = model.apply(variables, carry, batch, train=False)
        _, metrics = act_loss(carry, outputs, cfg.loss_type)
        preds = jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)
        return metrics, preds, outputs["q_halt_logits"]

    return eval_batch
