"""The HESC model: the TRM plus hooks (docs/hesc.md, docs/architecture.md#variants).

:class:`HESCInner` subclasses :class:`~trm_jax.models.trm.TRMInner` and :class:`HESC` subclasses
:class:`~trm_jax.models.trm.TRM`: the embeddings, the ``nn.scan`` recursion, the heads, the ACT
step and its halting rule are the TRM's, and HESC overrides only the hooks:

* ``extra_positions``: capsule positions between the puzzle prefix and the tokens
  (tokens mode ``[prefix P | capsules k | tokens L]``, capsules pooled from the token grid; pixels
  mode the same layout, capsules and children pooled from the image by the pixel path; capsules
  mode ``[prefix P | capsules k]``, the answer being the concept ids of the masked capsules);
* ``after_h_update``: after each high-level update, ``z_H <- 0.5 z_H + 0.5 VQ(z_H)``,
  ``z_H <- z_H + gate * read(memory)``, and (adaptive H-cycles) rows whose halting value passed
  the threshold stop changing;
* ``after_recursion``: latent planning;
* ``heads``: the 3-action Q-head, capsule confidence and reconstruction, MTP, RND;
* ACT: ``begin_step`` (capsule masks and targets, the Q-head's RNN state), ``wants_halt`` (the
  3-action policy: HALT), ``end_step`` (EXPAND).

With every extension off and two actions the model is the TRM: the same parameters, outputs and
halting (tests/test_hesc_model.py checks it).

Rows read left to right (pixels mode with ``prefix_lm``): besides the TRM's prefix-LM attention
mask, every whole-row summary (the action head's pooling, hence HALT, EXPAND, the adaptive
H-cycle exit and memory writes; the latent planner's path scores) reads only the positions before
the tokens (:func:`pool_mask`), so no position depends on a later token
(tests/test_hesc_vision.py).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from trm_jax.hesc import capsules as caps
from trm_jax.hesc import dqn
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.memory import MemoryReader
from trm_jax.hesc.mtp import MTPHeads
from trm_jax.hesc.planning import LatentPlanner
from trm_jax.hesc.qheads import CONTINUE, EXPAND, HALT, ActionQHead, masked_mean
from trm_jax.hesc.vq import VectorQuantizer
from trm_jax.losses import IGNORE_LABEL_ID
from trm_jax.models.act import row_where
from trm_jax.models.carry import ACTCarry
from trm_jax.models.carry import initial_carry as trm_initial_carry
from trm_jax.models.layers import casted_dense, trunc_normal_init
from trm_jax.models.trm import TRM, TRMInner


@flax.struct.dataclass
class PendingTransition:
    """Each row's DQN transition still waiting for its next state (``state`` is the Q-head's replay state)."""

    state: Dict[str, jax.Array]
    action: jax.Array   # [B] int32
    reward: jax.Array   # [B] float32
    valid: jax.Array    # [B] bool


@flax.struct.dataclass
class HESCExtras:
    """HESC's per-row ACT state (``ACTCarry.extras``); a field is None when its extension is off.

    Attributes:
      prev_accuracy: ``[B]`` token accuracy of the row's previous step (the reward's baseline).
      capsules: the row's capsules and which are expanded (``enable_capsules``).
      rnn_state: ``[B, q_head_hidden]`` GRU state of an ``rnn`` Q-head.
      capsule_target: ``[B, k] bool`` masked, predicted capsules (capsules mode).
      pending: the transition completed at the next step (``enable_dqn``).
    """

    prev_accuracy: jax.Array
    capsules: Optional[caps.CapsuleState] = None
    rnn_state: Optional[jax.Array] = None
    capsule_target: Optional[jax.Array] = None
    pending: Optional[PendingTransition] = None


def replay_example(cfg: HESCConfig) -> Dict[str, jax.Array]:
    """One replay state of the Q-head (what the DQN stores per transition), unbatched."""
    example = {"x": jnp.zeros((cfg.hidden_size,), jnp.float32)}
    if cfg.q_head_type == "rnn":
        example["h"] = jnp.zeros((cfg.q_head_hidden,), jnp.float32)
    return example


def pool_mask(cfg: HESCConfig, data: Mapping[str, jax.Array]) -> Optional[jax.Array]:
    """``[B, S] bool``: the positions a whole-row summary may read (the action head's pooling, the
    latent planner's path scores, the memory write without an action head), or None (every position).

    A row read left to right (``prefix_lm``, batch entry ``causal`` 1) pools only the prefix and the
    capsules, which see no token under the prefix-LM mask: a summary over its tokens would steer every
    position (halting, EXPAND, the path mix, the H-cycle exit) by the later tokens, and a memory write
    of it would hand them to the row's next step. Other rows pool every position.
    """
    if not (cfg.has_image and cfg.prefix_lm):
        return None
    before_tokens = jnp.arange(cfg.total_len) < cfg.label_offset
    return before_tokens[None, :] | ~data["causal"].astype(bool)[:, None]


class HESCInner(TRMInner):
    """The TRM's recursion step with HESC's hooks; ``ctx`` is the step's :class:`dict` from ``HESC.begin_step``."""

    cfg: HESCConfig

    def setup(self) -> None:
        super().setup()
        cfg = self.cfg
        D, dtype = cfg.hidden_size, cfg.dtype
        if cfg.enable_capsules and cfg.mode == "tokens":
            self.capsule_encoder = caps.GridCapsuleEncoder(grid=cfg.capsule_grid, regions=cfg.capsule_regions,
                                                           subregions=cfg.capsule_subregions, dim=D,
                                                           checksum_dim=cfg.checksum_dim, dtype=dtype)
        if cfg.enable_capsules and cfg.mode == "capsules":
            self.capsule_proj = casted_dense(D, False, dtype)
            self.capsule_pos = self.param("capsule_pos", trunc_normal_init(1.0), (cfg.k, D))
            self.capsule_mask_emb = self.param("capsule_mask_emb", trunc_normal_init(1.0), (D,))
        if cfg.enable_vq:
            self.vq = VectorQuantizer(num_codes=cfg.num_concepts, dim=D, commitment_cost=cfg.vq_commitment_cost,
                                      use_ema=cfg.vq_use_ema)
        if cfg.enable_memory:
            self.reader = MemoryReader(dim=D, top_k=cfg.memory_top_k, num_heads=cfg.memory_num_heads, dtype=dtype)
        if cfg.enable_latent_planning:
            self.planner = LatentPlanner(num_paths=cfg.latent_num_paths, depth=cfg.latent_planning_depth,
                                         combine=cfg.latent_combine, dtype=dtype)
        if cfg.q_head_num_actions == 3:
            self.action_head = ActionQHead(num_actions=3, head_type=cfg.q_head_type, pooling=cfg.q_head_pooling,
                                           hidden=cfg.q_head_hidden, dtype=dtype)
        if cfg.enable_capsule_expansion:
            self.capsule_confidence = caps.CapsuleConfidence(dtype=dtype)
        if cfg.enable_capsules and cfg.enable_reconstruction:
            self.reconstruction = caps.ReconstructionHead(out_dim=cfg.capsule_content_dim,
                                                          checksum_dim=cfg.checksum_dim, dtype=dtype)
        if cfg.enable_mtp:
            self.mtp = MTPHeads(num_depths=cfg.mtp_num_depths, vocab_size=cfg.vocab_size, dtype=dtype)
        if cfg.enable_dqn and cfg.curiosity_rnd_weight > 0:
            self.rnd = dqn.RND(hidden=cfg.rnd_hidden, features=cfg.rnd_hidden)

    # ------------------------------------------------------------------ capsules
    def vision_children(self) -> int:
        """Pixels mode: the image pooling also makes each capsule's ``m`` children (EXPAND opens them)."""
        return self.cfg.m if self.cfg.mode == "pixels" else 0

    def extra_positions(self, tok_BLD, data, ctx):
        cfg = self.cfg
        if not cfg.enable_capsules:
            return None, {}
        scale = math.sqrt(cfg.hidden_size)
        mask_Bk, target_Bk = ctx["capsule_mask"], ctx["capsule_target"]
        if cfg.mode == "capsules":
            # Data capsules are unit-norm sentence embeddings: project to D, then to unit element scale.
            sketches, children, checksums = (data[k].astype(jnp.float32) for k in ("sketches", "children", "checksums"))
            if target_Bk is not None:
                # A masked capsule's content is the answer: nothing derived from it may reach the model.
                sketches = jnp.where(target_Bk[..., None], 0.0, sketches)
                children = jnp.where(target_Bk[..., None, None], 0.0, children)
                checksums = jnp.where(target_Bk[..., None], 0.0, checksums)

            def project(c):
                return scale * self.capsule_proj(c) + self.capsule_pos.astype(cfg.dtype)
        else:
            # Grid (tokens mode) and image (pixels mode) capsules are made in the hidden space at unit scale.
            sketches, children, checksums = self.learned_capsules(tok_BLD, data)
            project = lambda c: c.astype(cfg.dtype)  # noqa: E731
        state = caps.CapsuleState(sketches=sketches, children=children, checksums=checksums,
                                  expanded_mask=mask_Bk, num_expansions=jnp.zeros(mask_Bk.shape[:1], jnp.int32))
        cap_emb = project(caps.effective_content(state, cfg.capsule_aggregate))
        agg_emb = project(caps.effective_content(state.replace(expanded_mask=jnp.ones_like(mask_Bk)),
                                                 cfg.capsule_aggregate))
        if target_Bk is not None:
            mask_emb = self.capsule_mask_emb.astype(cfg.dtype)
            cap_emb = jnp.where(target_Bk[..., None], mask_emb, cap_emb)
            agg_emb = jnp.where(target_Bk[..., None], mask_emb, agg_emb)
        info = {"capsule_sketches": sketches, "capsule_children": children, "capsule_checksums": checksums,
                "capsule_agg_emb": agg_emb}
        return cap_emb / scale, info  # the TRM scales every position by sqrt(D)

    def learned_capsules(self, tok_BLD, data):
        """``(sketches [B, k, D], children [B, k, m, D], checksums [B, k, R])`` the model makes itself:
        pooled from the token embeddings ``tok_BLD`` (scaled to unit scale) by the grid encoder (tokens
        mode), or from the image by the pixel path's encoder and pooling (pixels mode;
        ``TRMInner.image_capsules``, unit RMS), with the grid encoder's checksums (a fixed projection
        of the children)."""
        cfg = self.cfg
        if cfg.mode == "tokens":
            return self.capsule_encoder(math.sqrt(cfg.hidden_size) * tok_BLD, data["inputs"] != 0)
        sketches, children = self.image_capsules(data)
        return sketches, children, caps.checksum_projection(children, cfg.checksum_dim)

    # ------------------------------------------------------------------ recursion hooks
    def recursion_context(self, ctx):
        rctx = super().recursion_context(ctx)
        cfg = self.cfg
        if cfg.enable_hierarchical_attention:
            region = caps.grid_region_ids(cfg.capsule_grid, cfg.capsule_regions)
            rctx["bias"] = caps.hierarchical_attention_bias(cfg.puzzle_len, cfg.k, region, strong=0.0,
                                                            weak=cfg.hierarchical_bias_weak)
        rctx["memory"] = ctx["memory"]
        rctx["rnn_state"] = ctx["rnn_state"]
        rctx["pool_mask"] = ctx["pool_mask"]
        return rctx

    def cycle_state_init(self, batch_size: int):
        return jnp.zeros((batch_size,), jnp.bool_), jnp.zeros((batch_size,), jnp.int32)  # (exited, cycles)

    def cycle_done(self, cycle_state):
        return cycle_state[0]

    def stops_early(self, train: bool) -> bool:
        return self.cfg.enable_adaptive_hcycles and not train

    def halt_value(self, z_H: jax.Array, rnn_state: Optional[jax.Array], mask: Optional[jax.Array]) -> jax.Array:
        """``[B]`` how much the policy prefers halting now, from trained heads only.

        3 actions: ``Q(HALT) - Q(CONTINUE)`` of the action head (trained by the DQN). 2 actions: the
        halting head's ``q_halt`` logit (``no_ACT_continue``; trained by the halt BCE) or
        ``q_halt - q_continue`` (both trained, the continue logit by its bootstrapped target).
        ``mask``: the positions the action head pools (:func:`pool_mask`).
        """
        if self.cfg.q_head_num_actions == 3:
            q, _, _ = self.action_head(z_H, rnn_state, mask)
            return q[:, HALT] - q[:, CONTINUE]
        q_halt, q_continue = self.halt_logits(z_H)
        return q_halt if self.cfg.no_ACT_continue else q_halt - q_continue

    def after_h_update(self, old, new, cycle_state, rctx):
        cfg = self.cfg
        (z_H, z_L), (z_H_new, z_L_new) = (old["z_H"], old["z_L"]), (new["z_H"], new["z_L"])
        exited, cycles = cycle_state
        stats: Dict[str, Any] = {}
        if cfg.enable_vq:
            z_q, _, vq_aux = self.vq(z_H_new)
            # Candidates for dead-code restarts: recent pre-quantisation states (one per row).
            stats["vq"] = {**vq_aux, "candidates": z_H_new[:, -1].astype(jnp.float32)}
            z_H_new = (0.5 * z_H_new + 0.5 * z_q.astype(z_H_new.dtype)).astype(z_H.dtype)
        if cfg.enable_memory:
            z_H_new, stats["memory"] = self.reader(z_H_new, rctx["memory"])
            z_H_new = z_H_new.astype(z_H.dtype)
        if not cfg.enable_adaptive_hcycles:
            return ({"z_H": z_H_new, "z_L": z_L_new}, (exited, cycles + 1)), stats
        keep = ~exited
        z_H = jnp.where(keep[:, None, None], z_H_new, z_H)
        z_L = jnp.where(keep[:, None, None], z_L_new, z_L)
        value = jax.lax.stop_gradient(self.halt_value(z_H, rctx["rnn_state"], rctx["pool_mask"]))
        confident = value > cfg.hcycle_confidence_threshold
        return ({"z_H": z_H, "z_L": z_L}, (exited | confident, cycles + keep.astype(jnp.int32))), stats

    def merge_cycle_stats(self, early, last):
        """Counts summed over every H-cycle; losses and reads from the last (differentiated) cycle."""
        merged: Dict[str, Any] = {}
        if "vq" in last:
            v = last["vq"]
            counts, sums = v["counts"], v["sums"]
            if early is not None:
                counts, sums = counts + early["vq"]["counts"].sum(0), sums + early["vq"]["sums"].sum(0)
            merged["vq"] = {**v, "counts": counts, "sums": sums}
        if "memory" in last:
            merged["memory"] = last["memory"]
        return merged

    def after_recursion(self, z_H, rctx):
        cfg = self.cfg
        if not cfg.enable_latent_planning:
            return z_H, {}
        bias = rctx["bias"]
        if bias is not None and bias.ndim == 4 and bias.shape[0] > 1:
            # A per-row bias (the prefix-LM mask) follows its row's paths, folded into the batch row-major.
            bias = jnp.repeat(bias, cfg.latent_num_paths, axis=0)
        z_H, plan = self.planner(z_H, lambda h, inj: self.L_level(h, inj, rctx["cos_sin"], bias), rctx["pool_mask"])
        return z_H, {"planning_entropy": plan["planning_entropy"]}

    # ------------------------------------------------------------------ heads
    def heads(self, z_H, data, ctx, info):
        cfg = self.cfg
        out = super().heads(z_H, data, ctx, {})
        out["hcycles"] = info["cycle_state"][1]
        out["cycle_stats"] = info["cycle_stats"]
        if "planning_entropy" in info:
            out["planning_entropy"] = info["planning_entropy"]
        if cfg.q_head_num_actions == 3:
            out["q_values"], out["rnn_state"], out["replay_state"] = self.action_head(z_H, ctx["rnn_state"],
                                                                                      ctx["pool_mask"])
        if cfg.enable_memory:
            # What a memory write stores: the Q-head's pooled state, or the plain mean without one.
            out["pooled"] = out["replay_state"]["x"] if "replay_state" in out else \
                jax.lax.stop_gradient(masked_mean(z_H, ctx["pool_mask"]))
        if cfg.enable_capsules:
            P, k = cfg.puzzle_len, cfg.k
            z_caps = z_H[:, P:P + k]
            out.update({key: info[key] for key in ("capsule_sketches", "capsule_children", "capsule_checksums",
                                                   "capsule_agg_emb")})
            if cfg.enable_capsule_expansion:
                out["confidence"] = self.capsule_confidence(z_caps)
            if cfg.enable_reconstruction:
                out["recon"], out["checksum_pred"] = self.reconstruction(z_caps)
        if cfg.enable_mtp:
            lo = cfg.label_offset
            labels = data["labels"]
            teacher = self.embed_tokens(jnp.where(labels < 0, 0, labels).astype(jnp.int32))
            out["mtp_logits"] = self.mtp(z_H[:, lo:lo + cfg.seq_len], teacher)
        if cfg.enable_dqn and cfg.curiosity_rnd_weight > 0:
            out["rnd_intrinsic"], out["rnd_loss"] = self.rnd(out["replay_state"]["x"])
        return out


class HESC(TRM):
    """HESC with the TRM's ACT wrapper: one supervision step, ``(carry, batch) -> (carry, outputs)``.

    ``model.apply(variables, carry, batch, train=..., adaptive=..., epsilon=..., temperature=...,
    expansion_cost=..., memory=bank, rngs={"exploration": key, "masking": key})``. With three
    actions the policy is greedy in evaluation and epsilon-greedy with a softmax temperature while
    training; with two it is the TRM's halting head.
    """

    config: HESCConfig

    def make_inner(self) -> HESCInner:
        return HESCInner(self.config, name="inner")

    def begin_step(self, extras: HESCExtras, data, reset_B, train, inputs):
        cfg = self.config
        unknown = set(inputs) - {"epsilon", "temperature", "expansion_cost", "memory"}
        if unknown:
            raise TypeError(f"HESC takes the inputs epsilon, temperature, expansion_cost, memory; got {sorted(unknown)}")
        if cfg.enable_memory and inputs.get("memory") is None:
            raise ValueError("enable_memory: model.apply(..., memory=bank) needs the memory bank (hesc.memory.memory_init)")
        extras = extras.replace(prev_accuracy=jnp.where(reset_B, 0.0, extras.prev_accuracy))
        capsule_mask = None
        if cfg.enable_capsules:
            carried = extras.capsules
            capsule_mask = carried.expanded_mask & ~reset_B[:, None]
            extras = extras.replace(capsules=carried.replace(
                expanded_mask=capsule_mask, num_expansions=jnp.where(reset_B, 0, carried.num_expansions)))
        if extras.rnn_state is not None:
            extras = extras.replace(rnn_state=row_where(reset_B, jnp.zeros_like(extras.rnn_state), extras.rnn_state))
        target = None
        if cfg.mode == "capsules":
            target = row_where(reset_B, self._capsule_targets(data), extras.capsule_target)
            extras = extras.replace(capsule_target=target)
            # Only masked capsules are predicted (real targets: their concept ids).
            data = dict(data, labels=jnp.where(reset_B[:, None] & ~target, IGNORE_LABEL_ID, data["labels"]))
        ctx = {"capsule_mask": capsule_mask, "capsule_target": target, "memory": inputs.get("memory"),
               "rnn_state": extras.rnn_state, "pool_mask": pool_mask(cfg, data),
               # Per child; annealed by the train step (hesc/objective.py), the configured value otherwise.
               "expansion_cost": inputs.get("expansion_cost", cfg.expansion_cost_per_child)}
        return extras, data, ctx

    def wants_halt(self, out, train, inputs):
        cfg = self.config
        if cfg.q_head_num_actions == 2:
            return super().wants_halt(out, train, inputs)
        q = jax.lax.stop_gradient(out["q_values"])
        if train:
            actions = dqn.select_actions(q, self.make_rng("exploration"), inputs.get("epsilon", 0.0),
                                         inputs.get("temperature", 1.0))
        else:
            actions = jnp.argmax(q, axis=-1).astype(jnp.int32)
        out["actions"] = actions
        return actions == HALT

    def end_step(self, extras: HESCExtras, z_H, data, out, halted_B, ctx):
        cfg = self.config
        labels = data["labels"]
        label_mask = labels != IGNORE_LABEL_ID
        counts = label_mask.sum(-1)
        correct = label_mask & (jnp.argmax(out["logits"], -1) == labels)
        accuracy = correct.sum(-1) / jnp.maximum(counts, 1)
        steps_shape = halted_B.shape
        actions = out.get("actions", jnp.where(halted_B, HALT, CONTINUE).astype(jnp.int32))
        expanded_index = jnp.full(steps_shape, -1, jnp.int32)
        cost = jnp.zeros(steps_shape, jnp.float32)
        if cfg.enable_capsules:
            # This step's capsules (content recomputed from the data and the current parameters,
            # expansions carried) ride in the carry.
            f32 = lambda x: jax.lax.stop_gradient(x).astype(jnp.float32)  # noqa: E731 (stable carry dtype)
            state = extras.capsules.replace(sketches=f32(out["capsule_sketches"]),
                                            children=f32(out["capsule_children"]),
                                            checksums=f32(out["capsule_checksums"]))
            if cfg.enable_capsule_expansion:
                do_expand = (actions == EXPAND) & ~halted_B
                state, expanded_index, cost = caps.expand_capsules(
                    state, do_expand, jax.lax.stop_gradient(out["confidence"]), ctx["expansion_cost"],
                    blocked=ctx["capsule_target"])
                # The expanded capsule's state takes its new (children) content right away.
                pos = cfg.capsule_offset + expanded_index
                hit = (jnp.arange(cfg.total_len)[None, :] == pos[:, None]) & (expanded_index >= 0)[:, None]
                new_content = jnp.take_along_axis(out["capsule_agg_emb"],
                                                  jnp.maximum(expanded_index, 0)[:, None, None], axis=1)
                z_H = jnp.where(hit[..., None], jax.lax.stop_gradient(new_content).astype(z_H.dtype), z_H)
            extras = extras.replace(capsules=state)
        out.update(actions=actions, accuracy=accuracy, prev_accuracy=extras.prev_accuracy,
                   seq_correct=correct.sum(-1) == counts, token_correct=correct, halted=halted_B,
                   expanded_index=expanded_index, expansion_cost=cost, label_counts=counts,
                   num_expansions=extras.capsules.num_expansions if cfg.enable_capsules
                   else jnp.zeros(steps_shape, jnp.int32))
        extras = extras.replace(prev_accuracy=accuracy)
        if extras.rnn_state is not None:
            extras = extras.replace(rnn_state=jax.lax.stop_gradient(out["rnn_state"]))
        return extras, z_H, out

    def _capsule_targets(self, data) -> jax.Array:
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

    def initial_carry(self, batch: Mapping[str, Any]) -> ACTCarry:
        return initial_carry(self.config, batch)

    def example_batch(self, batch_size: int) -> Dict[str, jax.Array]:
        """A zero batch with every key the model reads (capsule data in capsules mode)."""
        batch = super().example_batch(batch_size)
        cfg = self.config
        if cfg.mode == "capsules":
            k, m, Dc = cfg.k, cfg.m, cfg.capsule_dim
            batch.update(sketches=jnp.zeros((batch_size, k, Dc)), children=jnp.zeros((batch_size, k, m, Dc)),
                         checksums=jnp.zeros((batch_size, k, cfg.checksum_dim)))
        return batch


def initial_carry(cfg: HESCConfig, batch: Mapping[str, Any]) -> ACTCarry:
    """Every row halted; :class:`HESCExtras` sized for the batch (see docs/hesc.md)."""
    carry = trm_initial_carry(cfg, batch)
    B = np.shape(batch["inputs"])[0]
    extras = HESCExtras(prev_accuracy=jnp.zeros((B,), jnp.float32))
    if cfg.enable_capsules:
        k, m, Dc = cfg.k, cfg.m, cfg.capsule_content_dim
        extras = extras.replace(capsules=caps.CapsuleState(
            sketches=jnp.zeros((B, k, Dc), jnp.float32), children=jnp.zeros((B, k, m, Dc), jnp.float32),
            checksums=jnp.zeros((B, k, cfg.checksum_dim), jnp.float32),
            expanded_mask=jnp.zeros((B, k), jnp.bool_), num_expansions=jnp.zeros((B,), jnp.int32)))
    if cfg.q_head_num_actions == 3 and cfg.q_head_type == "rnn":
        extras = extras.replace(rnn_state=jnp.zeros((B, cfg.q_head_hidden), jnp.float32))
    if cfg.mode == "capsules":
        extras = extras.replace(capsule_target=jnp.zeros((B, cfg.k), jnp.bool_))
    if cfg.enable_dqn:
        extras = extras.replace(pending=PendingTransition(
            state=jax.tree.map(lambda x: jnp.zeros((B,) + x.shape, x.dtype), replay_example(cfg)),
            action=jnp.zeros((B,), jnp.int32), reward=jnp.zeros((B,), jnp.float32),
            valid=jnp.zeros((B,), jnp.bool_)))
    return carry.replace(extras=extras)
