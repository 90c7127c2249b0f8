"""The Tiny Recursive Model: embeddings, one shared reasoning module, H/L recursion, heads.

Shapes: batch ``B``, puzzle sequence ``L = seq_len``, prefix ``P``
(puzzle-embedding positions), hidden ``D``, ``S = L + P``.

The recursion (docs/architecture.md#recursion) is written with ``nn.scan`` so the compiled graph
holds one copy of the reasoning module per scan body, whatever ``H_cycles``
and ``L_cycles`` are:

    repeat H_cycles:  (repeat L_cycles: z_L = f(z_L, z_H + x));  z_H = f(z_H, z_L)

The first ``H_cycles - 1`` cycles run under ``stop_gradient``; only the last
is differentiated.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trm_jax.models.act import act_step
from trm_jax.models.carry import ACTCarry
from trm_jax.models.config import TRMConfig
from trm_jax.models.layers import (Attention, CastedEmbedding, CosSin, SwiGLU, casted_dense, constrain_batch,
                                   rms_norm, rope_cos_sin, trunc_normal_init)


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or ``mlp_t``) then a SwiGLU."""

    cfg: TRMConfig

    @nn.compact
    def __call__(self, h_BSD: jax.Array, cos_sin: Optional[CosSin], bias: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.cfg
        if cfg.mlp_t:
            # Token mixing: a SwiGLU over the sequence axis. As in the reference,
            # the residual norm is taken in the transposed [B, D, S] layout, i.e.
            # over the sequence axis.
            h_BDS = jnp.swapaxes(h_BSD, 1, 2)
            mixed = SwiGLU(cfg.total_len, cfg.expansion, cfg.dtype, name="mlp_t")(h_BDS)
            h_BSD = jnp.swapaxes(rms_norm(h_BDS + mixed, cfg.rms_norm_eps), 1, 2)
        else:
            attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.dtype,
                             implementation=cfg.attention_impl,
                             name="self_attn")
            h_BSD = rms_norm(h_BSD + attn(h_BSD, cos_sin, bias), cfg.rms_norm_eps)
        mlp = SwiGLU(cfg.hidden_size, cfg.expansion, cfg.dtype, name="mlp")
        return rms_norm(h_BSD + mlp(h_BSD), cfg.rms_norm_eps)


class ReasoningModule(nn.Module):
    """``f(h, injection) = blocks(h + injection)``; one set of weights for both updates."""

    cfg: TRMConfig

    @nn.compact
    def __call__(self, h_BSD: jax.Array, injection_BSD: jax.Array, cos_sin: Optional[CosSin],
                 bias: Optional[jax.Array] = None) -> jax.Array:
        h_BSD = h_BSD + injection_BSD
        block = Block if self.cfg.remat == "none" else nn.remat(Block, policy=_REMAT_POLICIES[self.cfg.remat])
        for i in range(self.cfg.L_layers):
            h_BSD = constrain_batch(block(self.cfg, name=f"layers_{i}")(h_BSD, cos_sin, bias))
        return h_BSD


# What the backward of a block keeps (config ``remat``): everything ("none"), only matmul
# outputs, recomputing norms, rotary and activations ("dots"), or only the block input ("full").
_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _scan(body, length: int):
    """``nn.scan`` over ``length`` steps sharing the module's parameters; extra args broadcast."""
    return nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(nn.broadcast, nn.broadcast), length=length)


def _l_step(f: ReasoningModule, z_L, injection, cos_sin):
    return f(z_L, injection, cos_sin), None


def _h_cycle(f: ReasoningModule, carry, x_BSD, cos_sin):
    """One H-cycle: ``L_cycles`` low-level updates, then one high-level update."""
    z_H, z_L = carry
    z_L, _ = _scan(_l_step, f.cfg.L_cycles)(f, z_L, z_H + x_BSD, cos_sin)
    z_H = f(z_H, z_L, cos_sin)
    return (z_H, z_L), None


class TRMInner(nn.Module):
    """One recursion step (reference ``TinyRecursiveReasoningModel_ACTV1_Inner``).

    Variables: ``params`` (embeddings, heads, ``L_level``) and ``buffers``
    (``H_init``/``L_init [D]``, fixed random initial states, never trained).
    """

    cfg: TRMConfig

    @nn.compact
    def __call__(self, z_H: jax.Array, z_L: jax.Array, data: Mapping[str, jax.Array],
                 reset_B: Optional[jax.Array]) -> Tuple[jax.Array, ...]:
        cfg = self.cfg
        D, P = cfg.hidden_size, cfg.puzzle_len
        init_key = lambda: self.make_rng("params")  # noqa: E731 (only used at init)
        H_init = self.variable("buffers", "H_init", lambda: trunc_normal_init(1.0)(init_key(), (D,)))
        L_init = self.variable("buffers", "L_init", lambda: trunc_normal_init(1.0)(init_key(), (D,)))
        if reset_B is not None:
            mask = reset_B[:, None, None]
            z_H = jnp.where(mask, H_init.value.astype(cfg.dtype), z_H)
            z_L = jnp.where(mask, L_init.value.astype(cfg.dtype), z_L)

        x_BSD = constrain_batch(self._input_embeddings(data["inputs"], data.get("puzzle_identifiers")))
        cos_sin = rope_cos_sin(D // cfg.num_heads, cfg.total_len, cfg.rope_theta) if cfg.pos_encodings == "rope" else None

        f = ReasoningModule(cfg, name="L_level")
        if cfg.H_cycles > 1:
            # The first H_cycles - 1 cycles carry no gradient (reference: torch.no_grad()); XLA drops
            # their unused activations (the compiled step's temp memory is the same as with the
            # parameters stop-gradient'ed on the way in, measured).
            (z_H, z_L), _ = _scan(_h_cycle, cfg.H_cycles - 1)(f, (z_H, z_L), x_BSD, cos_sin)
            z_H, z_L = jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L)
        (z_H, z_L), _ = _h_cycle(f, (z_H, z_L), x_BSD, cos_sin)

        logits_BLV = casted_dense(cfg.vocab_size, False, cfg.dtype, "lm_head")(z_H)[:, P:]
        # Q starts near "never halt" (weight 0, bias -5) for stable bootstrapping, as in the reference.
        q_head = casted_dense(2, True, cfg.dtype, "q_head", kernel_init=nn.initializers.zeros,
                              bias_init=nn.initializers.constant(-5.0))
        q_B2 = q_head(z_H[:, 0]).astype(jnp.float32)
        return z_H, z_L, logits_BLV, q_B2[:, 0], q_B2[:, 1]

    def _input_embeddings(self, inputs_BL: jax.Array, puzzle_ids_B: Optional[jax.Array]) -> jax.Array:
        cfg = self.cfg
        D, P = cfg.hidden_size, cfg.puzzle_len
        std = 1.0 / math.sqrt(D)
        emb = CastedEmbedding(cfg.vocab_size, D, std, cfg.dtype, name="embed_tokens")(inputs_BL.astype(jnp.int32))
        if cfg.puzzle_emb_ndim > 0:
            if puzzle_ids_B is None:
                raise ValueError("this model has puzzle embeddings: the batch needs 'puzzle_identifiers' [B]")
            pe = CastedEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, 0.0, cfg.dtype,
                                 name="puzzle_emb")(puzzle_ids_B.astype(jnp.int32))
            pe = jnp.pad(pe, ((0, 0), (0, P * D - cfg.puzzle_emb_ndim)))
            emb = jnp.concatenate([pe.reshape(-1, P, D), emb], axis=1)
        if cfg.pos_encodings == "learned":
            pos = CastedEmbedding(cfg.total_len, D, std, cfg.dtype, name="embed_pos")(jnp.arange(cfg.total_len))
            emb = 0.707106781 * (emb + pos)  # 1/sqrt(2) keeps the forward variance
        return math.sqrt(D) * emb


class TRM(nn.Module):
    """TRM with the ACT wrapper: ``(carry, batch) -> (carry, outputs)``, one supervision step.

    ``model.apply(variables, carry, batch, train=False)``; training with
    exploration needs ``rngs={'exploration': key}``.
    """

    config: TRMConfig

    @nn.compact
    def __call__(self, carry: ACTCarry, batch: Mapping[str, jax.Array],
                 train: bool = False) -> Tuple[ACTCarry, Dict[str, jax.Array]]:
        inner = TRMInner(self.config, name="inner")
        needs_rng = train and self.config.halt_max_steps > 1 and self.config.halt_exploration_prob > 0
        if needs_rng and not (self.has_rng("exploration") or self.has_rng("params")):
            raise ValueError("train=True with halt exploration needs rngs={'exploration': key} in model.apply")
        rng = self.make_rng("exploration") if needs_rng else None  # (Flax falls back to the 'params' stream)
        return act_step(inner, carry, batch, self.config, train, rng)


def build_model(model_cfg: Any) -> TRM:
    """The TRM as a ``flax.linen.Module`` from a config (ConfigDict, dict or TRMConfig)."""
    return TRM(TRMConfig.from_any(model_cfg))


def dummy_batch(model_cfg: Any, batch_size: int = 1) -> Dict[str, jax.Array]:
    """A zero batch with the model's shapes (for ``init`` and shape checks)."""
    cfg = TRMConfig.from_any(model_cfg)
    return {
        "inputs": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
        "labels": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
        "puzzle_identifiers": jnp.zeros((batch_size,), jnp.int32),
    }


def random_batch(model_cfg: Any, batch_size: int, key: jax.Array) -> Dict[str, jax.Array]:
    """Random tokens of the model's shapes (benchmarks and smoke runs; no dataset needed)."""
    cfg = TRMConfig.from_any(model_cfg)
    k_in, k_lab, k_id = jax.random.split(key, 3)
    return {
        "inputs": jax.random.randint(k_in, (batch_size, cfg.seq_len), 1, cfg.vocab_size, jnp.int32),
        "labels": jax.random.randint(k_lab, (batch_size, cfg.seq_len), 1, cfg.vocab_size, jnp.int32),
        "puzzle_identifiers": jax.random.randint(k_id, (batch_size,), 0, cfg.num_puzzle_identifiers, jnp.int32),
    }


def init_variables(model_cfg: Any, key: jax.Array) -> Dict[str, Any]:
    """Freshly initialised variables ``{'params': ..., 'buffers': ...}`` (reference init)."""
    from trm_jax.models.carry import initial_carry

    batch = dummy_batch(model_cfg)
    model = build_model(model_cfg)
    return dict(model.init({"params": key}, initial_carry(model_cfg, batch), batch, train=False))
