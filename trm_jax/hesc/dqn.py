"""DQN machinery for the HESC action head (docs/hesc.md, docs/architecture.md#hesc), as pure JAX functions.

* :func:`td_loss` — (double) DQN TD loss with target parameters and importance weights.
* :func:`update_target` — hard refresh every ``update_freq`` steps or Polyak averaging.
* :func:`select_actions`, :func:`action_entropy`, :func:`action_counts` — epsilon-greedy with
  Boltzmann exploration, policy entropy, action histograms.
* :func:`dqn_epsilon`, :func:`q_temperature`, :func:`dqn_loss_weight` — schedules of the global
  step (``trm_jax.schedules.anneal``).
* :class:`RewardConfig`, :func:`step_rewards` — the shaped per-step reward.
* :class:`RunningStats` — masked running mean/variance for reward normalisation.
* :class:`RND`, :class:`SimHashCounter` — curiosity bonuses (random-network distillation and
  SimHash counts).

Non-differentiated state (``RunningStats``, ``SimHashCounter``) is a ``flax.struct`` pytree so
it lives in the train state; the RND target network lives in the ``"buffers"`` collection.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from trm_jax.models.layers import casted_dense, lecun_trunc_normal_init
from trm_jax.schedules import AnnealKind, anneal

__all__ = [
    "RND",
    "RewardConfig",
    "RunningStats",
    "SimHashCounter",
    "action_counts",
    "action_entropy",
    "count_bonus",
    "dqn_epsilon",
    "dqn_loss_weight",
    "normalize",
    "q_temperature",
    "running_stats_init",
    "running_stats_update",
    "select_actions",
    "simhash_codes",
    "simhash_init",
    "step_rewards",
    "td_loss",
    "update_target",
]

PyTree = Any
QApply = Callable[[PyTree, PyTree], jax.Array]

# Temperatures below this are treated as this (argmax-like), avoiding a division by zero.
_MIN_TEMPERATURE = 1e-6


# --------------------------------------------------------------------------- #
# TD loss and target network
# --------------------------------------------------------------------------- #
def td_loss(q_apply: QApply, online_params: PyTree, target_params: PyTree, batch: Mapping[str, Any],
            is_weights: jax.Array, gamma: float, double_dqn: bool = True,
            huber_delta: float = 1.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Importance-weighted Huber TD loss of a Q-network on a batch of transitions.

    ``y = r + gamma * (1 - done) * Q_target(s')[a*]`` with ``a* = argmax_a Q_online(s')``
    (double DQN) or ``argmax_a Q_target(s')``; ``y`` is under ``stop_gradient`` and done rows
    never read ``Q(s')`` (even a non-finite one). ``td = Q_online(s)[a] - y``;
    ``loss = mean(is_weights * huber(td))``.

    Args:
      q_apply: ``q_apply(params, state_tree) -> Q [n, A]``.
      online_params: Parameters being trained (the only ones that get a gradient).
      target_params: Target-network parameters (same structure).
      batch: dict ``state`` (pytree ``[n, ...]``), ``action [n]`` int, ``reward [n]``,
        ``next_state`` (pytree ``[n, ...]``), ``done [n]`` bool.
      is_weights: ``[n]`` importance weights (0 for rows that must not count).
      gamma: Discount factor.
      double_dqn: Choose the bootstrap action with the online network.
      huber_delta: Huber threshold (quadratic below, linear above).

    Returns:
      ``(loss scalar, td_errors [n], metrics)`` with metrics ``dqn_loss``, ``dqn_td_error``
      (mean |td|), ``dqn_q_mean`` (mean Q(s, a)) and ``dqn_target_q_mean`` (mean y).
    """
    q_nA = q_apply(online_params, batch["state"]).astype(jnp.float32)
    action = jnp.asarray(batch["action"], jnp.int32)
    q_sa = jnp.take_along_axis(q_nA, action[:, None], axis=-1)[:, 0]

    q_next_target = q_apply(target_params, batch["next_state"]).astype(jnp.float32)
    if double_dqn:
        # Only the argmax is used; no gradient path through the bootstrap action.
        q_next_online = q_apply(jax.lax.stop_gradient(online_params), batch["next_state"])
        best = jnp.argmax(q_next_online, axis=-1)
    else:
        best = jnp.argmax(q_next_target, axis=-1)
    bootstrap = jnp.take_along_axis(q_next_target, best[:, None], axis=-1)[:, 0]
    done = jnp.asarray(batch["done"], bool)
    bootstrap = jnp.where(done, 0.0, bootstrap)  # a where, not (1 - done) *, so NaN/inf cannot leak
    target = jax.lax.stop_gradient(jnp.asarray(batch["reward"], jnp.float32) + gamma * bootstrap)

    td = q_sa - target
    weights = jnp.asarray(is_weights, jnp.float32)
    loss = jnp.mean(weights * optax.huber_loss(td, delta=huber_delta))
    metrics = {
        "dqn_loss": loss,
        "dqn_td_error": jnp.mean(jnp.abs(td)),
        "dqn_q_mean": jnp.mean(q_sa),
        "dqn_target_q_mean": jnp.mean(target),
    }
    return loss, td, jax.lax.stop_gradient(metrics)


def update_target(target_params: PyTree, online_params: PyTree, step: jax.Array, update_freq: int,
                  tau: float) -> PyTree:
    """Refresh the target network.

    ``tau > 0``: Polyak averaging every call, ``target <- (1 - tau) target + tau online``.
    ``tau == 0``: hard copy ``target <- online`` when ``step % update_freq == 0``, else unchanged.

    Args:
      target_params: Target parameters.
      online_params: Online parameters (same structure).
      step: Global step (int, may be traced); pass the same counter every call, e.g. the
        optimizer step after the update.
      update_freq: Hard-copy period in steps (static, > 0; unused when ``tau > 0``).
      tau: Polyak rate in ``[0, 1]`` (static).

    Returns:
      The new target parameters (float32 like the online ones).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if tau > 0.0:
        return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target_params, online_params)
    if update_freq <= 0:
        raise ValueError(f"update_freq must be positive when tau == 0, got {update_freq}")
    copy = jnp.asarray(step) % update_freq == 0
    return jax.tree.map(lambda t, o: jnp.where(copy, o, t), target_params, online_params)


# --------------------------------------------------------------------------- #
# Actions
# --------------------------------------------------------------------------- #
def _scaled_logits(q_BA: jax.Array, temperature: jax.typing.ArrayLike) -> jax.Array:
    return q_BA.astype(jnp.float32) / jnp.maximum(jnp.asarray(temperature, jnp.float32), _MIN_TEMPERATURE)


def select_actions(q_BA: jax.Array, key: jax.Array, epsilon: jax.typing.ArrayLike,
                   temperature: jax.typing.ArrayLike) -> jax.Array:
    """Epsilon-greedy with Boltzmann exploration.

    Each row independently explores with probability ``epsilon``, drawing from
    ``softmax(q / temperature)``; otherwise it takes ``argmax q``.

    Args:
      q_BA: ``[B, A]`` Q-values.
      key: PRNG key.
      epsilon: Exploration probability (scalar, may be traced).
      temperature: Boltzmann temperature (scalar, may be traced; floored at 1e-6).

    Returns:
      ``[B] int32`` actions.
    """
    k_explore, k_sample = jax.random.split(key)
    explore = jax.random.uniform(k_explore, q_BA.shape[:1]) < epsilon
    sampled = jax.random.categorical(k_sample, _scaled_logits(q_BA, temperature), axis=-1)
    return jnp.where(explore, sampled, jnp.argmax(q_BA, axis=-1)).astype(jnp.int32)


def action_entropy(q_BA: jax.Array, temperature: jax.typing.ArrayLike = 1.0) -> jax.Array:
    """Entropy (nats) of ``softmax(q / temperature)`` per row; differentiable. ``[B, A] -> [B]``."""
    logp = jax.nn.log_softmax(_scaled_logits(q_BA, temperature), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def action_counts(actions: jax.Array, num_actions: int, valid: jax.Array | None = None) -> jax.Array:
    """Histogram of actions. ``actions [B]`` int, optional ``valid [B]`` bool -> ``[num_actions] int32``."""
    onehot = jax.nn.one_hot(actions, num_actions, dtype=jnp.int32)
    if valid is not None:
        onehot = onehot * jnp.asarray(valid, jnp.int32)[:, None]
    return jnp.sum(onehot, axis=0)


# --------------------------------------------------------------------------- #
# Schedules of the global step
# --------------------------------------------------------------------------- #
def dqn_epsilon(step: jax.typing.ArrayLike, total_steps: int, start: float, end: float,
                decay_ratio: float, kind: AnnealKind = "linear") -> jax.Array:
    """Exploration rate: ``start`` -> ``end`` over the first ``decay_ratio * total_steps`` steps."""
    return anneal(kind, start, end, step, total_steps, 0.0, decay_ratio)


def q_temperature(step: jax.typing.ArrayLike, total_steps: int, start: float, end: float,
                  anneal_ratio: float, kind: AnnealKind = "linear") -> jax.Array:
    """Boltzmann temperature: ``start`` -> ``end`` over the first ``anneal_ratio * total_steps`` steps."""
    return anneal(kind, start, end, step, total_steps, 0.0, anneal_ratio)


def dqn_loss_weight(step: jax.typing.ArrayLike, total_steps: int, weight: float,
                    warmup_ratio: float, kind: AnnealKind = "linear") -> jax.Array:
    """DQN loss weight: ``0`` -> ``weight`` over the first ``warmup_ratio * total_steps`` steps."""
    return anneal(kind, 0.0, weight, step, total_steps, 0.0, warmup_ratio)


# --------------------------------------------------------------------------- #
# Rewards
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Coefficients of :func:`step_rewards` (static; the ``*_weight`` fields scale curiosity).

    The defaults live in one place, ``HESCConfig``'s ``reward_*`` / ``curiosity_*_weight`` fields:
    build this with :meth:`from_config`.
    """

    step_penalty: float
    terminal_correct: float
    terminal_incorrect: float
    expansion_bonus: float
    memory_bonus: float
    rnd_weight: float
    count_weight: float

    @classmethod
    def from_config(cls, cfg: Any) -> "RewardConfig":
        """From an object with ``HESCConfig``'s ``reward_*`` and ``curiosity_*_weight`` fields."""
        return cls(step_penalty=cfg.reward_step_penalty, terminal_correct=cfg.reward_terminal_correct,
                   terminal_incorrect=cfg.reward_terminal_incorrect, expansion_bonus=cfg.reward_expansion_bonus,
                   memory_bonus=cfg.reward_memory_bonus, rnd_weight=cfg.curiosity_rnd_weight,
                   count_weight=cfg.curiosity_count_weight)


def step_rewards(cfg: RewardConfig, *, acc_prev: jax.Array, acc: jax.Array, halted: jax.Array,
                 seq_correct: jax.Array, expanded: jax.Array, expansion_cost: jax.Array,
                 memory_hit: jax.Array, intrinsic: jax.Array) -> jax.Array:
    """Shaped reward of one ACT step, per row.

    ``r = (acc - acc_prev) - step_penalty
          + halted * (terminal_correct if seq_correct else terminal_incorrect)
          + expanded * expansion_bonus * [acc > acc_prev] - expansion_cost
          + memory_hit * memory_bonus * [acc > acc_prev]
          + intrinsic``

    ``intrinsic`` is already weighted (e.g. ``rnd_weight * rnd + count_weight * count``).

    Args:
      cfg: Reward coefficients.
      acc_prev, acc: ``[B]`` token accuracy before / after the step.
      halted, seq_correct, expanded, memory_hit: ``[B]`` bool.
      expansion_cost: ``[B]`` cost of this step's expansion (0 if none).
      intrinsic: ``[B]`` curiosity reward.

    Returns:
      ``[B] float32`` rewards.
    """
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    acc_prev, acc = f32(acc_prev), f32(acc)
    improved = f32(acc > acc_prev)
    terminal = jnp.where(jnp.asarray(seq_correct, bool), cfg.terminal_correct, cfg.terminal_incorrect)
    return ((acc - acc_prev) - cfg.step_penalty
            + f32(halted) * terminal
            + f32(expanded) * cfg.expansion_bonus * improved - f32(expansion_cost)
            + f32(memory_hit) * cfg.memory_bonus * improved
            + f32(intrinsic))


# --------------------------------------------------------------------------- #
# Running normalisation
# --------------------------------------------------------------------------- #
@flax.struct.dataclass
class RunningStats:
    """Running count, mean and (population) variance; float32 scalars."""

    count: jax.Array
    mean: jax.Array
    var: jax.Array


def running_stats_init() -> RunningStats:
    """No observations yet: ``count = 0``, ``mean = 0``, ``var = 1`` (normalize is the identity)."""
    return RunningStats(count=jnp.zeros((), jnp.float32), mean=jnp.zeros((), jnp.float32),
                        var=jnp.ones((), jnp.float32))


def running_stats_update(stats: RunningStats, x: jax.Array, valid: jax.Array | None = None) -> RunningStats:
    """Merge the valid entries of ``x [N]`` into the statistics (Chan et al. parallel update).

    The batch's mean and centred sum of squares are computed two-pass, then combined with the
    running ones, which avoids the cancellation of ``E[x^2] - E[x]^2``. A batch with no valid
    entry leaves the statistics unchanged.
    """
    x = jnp.asarray(x, jnp.float32).reshape(-1)
    w = jnp.ones_like(x) if valid is None else jnp.asarray(valid, jnp.float32).reshape(-1)
    x = jnp.where(w > 0, x, 0.0)  # masked entries may hold anything, even NaN
    n_b = jnp.sum(w)
    mean_b = jnp.sum(w * x) / jnp.maximum(n_b, 1.0)
    m2_b = jnp.sum(w * jnp.square(x - mean_b))

    n = stats.count + n_b
    safe_n = jnp.maximum(n, 1.0)
    delta = mean_b - stats.mean
    mean = stats.mean + delta * (n_b / safe_n)
    m2 = stats.var * stats.count + m2_b + jnp.square(delta) * stats.count * n_b / safe_n
    has_data = n_b > 0
    return RunningStats(
        count=n,
        mean=jnp.where(has_data, mean, stats.mean),
        var=jnp.where(has_data, m2 / safe_n, stats.var),
    )


def normalize(stats: RunningStats, x: jax.Array, eps: float = 1e-8, center: bool = True) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` (``x / sqrt(var + eps)`` when ``center`` is False); any shape."""
    x = jnp.asarray(x, jnp.float32)
    if center:
        x = x - stats.mean
    return x * jax.lax.rsqrt(stats.var + eps)


# --------------------------------------------------------------------------- #
# Curiosity
# --------------------------------------------------------------------------- #
class RND(nn.Module):
    """Random-network distillation (Burda et al. 2018).

    A fixed random *target* MLP ``D -> hidden -> features`` whose kernels live in the
    ``"buffers"`` collection (drawn from the ``params`` rng at init, never trained) and a
    trained *predictor* MLP ``D -> hidden -> hidden -> features`` in ``"params"`` (deeper than
    the target, as in the paper, so it can fit it). Inputs are used as given; normalise them
    beforehand if their scale drifts.
    """

    hidden: int
    features: int

    @nn.compact
    def __call__(self, x_BD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [B, D]`` -> ``(intrinsic [B]`` (stop-gradient), ``rnd_loss`` scalar``)``.

        ``intrinsic`` is the per-row mean squared prediction error; ``rnd_loss`` its mean,
        differentiable w.r.t. the predictor only (not the target, not the input).
        """
        # No gradient into the input: the model must not learn states that are easy to predict.
        x = jax.lax.stop_gradient(jnp.asarray(x_BD, jnp.float32))
        D = x.shape[-1]
        init_key = lambda: self.make_rng("params")  # noqa: E731 (only called at init)
        w1 = self.variable("buffers", "target_w1",
                           lambda: lecun_trunc_normal_init()(init_key(), (D, self.hidden)))
        w2 = self.variable("buffers", "target_w2",
                           lambda: lecun_trunc_normal_init()(init_key(), (self.hidden, self.features)))
        target = jax.lax.stop_gradient(nn.relu(x @ w1.value) @ w2.value)

        h = nn.relu(casted_dense(self.hidden, True, jnp.float32, "pred_in")(x))
        h = nn.relu(casted_dense(self.hidden, True, jnp.float32, "pred_hidden")(h))
        pred = casted_dense(self.features, True, jnp.float32, "pred_out")(h)

        err_B = jnp.mean(jnp.square(pred - target), axis=-1)
        return jax.lax.stop_gradient(err_B), jnp.mean(err_B)


@flax.struct.dataclass
class SimHashCounter:
    """SimHash visit counts (Tang et al. 2017).

    Attributes:
      projection: ``[D, bits] float32`` fixed Gaussian projection; the hash is its sign pattern.
      counts: ``[2**bits] int32`` visits per hash code.
    """

    projection: jax.Array
    counts: jax.Array


def simhash_init(key: jax.Array, dim: int, bits: int) -> SimHashCounter:
    """A counter with a random ``[dim, bits]`` projection and zero counts (``bits <= 24``)."""
    if not 1 <= bits <= 24:
        raise ValueError(f"bits must be in [1, 24] (table of 2**bits int32), got {bits}")
    return SimHashCounter(projection=jax.random.normal(key, (dim, bits), jnp.float32),
                          counts=jnp.zeros((2 ** bits,), jnp.int32))


def simhash_codes(counter: SimHashCounter, x_BD: jax.Array) -> jax.Array:
    """Hash codes ``[B] int32``: bit ``j`` is ``(x @ projection)[:, j] > 0``."""
    # Highest precision: a bf16 matmul could flip signs near 0 and split one state over codes.
    proj = jnp.matmul(jnp.asarray(x_BD, jnp.float32), counter.projection,
                      precision=jax.lax.Precision.HIGHEST)
    bits = counter.projection.shape[1]
    return jnp.sum((proj > 0).astype(jnp.int32) << jnp.arange(bits, dtype=jnp.int32), axis=-1)


def count_bonus(counter: SimHashCounter, x_BD: jax.Array,
                valid: jax.Array | None = None) -> tuple[jax.Array, SimHashCounter]:
    """Count-based bonus ``1 / sqrt(n(code))`` with ``n`` counted after this batch's increments.

    Every valid row increments its code's count (rows sharing a code in one batch each count,
    and all get the same bonus, independent of row order).

    Args:
      counter: The counter.
      x_BD: ``[B, D]`` states.
      valid: ``[B]`` bool; invalid rows neither count nor get a bonus (0).

    Returns:
      ``(bonus [B] float32, new counter)``.
    """
    codes = simhash_codes(counter, x_BD)
    valid = jnp.ones(codes.shape, bool) if valid is None else jnp.asarray(valid, bool)
    table = counter.counts.shape[0]
    counts = counter.counts.at[jnp.where(valid, codes, table)].add(1, mode="drop")
    n = counts[codes].astype(jnp.float32)
    bonus = jnp.where(valid, jax.lax.rsqrt(jnp.maximum(n, 1.0)), 0.0)
    return bonus, counter.replace(counts=counts)
