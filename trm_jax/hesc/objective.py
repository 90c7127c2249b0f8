"""What HESC adds to the one train step (trm_jax/steps.py): its loss, its inputs, its auxiliary state.

Per step, inside the compiled train step:

1. :meth:`HESCObjective.step_inputs`: the annealed schedules of the global step (epsilon,
   temperature, expansion cost) and the memory bank;
2. the model's ACT step (epsilon-greedy actions, expansions, memory reads) and
   :meth:`HESCObjective.loss`: :func:`trm_jax.hesc.losses.hesc_loss`, whose DQN term is the TD loss
   on the prioritized minibatch sampled at the end of the previous step (``aux.dqn_batch``: the
   buffer as it is at the start of this step), weighted by the warm-up schedule and zero until
   ``dqn_buffer_min_size``;
3. the optimizer step, owned by the generic step;
4. :meth:`HESCObjective.update`: rewards (normalised by running statistics), this step's
   transitions into the buffer (a row's previous transition completes now; a halting row's is
   terminal), replay priorities, target-Q refresh, memory reads/writes, the count-based curiosity
   table, VQ statistics, the EMA codebook and dead-code restarts; then the next step's minibatch
   is sampled from the updated buffer.

The minibatch is prefetched rather than sampled at the start of the step so that the buffer is
read after it is written: with the read first, XLA keeps the old buffer alive past the in-place
writes and copies every ``[C, ...]`` storage array each step (two 200 MB arrays at the default
``C = 100k``, ``D = 512``; ``tests/test_hesc_train_step.py`` checks the compiled step has none).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp

from trm_jax.hesc import dqn, memory as mem_lib, replay as replay_lib, vq as vq_lib
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.losses import hesc_loss
from trm_jax.hesc.model import PendingTransition, replay_example
from trm_jax.hesc.qheads import ActionQHead
from trm_jax.schedules import anneal
from trm_jax.steps import Objective


@flax.struct.dataclass
class DQNMinibatch:
    """The replay slots the next step learns from (sampled after this step's writes)."""

    indices: jax.Array      # [N] int32
    transitions: Any        # replay_lib transitions, [N, ...]
    is_weights: jax.Array   # [N] importance weights
    ready: jax.Array        # bool: the buffer holds dqn_buffer_min_size transitions


@flax.struct.dataclass
class HESCAux:
    """HESC's non-differentiated train state (``TrainState.aux``); a field is None when its extension is off.

    Attributes:
      reward_stats: running mean/variance of the raw step rewards (normalisation).
      replay: the prioritized replay buffer (``enable_dqn``).
      dqn_batch: the next step's minibatch.
      target_q: target-network parameters of the action head's Q part.
      counter: the SimHash count table of the count-based curiosity bonus.
      memory: the memory bank (``enable_memory``).
      vq_stats: codebook usage / EMA statistics (``enable_vq``).
    """

    reward_stats: dqn.RunningStats
    replay: Optional[replay_lib.ReplayBuffer] = None
    dqn_batch: Optional[DQNMinibatch] = None
    target_q: Any = None
    counter: Optional[dqn.SimHashCounter] = None
    memory: Optional[mem_lib.MemoryBank] = None
    vq_stats: Optional[vq_lib.VQStats] = None


def schedules(cfg: HESCConfig, step: jax.Array, total_steps: int) -> Dict[str, jax.Array]:
    """The annealed HESC quantities at the global ``step`` (each with its configured shape)."""
    return {
        "epsilon": dqn.dqn_epsilon(step, total_steps, cfg.dqn_epsilon_start, cfg.dqn_epsilon_end,
                                   cfg.dqn_epsilon_decay_ratio, cfg.dqn_epsilon_schedule),
        "temperature": dqn.q_temperature(step, total_steps, cfg.q_temperature_start, cfg.q_temperature_end,
                                         cfg.q_temperature_anneal_ratio, cfg.q_temperature_schedule),
        "dqn_weight": dqn.dqn_loss_weight(step, total_steps, cfg.dqn_loss_weight, cfg.dqn_warmup_ratio,
                                          cfg.dqn_warmup_schedule),
        "expansion_cost": anneal(cfg.expansion_anneal_schedule, cfg.expansion_cost_start,
                                 cfg.expansion_cost_per_child, step, total_steps, 0.0, cfg.expansion_anneal_ratio),
    }


def _q_part(cfg: HESCConfig):
    """``q(params, replay_state) -> Q [N, A]``: the action head's Q part alone (replayed transitions)."""
    head = ActionQHead(num_actions=cfg.q_head_num_actions, head_type=cfg.q_head_type, pooling=cfg.q_head_pooling,
                       hidden=cfg.q_head_hidden, dtype=cfg.dtype)
    return lambda p, s: head.apply({"params": p}, s, method=ActionQHead.q_from_replay)


def _sample(cfg: HESCConfig, replay: replay_lib.ReplayBuffer, key: jax.Array) -> DQNMinibatch:
    idx, transitions, is_w = replay_lib.replay_sample(replay, key, cfg.dqn_batch_size, cfg.dqn_alpha, cfg.dqn_beta)
    return DQNMinibatch(indices=idx, transitions=transitions, is_weights=is_w,
                        ready=replay.size >= cfg.dqn_buffer_min_size)


def _memory_of(aux: Any) -> Optional[mem_lib.MemoryBank]:
    """The memory bank of a train state's ``HESCAux``, or of a loaded checkpoint's ``{"memory": {...}}``
    (read back from Orbax as plain dicts)."""
    memory = aux.get("memory") if isinstance(aux, Mapping) else getattr(aux, "memory", None)
    if isinstance(memory, Mapping):
        memory = mem_lib.MemoryBank(**memory)
    return memory


class HESCObjective(Objective):
    """HESC's loss, step inputs and auxiliary state (see the module docstring)."""

    def rngs(self, key):
        # The exploration stream is the step's key itself, as for the TRM.
        return {"exploration": key, "masking": jax.random.fold_in(key, 1)}

    def init_inputs(self, cfg: HESCConfig):
        return {"memory": mem_lib.memory_init(cfg.memory_capacity, cfg.hidden_size)} if cfg.enable_memory else {}

    def init_aux(self, cfg: HESCConfig, params, buffers, key) -> HESCAux:
        """Fresh state; EMA codebook statistics start at the initial codebook."""
        aux = HESCAux(reward_stats=dqn.running_stats_init())
        if cfg.enable_dqn:
            replay = replay_lib.replay_init(cfg.dqn_buffer_capacity, replay_example(cfg))
            aux = aux.replace(replay=replay, dqn_batch=_sample(cfg, replay, jax.random.fold_in(key, 1)),
                              target_q=jax.tree.map(jnp.array, params["inner"]["action_head"]),
                              counter=dqn.simhash_init(key, cfg.hidden_size, cfg.curiosity_hash_bits))
        if cfg.enable_memory:
            aux = aux.replace(memory=mem_lib.memory_init(cfg.memory_capacity, cfg.hidden_size))
        if cfg.enable_vq:
            codebook = buffers["inner"]["vq"]["codebook"] if cfg.vq_use_ema else None
            aux = aux.replace(vq_stats=vq_lib.vq_stats_init(cfg.num_concepts, cfg.hidden_size, codebook=codebook))
        return aux

    def step_inputs(self, cfg: HESCConfig, state, total_steps):
        inputs: Dict[str, Any] = dict(schedules(cfg, state.step, total_steps))
        inputs.pop("dqn_weight")
        if cfg.enable_memory:
            inputs["memory"] = state.aux.memory
        return inputs

    def loss(self, cfg: HESCConfig, state, params, new_carry, outputs, inputs, total_steps):
        dqn_terms, td, dqn_weight = None, None, 0.0
        if cfg.enable_dqn:
            # TD loss on the prefetched transitions: online Q vs the target Q-parameters.
            batch: DQNMinibatch = state.aux.dqn_batch
            td_loss, td, td_metrics = dqn.td_loss(_q_part(cfg), params["inner"]["action_head"], state.aux.target_q,
                                                  batch.transitions, batch.is_weights * batch.ready, cfg.dqn_gamma,
                                                  double_dqn=cfg.dqn_double, huber_delta=cfg.dqn_huber_delta)
            dqn_terms = (td_loss, td_metrics)
            dqn_weight = schedules(cfg, state.step, total_steps)["dqn_weight"] * batch.ready
        loss, metrics = hesc_loss(cfg, new_carry, outputs, temperature=inputs["temperature"],
                                  expansion_cost=inputs["expansion_cost"], dqn_terms=dqn_terms,
                                  dqn_weight=dqn_weight)
        return loss, metrics, td

    def update(self, cfg: HESCConfig, state, params, carry, out, td, key, total_steps):
        aux: HESCAux = state.aux
        buffers = state.buffers
        sched = schedules(cfg, state.step, total_steps)
        metrics = {"dqn_epsilon": sched["epsilon"], "dqn_temperature": sched["temperature"],
                   "expansion_cost_per_child": sched["expansion_cost"]}
        step = state.step
        raw = None
        if cfg.enable_dqn:
            aux, carry, raw, dqn_metrics = _update_dqn(cfg, aux, state, carry, out, params, td, key)
            metrics.update(dqn_metrics)
        if cfg.enable_memory:
            bank = aux.memory
            info = out["cycle_stats"]["memory"]
            bank = mem_lib.memory_touch(bank, info["indices"], step, info["valid"])
            # Explicit writes of the pooled states that earned reward (score = that reward; without the
            # DQN, the accuracy gained this step), replacing the lowest-score / least-recent slots.
            x = out["pooled"]
            score = raw if raw is not None else out["accuracy"] - out["prev_accuracy"]
            write = score > 0
            bank = mem_lib.memory_write(bank, x, x, score, write, step)
            aux = aux.replace(memory=bank)
            metrics["memory_writes"] = write.sum().astype(jnp.float32)
            metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in mem_lib.memory_metrics(bank).items()})
        if cfg.enable_vq:
            vq = out["cycle_stats"]["vq"]
            stats = vq_lib.vq_stats_update(aux.vq_stats, vq["counts"], vq["sums"], cfg.vq_ema_decay)
            if cfg.vq_use_ema:
                buffers = _replace_codebook(buffers, vq_lib.ema_codebook(stats))
            else:
                # Codes unused for vq_dead_code_steps steps restart at recent encoder outputs.
                codebook, stats, _ = vq_lib.restart_dead_codes(params["inner"]["vq"]["codebook"], stats,
                                                               vq["candidates"], jax.random.fold_in(key, 3),
                                                               cfg.vq_dead_code_steps)
                params = _replace_codebook(params, codebook)
            aux = aux.replace(vq_stats=stats)
            metrics["vq_dead_codes"] = vq_lib.dead_code_count(stats, cfg.vq_dead_code_steps).astype(jnp.float32)
        return params, buffers, aux, carry, metrics

    def eval_inputs(self, cfg: HESCConfig, aux):
        return {"memory": _memory_of(aux)} if cfg.enable_memory else {}

    def eval_metrics(self, cfg: HESCConfig, halted_B, last, per_step):
        valid = halted_B & (last["label_counts"] > 0)
        metrics = {"num_expansions": jnp.where(valid, last["num_expansions"], 0).sum().astype(jnp.float32)}
        if cfg.q_head_num_actions == 3:
            counted = per_step["active"] & valid[None]
            for a, name in enumerate(("action_0_continue", "action_1_halt", "action_2_expand")):
                metrics[name] = (counted & (per_step["actions"] == a)).sum().astype(jnp.float32)
        return metrics


def _update_dqn(cfg: HESCConfig, aux: HESCAux, state, carry, out, params, td, key):
    """Rewards, transitions, priorities, target refresh and the next minibatch."""
    s_t = out["replay_state"]
    ones = jnp.ones_like(out["halted"])
    bonus, counter = dqn.count_bonus(aux.counter, s_t["x"], ones)
    intrinsic = cfg.curiosity_count_weight * bonus
    if "rnd_intrinsic" in out:
        intrinsic = intrinsic + cfg.curiosity_rnd_weight * out["rnd_intrinsic"]
    memory_hit = jnp.zeros_like(ones)
    if "memory" in out["cycle_stats"]:
        memory_hit = out["cycle_stats"]["memory"]["similarity"].max(-1) > cfg.memory_hit_threshold
    raw = dqn.step_rewards(dqn.RewardConfig.from_config(cfg), acc_prev=out["prev_accuracy"], acc=out["accuracy"],
                           halted=out["halted"], seq_correct=out["seq_correct"],
                           expanded=out["expanded_index"] >= 0, expansion_cost=out["expansion_cost"],
                           memory_hit=memory_hit, intrinsic=intrinsic)
    reward_stats = dqn.running_stats_update(aux.reward_stats, raw, ones)
    reward = dqn.normalize(reward_stats, raw)

    pending: PendingTransition = state.carry.extras.pending
    replay = aux.replay
    # Priorities of the sampled slots first: the adds below may overwrite them when the ring wraps.
    # Before dqn_buffer_min_size nothing was learned from them: out-of-range indices are no-ops.
    batch = aux.dqn_batch
    replay = replay_lib.replay_update_priorities(replay, jnp.where(batch.ready, batch.indices, replay.capacity), td)
    # The previous transition of a row that went on with the same example completes now.
    cont = pending.valid & ~state.carry.halted  # halted rows were reset at this step's start
    replay = replay_lib.replay_add(replay, pending.state, pending.action, pending.reward, s_t,
                                   jnp.zeros_like(cont), cont)
    # A halting row's transition is terminal: no next state.
    replay = replay_lib.replay_add(replay, s_t, out["actions"], reward, s_t, out["halted"], out["halted"])
    step = state.step
    aux = aux.replace(
        replay=replay, reward_stats=reward_stats, counter=counter,
        dqn_batch=_sample(cfg, replay, jax.random.fold_in(key, 2)),  # read after the writes: no copy
        target_q=dqn.update_target(aux.target_q, params["inner"]["action_head"], step + 1,
                                   cfg.dqn_target_update_freq, cfg.dqn_target_tau))
    carry = carry.replace(extras=carry.extras.replace(pending=PendingTransition(
        state=s_t, action=out["actions"], reward=reward, valid=~out["halted"])))
    metrics = {"dqn_reward_mean": raw.mean(), "dqn_reward_std": raw.std(),
               "dqn_buffer_size": replay.size.astype(jnp.float32), "dqn_intrinsic_mean": intrinsic.mean(),
               "dqn_reward_intrinsic": intrinsic.mean(), "dqn_reward_extrinsic": (raw - intrinsic).mean(),
               "dqn_accuracy_improvement": (out["accuracy"] - out["prev_accuracy"]).mean()}
    return aux, carry, raw, metrics


def _replace_codebook(tree: Any, codebook: jax.Array) -> Any:
    """``tree`` (params or buffers) with ``inner/vq/codebook`` replaced (a shallow copy of the path)."""
    inner = dict(tree["inner"])
    inner["vq"] = {**inner["vq"], "codebook": codebook}
    return {**tree, "inner": inner}
