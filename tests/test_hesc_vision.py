"""HESC's capsules from pixels (mode="pixels", docs/hesc.md "Capsules from pixels"): the image's capsules
and children from the pixel path, EXPAND on them, rows read left to right that see no later token
through any extension, the config's refusals, configs/hesc.py:vision and a train step."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from trm_jax import optim
from trm_jax.hesc import capsules as caps
from trm_jax.hesc.config import HESCConfig
from trm_jax.hesc.memory import memory_init, memory_write
from trm_jax.hesc.model import HESC, HESCInner
from trm_jax.hesc.qheads import EXPAND
from trm_jax.models.config import ConfigError
from trm_jax.models.trm import random_batch
from trm_jax.steps import make_train_step
from trm_jax.train_state import create_train_state

# A 16x32 image of 8x8 patches (2x4), k = 4 capsules of m = 2 children, 10 tokens, a 1-position prefix.
BASE = dict(mode="pixels", seq_len=10, vocab_size=20, num_puzzle_identifiers=3, hidden_size=32, num_heads=2,
            expansion=2.0, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=32, puzzle_emb_len=1,
            forward_dtype="float32", halt_max_steps=3, remat="none", image_height=16, image_width=32, patch_size=8,
            vision_capsules=4, capsule_children=2, vision_layers=1, prefix_lm=True,
            enable_hierarchical_attention=False, q_head_hidden=32, checksum_dim=8, num_concepts=16,
            memory_capacity=16, memory_top_k=2, memory_num_heads=2, latent_num_paths=2, latent_planning_depth=1,
            mtp_num_depths=1, rnd_hidden=8, curiosity_hash_bits=6, dqn_buffer_capacity=64, dqn_buffer_min_size=8,
            dqn_batch_size=8)
B = 3
TRAINING = common.training(global_batch_size=B, lr=1e-3, lr_warmup_steps=2, ema=False,
                           weight_decay=0.0)  # no weight decay: a parameter that changes had a gradient


def _cfg(**overrides) -> HESCConfig:
    return HESCConfig(**{**BASE, **overrides})


@functools.lru_cache(maxsize=None)
def _fresh_state(cfg: HESCConfig):
    """``(optimizer, a fresh train state)``: the train step's start and every other test's variables."""
    tx = optim.build_optimizer(TRAINING, 100)
    return tx, jax.jit(lambda: create_train_state(cfg, tx, B, 0, False))()


@functools.lru_cache(maxsize=None)
def _setup(cfg: HESCConfig):
    """(model, variables with a Q-head that prefers EXPAND and depends on the state, a filled memory bank)."""
    _, state = _fresh_state(cfg)
    params = jax.tree.map(lambda x: x, state.params)
    q_out = params["inner"]["action_head"]["q_out"]
    q_out["kernel"] = 0.1 * jax.random.normal(jax.random.key(2), q_out["kernel"].shape)
    q_out["bias"] = jnp.asarray([0.0, 2.0, 5.0])  # EXPAND preferred
    # A bank of random states, so every position's read is non-trivial.
    keys = jax.random.normal(jax.random.key(3), (cfg.memory_capacity, cfg.hidden_size))
    memory = memory_write(memory_init(cfg.memory_capacity, cfg.hidden_size), keys, keys[::-1],
                          jnp.ones(cfg.memory_capacity), jnp.ones(cfg.memory_capacity, bool), 0)
    return HESC(cfg), {"params": params, "buffers": state.buffers}, memory


def _expanding(variables):
    """``variables`` whose greedy policy is EXPAND."""
    params = jax.tree.map(lambda x: x, variables["params"])
    params["inner"]["action_head"]["q_out"]["bias"] = jnp.asarray([0.0, 0.0, 50.0])
    return {**variables, "params": params}


def _image_capsules(cfg, variables, batch):
    """``(sketches, children)`` of the pixel path alone (``TRMInner.image_capsules``), outside the ACT step."""
    inner_vars = {name: variables[name]["inner"] for name in ("params", "buffers")}
    return jax.jit(lambda v, b: HESCInner(cfg).apply(v, b, method=HESCInner.image_capsules))(inner_vars, batch)


@functools.lru_cache(maxsize=None)
def _runner(cfg: HESCConfig, train: bool):
    """``run(variables, batch, memory) -> (carries, outputs)`` of ``halt_max_steps`` ACT steps from a fresh
    carry, each stacked over the steps (one compiled step, scanned)."""
    model = HESC(cfg)

    @jax.jit
    def run(variables, batch, memory):
        def step(carry, key):
            kwargs = dict(rngs={"exploration": key}, epsilon=0.3, temperature=1.0) if train else {}
            carry, out = model.apply(variables, carry, batch, train=train, memory=memory, **kwargs)
            return carry, (carry, {k: v for k, v in out.items() if k != "cycle_stats"})

        keys = jax.random.split(jax.random.key(10), cfg.halt_max_steps)
        return jax.lax.scan(step, model.initial_carry(batch), keys)[1]

    return run


def _first_step(cfg, variables, batch, memory):
    """``(carry, outputs)`` of the first ACT step (from :func:`_runner`)."""
    carries, outs = _runner(cfg, False)(variables, batch, memory)
    return jax.tree.map(lambda x: x[0], (carries, outs))


@pytest.mark.slow  # a minute of compilation on 2 cores: the second CI step
def test_pixels_mode_sequence_shapes_and_capsules_are_the_pixel_paths():
    cfg = _cfg()
    P, k, m, D, L = cfg.puzzle_len, 4, 2, 32, 10
    assert (cfg.k, cfg.m, cfg.capsule_content_dim) == (k, m, D)
    assert cfg.label_offset == P + k and cfg.total_len == P + k + L and cfg.has_token_positions
    model, variables, memory = _setup(cfg)
    inner = variables["params"]["inner"]
    assert {"patch_embed", "vision_level", "capsule_pool"} <= set(inner)
    assert not {"capsule_encoder", "capsule_proj"} & set(inner)
    assert inner["capsule_pool"]["queries"].shape == (k + k * m, D)  # k capsule and k*m child queries
    batch = random_batch(cfg, B, jax.random.key(1))
    carry, out = _first_step(cfg, variables, batch, memory)
    assert carry.z_H.shape == (B, cfg.total_len, D) and out["logits"].shape == (B, L, cfg.vocab_size)
    assert out["capsule_sketches"].shape == (B, k, D) and out["capsule_children"].shape == (B, k, m, D)
    assert out["capsule_checksums"].shape == (B, k, cfg.checksum_dim)
    assert out["recon"].shape == (B, k, D) and out["confidence"].shape == (B, k)
    sketches, children = _image_capsules(cfg, variables, batch)
    np.testing.assert_allclose(out["capsule_sketches"], sketches, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["capsule_children"], children, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["capsule_checksums"], caps.checksum_projection(children, cfg.checksum_dim),
                               rtol=1e-5, atol=1e-5)
    state = carry.extras.capsules
    assert state.sketches.shape == (B, k, D) and state.children.shape == (B, k, m, D)


def test_the_image_changes_every_output():
    cfg = _cfg()
    model, variables, memory = _setup(cfg)
    batch = random_batch(cfg, B, jax.random.key(1))
    run = _runner(cfg, False)
    base = run(variables, batch, memory)[1]["logits"][-1]
    other = run(variables, dict(batch, image=255 - batch["image"]), memory)[1]["logits"][-1]
    assert np.abs(np.asarray(other - base)).max(-1).min() > 1e-6  # every row, every position


def test_expand_gives_the_capsule_its_childrens_aggregate():
    cfg = _cfg()
    model, variables, memory = _setup(cfg)
    expand_v = _expanding(variables)
    batch = random_batch(cfg, B, jax.random.key(1))
    carry, out = _first_step(cfg, expand_v, batch, memory)
    assert (np.asarray(out["actions"]) == EXPAND).all()
    idx = np.asarray(out["expanded_index"])
    np.testing.assert_array_equal(idx, np.argmin(np.asarray(out["confidence"]), -1))  # the least confident
    mask = np.asarray(carry.extras.capsules.expanded_mask)
    np.testing.assert_array_equal(mask, np.eye(cfg.k, dtype=bool)[idx])

    # Independently: the pixel path's capsules, expanded where the carry says.
    sketches, children = _image_capsules(cfg, expand_v, batch)
    state = caps.capsule_state_init(sketches, children, caps.checksum_projection(children, cfg.checksum_dim))
    expected = np.asarray(caps.effective_content(state.replace(expanded_mask=jnp.asarray(mask)), cfg.capsule_aggregate))
    np.testing.assert_allclose(expected[mask], np.asarray(children).mean(2)[mask], rtol=1e-6)
    np.testing.assert_allclose(expected[~mask], np.asarray(sketches)[~mask], rtol=1e-6)
    # The hidden state at the expanded capsule's position took the aggregate at once ...
    z_H = np.asarray(carry.z_H)
    for b, i in enumerate(idx):
        np.testing.assert_allclose(z_H[b, cfg.capsule_offset + i], expected[b, i], rtol=1e-5, atol=1e-6)
    # ... and the next step's input at that position is the aggregate (x = sqrt(D) * embedding / sqrt(D)).
    inner_vars = {name: expand_v[name]["inner"] for name in ("params", "buffers")}
    ctx = {"capsule_mask": jnp.asarray(mask), "capsule_target": None}
    emb, _ = HESCInner(cfg).apply(inner_vars, None, batch, ctx, method=HESCInner.extra_positions)
    np.testing.assert_allclose(np.asarray(emb) * np.sqrt(cfg.hidden_size), expected, rtol=1e-5, atol=1e-6)
    assert (np.asarray(carry.extras.capsules.num_expansions) == 1).all()


def _with_halt_bias(variables, value):
    """``variables`` with the action head's Q(HALT) bias set to ``value``."""
    params = jax.tree.map(lambda x: x, variables["params"])
    bias = params["inner"]["action_head"]["q_out"]["bias"]
    params["inner"]["action_head"]["q_out"]["bias"] = bias.at[1].set(value)
    return {**variables, "params": params}


@pytest.mark.parametrize("train", [False, True])
def test_a_row_read_left_to_right_sees_no_later_token_through_any_extension(train):
    # Capsules, EXPAND (a state-dependent Q-head that expands), the 3-action DQN head with mean pooling,
    # VQ, memory (a filled bank), latent planning, MTP, adaptive H-cycles: all on.
    cfg = _cfg()
    assert cfg.enable_capsule_expansion and cfg.enable_vq and cfg.enable_memory and cfg.enable_latent_planning
    assert cfg.enable_mtp and cfg.enable_adaptive_hcycles and cfg.enable_dqn and cfg.q_head_pooling == "mean"
    _, variables, memory = _setup(cfg)
    run = _runner(cfg, train)
    t0 = 6
    batch = random_batch(cfg, B, jax.random.key(1))
    later = dict(batch, inputs=batch["inputs"].at[:, t0].set((batch["inputs"][:, t0] + 1) % cfg.vocab_size))
    # Q(HALT) biases across the H-cycle exit threshold, found on a coarse grid (from no row leaving the
    # H-cycles early to every row), then walked finely: where a row's exit is a close call, a later token
    # reaching the halting value would flip it.
    def exits(halt_bias):
        hcycles = _runner(cfg, False)(_with_halt_bias(variables, halt_bias), batch, memory)[1]["hcycles"]
        return np.asarray(hcycles)

    coarse = np.arange(-6.0, 10.01, 0.5)
    none_exit = max(b for b in coarse if (exits(b) == cfg.H_cycles).all())
    all_exit = min(b for b in coarse if b > none_exit and (exits(b) < cfg.H_cycles).all())
    mixed_exits = 0
    for halt_bias in np.arange(none_exit, all_exit + 1e-6, 0.02):
        v = _with_halt_bias(variables, halt_bias)
        base, changed = run(v, batch, memory)[1], run(v, later, memory)[1]
        diff = np.abs(np.asarray(changed["logits"] - base["logits"])).max(-1)  # [steps, B, L]
        assert diff[..., :t0].max() == 0 and diff[-1, :, t0:].max() > 1e-4, halt_bias
        # Only the inputs changed: MTP (teacher-forced on the labels) sees no later input either.
        mtp_diff = np.abs(np.asarray(changed["mtp_logits"] - base["mtp_logits"])).max(-1)  # [steps, Dp, B, L]
        assert mtp_diff[..., :t0].max() == 0, halt_bias
        # The row summaries (what the policy and a memory write read) and everything decided from them.
        for key in ("pooled", "q_values", "actions", "expanded_index", "hcycles", "confidence", "planning_entropy"):
            np.testing.assert_array_equal(np.asarray(changed[key]), np.asarray(base[key]), err_msg=f"{key} {halt_bias}")
        assert (np.asarray(base["expanded_index"]) >= 0).any()  # expansions happen
        mixed_exits += len(np.unique(np.asarray(base["hcycles"]))) > 1
    assert mixed_exits > 0  # some rows left the H-cycles early, others did not

    # The same change reaches the earlier positions of rows that predict all outputs at once (causal 0),
    # so the check above can fail.
    both = dict(batch, causal=jnp.zeros_like(batch["causal"]))
    diff = np.abs(np.asarray(run(variables, dict(later, causal=both["causal"]), memory)[1]["logits"]
                             - run(variables, both, memory)[1]["logits"])).max(-1)
    assert diff[..., :t0].max() > 1e-6


def test_config_refuses_what_pixels_mode_cannot_honour():
    with pytest.raises(ConfigError, match=r"mode='pixels' needs an image: set image_height and image_width"):
        _cfg(image_height=0, image_width=0, prefix_lm=False)
    with pytest.raises(ConfigError, match=r"mode='pixels' needs enable_capsules"):
        _cfg(enable_capsules=False, enable_capsule_expansion=False)
    with pytest.raises(ConfigError, match=r"enable_hierarchical_attention needs .*tokens mode.*mode='pixels'"):
        _cfg(enable_hierarchical_attention=True)
    with pytest.raises(ConfigError, match=r"capsule_children=0 must be >= 1"):
        _cfg(capsule_children=0)
    # Regions pooling: each capsule's region must split into its children (a 2x4 patch grid: 4 regions
    # of 1x2 patches, 2 children each; 3 do not fit).
    _cfg(vision_pooling="regions")
    with pytest.raises(ConfigError, match=r"capsule_children=3 sub-regions .*vision_capsules=4"):
        _cfg(vision_pooling="regions", capsule_children=3)
    # An image in the other modes: their sequence has no positions for it.
    tokens = dict(BASE, mode="tokens", seq_len=36, capsule_grid=6, capsule_regions=3, capsule_subregions=2)
    with pytest.raises(ConfigError, match=r"image_height=16, image_width=32: HESC reads an image only in "
                                          r"mode='pixels' \(mode='tokens'"):
        HESCConfig(**tokens)
    with pytest.raises(ConfigError, match=r"HESC reads an image only in mode='pixels' \(mode='capsules'"):
        HESCConfig(**dict(BASE, mode="capsules", num_capsules=10))
    no_image = dict(tokens, image_height=0, image_width=0, prefix_lm=False)
    assert HESCConfig(**no_image).total_len == 1 + 9 + 36
    # prefix_lm needs an image (the TRM's rule) and attention.
    with pytest.raises(ConfigError, match=r"prefix_lm=True needs attention blocks"):
        _cfg(mlp_t=True)


def test_configs_hesc_vision_variants():
    from configs import hesc

    def cfg_of(variant):
        config = hesc.get_config(variant)
        return config, HESCConfig.from_any({k: v for k, v in config.model.to_dict().items() if k != "name"})

    config, cfg = cfg_of("vision")
    assert config.data.name == "vision_unified"
    assert (cfg.mode, cfg.image_height, cfg.image_width, cfg.patch_size) == ("pixels", 224, 224, 16)
    assert (cfg.k, cfg.m, cfg.vision_pooling, cfg.prefix_lm) == (12, 4, "queries", True)
    assert (cfg.vocab_size, cfg.seq_len, cfg.puzzle_emb_ndim > 0, cfg.vision_shared) == (269, 900, True, False)
    assert cfg.total_len == cfg.puzzle_len + 12 + 900 and not cfg.enable_hierarchical_attention
    _, full = cfg_of("full,vision")
    assert (full.hidden_size, full.L_layers, full.mode) == (1024, 10, "pixels")
    config, tiny = cfg_of("tiny,vision")
    assert (tiny.image_height, tiny.patch_size, tiny.hidden_size, tiny.mlp_t) == (64, 8, 64, False)
    assert (config.data.name, config.data.incremental) == ("vision_unified", True)
    assert (config.data.options.image_size, config.data.options.max_chars) == (64, 30)  # the tiny preset
    assert cfg_of("tiny,vision,unified")[1].vision_shared
    with pytest.raises(ValueError, match="'unified' goes with 'vision'"):
        hesc.get_config("unified")


@pytest.mark.slow  # a minute of compilation on 2 cores: the second CI step
def test_train_step_runs_and_trains_the_encoder():
    cfg = _cfg()
    tx, state = _fresh_state(cfg)
    batch = random_batch(cfg, B, jax.random.key(4))
    batch["causal"] = jnp.asarray([1, 0, 1], jnp.int32)  # rows read left to right and one read at once
    step = jax.jit(make_train_step(HESC(cfg), tx, TRAINING, 100))
    new_state = state
    for _ in range(3):
        new_state, metrics = step(new_state, batch)
        for name, value in metrics.items():
            assert np.isfinite(np.asarray(value)).all(), name
    for name in ("confidence_loss", "reconstruction_loss", "mtp_loss", "vq_loss", "dqn_loss", "lm_loss"):
        assert name in metrics, name
    assert float(metrics["expansions_this_step"]) + float(metrics["num_expansions"]) > 0

    def moved(before, after):
        return max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))

    before, after = state.params["inner"], new_state.params["inner"]
    for name in ("patch_embed", "vision_level", "capsule_pool"):
        assert moved(before[name], after[name]) > 0, name
    # The child queries learn only through expanded capsules (their content enters then).
    k = cfg.k
    assert moved(before["capsule_pool"]["queries"][k:], after["capsule_pool"]["queries"][k:]) > 0


def test_confidence_target_is_the_rows_token_accuracy():
    from trm_jax.hesc.losses import confidence_loss

    cfg = _cfg()
    labels = jnp.asarray([[1, 2, 3, -100], [-100] * 4, [5, 6, 7, 8]])
    correct = jnp.asarray([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    logits = jax.random.normal(jax.random.key(0), (3, cfg.k))
    carry = dataclasses.make_dataclass("Carry", ["current_data"])({"labels": labels})
    got = confidence_loss(cfg, carry, {"confidence": logits, "token_correct": correct})
    target = np.asarray([2 / 3, 0.0, 1.0])[:, None]
    x = np.asarray(logits)
    bce = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(float(got), bce[0].mean() + bce[2].mean(), rtol=1e-5)  # the unlabelled row: none
