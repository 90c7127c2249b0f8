"""HESC configuration: the TRM's fields plus every extension's, validated (docs/hesc.md).

Field names follow the PyTorch HESC system where it has them (``q_head_num_actions``,
``enable_dqn``, ``dqn_buffer_capacity``, ``reward_step_penalty``, ...), so its YAML maps over.
With every ``enable_*`` flag off and ``q_head_num_actions=2`` the model is the plain TRM.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, List, Mapping, Union

from trm_jax.models.config import ConfigError, TRMConfig, truthy
from trm_jax.schedules import ANNEAL_KINDS

_MODES = ("tokens", "capsules", "pixels")
_Q_HEADS = ("mlp", "rnn", "attention")
_POOLINGS = ("first", "mean")
_AGGREGATES = ("mean", "max", "sum")


@dataclasses.dataclass(frozen=True)
class HESCConfig(TRMConfig):
    """TRM + capsules, 3-action DQN Q-head, VQ concepts, latent planning, memory, MTP."""

    FAMILY: ClassVar[str] = "HESC"

    # HESC explores mainly with the DQN's epsilon-greedy actions; the TRM's random minimum-steps
    # halting exploration applies on top (to the HALT action) when this is > 0.
    halt_exploration_prob: float = 0.0

    # Input: "tokens" (a puzzle grid; capsules are pooled from it), "capsules" (a capsule dataset) or
    # "pixels" (each example's image, encoded by the pixel path of trm_jax/models/vision.py into
    # vision_capsules capsules of capsule_children children; the tokens follow them, docs/hesc.md).
    mode: str = "tokens"
    # Capsules.
    enable_capsules: bool = True
    capsule_grid: int = 30          # tokens mode: side of the token grid (seq_len = grid^2)
    capsule_regions: int = 3        # regions per side -> k = regions^2 capsules
    capsule_subregions: int = 2     # sub-regions per side of a region -> m = subregions^2 children
    num_capsules: int = 12          # capsules mode: k (from the dataset); pixels mode: vision_capsules is k
    capsule_children: int = 4       # capsules mode: m (from the dataset); pixels mode: m (pooled from the patches)
    capsule_dim: int = 384          # capsules mode: Dc of the data capsules (MiniLM)
    checksum_dim: int = 64
    capsule_aggregate: str = "mean"
    capsule_mask_ratio: float = 0.25  # capsules mode: share of capsules masked and predicted
    enable_capsule_expansion: bool = True
    expansion_cost_per_child: float = 0.01
    # The per-child cost is annealed by the global step (all HESC schedules are): expansion_cost_start
    # at step 0 -> expansion_cost_per_child after expansion_anneal_ratio of training (free early
    # expansions let the DQN learn when EXPAND pays before it is charged the full cost).
    expansion_cost_start: float = 0.0
    expansion_anneal_ratio: float = 0.5
    expansion_anneal_schedule: str = "linear"   # linear | cosine | exponential | constant
    enable_reconstruction: bool = True
    # On, as in the PyTorch multimodal_hesc arch; needs attention blocks and grid capsules (mlp_t/text turn it off).
    enable_hierarchical_attention: bool = True
    hierarchical_bias_weak: float = -1.0
    # Q-head and DQN.
    q_head_num_actions: int = 3
    q_head_type: str = "mlp"
    q_head_pooling: str = "mean"
    q_head_hidden: int = 512
    enable_dqn: bool = True
    dqn_buffer_capacity: int = 100_000
    dqn_buffer_min_size: int = 1000
    dqn_batch_size: int = 256
    dqn_gamma: float = 0.99
    dqn_target_update_freq: int = 1000
    dqn_target_tau: float = 0.0
    dqn_alpha: float = 0.6
    dqn_beta: float = 0.4
    dqn_double: bool = True
    dqn_huber_delta: float = 1.0      # TD loss: quadratic below, linear above
    dqn_loss_weight: float = 0.5
    dqn_warmup_ratio: float = 0.1     # the DQN loss weight ramps 0 -> dqn_loss_weight over this fraction
    dqn_warmup_schedule: str = "linear"
    dqn_epsilon_start: float = 1.0
    dqn_epsilon_end: float = 0.05
    dqn_epsilon_decay_ratio: float = 0.1
    dqn_epsilon_schedule: str = "linear"
    q_temperature_start: float = 1.0
    q_temperature_end: float = 0.1
    q_temperature_anneal_ratio: float = 1.0
    q_temperature_schedule: str = "linear"
    reward_step_penalty: float = 0.01
    reward_terminal_correct: float = 1.0
    reward_terminal_incorrect: float = -0.5
    reward_expansion_bonus: float = 0.1
    reward_memory_bonus: float = 0.05
    curiosity_rnd_weight: float = 0.01
    curiosity_count_weight: float = 0.01
    curiosity_hash_bits: int = 16
    rnd_hidden: int = 128
    enable_entropy_regularization: bool = True
    entropy_regularization_weight: float = 0.01
    # VQ concept codebook.
    enable_vq: bool = True
    num_concepts: int = 2048
    vq_commitment_cost: float = 0.25
    vq_use_ema: bool = False
    vq_ema_decay: float = 0.99
    vq_dead_code_steps: int = 1000
    # Latent planning (COCONUT).
    enable_latent_planning: bool = True
    latent_num_paths: int = 4
    latent_planning_depth: int = 2
    latent_combine: str = "softmax"
    # Memory bank.
    enable_memory: bool = True
    memory_capacity: int = 4096   # the single-GPU run's bank (configs/hesc.py; full: 16384, tiny: 128)
    memory_top_k: int = 8
    memory_num_heads: int = 4
    memory_hit_threshold: float = 0.5  # a read whose best cosine similarity exceeds this earns the memory bonus
    # Multi-token prediction.
    enable_mtp: bool = True
    mtp_num_depths: int = 2
    # Adaptive H-cycles.
    enable_adaptive_hcycles: bool = True   # on, as in the PyTorch multimodal_hesc arch
    hcycle_confidence_threshold: float = 2.0
    # Loss weights (docs/architecture.md#hesc-loss).
    loss_q_halt_weight: float = 0.5
    loss_reconstruction_weight: float = 0.5
    loss_expansion_weight: float = 0.01
    loss_vq_weight: float = 0.25
    loss_mtp_weight: float = 0.5
    loss_confidence_weight: float = 0.1  # BCE of the capsule-confidence head (which capsule to expand)

    @classmethod
    def refused_values(cls, values: Mapping[str, Any]) -> List[str]:
        """The TRM's refusals plus values HESC cannot honour; checked before any data is built."""
        errors = super().refused_values(values)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        get = lambda name: values.get(name, defaults[name])  # noqa: E731
        for name, start, end in (("expansion_anneal_schedule", "expansion_cost_start", "expansion_cost_per_child"),
                                 ("dqn_warmup_schedule", None, "dqn_loss_weight"),
                                 ("dqn_epsilon_schedule", "dqn_epsilon_start", "dqn_epsilon_end"),
                                 ("q_temperature_schedule", "q_temperature_start", "q_temperature_end")):
            kind = get(name)
            if kind not in ANNEAL_KINDS:
                errors.append(f"{name}={kind!r} not in {ANNEAL_KINDS}")
            first = 0.0 if start is None else float(get(start))
            if kind == "exponential" and (first <= 0 or float(get(end)) <= 0):
                errors.append(f"{name}='exponential' needs positive start and end values (got {first} -> {get(end)})")
        if int(get("q_head_num_actions")) == 2 and truthy(get("enable_entropy_regularization")):
            errors.append("enable_entropy_regularization regularises the 3-action policy: with q_head_num_actions=2 "
                          "set it to False")
        return errors

    @classmethod
    def causal_refusals(cls, values: Mapping[str, Any]) -> List[str]:
        return ["causal=True: HESC is not a language model (its capsules, planning and DQN read the whole "
                "sequence); language models are name='trm' or 'transformer' with causal=True (configs/text.py)"]

    def __post_init__(self) -> None:
        super().__post_init__()
        errors = []
        for name, allowed in (("mode", _MODES), ("q_head_type", _Q_HEADS), ("q_head_pooling", _POOLINGS),
                              ("capsule_aggregate", _AGGREGATES), ("latent_combine", ("softmax", "best"))):
            if getattr(self, name) not in allowed:
                errors.append(f"{name}={getattr(self, name)!r} not in {allowed}")
        if self.q_head_num_actions not in (2, 3):
            errors.append(f"q_head_num_actions={self.q_head_num_actions} must be 2 or 3")
        if self.q_head_num_actions == 2 and self.enable_capsule_expansion:
            errors.append("enable_capsule_expansion needs q_head_num_actions=3 (the EXPAND action)")
        if self.enable_capsule_expansion and not self.enable_capsules:
            errors.append("enable_capsule_expansion needs enable_capsules")
        if self.mode == "capsules" and not self.enable_capsules:
            errors.append("mode='capsules' needs enable_capsules")
        if self.mode == "capsules" and self.seq_len != self.num_capsules:
            errors.append(f"capsules mode: seq_len={self.seq_len} must equal num_capsules={self.num_capsules}")
        if self.mode == "tokens" and self.enable_capsules:
            side = self.capsule_grid
            if side * side != self.seq_len:
                errors.append(f"capsule_grid={side} does not match seq_len={self.seq_len} (grid^2)")
            elif side % self.capsule_regions or (side // self.capsule_regions) % self.capsule_subregions:
                errors.append(f"capsule_regions={self.capsule_regions} / capsule_subregions="
                              f"{self.capsule_subregions} do not tile a {side}x{side} grid")
        if self.enable_dqn and self.q_head_num_actions != 3:
            errors.append("enable_dqn needs q_head_num_actions=3")
        if self.enable_dqn and self.dqn_buffer_min_size > self.dqn_buffer_capacity:
            errors.append("dqn_buffer_min_size exceeds dqn_buffer_capacity")
        if self.enable_memory and self.memory_top_k > self.memory_capacity:
            errors.append("memory_top_k exceeds memory_capacity")
        if self.enable_hierarchical_attention and (self.mlp_t or self.mode != "tokens" or not self.enable_capsules):
            errors.append("enable_hierarchical_attention needs attention blocks, tokens mode and capsules (its bias "
                          f"groups each token with the capsule of its grid region; mode={self.mode!r} has no such map)")
        errors += self.pixel_errors()
        if errors:
            raise ConfigError("invalid HESC config: " + "; ".join(errors))

    def pixel_errors(self) -> List[str]:
        """Messages for an image HESC cannot honour: pixels mode needs one (and capsules), the other
        modes must not have one (their sequence, ``total_len``, has no place for the TRM's image positions)."""
        if self.mode != "pixels":
            if self.has_image:
                return [f"image_height={self.image_height}, image_width={self.image_width}: HESC reads an image only "
                        f"in mode='pixels' (mode={self.mode!r} has no positions for the image's capsules); set "
                        "mode='pixels' or image_height=image_width=0"]
            return []
        errors = []
        if not self.has_image:
            errors.append("mode='pixels' needs an image: set image_height and image_width")
        if not self.enable_capsules:
            errors.append("mode='pixels' needs enable_capsules (the image enters the model as its capsules)")
        if self.capsule_children < 1:
            errors.append(f"mode='pixels': capsule_children={self.capsule_children} must be >= 1")
        elif self.has_image and self.vision_pooling == "regions" and not self.vision_errors():
            from trm_jax.models.vision import _child_order  # (models.vision imports models.config, not this)

            try:
                _child_order(self.patch_grid, self.vision_capsules, self.capsule_children)
            except ValueError as e:
                errors.append(f"mode='pixels', vision_pooling='regions': capsule_children={self.capsule_children} "
                              f"sub-regions of each of the vision_capsules={self.vision_capsules} regions of the "
                              f"{self.patch_grid[0]}x{self.patch_grid[1]} patch grid: {e}")
        return errors

    # ----------------------------------------------------------------- derived
    @property
    def k(self) -> int:
        """Capsules per example."""
        if not self.enable_capsules:
            return 0
        if self.mode == "tokens":
            return self.capsule_regions ** 2
        return self.vision_capsules if self.mode == "pixels" else self.num_capsules

    @property
    def m(self) -> int:
        """Children per capsule."""
        return self.capsule_subregions ** 2 if self.mode == "tokens" else self.capsule_children

    @property
    def capsule_content_dim(self) -> int:
        """Dc: the space capsule content lives in (the hidden size for grid and image capsules)."""
        return self.capsule_dim if self.mode == "capsules" else self.hidden_size

    @property
    def capsule_offset(self) -> int:
        """Index of the first capsule position (after the puzzle-embedding prefix)."""
        return self.puzzle_len

    @property
    def has_token_positions(self) -> bool:  # type: ignore[override]
        """Tokens and pixels modes embed the tokens as positions; capsules mode has only capsule positions."""
        return self.mode != "capsules"

    @property
    def label_offset(self) -> int:
        """Index of the first predicted position: the tokens (tokens, pixels mode) or the capsules."""
        return self.puzzle_len + (self.k if self.has_token_positions else 0)

    @property
    def total_len(self) -> int:  # type: ignore[override]
        """Hidden sequence length: ``[prefix | capsules | tokens]`` or ``[prefix | capsules]`` (capsules
        mode). In pixels mode the capsules are the image's (the TRM's ``vision_len`` positions, counted once)."""
        return self.puzzle_len + self.k + (self.seq_len if self.has_token_positions else 0)

    @classmethod
    def from_any(cls, cfg: Union["HESCConfig", Mapping[str, Any], Any]) -> "HESCConfig":
        return super().from_any.__func__(cls, cfg)  # type: ignore[attr-defined]

