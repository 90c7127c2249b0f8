"""The HESC model: the TRM recursion with capsules, VQ, memory reads, adaptive H-cycles,
latent planning and extra heads, wrapped in an ACT step whose actions come from a 3-action
Q-head (CONTINUE / HALT / EXPAND).

Sequence layout (``S = cfg.total_len``)::

    tokens mode:    [puzzle prefix P | capsules k | tokens L]    answer read from the tokens
    capsules mode:  [puzzle prefix P | capsules k]               answer = concept ids of masked capsules

One H-cycle (``HESCCore``)::

    z_L <- f(z_L, z_H + x)  x L_cycles;   z_H <- f(z_H, z_L)
    z_H <- 0.5 z_H + 0.5 VQ(z_H)          (enable_vq)
    z_H <- z_H + gate * read(memory)      (enable_memory)
    rows whose halting confidence passed the threshold stop changing (enable_adaptive_hcycles)

As in the TRM, the first ``H_cycles - 1`` cycles carry no gradient and the recursion is an
``nn.scan`` so the graph does not grow with the cycle counts.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trm_jax.hesc import capsules as caps
from trm_jax.hesc import dqn
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.memory import MemoryBank, MemoryReader
from trm_jax.hesc.mtp import MTPHeads
from trm_jax.hesc.planning import LatentPlanner
from trm_jax.hesc.qheads import EXPAND, HALT, ActionQHead
from trm_jax.hesc.vq import VectorQuantizer
from trm_jax.models.carry import ACTCarry
from trm_jax.models.layers import CastedEmbedding, casted_dense, rope_cos_sin, trunc_normal_init
from trm_jax.models.trm import ReasoningModule

IGNORE = -100


class HESCCore(nn.Module):
    """The pieces one H-cycle uses, as methods (so ``nn.scan`` can carry them together)."""

    cfg: HESCConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.L_level = ReasoningModule(cfg)
        # Halting-correctness head (the TRM's q-head): BCE target "is the answer right";
        # weight 0, bias -5 as in the reference.
        self.q_head = nn.Dense(2, dtype=cfg.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                               bias_init=nn.initializers.constant(-5.0))
        if cfg.enable_vq:
            self.vq = VectorQuantizer(num_codes=cfg.num_concepts, dim=cfg.hidden_size,
                                      commitment_cost=cfg.vq_commitment_cost, use_ema=cfg.vq_use_ema)
        if cfg.enable_memory:
            self.reader = MemoryReader(dim=cfg.hidden_size, top_k=cfg.memory_top_k, num_heads=cfg.memory_num_heads,
                                       dtype=cfg.dtype)

    def f(self, h, injection, cos_sin, bias):
        return self.L_level(h, injection, cos_sin, bias)

    def halt_logits(self, z_H):
        q = self.q_head(z_H[:, 0]).astype(jnp.float32)
        return q[:, 0], q[:, 1]

    def quantize(self, z):
        return self.vq(z)

    def read(self, z, bank):
        return self.reader(z, bank)


def _scan(body, length: int, n_broadcast: int):
    # "vq_ema": the EMA codebook (when vq_use_ema) is read-only inside the cycles, like the params.
    return nn.scan(body, variable_broadcast=["params", "vq_ema"], split_rngs={"params": False},
                   in_axes=(nn.broadcast,) * n_broadcast, length=length)


def _l_step(core: HESCCore, z_L, injection, cos_sin, bias):
    return core.f(z_L, injection, cos_sin, bias), None


def _h_cycle(core: HESCCore, carry, x, cos_sin, bias, bank):
    """One H-cycle with the HESC hooks; returns per-cycle statistics as scan outputs."""
    cfg = core.cfg
    z_H, z_L, exited, cycles = carry
    z_L_new, _ = _scan(_l_step, cfg.L_cycles, 3)(core, z_L, z_H + x, cos_sin, bias)
    z_H_new = core.f(z_H, z_L_new, cos_sin, bias)
    stats: Dict[str, Any] = {}
    if cfg.enable_vq:
        z_q, _, vq_aux = core.quantize(z_H_new)
        # Candidates for dead-code restarts: recent pre-quantisation states (one per row).
        stats["vq"] = {**vq_aux, "candidates": z_H_new[:, -1].astype(jnp.float32)}
        z_H_new = (0.5 * z_H_new + 0.5 * z_q.astype(z_H_new.dtype)).astype(z_H.dtype)
    if cfg.enable_memory:
        z_H_new, mem_info = core.read(z_H_new, bank)
        z_H_new = z_H_new.astype(z_H.dtype)
        stats["memory"] = mem_info
    if cfg.enable_adaptive_hcycles:
        keep = ~exited
        z_H = jnp.where(keep[:, None, None], z_H_new, z_H)
        z_L = jnp.where(keep[:, None, None], z_L_new, z_L)
        cycles = cycles + keep.astype(jnp.int32)
        q_halt, q_continue = core.halt_logits(z_H)
        exited = exited | ((q_halt - q_continue) > cfg.hcycle_confidence_threshold)
    else:
        z_H, z_L, cycles = z_H_new, z_L_new, cycles + 1
    return (z_H, z_L, exited, cycles), stats


class HESCInner(nn.Module):
    """One recursion step of HESC: embeddings + capsules, recursion with hooks, all heads."""

    cfg: HESCConfig

    @nn.compact
    def __call__(self, z_H, z_L, data: Mapping[str, jax.Array], reset_B, capsule_mask_Bk, capsule_target_Bk,
                 memory: Optional[MemoryBank], rnn_state, train: bool = False) -> Dict[str, Any]:
        cfg = self.cfg
        D, P, k = cfg.hidden_size, cfg.puzzle_len, cfg.k
        dtype = cfg.dtype
        init_key = lambda: self.make_rng("params")  # noqa: E731 (only used at init)
        H_init = self.variable("buffers", "H_init", lambda: trunc_normal_init(1.0)(init_key(), (D,)))
        L_init = self.variable("buffers", "L_init", lambda: trunc_normal_init(1.0)(init_key(), (D,)))
        if reset_B is not None:
            z_H = jnp.where(reset_B[:, None, None], H_init.value.astype(dtype), z_H)
            z_L = jnp.where(reset_B[:, None, None], L_init.value.astype(dtype), z_L)

        # Every part enters at unit scale: embeddings (std 1/sqrt(D)) times sqrt(D), as the TRM.
        std, scale = 1.0 / math.sqrt(D), math.sqrt(D)
        embed_tokens = CastedEmbedding(cfg.vocab_size, D, std, dtype, name="embed_tokens")
        parts, capsule_info = [], {}
        if P:
            pe = CastedEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, 0.0, dtype,
                                 name="puzzle_emb")(data["puzzle_identifiers"].astype(jnp.int32))
            pe = jnp.pad(pe, ((0, 0), (0, P * D - cfg.puzzle_emb_ndim)))
            parts.append(scale * pe.reshape(-1, P, D))
        tok = None
        if cfg.mode == "tokens":
            tok = scale * embed_tokens(data["inputs"].astype(jnp.int32))
        if cfg.enable_capsules:
            cap_emb, agg_emb, capsule_info = self._capsules(data, tok, capsule_mask_Bk, capsule_target_Bk)
            parts.append(cap_emb)
        if tok is not None:
            parts.append(tok)
        x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if cfg.pos_encodings == "learned":
            pos = CastedEmbedding(cfg.total_len, D, std, dtype, name="embed_pos")(jnp.arange(cfg.total_len))
            x = 0.707106781 * (x + scale * pos)
        cos_sin = rope_cos_sin(D // cfg.num_heads, cfg.total_len, cfg.rope_theta) if cfg.pos_encodings == "rope" \
            else None
        bias = self._hierarchical_bias() if cfg.enable_hierarchical_attention else None

        core = HESCCore(cfg, name="core")
        B = z_H.shape[0]
        carry = (z_H, z_L, jnp.zeros((B,), jnp.bool_), jnp.zeros((B,), jnp.int32))
        early_stats = None
        early_stop = (not train and cfg.enable_adaptive_hcycles and cfg.H_cycles > 1
                      and not self.is_mutable_collection("params"))
        if early_stop:
            # Inference: the whole batch stops as soon as every row has exited.
            def cond(_, c):
                return (c[4] < cfg.H_cycles - 1) & ~jnp.all(c[2])

            def body(core_, c):
                new, _ = _h_cycle(core_, c[:4], x, cos_sin, bias, memory)
                return (*new, c[4] + 1)

            carry = nn.while_loop(cond, body, core, (*carry, jnp.zeros((), jnp.int32)),
                                  broadcast_variables=True)[:4]
        elif cfg.H_cycles > 1:
            carry, early_stats = _scan(_h_cycle, cfg.H_cycles - 1, 4)(core, carry, x, cos_sin, bias, memory)
            carry = jax.tree.map(jax.lax.stop_gradient, carry)
        carry, last_stats = _h_cycle(core, carry, x, cos_sin, bias, memory)
        z_H, z_L, _, cycles = carry

        out: Dict[str, Any] = {"hcycles": cycles}
        if cfg.enable_latent_planning:
            planner = LatentPlanner(num_paths=cfg.latent_num_paths, depth=cfg.latent_planning_depth,
                                    combine=cfg.latent_combine, dtype=dtype, name="planner")
            z_H, plan_info = planner(z_H, lambda h, inj: core.f(h, inj, cos_sin, bias))
            out["planning_entropy"] = plan_info["planning_entropy"]

        lo = cfg.label_offset
        out["logits"] = casted_dense(cfg.vocab_size, False, dtype, "lm_head")(z_H)[:, lo:lo + cfg.seq_len]
        out["q_halt_logits"], out["q_continue_logits"] = core.halt_logits(z_H)
        head = ActionQHead(num_actions=cfg.q_head_num_actions, head_type=cfg.q_head_type, pooling=cfg.q_head_pooling,
                           hidden=cfg.q_head_hidden, dtype=dtype, name="action_head")
        out["q_values"], out["rnn_state"], out["replay_state"] = head(z_H, rnn_state)
        if cfg.enable_capsules:
            z_caps = z_H[:, P:P + k]
            out.update(capsule_info)
            out["capsule_agg_emb"] = agg_emb
            if cfg.enable_capsule_expansion:
                out["confidence"] = caps.CapsuleConfidence(dtype=dtype, name="capsule_confidence")(z_caps)
            if cfg.enable_reconstruction:
                recon = caps.ReconstructionHead(out_dim=cfg.capsule_content_dim, checksum_dim=cfg.checksum_dim,
                                                dtype=dtype, name="reconstruction")
                out["recon"], out["checksum_pred"] = recon(z_caps)
        if cfg.enable_mtp:
            labels = data["labels"]
            teacher = embed_tokens(jnp.where(labels < 0, 0, labels).astype(jnp.int32))
            out["mtp_logits"] = MTPHeads(num_depths=cfg.mtp_num_depths, vocab_size=cfg.vocab_size, dtype=dtype,
                                         name="mtp")(z_H[:, lo:lo + cfg.seq_len], teacher)
        if cfg.enable_dqn and (cfg.curiosity_rnd_weight > 0):
            out["rnd_intrinsic"], out["rnd_loss"] = dqn.RND(hidden=cfg.rnd_hidden, features=cfg.rnd_hidden,
                                                            name="rnd")(out["replay_state"]["x"])
        out["cycle_stats"] = _merge_cycle_stats(early_stats, last_stats)
        out["z_H"], out["z_L"] = z_H, z_L
        return out

    def _capsules(self, data, tok, mask_Bk, target_Bk):
        """Capsule content -> (input embeddings [B, k, D], aggregate embeddings [B, k, D], info), unit scale."""
        cfg = self.cfg
        D, k = cfg.hidden_size, cfg.k
        if cfg.mode == "tokens":
            # Pooled from the (scaled) token embeddings; the encoder's output is at unit scale.
            encoder = caps.GridCapsuleEncoder(grid=cfg.capsule_grid, regions=cfg.capsule_regions,
                                              subregions=cfg.capsule_subregions, dim=D,
                                              checksum_dim=cfg.checksum_dim, dtype=cfg.dtype, name="capsule_encoder")
            sketches, children, checksums = encoder(tok, data["inputs"] != 0)
            project = lambda c: c.astype(cfg.dtype)  # noqa: E731 (grid capsules live in the hidden space)
            mask_emb = None
        else:
            # Data capsules are unit-norm sentence embeddings: project to D, then to unit element scale.
            sketches = data["sketches"].astype(jnp.float32)
            children = data["children"].astype(jnp.float32)
            checksums = data["checksums"].astype(jnp.float32)
            proj = casted_dense(D, False, cfg.dtype, "capsule_proj")
            pos = self.param("capsule_pos", trunc_normal_init(1.0), (k, D))
            mask_emb = self.param("capsule_mask_emb", trunc_normal_init(1.0), (D,))

            def project(c):
                return math.sqrt(D) * proj(c) + pos.astype(cfg.dtype)
        state = caps.CapsuleState(sketches=sketches, children=children, checksums=checksums,
                                  expanded_mask=mask_Bk, num_expansions=jnp.zeros(mask_Bk.shape[:1], jnp.int32))
        content = caps.effective_content(state, cfg.capsule_aggregate)
        cap_emb = project(content)
        aggregate = caps.effective_content(state.replace(expanded_mask=jnp.ones_like(mask_Bk)), cfg.capsule_aggregate)
        agg_emb = project(aggregate)
        if cfg.mode == "capsules":
            cap_emb = jnp.where(target_Bk[..., None], mask_emb.astype(cfg.dtype), cap_emb)
        info = {"capsule_sketches": sketches, "capsule_children": children, "capsule_checksums": checksums}
        return cap_emb, agg_emb, info

    def _hierarchical_bias(self):
        cfg = self.cfg
        region = caps.grid_region_ids(cfg.capsule_grid, cfg.capsule_regions)
        return caps.hierarchical_attention_bias(cfg.puzzle_len, cfg.k, region, strong=0.0,
                                                weak=cfg.hierarchical_bias_weak)


def _merge_cycle_stats(early, last) -> Dict[str, Any]:
    """Counts summed over every H-cycle; losses and reads from the last (differentiated) cycle."""
    merged: Dict[str, Any] = {}
    if "vq" in last:
        v = last["vq"]
        counts, sums = v["counts"], v["sums"]
        if early is not None:
            counts = counts + early["vq"]["counts"].sum(0)
            sums = sums + early["vq"]["sums"].sum(0)
        merged["vq"] = {**v, "counts": counts, "sums": sums}
    if "memory" in last:
        merged["memory"] = last["memory"]
    return merged


def _row_where(mask_B, a, b):
    return jnp.where(mask_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


class HESC(nn.Module):
    """HESC with the ACT wrapper: one supervision step, ``(carry, batch) -> (carry, outputs)``.

    ``model.apply(variables, carry, batch, train=..., epsilon=..., temperature=..., memory=bank,
    rngs={"exploration": key, "masking": key})``. Actions: argmax of the Q-values in
    evaluation; epsilon-greedy with a softmax temperature while training.
    """

    config: HESCConfig

    @nn.compact
    def __call__(self, carry: ACTCarry, batch: Mapping[str, jax.Array], train: bool = False,
                 epsilon: float = 0.0, temperature: float = 1.0,
                 memory: Optional[MemoryBank] = None) -> Tuple[ACTCarry, Dict[str, Any]]:
        cfg = self.config
        inner = HESCInner(cfg, name="inner")
        ex = dict(carry.extras)
        reset = carry.halted
        steps = jnp.where(reset, 0, carry.steps)
        data = {k: _row_where(reset, batch[k], v) for k, v in carry.current_data.items()}
        prev_accuracy = jnp.where(reset, 0.0, ex["prev_accuracy"])
        capsule_mask = num_expansions = None
        if cfg.enable_capsules:
            carried: caps.CapsuleState = ex["capsules"]
            capsule_mask = carried.expanded_mask & ~reset[:, None]
            num_expansions = jnp.where(reset, 0, carried.num_expansions)
        rnn_state = _row_where(reset, jnp.zeros_like(ex["rnn_state"]), ex["rnn_state"]) if "rnn_state" in ex else None
        target = ex.get("capsule_target")
        if cfg.mode == "capsules":
            fresh = self._capsule_targets(data, train)
            target = _row_where(reset, fresh, target)
            # Only masked capsules are predicted (real targets: their concept ids).
            data["labels"] = jnp.where(reset[:, None] & ~target, IGNORE, data["labels"])

        out = inner(carry.z_H, carry.z_L, data, reset, capsule_mask, target, memory, rnn_state, train)
        z_H, z_L = jax.lax.stop_gradient(out.pop("z_H")), jax.lax.stop_gradient(out.pop("z_L"))
        steps = steps + 1

        labels = data["labels"]
        label_mask = labels != IGNORE
        counts = label_mask.sum(-1)
        correct = label_mask & (jnp.argmax(out["logits"], -1) == labels)
        accuracy = correct.sum(-1) / jnp.maximum(counts, 1)
        seq_correct = correct.sum(-1) == counts
        is_last = steps >= cfg.halt_max_steps

        q = jax.lax.stop_gradient(out["q_values"])
        if cfg.q_head_num_actions == 3:
            if train:
                actions = dqn.select_actions(q, self.make_rng("exploration"), epsilon, temperature)
            else:
                actions = jnp.argmax(q, axis=-1).astype(jnp.int32)
            # Evaluation runs every row exactly halt_max_steps steps (batching, as the TRM);
            # while training the HALT action ends an example.
            halted = is_last | (train & (actions == HALT))
        else:
            actions = jnp.zeros_like(steps)
            q_halt = jax.lax.stop_gradient(out["q_halt_logits"])
            halted = is_last | (train & (cfg.halt_max_steps > 1) & (q_halt > 0))

        expanded_index = jnp.full_like(steps, -1)
        cost = jnp.zeros(steps.shape, jnp.float32)
        if cfg.enable_capsules:
            # This step's capsules (content recomputed from the data and the current parameters,
            # expansions carried) ride in the carry as a CapsuleState.
            f32 = lambda x: jax.lax.stop_gradient(x).astype(jnp.float32)  # noqa: E731 (stable carry dtype)
            state = caps.CapsuleState(sketches=f32(out["capsule_sketches"]), children=f32(out["capsule_children"]),
                                      checksums=f32(out["capsule_checksums"]), expanded_mask=capsule_mask,
                                      num_expansions=num_expansions)
        if cfg.enable_capsule_expansion:
            do_expand = (actions == EXPAND) & ~halted
            state, expanded_index, cost = caps.expand_capsules(state, do_expand, jax.lax.stop_gradient(
                out["confidence"]), cfg.expansion_cost_per_child)
            num_expansions = state.num_expansions
            # The expanded capsule's state takes its new (children) content right away.
            pos = cfg.capsule_offset + expanded_index
            hit = (jnp.arange(cfg.total_len)[None, :] == pos[:, None]) & (expanded_index >= 0)[:, None]
            new_content = jnp.take_along_axis(out["capsule_agg_emb"], jnp.maximum(expanded_index, 0)[:, None, None],
                                              axis=1)
            z_H = jnp.where(hit[..., None], jax.lax.stop_gradient(new_content).astype(z_H.dtype), z_H)

        ex["prev_accuracy"] = accuracy
        if cfg.enable_capsules:
            ex["capsules"] = state
        if "rnn_state" in ex:
            ex["rnn_state"] = jax.lax.stop_gradient(out["rnn_state"])
        if target is not None:
            ex["capsule_target"] = target
        out.update(actions=actions, accuracy=accuracy, prev_accuracy=prev_accuracy,
                   seq_correct=seq_correct, token_correct=correct, halted=halted, reset=reset,
                   expanded_index=expanded_index,
                   expansion_cost=cost, label_counts=counts,
                   num_expansions=jnp.zeros_like(steps) if num_expansions is None else num_expansions)
        new_carry = ACTCarry(z_H=z_H, z_L=z_L, steps=steps, halted=halted, current_data=data, extras=ex)
        return new_carry, out

    def _capsule_targets(self, data, train: bool) -> jax.Array:
        """Which capsules are masked and predicted, ``[B, k] bool`` (at least one per row)."""
        cfg = self.config
        k = cfg.k
        key = self.make_rng("masking") if self.has_rng("masking") else jax.random.PRNGKey(0)
        # A per-example key (from its content) so evaluation masks are the same for the same example.
        content = (data["inputs"].astype(jnp.uint32) * (jnp.arange(k, dtype=jnp.uint32) + 1)).sum(-1)
        keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(content)
        scores = jax.vmap(lambda kk: jax.random.uniform(kk, (k,)))(keys)
        n_mask = max(1, round(cfg.capsule_mask_ratio * k))
        threshold = jnp.sort(scores, axis=-1)[:, n_mask - 1:n_mask]
        return scores <= threshold  # [B, k]


def initial_carry(cfg: HESCConfig, batch: Mapping[str, Any]) -> ACTCarry:
    """Every row halted; extras sized for the batch (see docs/hesc.md)."""
    import numpy as np

    B = np.shape(batch["inputs"])[0]
    hidden = lambda: jnp.zeros((B, cfg.total_len, cfg.hidden_size), cfg.dtype)  # noqa: E731 (two buffers: donatable)
    extras: Dict[str, Any] = {"prev_accuracy": jnp.zeros((B,), jnp.float32)}
    if cfg.enable_capsules:
        k, m, Dc = cfg.k, cfg.m, cfg.capsule_content_dim
        extras["capsules"] = caps.CapsuleState(
            sketches=jnp.zeros((B, k, Dc), jnp.float32), children=jnp.zeros((B, k, m, Dc), jnp.float32),
            checksums=jnp.zeros((B, k, cfg.checksum_dim), jnp.float32),
            expanded_mask=jnp.zeros((B, k), jnp.bool_), num_expansions=jnp.zeros((B,), jnp.int32))
    if cfg.q_head_type == "rnn":
        extras["rnn_state"] = jnp.zeros((B, cfg.q_head_hidden), jnp.float32)
    if cfg.mode == "capsules":
        extras["capsule_target"] = jnp.zeros((B, cfg.k), jnp.bool_)
    return ACTCarry(z_H=hidden(), z_L=hidden(), steps=jnp.zeros((B,), jnp.int32), halted=jnp.ones((B,), jnp.bool_),
                    current_data={k: jnp.zeros(np.shape(v), jnp.asarray(v).dtype) for k, v in batch.items()},
                    extras=extras)
