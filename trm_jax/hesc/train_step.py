"""HESC training: state creation, the jitted train step (DQN inside), evaluation of a batch.

Per step, inside one compiled function:

1. take the prioritized minibatch sampled from the replay buffer at the end of the previous
   step (``aux["dqn_batch"]``: the buffer as it is at the start of this step);
2. one ACT step of the model (epsilon-greedy actions, expansions, memory reads) and the total
   loss, whose DQN term is the TD loss on that minibatch (online vs target Q-parameters,
   weight ramped over ``dqn_warmup_ratio`` and zero until ``dqn_buffer_min_size``);
3. the optimizer step (AdamAtan2 / sign-SGD, NaN guard) as for the TRM;
4. the non-differentiated state: rewards (normalised by running statistics), the transitions
   of this step into the buffer (a row's previous transition completes now; a halting row's
   transition is terminal), replay priorities, target-Q refresh, memory reads/writes, the
   count-based curiosity table, VQ usage statistics and dead-code restarts; then the next
   step's minibatch is sampled from the updated buffer.

The minibatch is prefetched rather than sampled at the start of the step so that the buffer is
read after it is written: with the read first, XLA keeps the old buffer alive past the in-place
writes and copies every ``[C, ...]`` storage array each step (two 200 MB arrays at the default
``C = 100k``, ``D = 512``; ``tests/test_hesc_train_step.py`` checks the compiled step has none).

Train-state layout: ``buffers`` holds every non-trained variable collection of the model
(``{"buffers": {H_init, L_init, RND target}, "vq_ema": ...}``); ``aux`` holds ``replay``,
``dqn_batch``, ``target_q``, ``memory``, ``reward_stats``, ``counter``, ``vq_stats`` (those enabled);
the carry's ``extras["prev"]`` holds each row's pending transition.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from trm_jax import optim, puzzle_rows
from trm_jax.hesc import dqn, memory as mem_lib, replay as replay_lib, vq as vq_lib
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.losses import action_metrics, hesc_loss
from trm_jax.hesc.model import HESC, initial_carry
from trm_jax.hesc.qheads import ActionQHead
from trm_jax.losses import act_loss_terms
from trm_jax.models.trm import dummy_batch
from trm_jax.steps import optimizer_step
from trm_jax.train_state import TrainState

Batch = Mapping[str, jax.Array]


def build_model(model_cfg: Any) -> HESC:
    return HESC(HESCConfig.from_any(model_cfg))


def example_batch(cfg: HESCConfig, batch_size: int) -> Dict[str, jax.Array]:
    """A zero batch with every key the model reads (capsule data in capsules mode)."""
    batch = dummy_batch(cfg, batch_size)
    if cfg.mode == "capsules":
        k, m, Dc = cfg.k, cfg.m, cfg.capsule_dim
        batch.update(sketches=jnp.zeros((batch_size, k, Dc)), children=jnp.zeros((batch_size, k, m, Dc)),
                     checksums=jnp.zeros((batch_size, k, cfg.checksum_dim)))
    return batch


def hesc_initial_carry(cfg: HESCConfig, batch: Mapping[str, Any], replay_example: Any = None):
    """The model's initial carry plus each row's pending DQN transition (none yet)."""
    carry = initial_carry(cfg, batch)
    if cfg.enable_dqn:
        B = carry.steps.shape[0]
        extras = dict(carry.extras)
        extras["prev"] = {
            "state": jax.tree.map(lambda x: jnp.zeros((B,) + x.shape, x.dtype), replay_example),
            "action": jnp.zeros((B,), jnp.int32),
            "reward": jnp.zeros((B,), jnp.float32),
            "valid": jnp.zeros((B,), jnp.bool_),
        }
        carry = carry.replace(extras=extras)
    return carry


def _action_head(cfg: HESCConfig) -> ActionQHead:
    return ActionQHead(num_actions=cfg.q_head_num_actions, head_type=cfg.q_head_type, pooling=cfg.q_head_pooling,
                       hidden=cfg.q_head_hidden, dtype=cfg.dtype)


def _replay_example(cfg: HESCConfig) -> Dict[str, jax.Array]:
    example = {"x": jnp.zeros((cfg.hidden_size,), jnp.float32)}
    if cfg.q_head_type == "rnn":
        example["h"] = jnp.zeros((cfg.q_head_hidden,), jnp.float32)
    return example


def init_aux(cfg: HESCConfig, params: Any, key: jax.Array, ema_codebook_init: Any = None) -> Dict[str, Any]:
    """The non-differentiated HESC state for a fresh run (EMA statistics start at the initial codebook)."""
    aux: Dict[str, Any] = {"reward_stats": dqn.running_stats_init()}
    if cfg.enable_dqn:
        aux["replay"] = replay_lib.replay_init(cfg.dqn_buffer_capacity, _replay_example(cfg))
        aux["dqn_batch"] = _sample_minibatch(cfg, aux["replay"], jax.random.fold_in(key, 1))
        aux["target_q"] = jax.tree.map(jnp.array, params["inner"]["action_head"])
        aux["counter"] = dqn.simhash_init(key, cfg.hidden_size, cfg.curiosity_hash_bits)
    if cfg.enable_memory:
        aux["memory"] = mem_lib.memory_init(cfg.memory_capacity, cfg.hidden_size)
    if cfg.enable_vq:
        aux["vq_stats"] = vq_lib.vq_stats_init(cfg.num_concepts, cfg.hidden_size, codebook=ema_codebook_init)
    return aux


def create_hesc_state(model_cfg: Any, tx: optax.GradientTransformation, global_batch_size: int, seed: int,
                      use_ema: bool) -> TrainState:
    """A fresh HESC train state (same layout as the TRM's, with ``aux`` filled)."""
    cfg = HESCConfig.from_any(model_cfg)
    key = jax.random.PRNGKey(seed)
    init_key, run_key, aux_key = jax.random.split(key, 3)
    model = build_model(cfg)
    batch = example_batch(cfg, 1)
    variables = dict(model.init({"params": init_key}, initial_carry(cfg, batch), batch, train=False,
                                memory=mem_lib.memory_init(cfg.memory_capacity, cfg.hidden_size)
                                if cfg.enable_memory else None))
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        buffers=variables,
        opt_state=tx.init(params),
        ema_params=optim.ema_init(params) if use_ema else {},
        carry=hesc_initial_carry(cfg, example_batch(cfg, global_batch_size), _replay_example(cfg)),
        rng=run_key,
        aux=init_aux(cfg, params, aux_key, _codebook_path(variables["vq_ema"])["codebook"]
                     if cfg.enable_vq and cfg.vq_use_ema else None),
    )


def _schedules(cfg: HESCConfig, step: jax.Array, total_steps: int) -> Dict[str, jax.Array]:
    return {
        "epsilon": dqn.dqn_epsilon(step, total_steps, cfg.dqn_epsilon_start, cfg.dqn_epsilon_end,
                                   cfg.dqn_epsilon_decay_ratio),
        "temperature": dqn.q_temperature(step, total_steps, cfg.q_temperature_start, cfg.q_temperature_end,
                                         cfg.q_temperature_anneal_ratio),
        "dqn_weight": dqn.dqn_loss_weight(step, total_steps, cfg.dqn_loss_weight, cfg.dqn_warmup_ratio),
    }


def make_hesc_train_step(model: HESC, tx: optax.GradientTransformationExtraArgs, config: Any,
                         total_steps: int) -> Callable[[TrainState, Batch], Tuple[TrainState, Dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, metrics)`` for HESC (see the module docstring)."""
    cfg: HESCConfig = model.config
    head = _action_head(cfg)
    q_apply = lambda p, s: head.apply({"params": p}, s, method=ActionQHead.q_from_replay)  # noqa: E731
    rewards_cfg = dqn.RewardConfig.from_config(cfg)
    use_ema = bool(config.ema)

    def train_step(state: TrainState, batch: Batch):
        k_sample, k_act, k_mask, k_restart = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
        sched = _schedules(cfg, state.step, total_steps)
        aux = state.aux
        if cfg.enable_dqn:  # sampled at the end of the previous step (module docstring)
            minibatch = aux["dqn_batch"]
            idx, transitions, is_w = minibatch["indices"], minibatch["transitions"], minibatch["is_weights"]
            ready = minibatch["ready"]

        def loss_fn(params, row_offsets):
            new_carry, out = model.apply({"params": params, **state.buffers, puzzle_rows.COLLECTION: row_offsets},
                                         state.carry, batch, train=True,
                                         epsilon=sched["epsilon"], temperature=sched["temperature"],
                                         memory=aux.get("memory"), rngs={"exploration": k_act, "masking": k_mask})
            dqn_terms, td = None, None
            if cfg.enable_dqn:
                # TD loss on the sampled transitions: online Q vs the target Q-parameters.
                td_loss, td, td_metrics = dqn.td_loss(q_apply, params["inner"]["action_head"], aux["target_q"],
                                                      transitions, is_w * ready, cfg.dqn_gamma,
                                                      double_dqn=cfg.dqn_double)
                dqn_terms = (td_loss, td_metrics)
            loss, metrics = hesc_loss(cfg, new_carry, out, temperature=sched["temperature"], dqn_terms=dqn_terms,
                                      dqn_weight=sched["dqn_weight"] * ready if cfg.enable_dqn else 0.0)
            return loss / config.global_batch_size, (new_carry, out, metrics, td)

        grad_fn = puzzle_rows.value_and_grad(loss_fn, lambda aux: aux[0].current_data["puzzle_identifiers"],
                                             state.carry.halted.shape[0])
        (_, (carry, out, metrics, td)), grads = grad_fn(state.params)
        params, opt_state, finite, opt_metrics = optimizer_step(tx, state, grads, carry, config, total_steps)
        out = jax.lax.stop_gradient(out)

        new_aux, carry, aux_metrics = _update_aux(cfg, rewards_cfg, state, carry, out, params, td,
                                                  idx if cfg.enable_dqn else None, k_sample)
        buffers = state.buffers
        if cfg.enable_vq and cfg.vq_use_ema:
            buffers = _with_ema_codebook(buffers, new_aux["vq_stats"])
        if cfg.enable_vq and not cfg.vq_use_ema:
            params, new_aux = _restart_dead_codes(cfg, params, new_aux, out, k_restart)
        carry = carry.replace(halted=carry.halted | ~finite)
        ema = optim.ema_update(state.ema_params, params, config.ema_rate) if use_ema else state.ema_params

        metrics = dict(metrics)
        metrics.update(aux_metrics)
        metrics.update(opt_metrics)
        metrics["dqn_epsilon"], metrics["dqn_temperature"] = sched["epsilon"], sched["temperature"]
        new_state = state.replace(step=state.step + 1, params=params, buffers=buffers, opt_state=opt_state,
                                  ema_params=ema, carry=carry, aux=new_aux)
        return new_state, metrics

    return train_step


def _sample_minibatch(cfg: HESCConfig, replay: replay_lib.ReplayBuffer, key: jax.Array) -> Dict[str, Any]:
    """The next step's DQN minibatch: slots, transitions, importance weights and whether to learn."""
    idx, transitions, is_w = replay_lib.replay_sample(replay, key, cfg.dqn_batch_size, cfg.dqn_alpha, cfg.dqn_beta)
    return {"indices": idx, "transitions": transitions, "is_weights": is_w,
            "ready": replay.size >= cfg.dqn_buffer_min_size}


def _update_aux(cfg: HESCConfig, rewards_cfg, state: TrainState, carry, out, params, td, idx, sample_key):
    """Rewards, transitions, replay priorities, target refresh, the next minibatch, memory, curiosity
    counts, VQ stats."""
    aux = dict(state.aux)
    metrics: Dict[str, jax.Array] = {}
    step = state.step
    if cfg.enable_dqn:
        s_t = out["replay_state"]
        ones = jnp.ones_like(out["halted"])
        bonus, aux["counter"] = dqn.count_bonus(aux["counter"], s_t["x"], ones)
        intrinsic = cfg.curiosity_count_weight * bonus
        if "rnd_intrinsic" in out:
            intrinsic = intrinsic + cfg.curiosity_rnd_weight * out["rnd_intrinsic"]
        memory_hit = jnp.zeros_like(ones)
        if "memory" in out["cycle_stats"]:
            memory_hit = out["cycle_stats"]["memory"]["similarity"].max(-1) > 0.5
        raw = dqn.step_rewards(rewards_cfg, acc_prev=out["prev_accuracy"], acc=out["accuracy"],
                               halted=out["halted"], seq_correct=out["seq_correct"],
                               expanded=out["expanded_index"] >= 0, expansion_cost=out["expansion_cost"],
                               memory_hit=memory_hit, intrinsic=intrinsic)
        aux["reward_stats"] = dqn.running_stats_update(aux["reward_stats"], raw, ones)
        reward = dqn.normalize(aux["reward_stats"], raw)

        prev = state.carry.extras["prev"]
        replay = aux["replay"]
        # Priorities of the sampled slots first: the adds below may overwrite them when the ring wraps.
        # Before dqn_buffer_min_size nothing was learned from them: out-of-range indices are no-ops.
        ready = aux["dqn_batch"]["ready"]
        replay = replay_lib.replay_update_priorities(replay, jnp.where(ready, idx, replay.capacity), td)
        # The previous transition of a row that went on with the same example completes now.
        cont = prev["valid"] & ~out["reset"]
        replay = replay_lib.replay_add(replay, prev["state"], prev["action"], prev["reward"], s_t,
                                       jnp.zeros_like(cont), cont)
        # A halting row's transition is terminal: no next state.
        replay = replay_lib.replay_add(replay, s_t, out["actions"], reward, s_t, out["halted"], out["halted"])
        aux["replay"] = replay
        aux["dqn_batch"] = _sample_minibatch(cfg, replay, sample_key)  # read after the writes: no copy
        aux["target_q"] = dqn.update_target(aux["target_q"], params["inner"]["action_head"], step + 1,
                                            cfg.dqn_target_update_freq, cfg.dqn_target_tau)
        extras = dict(carry.extras)
        extras["prev"] = {"state": s_t, "action": out["actions"], "reward": reward, "valid": ~out["halted"]}
        carry = carry.replace(extras=extras)
        metrics.update(dqn_reward_mean=raw.mean(), dqn_reward_std=raw.std(), dqn_buffer_size=replay.size,
                       dqn_intrinsic_mean=intrinsic.mean())
    if cfg.enable_memory:
        bank = aux["memory"]
        info = out["cycle_stats"]["memory"]
        bank = mem_lib.memory_touch(bank, info["indices"], step, info["valid"])
        # Explicit writes of the pooled states that earned reward (score = that reward; without the
        # DQN, the accuracy gained this step), replacing the lowest-score / least-recent slots.
        x = out["replay_state"]["x"]
        score = raw if cfg.enable_dqn else out["accuracy"] - out["prev_accuracy"]
        write = score > 0
        bank = mem_lib.memory_write(bank, x, x, score, write, step)
        aux["memory"] = bank
        metrics["memory_writes"] = write.sum().astype(jnp.float32)
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in mem_lib.memory_metrics(bank).items()})
    if cfg.enable_vq:
        vq = out["cycle_stats"]["vq"]
        aux["vq_stats"] = vq_lib.vq_stats_update(aux["vq_stats"], vq["counts"], vq["sums"], cfg.vq_ema_decay)
        metrics["vq_dead_codes"] = vq_lib.dead_code_count(aux["vq_stats"], cfg.vq_dead_code_steps).astype(jnp.float32)
    return aux, carry, metrics


def _codebook_path(tree):
    return tree["inner"]["core"]["vq"]


def _with_ema_codebook(buffers, stats):
    buffers = jax.tree.map(lambda x: x, buffers)
    _codebook_path(buffers["vq_ema"])["codebook"] = vq_lib.ema_codebook(stats)
    return buffers


def _restart_dead_codes(cfg: HESCConfig, params, aux, out, key):
    """Codes unused for ``vq_dead_code_steps`` steps restart at recent encoder outputs."""
    params = jax.tree.map(lambda x: x, params)
    vq_params = _codebook_path(params)
    candidates = out["cycle_stats"]["vq"]["candidates"]
    codebook, aux["vq_stats"], _ = vq_lib.restart_dead_codes(
        vq_params["codebook"], aux["vq_stats"], candidates, key, cfg.vq_dead_code_steps)
    vq_params["codebook"] = codebook
    return params, aux


def make_hesc_eval_batch(model: HESC) -> Callable:
    """``eval_batch(params, buffers, aux, batch) -> (metric sums, preds [B, L], q_halt_logits [B])``.

    Every row runs ``halt_max_steps`` steps with greedy actions (expansions included) and a
    read-only memory; metrics are the TRM's sums plus expansion counts.
    """
    cfg: HESCConfig = model.config

    def eval_batch(params, buffers, aux, batch: Batch):
        variables = {"params": params, **buffers}
        carry = initial_carry(cfg, batch)
        memory = aux.get("memory")

        def one_step(carry, _):
            carry, out = model.apply(variables, carry, batch, train=False, memory=memory)
            return carry, (out["actions"], out["expanded_index"] >= 0)

        carry, (actions, expanded) = jax.lax.scan(one_step, carry, None, length=cfg.halt_max_steps - 1)
        carry, out = model.apply(variables, carry, batch, train=False, memory=memory)
        _, metrics = act_loss_terms(carry, out, cfg.loss_type)
        valid = carry.halted & (out["label_counts"] > 0)
        metrics["num_expansions"] = jnp.where(valid, out["num_expansions"], 0).sum().astype(jnp.float32)
        if cfg.q_head_num_actions == 3:
            all_actions = jnp.concatenate([actions, out["actions"][None]], axis=0)  # [steps, B]
            for a, name in enumerate(("action_0_continue", "action_1_halt", "action_2_expand")):
                metrics[name] = jnp.where(valid[None], all_actions == a, False).sum().astype(jnp.float32)
        preds = jnp.argmax(out["logits"], axis=-1).astype(jnp.int32)
        return metrics, preds, out["q_halt_logits"]

    return eval_batch


__all__ = ["action_metrics", "build_model", "create_hesc_state", "example_batch", "hesc_initial_carry",
           "make_hesc_eval_batch", "make_hesc_train_step"]
