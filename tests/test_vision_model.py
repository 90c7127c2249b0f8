"""The pixel path of the TRM (trm_jax/models/vision.py, docs/vision.md): patches, 2-D positions, pooling
into capsules, the prefix-LM mask, greedy reading, the shared (trm_unified) encoder and the config checks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import arc as arc_config, vision as vision_config
from trm_jax.models import vision
from trm_jax.models.config import ConfigError, TRMConfig
from trm_jax.models.trm import build_model, init_variables, random_batch
from trm_jax.steps import make_eval_batch


def vision_cfg(**overrides) -> TRMConfig:
    fields = dict(seq_len=10, vocab_size=40, hidden_size=32, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=1,
                  L_layers=1, puzzle_emb_ndim=0, halt_max_steps=2, halt_exploration_prob=0.0, forward_dtype="float32",
                  loss_type="softmax_cross_entropy", image_height=16, image_width=32, patch_size=8,
                  vision_capsules=4, vision_layers=1, prefix_lm=True)
    fields.update(overrides)
    return TRMConfig(**fields)


def run_logits(cfg, variables, batch):
    """Logits after ``halt_max_steps`` steps of a fresh carry."""
    return _run_logits(cfg)(variables, batch)


@functools.lru_cache(maxsize=None)
def _run_logits(cfg):
    model = build_model(cfg)

    @jax.jit
    def run(variables, batch):
        carry = model.initial_carry(batch)
        for _ in range(cfg.halt_max_steps):
            carry, out = model.apply(variables, carry, batch)
        return out["logits"]

    return run


def test_patchify_matches_a_loop_over_patches():
    image = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    got = np.asarray(vision.patchify(jnp.asarray(image), 8))
    assert got.shape == (2, 6, 8 * 8 * 3)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                patch = 1 - image[b, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].astype(np.float64) / 255  # white = 0
                np.testing.assert_allclose(got[b, r * 3 + c], patch.reshape(-1), atol=1e-6)


def test_regions_tile_the_patch_grid_into_near_square_blocks():
    assert vision.region_split((4, 16), 12) == (2, 6)
    assert vision.region_split((8, 8), 16) == (4, 4)
    ids = vision.region_ids((8, 8), 16).reshape(8, 8)
    # 4x4 regions of 2x2 patches, numbered row-major.
    expected = (np.arange(8)[:, None] // 2) * 4 + np.arange(8)[None, :] // 2
    np.testing.assert_array_equal(ids, expected)
    uneven = vision.region_ids((4, 16), 12)
    counts = np.bincount(uneven, minlength=12)
    assert counts.sum() == 64 and counts.max() - counts.min() <= 2
    with pytest.raises(ValueError, match="do not fit"):
        vision.region_split((2, 2), 7)


def test_prefix_lm_bias_against_the_definition():
    causal = jnp.array([1, 0])
    bias = np.asarray(vision.prefix_lm_bias(causal, 6, 2))
    assert bias.shape == (2, 1, 6, 6)
    for i in range(6):
        for j in range(6):
            visible = j < 2 or (i >= 2 and j <= i)
            assert (bias[0, 0, i, j] == 0) == visible, (i, j)
    assert np.all(bias[1] == 0)


@pytest.mark.parametrize("pooling,shared", [("queries", False), ("regions", False), ("queries", True)])
def test_tokens_see_the_image_and_no_later_token(pooling, shared):
    cfg = vision_cfg(vision_pooling=pooling, vision_shared=shared)
    variables = init_variables(cfg, jax.random.key(0))
    assert ("vision_level" in variables["params"]["inner"]) == (not shared)
    batch = random_batch(cfg, 3, jax.random.key(1))
    base = run_logits(cfg, variables, batch)
    later = dict(batch, inputs=batch["inputs"].at[:, 6].set(3))
    diff = np.abs(np.asarray(run_logits(cfg, variables, later) - base)).max(-1)
    assert diff[:, :6].max() == 0 and diff[:, 6:].max() > 1e-4
    # Every position, the first included, reads the image.
    other = dict(batch, image=batch["image"].at[:, :8, :8].set(0))
    assert np.abs(np.asarray(run_logits(cfg, variables, other) - base)).max(-1).min() > 1e-6
    # Rows with causal = 0 see every token (all outputs at once).
    both = dict(batch, causal=jnp.zeros_like(batch["causal"]))
    later_both = dict(later, causal=both["causal"])
    diff = np.abs(np.asarray(run_logits(cfg, variables, later_both) - run_logits(cfg, variables, both))).max(-1)
    assert diff[:, :6].max() > 1e-6


def test_gradients_reach_the_encoder():
    cfg = vision_cfg()
    model = build_model(cfg)
    variables = init_variables(cfg, jax.random.key(0))
    batch = random_batch(cfg, 2, jax.random.key(1))

    def loss(params):
        _, out = model.apply({**variables, "params": params}, model.initial_carry(batch), batch)
        return out["logits"].sum()

    grads = jax.jit(jax.grad(loss))(variables["params"])["inner"]
    for name in ("patch_embed", "vision_level", "capsule_pool"):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name


def test_greedy_reading_equals_a_token_by_token_loop():
    cfg = vision_cfg()
    variables = init_variables(cfg, jax.random.key(0))
    batch = random_batch(cfg, 3, jax.random.key(2))
    batch["inputs"] = batch["inputs"].at[:, 0].set(7)  # the begin token
    # Labels: the loop's own greedy tokens for row 0, wrong ones elsewhere, one row not read.
    tokens = np.zeros((3, cfg.seq_len), np.int32)
    tokens[:, 0] = 7
    generated = np.zeros((3, cfg.seq_len), np.int32)
    for t in range(cfg.seq_len):
        logits = np.asarray(run_logits(cfg, variables, dict(batch, inputs=jnp.asarray(tokens))))
        generated[:, t] = logits[:, t].argmax(-1)
        if t + 1 < cfg.seq_len:
            tokens[:, t + 1] = generated[:, t]
    labels = generated.copy()
    labels[0, 7:] = -100  # an ignored tail
    labels[1, :3] = (labels[1, :3] + 1) % cfg.vocab_size  # three wrong of ten
    batch["labels"] = jnp.asarray(labels)
    batch["causal"] = jnp.array([1, 1, 0])
    metrics, preds, _ = jax.jit(make_eval_batch(build_model(cfg)))(variables["params"], variables["buffers"], {},
                                                                   batch)
    np.testing.assert_array_equal(np.asarray(preds)[:2], generated[:2])
    assert float(metrics["read_count"]) == 2
    assert float(metrics["line_accuracy"]) == 1
    np.testing.assert_allclose(float(metrics["char_accuracy"]), 1 + 0.7, rtol=1e-6)


def test_config_refuses_what_the_pixel_path_cannot_honour():
    with pytest.raises(ConfigError, match="patch_size=5 must divide"):
        vision_cfg(patch_size=5)
    with pytest.raises(ConfigError, match="set both"):
        vision_cfg(image_width=0)
    with pytest.raises(ConfigError, match="prefix_lm=True reads the tokens after an image"):
        vision_cfg(image_height=0, image_width=0)
    with pytest.raises(ConfigError, match="vision_pooling"):
        vision_cfg(vision_pooling="mean")
    with pytest.raises(ConfigError, match="causal=True with an image"):
        vision_cfg(causal=True)
    with pytest.raises(ConfigError, match="mlp_t"):
        vision_cfg(mlp_t=True, prefix_lm=False, vision_shared=True)
    cfg = vision_cfg()
    assert cfg.total_len == 4 + 10 and cfg.label_offset == 4 and cfg.patch_grid == (2, 4)


@pytest.mark.parametrize("module,variant", [(vision_config, "tiny"), (vision_config, "tiny,unified"),
                                            (arc_config, "tiny,pixels"), (arc_config, "tiny,pixels,unified")])
def test_vision_configs_build_models(module, variant):
    config = module.get_config(variant)
    cfg = TRMConfig.from_any({k: v for k, v in config.model.to_dict().items() if k != "name"})
    assert cfg.has_image and cfg.vision_shared == ("unified" in variant)
    assert cfg.prefix_lm == (module is vision_config)
    # ARC's output grid needs to know where each capsule looks; the CPU text run reads one column each.
    assert cfg.vision_pooling == ("regions" if module is arc_config or "tiny" in variant else "queries")
    assert module.get_config(variant.replace("tiny", "").strip(",")).model.vision_pooling == (
        "regions" if module is arc_config else "queries")
