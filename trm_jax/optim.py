"""Optimisation for TRM (docs/architecture.md#optimisers), built on optax.

* :func:`adam_atan2` — AdamAtan2 (``adam_atan2_pytorch.AdamAtan2`` semantics) for the dense weights.
* :func:`sparse_sign_sgd` — sign-SGD on the rows of the puzzle-embedding table seen in the batch
  (the reference ``CastedSparseEmbeddingSignSGD_Distributed``).
* :func:`build_optimizer` — both of the above routed by parameter path, the reference's
  warm-up + cosine lr, optional global-norm clipping, and a NaN/Inf guard around everything.
* EMA of the parameters (:func:`ema_init`, :func:`ema_update`, :func:`eval_params`) and
  per-module gradient norms (:func:`grad_stats`).

Use inside a jitted train step::

    tx = build_optimizer(config, total_steps)          # once, outside jit
    opt_state = tx.init(params)
    ema = ema_init(params) if config.ema else None

    @jax.jit
    def train_step(params, opt_state, ema, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params,
                                       puzzle_identifiers=batch["puzzle_identifiers"])
        params = optax.apply_updates(params, updates)
        ema = ema_update(ema, params, config.ema_rate)
        metrics = {**grad_stats(grads), **current_learning_rates(opt_state, config, total_steps)}
        return params, opt_state, ema, metrics

The guard turns a non-finite gradient into a zero update and leaves every optimizer state
untouched; the host reads :func:`guard_counters` to log skipped steps and to stop the run.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trm_jax.schedules import (
    compute_total_steps,
    reference_lr_schedule,
    warmup_cosine_lr_schedule,
)

__all__ = [
    "ADAM_LABEL",
    "PUZZLE_EMB_KEY",
    "SIGN_SGD_LABEL",
    "ScaleByAtan2State",
    "SparseSignSGDState",
    "adam_atan2",
    "applied_steps",
    "build_optimizer",
    "compute_total_steps",
    "current_learning_rates",
    "ema_init",
    "ema_update",
    "eval_params",
    "grad_stats",
    "guard_counters",
    "is_puzzle_emb_path",
    "param_labels",
    "reference_lr_schedule",
    "scale_by_atan2",
    "sparse_sign_sgd",
    "too_many_consecutive_failures",
    "warmup_cosine_lr_schedule",
]

PUZZLE_EMB_KEY = "puzzle_emb"
ADAM_LABEL = "adam_atan2"
SIGN_SGD_LABEL = "puzzle_emb_sign_sgd"

# optax.apply_if_finite *applies* the update once the consecutive-error count exceeds this
# bound; its counter saturates at int32 max, so with this bound that never happens.
_NEVER_APPLY_NONFINITE = int(np.iinfo(np.int32).max)

ScalarOrSchedule = Union[float, optax.Schedule]
PyTree = Any


# --------------------------------------------------------------------------- #
# AdamAtan2
# --------------------------------------------------------------------------- #
class ScaleByAtan2State(NamedTuple):
    """Adam moments and the number of updates applied (for bias correction)."""

    count: jax.Array  # int32 scalar
    mu: optax.Updates
    nu: optax.Updates


def _bias_correction(log_beta: float, count: jax.Array) -> jax.Array:
    """``1 - beta**count`` as ``-expm1(count * log(beta))``.

    float32 ``beta**t`` carries the rounding of ``float32(beta)``, which ``1 - beta**t``
    amplifies by ``1 / (1 - beta)`` (~1e-5 relative at beta2=0.999, t=1); the torch
    reference computes it in float64. ``log(beta)`` is taken in float64 and the expm1
    form is well conditioned, so this stays within ~1e-7 of the float64 value.
    """
    return -jnp.expm1(count.astype(jnp.float32) * jnp.float32(log_beta))


def scale_by_atan2(
    b1: float = 0.9, b2: float = 0.95, a: float = 1.27, b: float = 1.0
) -> optax.GradientTransformation:
    """Rescale updates to ``a * atan2(m_hat, b * sqrt(v_hat))`` (Adam moments, bias-corrected, no eps).

    Args:
      b1: Decay of the first moment.
      b2: Decay of the second moment.
      a: Output scale (the reference default 1.27 matches Adam's typical step size).
      b: Scale of the denominator.

    Returns:
      An optax transformation; the result still has to be multiplied by ``-lr``.
    """
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got {(b1, b2)}")
    log_b1, log_b2 = math.log(b1) if b1 > 0 else -math.inf, math.log(b2) if b2 > 0 else -math.inf

    def init_fn(params: optax.Params) -> ScaleByAtan2State:
        return ScaleByAtan2State(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        # torch's ``lerp_(x, 1 - beta)`` form: same math as optax.tree.update_moment, same
        # rounding as the reference.
        mu = jax.tree.map(lambda g, m: m + (1.0 - b1) * (g - m), updates, state.mu)
        nu = jax.tree.map(lambda g, v: v + (1.0 - b2) * (g * g - v), updates, state.nu)
        m_scale = 1.0 / _bias_correction(log_b1, count)
        v_scale = (b * b) / _bias_correction(log_b2, count)

        def direction(g, m, v):
            return (a * jnp.arctan2(m * m_scale, jnp.sqrt(v * v_scale))).astype(g.dtype)

        new_updates = jax.tree.map(direction, updates, mu, nu)
        return new_updates, ScaleByAtan2State(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_atan2(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.95,
    weight_decay: float = 0.0,
    a: float = 1.27,
    b: float = 1.0,
) -> optax.GradientTransformation:
    """AdamAtan2 as ``adam_atan2_pytorch.AdamAtan2`` (``decoupled_wd=False``) computes it.

    ``p <- p * (1 - lr * wd) - lr * a * atan2(m_hat, b * sqrt(v_hat))``, expressed as the
    optax chain ``scale_by_atan2 -> add_decayed_weights(wd) -> scale_by_learning_rate(lr)``
    (i.e. ``-lr * (a * atan2(...) + wd * p)``; equal to the torch update up to float32
    rounding).

    Args:
      learning_rate: A float or an optax schedule of the 0-based update count.
      b1: First-moment decay.
      b2: Second-moment decay.
      weight_decay: Decay coefficient, multiplied by the current lr (torch semantics).
      a: Update scale.
      b: Denominator scale.

    Returns:
      An optax ``GradientTransformation``; ``update`` needs ``params`` when ``weight_decay > 0``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    parts = [scale_by_atan2(b1=b1, b2=b2, a=a, b=b)]
    if weight_decay > 0:  # torch skips the multiply entirely at wd == 0
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


# --------------------------------------------------------------------------- #
# Sign-SGD on the rows of the puzzle-embedding table present in the batch
# --------------------------------------------------------------------------- #
class SparseSignSGDState(NamedTuple):
    """Number of updates applied (drives the lr schedule)."""

    count: jax.Array  # int32 scalar


def _sparse_sign_sgd_leaf(
    grad: jax.Array, param: jax.Array, ids: jax.Array, lr: jax.Array, weight_decay: float
) -> jax.Array:
    """Update for one ``[num_ids, ...]`` table: decay + sign step on present rows only."""
    present = jnp.zeros(param.shape[0], jnp.bool_).at[ids].set(True)
    present = present.reshape((-1,) + (1,) * (param.ndim - 1))
    # Reference order: p.mul_(1 - lr*wd).add_(sign(g), alpha=-lr). Returning new - p is
    # exact whenever the step is small relative to p (Sterbenz), so p + update == new.
    new = param * (1.0 - lr * weight_decay) + (-lr) * jnp.sign(grad).astype(param.dtype)
    # -0.0 is the exact additive identity (p + -0.0 == p bit for bit, -0.0 included).
    return jnp.where(present, (new - param).astype(param.dtype), jnp.asarray(-0.0, param.dtype))


def sparse_sign_sgd(
    learning_rate: ScalarOrSchedule, weight_decay: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """Sign-SGD with decoupled weight decay on the rows of an embedding table seen in the batch.

    For every row ``r`` in ``puzzle_identifiers``: ``p[r] <- p[r] * (1 - lr*wd) - lr * sign(g[r])``,
    where ``g[r]`` is the row's full gradient (for a gather-based embedding, the sum over the
    batch's occurrences of ``r`` — what the reference's scatter_add builds). Present rows
    decay even when their gradient is exactly zero; all other rows are left bit-identical.

    Args:
      learning_rate: A float or an optax schedule of the 0-based update count.
      weight_decay: Decay coefficient, multiplied by the current lr.

    Returns:
      A transformation whose ``update(updates, state, params, *, puzzle_identifiers)``
      takes the global batch's int identifiers ``[B]`` (or ``[B, 1]``). Every leaf it
      receives must be a table indexed by identifier on its first axis.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    def init_fn(params: optax.Params) -> SparseSignSGDState:
        del params
        return SparseSignSGDState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, puzzle_identifiers=None, **extra_args):
        del extra_args
        new_state = SparseSignSGDState(count=optax.safe_increment(state.count))
        if not jax.tree.leaves(updates):  # e.g. a model without puzzle embeddings
            return updates, new_state
        if params is None:
            raise ValueError("sparse_sign_sgd needs params (weight decay acts on the rows)")
        if puzzle_identifiers is None:
            raise ValueError("sparse_sign_sgd needs puzzle_identifiers=<int [B] batch ids>")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        ids = jnp.asarray(puzzle_identifiers).reshape(-1).astype(jnp.int32)
        new_updates = jax.tree.map(
            lambda g, p: _sparse_sign_sgd_leaf(g, p, ids, lr, weight_decay), updates, params
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- #
# Routing, full optimizer, guard
# --------------------------------------------------------------------------- #
def _path_str(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def is_puzzle_emb_path(path: tuple) -> bool:
    """Whether a pytree key path lies under a puzzle-embedding module (a key containing ``puzzle_emb``)."""
    return any(PUZZLE_EMB_KEY in _path_str((key,)) for key in path)


def param_labels(params: PyTree) -> PyTree:
    """Label tree for ``optax.multi_transform``: sign-SGD for puzzle-embedding leaves, AdamAtan2 otherwise."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: SIGN_SGD_LABEL if is_puzzle_emb_path(path) else ADAM_LABEL, params
    )


def _cfg(config: Any, name: str, default: Any) -> Any:
    """Read an optional config field (ConfigDict raises AttributeError for missing keys)."""
    value = getattr(config, name, default)
    return default if value is None else value


def build_optimizer(config: Any, total_steps: int) -> optax.GradientTransformationExtraArgs:
    """The full TRM optimizer: routing, lr schedules, clipping, NaN/Inf guard.

    ``puzzle_emb`` leaves -> :func:`sparse_sign_sgd` (``puzzle_emb_lr``, ``puzzle_emb_weight_decay``);
    everything else -> optional ``clip_by_global_norm(grad_clip_norm)`` (over those leaves
    only) then :func:`adam_atan2` (``lr``, ``beta1``, ``beta2``, ``weight_decay``). Both lrs
    follow the reference warm-up + cosine (``lr_warmup_steps``, ``lr_min_ratio``, ``total_steps``).
    The result is wrapped in ``optax.apply_if_finite`` that never gives in: a gradient with a
    NaN/Inf anywhere yields a zero update and unchanged moments/counts.

    Args:
      config: ``ml_collections.ConfigDict`` (or any attribute container) with the reference names.
      total_steps: Total optimizer steps (:func:`compute_total_steps`).

    Returns:
      A transformation; call ``update(grads, state, params, puzzle_identifiers=ids)``.
    """
    shape = dict(warmup_steps=config.lr_warmup_steps, total_steps=total_steps, min_ratio=config.lr_min_ratio)
    dense = adam_atan2(
        warmup_cosine_lr_schedule(config.lr, **shape),
        b1=config.beta1,
        b2=config.beta2,
        weight_decay=config.weight_decay,
    )
    clip = float(_cfg(config, "grad_clip_norm", 0.0))
    if clip > 0:
        dense = optax.chain(optax.clip_by_global_norm(clip), dense)
    sparse = sparse_sign_sgd(
        warmup_cosine_lr_schedule(config.puzzle_emb_lr, **shape),
        weight_decay=config.puzzle_emb_weight_decay,
    )
    routed = optax.multi_transform({ADAM_LABEL: dense, SIGN_SGD_LABEL: sparse}, param_labels)
    return optax.apply_if_finite(routed, max_consecutive_errors=_NEVER_APPLY_NONFINITE)


def guard_counters(opt_state: PyTree) -> dict[str, jax.Array]:
    """The NaN/Inf guard's counters from a :func:`build_optimizer` state.

    Returns:
      ``notfinite_count`` (consecutive rejected updates, 0 after a good one),
      ``total_notfinite`` (rejected updates so far; log as ``train/skipped_steps``) and
      ``last_finite`` (whether the latest update was applied).
    """
    return {name: optax.tree.get(opt_state, name)
            for name in ("notfinite_count", "total_notfinite", "last_finite")}


def too_many_consecutive_failures(opt_state: PyTree, max_consecutive: int) -> bool:
    """Host-side check: have the last ``max_consecutive`` updates all been rejected? (Blocks on the device.)"""
    return int(optax.tree.get(opt_state, "notfinite_count")) >= max_consecutive


def applied_steps(opt_state: PyTree) -> jax.Array:
    """Number of updates actually applied (rejected ones excluded); the optimizer's global step.

    This is the ``count`` the lr schedules see, and equals the reference's 1-based step of
    the most recent update.
    """
    for cls in (ScaleByAtan2State, SparseSignSGDState):
        found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
                 if isinstance(s, cls)]
        if found:
            return found[0].count
    raise ValueError("no AdamAtan2 / sign-SGD state found in this optimizer state")


def current_learning_rates(
    state_or_step: Union[PyTree, int, jax.Array], config: Any, total_steps: int
) -> dict[str, jax.Array]:
    """Learning rates to log, in the reference's 1-based step convention.

    Args:
      state_or_step: A :func:`build_optimizer` state — gives the lr of the most recent
        applied update (``train/lr`` as the reference logs it after ``step += 1``) — or an
        integer reference step (``1`` = the first update).
      config: The training config (``lr``, ``puzzle_emb_lr``, ``lr_warmup_steps``, ``lr_min_ratio``).
      total_steps: Total optimizer steps.

    Returns:
      ``{"train/lr": ..., "train/puzzle_emb_lr": ...}`` as float32 scalars (jit-friendly).
    """
    is_step = isinstance(state_or_step, (int, np.integer)) or (
        isinstance(state_or_step, (jax.Array, np.ndarray))
        and jnp.ndim(state_or_step) == 0
        and jnp.issubdtype(state_or_step.dtype, jnp.integer)
    )
    step = state_or_step if is_step else applied_steps(state_or_step)
    shape = dict(warmup_steps=config.lr_warmup_steps, total_steps=total_steps, min_ratio=config.lr_min_ratio)
    return {
        "train/lr": jnp.asarray(reference_lr_schedule(config.lr, **shape)(step), jnp.float32),
        "train/puzzle_emb_lr": jnp.asarray(
            reference_lr_schedule(config.puzzle_emb_lr, **shape)(step), jnp.float32
        ),
    }


# --------------------------------------------------------------------------- #
# EMA
# --------------------------------------------------------------------------- #
def _drop_puzzle_emb(tree: PyTree) -> PyTree:
    """``tree`` without the puzzle-embedding subtrees (nested mappings, as flax params are)."""
    if isinstance(tree, Mapping):
        return {k: _drop_puzzle_emb(v) for k, v in tree.items() if PUZZLE_EMB_KEY not in str(k)}
    return tree


def ema_init(params: PyTree) -> PyTree:
    """EMA of every parameter except the puzzle-embedding table, initialised to the parameters.

    The reference keeps the table as a buffer, which its EMA helper does not average; leaving
    it out here also avoids a second copy of a table that can be 1M x 512.
    """
    return jax.tree.map(jnp.array, _drop_puzzle_emb(params))  # jnp.array copies (donation-safe)


def ema_update(ema_params: PyTree, params: PyTree, rate: Union[float, jax.Array]) -> PyTree:
    """``ema <- rate * ema + (1 - rate) * param`` over the EMA tree (``optax.incremental_update``)."""
    return optax.incremental_update(_drop_puzzle_emb(params), ema_params, step_size=1.0 - rate)


def eval_params(ema_params: PyTree, params: PyTree) -> PyTree:
    """Parameters for evaluation: the EMA of every averaged leaf and the *current* puzzle table."""
    if isinstance(params, Mapping):
        return {
            k: v if PUZZLE_EMB_KEY in str(k) else eval_params(ema_params[k], v)
            for k, v in params.items()
        }
    return ema_params


# --------------------------------------------------------------------------- #
# Gradient statistics
# --------------------------------------------------------------------------- #
def grad_stats(grads: PyTree, depth: int = 2, prefix: str = "grad") -> dict[str, jax.Array]:
    """Global gradient norm and one norm per module path (the first ``depth`` keys).

    With flax params ``{'inner': {'L_level': ..., 'lm_head': ...}}`` the default ``depth=2``
    gives ``grad/inner/L_level``, ``grad/inner/lm_head``, ... Squares are summed in float32,
    one reduction per leaf; the global norm reuses the per-module sums.

    Args:
      grads: Gradient pytree.
      depth: Number of leading path keys naming a module.
      prefix: Key prefix of the per-module entries.

    Returns:
      ``{"grad_norm": ..., f"{prefix}/<path>": ...}`` float32 scalars (NaN if any gradient is).
    """
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = _path_str(path[:depth]) or "root"
        groups.setdefault(f"{prefix}/{name}", []).append(jnp.asarray(leaf, jnp.float32))
    sq = {name: optax.tree.norm(leaves, squared=True) for name, leaves in groups.items()}
    stats = {"grad_norm": jnp.sqrt(sum(sq.values(), jnp.zeros([], jnp.float32)))}
    stats.update({name: jnp.sqrt(value) for name, value in sq.items()})
    # Per-tensor statistics under the PyTorch system's names (its gradient monitor's dashboards).
    leaves = [leaf for group in groups.values() for leaf in group]
    norms = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(leaf))) for leaf in leaves])
    stats[f"{prefix}/mean_norm"] = jnp.mean(norms)
    stats[f"{prefix}/max_norm"] = jnp.max(norms)
    stats[f"{prefix}/num_zero"] = sum(jnp.all(leaf == 0).astype(jnp.float32) for leaf in leaves)
    stats[f"{prefix}/num_nan"] = sum(jnp.any(jnp.isnan(leaf)).astype(jnp.float32) for leaf in leaves)
    return stats
