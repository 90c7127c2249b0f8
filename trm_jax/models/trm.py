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
from trm_jax.models.carry import ACTCarry, init_buffer_name, initial_carry
from trm_jax.models.config import ModelConfig, TRMConfig
from trm_jax.models.vision import CapsulePool, PatchEmbed, encoder_config, prefix_lm_bias
from trm_jax.models.layers import (DECODE_CACHE, Attention, CastedEmbedding, CosSin, SwiGLU, casted_dense,
                                   constrain_batch, rms_norm, rope_cos_sin, trunc_normal_init)


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or ``mlp_t``) then a SwiGLU."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BSD: jax.Array, cos_sin: Optional[CosSin], bias: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.cfg
        if getattr(cfg, "mlp_t", False):  # (the transformer baseline's config has no mlp_t)
            # Token mixing: a SwiGLU over the sequence axis. As in the reference,
            # the residual norm is taken in the transposed [B, D, S] layout, i.e.
            # over the sequence axis.
            h_BDS = jnp.swapaxes(h_BSD, 1, 2)
            mixed = SwiGLU(cfg.total_len, cfg.expansion, cfg.dtype, name="mlp_t")(h_BDS)
            h_BSD = jnp.swapaxes(rms_norm(h_BDS + mixed, cfg.rms_norm_eps), 1, 2)
        else:
            attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.dtype, implementation=cfg.attention_impl,
                             causal=cfg.causal, name="self_attn")
            h_BSD = rms_norm(h_BSD + attn(h_BSD, cos_sin, bias), cfg.rms_norm_eps)
        mlp = SwiGLU(cfg.hidden_size, cfg.expansion, cfg.dtype, name="mlp")
        return rms_norm(h_BSD + mlp(h_BSD), cfg.rms_norm_eps)


class ReasoningModule(nn.Module):
    """``f(h, injection) = blocks(h + injection)`` with ``num_layers`` blocks (the TRM: ``L_layers``).

    The TRM uses one for both updates; the HRM and the transformer baseline have an ``H_level`` too.
    ``injection`` None: ``blocks(h)`` (the single-z TRM's high-level update).
    """

    cfg: ModelConfig
    num_layers: int

    @nn.compact
    def __call__(self, h_BSD: jax.Array, injection_BSD: Optional[jax.Array], cos_sin: Optional[CosSin],
                 bias: Optional[jax.Array] = None) -> jax.Array:
        if injection_BSD is not None:
            h_BSD = h_BSD + injection_BSD
        block = Block if self.cfg.remat == "none" else nn.remat(Block, policy=_REMAT_POLICIES[self.cfg.remat])
        for i in range(self.num_layers):
            h_BSD = constrain_batch(block(self.cfg, name=f"layers_{i}")(h_BSD, cos_sin, bias))
        return h_BSD


# What the backward of a block keeps (config ``remat``): everything ("none"), only matmul
# outputs, recomputing norms, rotary and activations ("dots"), or only the block input ("full").
_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def scan_module(body, length: int, n_broadcast: int, n_scanned: int = 0):
    """``nn.scan`` of ``body(module, carry, *scanned_args, *broadcast_args)`` over ``length`` steps,
    sharing the module's parameters and buffers (one copy of the weights in the compiled graph).
    ``n_scanned`` leading arguments are sliced along their first axis, one slice per step."""
    # A causal model's decoding cache is carried: each application of a module fills its own slot.
    return nn.scan(body, variable_broadcast=["params", "buffers"], variable_carry=[DECODE_CACHE],
                   split_rngs={"params": False},
                   in_axes=(0,) * n_scanned + (nn.broadcast,) * n_broadcast, length=length)


def l_step(inner: "TRMInner", z_L, injection, rctx):
    """One low-level update ``z_L = L_level(z_L, injection)`` as a scan body."""
    return inner.L_level(z_L, injection, rctx["cos_sin"], rctx["bias"]), None


def plain_cycle(inner: "TRMInner", z, x_BSD, rctx):
    """One H-cycle (:meth:`TRMInner.cycle`) as a scan body, without the per-cycle hook."""
    return inner.cycle(z, x_BSD, rctx), None


def _h_cycle(inner: "TRMInner", carry, x_BSD, rctx):
    """One H-cycle (:meth:`TRMInner.cycle`), then the variant's hook."""
    z, cycle_state = carry
    return inner.after_h_update(z, inner.cycle(z, x_BSD, rctx), cycle_state, rctx)


class TRMInner(nn.Module):
    """One recursion step (reference ``TinyRecursiveReasoningModel_ACTV1_Inner``), in stages.

    ``(z, data, reset, ctx) -> (z, outputs)`` where ``z`` maps the config's ``LATENTS`` (the TRM:
    ``z_H``, ``z_L``) to ``[B, S, D]`` states. Variables: ``params`` (embeddings, the reasoning
    levels, heads) and ``buffers`` (one fixed random initial state ``[D]`` per latent: ``H_init``,
    ``L_init``).

    An architecture (HRM, single-z, 6-level, transformer) overrides :meth:`make_levels`,
    :meth:`cycle` or :meth:`recursion`; a model extension (HESC) overrides only the hooks
    (docs/architecture.md#variants). Each default here is the reference TRM's behaviour:

    * :meth:`extra_positions` -- positions between the puzzle prefix and the tokens (none);
    * :meth:`recursion_context` -- what every cycle reads (rotary tables, attention bias);
    * :meth:`cycle_state_init` / :meth:`after_h_update` / :meth:`stops_early` -- per-row state
      carried through the H-cycles and a hook after each high-level update (identity);
    * :meth:`after_recursion` -- a transform of the final ``z_H`` (identity);
    * :meth:`heads` -- outputs from ``z_H`` (``logits``, ``q_halt_logits``, ``q_continue_logits``).

    ``ctx`` is the variant's per-step input (None for the TRM).
    """

    cfg: TRMConfig

    def setup(self) -> None:
        cfg = self.cfg
        D = cfg.hidden_size
        std = 1.0 / math.sqrt(D)
        self.embed_tokens = CastedEmbedding(cfg.vocab_size, D, std, cfg.dtype)
        if cfg.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, 0.0, cfg.dtype)
        if cfg.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(cfg.total_len, D, std, cfg.dtype)
        self.make_levels()
        if cfg.has_image:
            self.patch_embed = PatchEmbed(cfg)
            if not cfg.vision_shared:
                self.vision_level = ReasoningModule(encoder_config(cfg), cfg.vision_layers)
            self.capsule_pool = CapsulePool(cfg, cfg.vision_capsules, self.vision_children())
        self.lm_head = casted_dense(cfg.vocab_size, False, cfg.dtype)
        # Q starts near "never halt" (weight 0, bias -5) for stable bootstrapping, as in the reference.
        self.q_head = casted_dense(2, True, cfg.dtype, kernel_init=nn.initializers.zeros,
                                   bias_init=nn.initializers.constant(-5.0))
        init_key = lambda: self.make_rng("params")  # noqa: E731 (only used at init)
        for name in cfg.LATENTS:
            self.variable("buffers", init_buffer_name(name), lambda: trunc_normal_init(1.0)(init_key(), (D,)))

    def make_levels(self) -> None:
        """The reasoning modules (called in ``setup``): the TRM's one ``L_level`` of ``L_layers`` blocks."""
        self.L_level = ReasoningModule(self.cfg, self.cfg.L_layers)

    def __call__(self, z: Mapping[str, jax.Array], data: Mapping[str, jax.Array], reset_B: Optional[jax.Array],
                 ctx: Any = None, train: bool = False) -> Tuple[Dict[str, jax.Array], Dict[str, Any]]:
        cfg = self.cfg
        z = dict(z)
        if reset_B is not None:
            for name in cfg.LATENTS:
                init = self.get_variable("buffers", init_buffer_name(name)).astype(cfg.dtype)
                z[name] = jnp.where(reset_B[:, None, None], init, z[name])
        x_BSD, info = self.embed(data, ctx)
        rctx = self.recursion_context(ctx)
        if cfg.has_image and cfg.prefix_lm:
            lm_bias = prefix_lm_bias(data["causal"], cfg.total_len, cfg.label_offset)
            rctx = {**rctx, "bias": lm_bias if rctx["bias"] is None else rctx["bias"] + lm_bias}
        z, cycle_info = self.recursion(z, constrain_batch(x_BSD), rctx, train)
        out_name = cfg.OUTPUT_LATENT
        z[out_name], plan_info = self.after_recursion(z[out_name], rctx)
        return z, self.heads(z[out_name], data, ctx, {**info, **cycle_info, **plan_info})

    # ------------------------------------------------------------------ embeddings
    def embed(self, data: Mapping[str, jax.Array], ctx: Any) -> Tuple[jax.Array, Dict[str, Any]]:
        """``x [B, S, D]`` = ``sqrt(D) * [puzzle prefix | extra positions | tokens]`` (+ learned positions)."""
        cfg = self.cfg
        D, P = cfg.hidden_size, cfg.puzzle_len
        parts = []
        if cfg.puzzle_emb_ndim > 0:
            puzzle_ids = data.get("puzzle_identifiers")
            if puzzle_ids is None:
                raise ValueError("this model has puzzle embeddings: the batch needs 'puzzle_identifiers' [B]")
            pe = self.puzzle_emb(puzzle_ids.astype(jnp.int32))
            parts.append(jnp.pad(pe, ((0, 0), (0, P * D - cfg.puzzle_emb_ndim))).reshape(-1, P, D))
        tok_BLD = self.embed_tokens(data["inputs"].astype(jnp.int32)) if cfg.has_token_positions else None
        extra, info = self.extra_positions(tok_BLD, data, ctx)
        parts += [p for p in (extra, tok_BLD) if p is not None]
        emb = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if cfg.pos_encodings == "learned":
            positions = self.position_offset() + jnp.arange(cfg.total_len)
            emb = 0.707106781 * (emb + self.embed_pos(positions))  # 1/sqrt(2) keeps the variance
        return math.sqrt(D) * emb, info

    def extra_positions(self, tok_BLD: Optional[jax.Array], data: Mapping[str, jax.Array],
                        ctx: Any) -> Tuple[Optional[jax.Array], Dict[str, Any]]:
        """Embeddings ``[B, k, D]`` (before the ``sqrt(D)`` scale) placed after the prefix: the image's
        capsules when the model reads an image; the TRM has none."""
        if not self.cfg.has_image:
            return None, {}
        caps_BkD, _ = self.image_capsules(data)
        return caps_BkD / math.sqrt(self.cfg.hidden_size), {}  # unit RMS, as the scaled token embeddings

    # ------------------------------------------------------------------ the pixel path (models/vision.py)
    def vision_children(self) -> int:
        """Children per image capsule the pooling makes (HESC's expandable capsules; the TRM: none)."""
        return 0

    def image_capsules(self, data: Mapping[str, jax.Array]) -> Tuple[jax.Array, Optional[jax.Array]]:
        """``(capsules [B, k, D], children [B, k, m, D] or None)``, unit RMS, of ``data['image']``."""
        image = data.get("image")
        if image is None:
            raise ValueError("this model reads an image: the batch needs 'image' [B, H, W, 3] uint8")
        cfg = self.cfg
        if image.shape[1:] != (cfg.image_height, cfg.image_width, 3):
            raise ValueError(f"image {image.shape[1:]} != the model's (image_height, image_width, 3) = "
                             f"{(cfg.image_height, cfg.image_width, 3)}")
        h_BND = self.patch_embed(image)
        h_BND = self.encode_patches(h_BND) if cfg.vision_shared else self.vision_level(h_BND, None, None)
        return self.capsule_pool(h_BND)

    def encode_patches(self, x_BND: jax.Array) -> jax.Array:
        """``trm_unified``: the model's own recursion over the patch tokens (every cycle differentiated,
        bidirectional, no RoPE), from the latents' initial states; returns the output latent."""
        cfg = self.cfg
        z = {name: jnp.broadcast_to(self.get_variable("buffers", init_buffer_name(name)).astype(cfg.dtype),
                                    x_BND.shape) for name in cfg.LATENTS}
        rctx = {"cos_sin": None, "bias": None}
        z, _ = scan_module(plain_cycle, cfg.H_cycles, 2)(self, z, x_BND, rctx)
        return z[cfg.OUTPUT_LATENT]

    # ------------------------------------------------------------------ recursion
    def recursion_context(self, ctx: Any) -> Dict[str, Any]:
        """What every cycle reads (broadcast through the scans): rotary tables and an attention bias."""
        cfg = self.cfg
        cos_sin = (rope_cos_sin(cfg.hidden_size // cfg.num_heads, cfg.total_len, cfg.rope_theta,
                                self.position_offset()) if cfg.pos_encodings == "rope" else None)
        return {"cos_sin": cos_sin, "bias": None}

    def position_offset(self) -> jax.Array | int:
        """The position of the first input token: 0, or when decoding with a key/value cache
        (trm_jax/lm/kv_cache.py) the number of tokens already in it."""
        if self.has_variable(DECODE_CACHE, "pos"):
            return self.get_variable(DECODE_CACHE, "pos")
        return 0

    def cycle_state_init(self, batch_size: int) -> Any:
        """Per-row state carried through the H-cycles (the TRM carries none)."""
        return ()

    def cycle(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any]) -> Dict[str, jax.Array]:
        """One H-cycle: ``L_cycles`` times ``z_L = f(z_L, z_H + x)``, then ``z_H = f(z_H, z_L)``."""
        z_H, z_L = z["z_H"], z["z_L"]
        z_L, _ = scan_module(l_step, self.cfg.L_cycles, 2)(self, z_L, z_H + x_BSD, rctx)
        return {"z_H": self.L_level(z_H, z_L, rctx["cos_sin"], rctx["bias"]), "z_L": z_L}

    def after_h_update(self, old: Dict[str, jax.Array], new: Dict[str, jax.Array], cycle_state: Any,
                       rctx: Dict[str, Any]) -> Tuple[Tuple[Dict[str, jax.Array], Any], Dict[str, Any]]:
        """``((states, cycle_state), statistics)`` after one H-cycle; the TRM keeps the new states."""
        return (new, cycle_state), {}

    def stops_early(self, train: bool) -> bool:
        """Whether the cycles may stop once :meth:`cycle_done` holds for every row (never for the TRM)."""
        return False

    def cycle_done(self, cycle_state: Any) -> jax.Array:
        raise NotImplementedError

    def merge_cycle_stats(self, early: Any, last: Dict[str, Any]) -> Dict[str, Any]:
        """Statistics of all cycles from the stacked first ``H_cycles - 1`` (or None) and the last one."""
        return {}

    def recursion(self, z: Dict[str, jax.Array], x_BSD: jax.Array, rctx: Dict[str, Any],
                  train: bool) -> Tuple[Dict[str, jax.Array], Dict[str, Any]]:
        """``H_cycles`` cycles; the first ``H_cycles - 1`` carry no gradient (reference: ``torch.no_grad()``).

        XLA drops the unused activations of the no-gradient cycles (the compiled step's temp memory
        is the same as with the parameters stop-gradient'ed on the way in, measured).
        """
        cfg = self.cfg
        carry = (z, self.cycle_state_init(x_BSD.shape[0]))
        early = None
        if cfg.H_cycles > 1 and self.stops_early(train) and not self.is_mutable_collection("params"):
            # Inference: the whole batch stops as soon as every row is done.
            def cond(inner, c):
                return (c[1] < cfg.H_cycles - 1) & ~jnp.all(inner.cycle_done(c[0][1]))

            def body(inner, c):
                new, _ = _h_cycle(inner, c[0], x_BSD, rctx)
                return new, c[1] + 1

            carry = nn.while_loop(cond, body, self, (carry, jnp.zeros((), jnp.int32)), broadcast_variables=True)[0]
        elif cfg.H_cycles > 1:
            carry, early = scan_module(_h_cycle, cfg.H_cycles - 1, 2)(self, carry, x_BSD, rctx)
            carry = jax.tree.map(jax.lax.stop_gradient, carry)
        (z, cycle_state), last = _h_cycle(self, carry, x_BSD, rctx)
        return z, {"cycle_state": cycle_state, "cycle_stats": self.merge_cycle_stats(early, last)}

    def after_recursion(self, z_H: jax.Array, rctx: Dict[str, Any]) -> Tuple[jax.Array, Dict[str, Any]]:
        """A transform of the final output state (``OUTPUT_LATENT``; the TRM: none)."""
        return z_H, {}

    # ------------------------------------------------------------------ heads
    def halt_logits(self, z_H: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """``(q_halt [B], q_continue [B])`` float32 logits of the halting head, read at position 0.

        A causal model has no halting head (position 0 sees only the first token, and every row runs
        ``halt_max_steps`` steps): zeros, and no ``q_head`` parameters."""
        if self.cfg.causal:
            zeros = jnp.zeros(z_H.shape[:1], jnp.float32)
            return zeros, zeros
        q_B2 = self.q_head(z_H[:, 0]).astype(jnp.float32)
        return q_B2[:, 0], q_B2[:, 1]

    def heads(self, z_H: jax.Array, data: Mapping[str, jax.Array], ctx: Any,
              info: Dict[str, Any]) -> Dict[str, Any]:
        """``logits [B, seq_len, V]`` of the predicted positions and the halting logits."""
        cfg = self.cfg
        lo = cfg.label_offset
        out = {"logits": self.lm_head(z_H)[:, lo:lo + cfg.seq_len]}
        out["q_halt_logits"], out["q_continue_logits"] = self.halt_logits(z_H)
        return out


class TRM(nn.Module):
    """TRM with the ACT wrapper: ``(carry, batch) -> (carry, outputs)``, one supervision step.

    ``model.apply(variables, carry, batch, train=False)``; training with exploration needs
    ``rngs={'exploration': key}``. ``adaptive=True`` (evaluation) lets a row halt when its
    halting head says so instead of after exactly ``halt_max_steps`` steps.

    A variant subclasses this with its own inner module (:meth:`make_inner`) and, where it differs,
    the ACT hooks :meth:`halting_active`, :meth:`bootstraps_q`, :meth:`begin_step`,
    :meth:`wants_halt`, :meth:`end_step`; ``inputs`` are its per-step inputs
    (``model.apply(..., **inputs)``; HESC's).
    """

    config: ModelConfig

    def make_inner(self) -> TRMInner:
        return TRMInner(self.config, name="inner")

    @nn.compact
    def __call__(self, carry: ACTCarry, batch: Mapping[str, jax.Array], train: bool = False,
                 adaptive: bool = False, **inputs: Any) -> Tuple[ACTCarry, Dict[str, Any]]:
        cfg = self.config
        needs_rng = train and cfg.halt_max_steps > 1 and cfg.halt_exploration_prob > 0
        if needs_rng and not (self.has_rng("exploration") or self.has_rng("params")):
            raise ValueError("train=True with halt exploration needs rngs={'exploration': key} in model.apply")
        rng = self.make_rng("exploration") if needs_rng else None  # (Flax falls back to the 'params' stream)
        return act_step(self, self.make_inner(), carry, batch, train, adaptive, rng, inputs)

    # ACT hooks (the TRM's): see trm_jax/models/act.py.
    def halting_active(self, train: bool, adaptive: bool) -> bool:
        """Whether the halting policy may stop a row before ``halt_max_steps``: while training (ACT)
        and in an adaptive evaluation. The reference evaluates with exactly ``halt_max_steps``.
        A causal language model never halts early (it has no halting head)."""
        return self.config.halt_max_steps > 1 and not self.config.causal and (train or adaptive)

    def bootstraps_q(self, train: bool) -> bool:
        """Whether this step computes ``target_q_continue`` from a second forward (Q-learning of the
        continue logit): while training with ACT, unless ``no_ACT_continue``."""
        return train and self.config.halt_max_steps > 1 and not self.config.no_ACT_continue

    def begin_step(self, extras: Any, data: Dict[str, jax.Array], reset_B: jax.Array, train: bool,
                   inputs: Mapping[str, Any]) -> Tuple[Any, Dict[str, jax.Array], Any]:
        """``(extras, data, ctx)`` for this step, after halted rows took new examples."""
        if inputs:
            raise TypeError(f"the TRM takes no extra inputs; got {sorted(inputs)}")
        return extras, data, None

    def wants_halt(self, out: Dict[str, Any], train: bool, inputs: Mapping[str, Any]) -> jax.Array:
        """``[B] bool``: rows whose halting head says stop (``q_halt > 0``, or ``q_halt > q_continue``)."""
        q_halt = jax.lax.stop_gradient(out["q_halt_logits"])
        if self.config.no_ACT_continue:
            return q_halt > 0
        return q_halt > jax.lax.stop_gradient(out["q_continue_logits"])

    def end_step(self, extras: Any, z_H: jax.Array, data: Mapping[str, jax.Array], out: Dict[str, Any],
                 halted_B: jax.Array, ctx: Any) -> Tuple[Any, jax.Array, Dict[str, Any]]:
        """``(extras, z_H, outputs)`` after the halting decision; ``z_H`` is the state the heads read
        (``OUTPUT_LATENT``). The TRM changes nothing."""
        return extras, z_H, out

    def initial_carry(self, batch: Mapping[str, Any]) -> ACTCarry:
        """A carry in which every row is halted, so the first step loads ``batch``."""
        return initial_carry(self.config, batch)

    def example_batch(self, batch_size: int) -> Dict[str, jax.Array]:
        """A zero batch with every key the model reads (for ``init`` and shapes)."""
        return dummy_batch(self.config, batch_size)


def _typed(model_cfg: Any) -> ModelConfig:
    """The typed config of the family ``model_cfg`` names (``name``; default the TRM)."""
    from trm_jax.families import family_of  # (families imports the architectures, which import this module)

    return family_of(model_cfg).config_cls.from_any(model_cfg)


def build_model(model_cfg: Any) -> TRM:
    """The model of ``model_cfg`` as a ``flax.linen.Module``: the family ``name`` picks (default
    ``"trm"``; ``"hrm"``, ``"trm_singlez"``, ``"trm_hier6"``, ``"transformer"``, ``"hesc"``), from a
    ConfigDict, a dict or a typed config."""
    from trm_jax.families import family_of

    return family_of(model_cfg).build_model(model_cfg)


def dummy_batch(model_cfg: Any, batch_size: int = 1) -> Dict[str, jax.Array]:
    """A zero batch with the model's shapes (for ``init`` and shape checks)."""
    cfg = _typed(model_cfg)
    batch = {
        "inputs": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
        "labels": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
        "puzzle_identifiers": jnp.zeros((batch_size,), jnp.int32),
    }
    if cfg.causal:  # the UTF-8 bytes a row's labels stand for (bits per byte; trm_jax/lm/objective.py)
        batch["label_bytes"] = jnp.zeros((batch_size,), jnp.int32)
    return {**batch, **image_batch(cfg, batch_size)}


def image_batch(cfg: ModelConfig, batch_size: int, key: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
    """The pixel path's batch entries (none without an image): ``image`` [B, H, W, 3] uint8 (zeros, or
    random with ``key``) and ``causal`` [B] int32 (1: tokens read left to right, with ``prefix_lm``)."""
    if not cfg.has_image:
        return {}
    shape = (batch_size, cfg.image_height, cfg.image_width, 3)
    image = (jnp.zeros(shape, jnp.uint8) if key is None
             else jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8))
    return {"image": image, "causal": jnp.full((batch_size,), int(cfg.prefix_lm), jnp.int32)}


def random_batch(model_cfg: Any, batch_size: int, key: jax.Array) -> Dict[str, jax.Array]:
    """Random tokens of the model's shapes (benchmarks and smoke runs; no dataset needed)."""
    cfg = _typed(model_cfg)
    k_in, k_lab, k_id = jax.random.split(key, 3)
    batch = {
        "inputs": jax.random.randint(k_in, (batch_size, cfg.seq_len), 1, cfg.vocab_size, jnp.int32),
        "labels": jax.random.randint(k_lab, (batch_size, cfg.seq_len), 1, cfg.vocab_size, jnp.int32),
        "puzzle_identifiers": jax.random.randint(k_id, (batch_size,), 0, cfg.num_puzzle_identifiers, jnp.int32),
    }
    if cfg.causal:
        batch["label_bytes"] = jnp.full((batch_size,), 3 * cfg.seq_len, jnp.int32)
    return {**batch, **image_batch(cfg, batch_size, jax.random.fold_in(key, 1))}


def init_variables(model_cfg: Any, key: jax.Array) -> Dict[str, Any]:
    """Freshly initialised variables ``{'params': ..., 'buffers': ...}`` (reference init), any architecture."""
    from trm_jax.families import family_of, objective_of

    family = family_of(model_cfg)
    cfg = family.config_cls.from_any(model_cfg)
    model = family.model_cls(cfg)
    batch = model.example_batch(1)
    return dict(model.init({"params": key}, model.initial_carry(batch), batch, train=False,
                           **objective_of(cfg).init_inputs(cfg)))
