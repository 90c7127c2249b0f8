"""Schedules driven by the global optimizer step (docs/architecture.md#schedules).

Two families live here:

* the learning-rate schedule of the reference ``pretrain.py`` (linear warm-up,
  then cosine to ``lr_min_ratio * lr`` at ``total_steps``), in the reference's
  1-based step convention and shifted to optax's 0-based ``count``;
* annealing of any scalar (DQN epsilon, Q temperature, penalties) from
  ``start`` to ``end`` between two *ratios* of ``total_steps``.

Everything is built on optax schedules and returns ``jnp`` scalars, so it can be
evaluated inside ``jit`` with a traced step.
"""
from __future__ import annotations

from typing import Callable, Literal, get_args

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "AnnealKind",
    "anneal",
    "compute_total_steps",
    "make_annealer",
    "reference_lr_schedule",
    "warmup_cosine_lr_schedule",
]

AnnealKind = Literal["constant", "linear", "cosine", "exponential"]
ANNEAL_KINDS: tuple[str, ...] = get_args(AnnealKind)


# --------------------------------------------------------------------------- #
# Learning rate
# --------------------------------------------------------------------------- #
def compute_total_steps(
    epochs: float, total_groups: int, mean_puzzle_examples: float, global_batch_size: int
) -> int:
    """Estimated number of optimizer steps, as ``init_train_state`` of the reference computes it.

    Args:
      epochs: Number of training epochs.
      total_groups: ``total_groups`` of the training-set metadata.
      mean_puzzle_examples: ``mean_puzzle_examples`` of the training-set metadata.
      global_batch_size: Examples per optimizer step, over all devices.

    Returns:
      ``int(epochs * total_groups * mean_puzzle_examples / global_batch_size)``.
    """
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return int(epochs * total_groups * mean_puzzle_examples / global_batch_size)


def reference_lr_schedule(
    base_lr: float, warmup_steps: float, total_steps: int, min_ratio: float
) -> optax.Schedule:
    """The reference ``cosine_schedule_with_warmup_lr_lambda`` as a function of its 1-based step.

    ``step < W``: ``base_lr * step / W``; afterwards cosine from ``base_lr`` to
    ``base_lr * min_ratio`` at ``total_steps`` (``optax.cosine_decay_schedule`` joined
    after the warm-up with ``optax.join_schedules``). The warm-up is written as
    ``base_lr * step / W`` rather than ``optax.linear_schedule(0, base_lr, W)``: the latter
    evaluates ``base_lr - base_lr * (1 - step / W)``, whose float32 cancellation costs
    ~1e-4 relative accuracy at step 1 of a 2000-step warm-up. The reference divides the
    cosine progress by ``max(1, total_steps - W)``; so does this. Past ``total_steps`` optax
    holds the floor where the reference's cosine would rise again, but the reference never
    trains past ``total_steps``.

    Args:
      base_lr: Peak learning rate.
      warmup_steps: Warm-up length; rounded like the reference's ``round(lr_warmup_steps)``.
      total_steps: Step at which the floor is reached.
      min_ratio: Floor as a fraction of ``base_lr``.

    Returns:
      An optax schedule mapping the reference step (``1`` for the first update) to the lr.
    """
    warmup = int(round(warmup_steps))
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def warmup_part(step: jax.typing.ArrayLike) -> jax.Array:
        return base_lr * (jnp.asarray(step, jnp.float32) / max(1, warmup))

    cosine_part = optax.cosine_decay_schedule(
        init_value=base_lr, decay_steps=max(1, int(total_steps) - warmup), alpha=min_ratio
    )
    return optax.join_schedules([warmup_part, cosine_part], [warmup])


def warmup_cosine_lr_schedule(
    base_lr: float, warmup_steps: float, total_steps: int, min_ratio: float
) -> optax.Schedule:
    """The reference lr schedule indexed by optax's 0-based update ``count``.

    The reference increments its step before computing the lr, so the update
    optax numbers ``count`` uses the reference value at step ``count + 1``
    (the very first update gets ``base_lr / W``, not 0).

    Args: as :func:`reference_lr_schedule`.

    Returns:
      An optax schedule ``count -> lr`` to hand to an optimizer.
    """
    ref = reference_lr_schedule(base_lr, warmup_steps, total_steps, min_ratio)
    return lambda count: ref(jnp.asarray(count) + 1)


# --------------------------------------------------------------------------- #
# Annealing of arbitrary scalars
# --------------------------------------------------------------------------- #
def _ratio_window(total_steps: int, start_ratio: float, end_ratio: float) -> tuple[float, float]:
    """(first step, number of steps) of the annealing window ``[start_ratio, end_ratio] * total_steps``."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if not 0.0 <= start_ratio <= end_ratio:
        raise ValueError(f"need 0 <= start_ratio <= end_ratio, got {start_ratio}, {end_ratio}")
    begin = float(start_ratio) * float(total_steps)
    return begin, float(end_ratio) * float(total_steps) - begin


def _cosine_annealer(start: float, end: float, begin: float, length: float) -> optax.Schedule:
    """Half-cosine from start to end: optax's cosine decay supplies the weight (1 -> 0)."""
    weight = optax.cosine_decay_schedule(init_value=1.0, decay_steps=length)
    return lambda step: end + (start - end) * weight(jnp.maximum(step - begin, 0.0))


def make_annealer(
    kind: AnnealKind,
    start: float,
    end: float,
    total_steps: int,
    start_ratio: float = 0.0,
    end_ratio: float = 1.0,
) -> Callable[[jax.typing.ArrayLike], jax.Array]:
    """Build ``step -> value`` annealing ``start`` to ``end`` over a ratio window of ``total_steps``.

    The value is ``start`` for ``step <= start_ratio * total_steps``, ``end`` for
    ``step >= end_ratio * total_steps`` and interpolated in between:

    * ``linear``: straight line (``optax.linear_schedule``);
    * ``cosine``: ``end + (start - end) * (1 + cos(pi * t)) / 2`` (``optax.cosine_decay_schedule``);
    * ``exponential``: geometric, ``start * (end / start) ** t`` (``optax.exponential_decay``;
      ``start`` and ``end`` must be non-zero with the same sign);
    * ``constant``: always ``start``.

    ``t`` is the fraction of the window elapsed. A zero-length window is a step
    from ``start`` to ``end`` at ``start_ratio * total_steps``.

    Args:
      kind: One of ``constant``, ``linear``, ``cosine``, ``exponential``.
      start: Value before the window.
      end: Value after the window.
      total_steps: Total optimizer steps of the run.
      start_ratio: Window start as a fraction of ``total_steps``.
      end_ratio: Window end as a fraction of ``total_steps``.

    Returns:
      A callable mapping the global optimizer step (int or traced array) to a
      float32 scalar.
    """
    if kind not in ANNEAL_KINDS:
        raise ValueError(f"unknown annealing kind {kind!r}; expected one of {ANNEAL_KINDS}")
    begin, length = _ratio_window(total_steps, start_ratio, end_ratio)
    start, end = float(start), float(end)

    if kind == "constant":
        inner: optax.Schedule = lambda step: jnp.full_like(jnp.asarray(step, jnp.float32), start)
    elif length <= 0.0:
        inner = lambda step: jnp.where(jnp.asarray(step) < begin, start, end)
    elif kind == "linear":
        inner = optax.linear_schedule(start, end, transition_steps=length, transition_begin=begin)
    elif kind == "cosine":
        inner = _cosine_annealer(start, end, begin, length)
    else:  # exponential
        if start == 0.0 or end == 0.0 or (start > 0.0) != (end > 0.0):
            raise ValueError(f"exponential annealing needs non-zero start/end of one sign, got {start}, {end}")
        inner = optax.exponential_decay(
            init_value=start,
            transition_steps=length,
            decay_rate=end / start,
            transition_begin=begin,
            end_value=end,  # clamps at the window's end
        )

    def annealer(step: jax.typing.ArrayLike) -> jax.Array:
        return jnp.asarray(inner(jnp.asarray(step, jnp.float32)), jnp.float32)

    return annealer


def anneal(
    kind: AnnealKind,
    start: float,
    end: float,
    step: jax.typing.ArrayLike,
    total_steps: int,
    start_ratio: float = 0.0,
    end_ratio: float = 1.0,
) -> jax.Array:
    """Value of the annealed scalar at ``step``; see :func:`make_annealer` for the arguments.

    Example: ``anneal("linear", start=1.0, end=0.05, step=step, total_steps=T, end_ratio=0.1)``
    decays an epsilon over the first 10% of training.
    """
    return make_annealer(kind, start, end, total_steps, start_ratio, end_ratio)(step)
