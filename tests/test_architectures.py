"""The reference's other architectures (HRM, single-z TRM, 6-level TRM, transformer baseline) compute
the same functions as independent float64 statements of their equations (tests/reference_oracle.py),
load and save the reference's state dicts, and halt as the reference does (docs/architecture.md#variants)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import trm_jax
from tests import reference_oracle as ref

ARCHS = ["hrm", "trm_singlez", "trm_hier6", "transformer"]


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _to_jax(batch):
    return {k: jnp.asarray(v.numpy()) for k, v in batch.items()}


def _oracle(arch: str, **kw) -> ref.OracleConfig:
    base = dict(arch=arch, H_cycles=2, L_cycles=3, halt_max_steps=2)
    if arch == "hrm":
        base.update(H_layers=2, L_layers=1)
    if arch == "transformer":
        # 5 heads of 32 // 5 = 6 -> 30 attention features, as the reference's 12 heads of 42 at hidden 512.
        base.update(H_layers=3, H_cycles=1, num_heads=5, puzzle_emb_len=0)
    if arch == "trm_hier6":
        base.update(L_cycles=4)  # two of the six low-level latents stay at their initial state
    base.update(kw)
    return ref.oracle_config(**base)


@pytest.mark.parametrize("arch,pos", [(a, p) for a in ARCHS for p in ("rope", "learned")]
                         + [("trm_singlez", "none"), ("hrm", "none")])
def test_forward_matches_float64_oracle_over_act_steps(arch, pos):
    odd_heads = arch == "transformer" and pos == "learned"  # 6 heads of 5: an odd head dim without rope
    ocfg = _oracle(arch, pos_encodings=pos, **({"num_heads": 6} if odd_heads else {}))
    cfg = ref.arch_model_config(ocfg)
    sd = ref.random_state_dict(ocfg, seed=11)
    variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
    model = trm_jax.build_model(cfg)
    assert type(model).__name__ != "TRM" or arch == "trm"
    apply = jax.jit(lambda v, c, b: model.apply(v, c, b, train=False))

    batches = [ref.random_batch(ocfg, 3, seed=s) for s in range(3)]
    carry = trm_jax.initial_carry(cfg, _to_jax(batches[0]))
    assert sorted(carry.z) == sorted(ocfg.latents)
    ocarry = ref.arch_initial_carry(ocfg, batches[0])
    for step, batch in enumerate(batches):  # the third step resets every row (halt_max_steps=2)
        carry, out = apply(variables, carry, _to_jax(batch))
        with torch.no_grad():
            ocarry, oout = ref.arch_act_step(sd, ocfg, ocarry, batch)
        checks = [("logits", out["logits"], oout["logits"]), ("q_halt", out["q_halt_logits"], oout["q_halt"]),
                  ("q_continue", out["q_continue_logits"], oout["q_continue"])]
        checks += [(name, carry.z[name], ocarry["z"][name]) for name in ocfg.latents]
        for name, got, want in checks:
            err = _rel_err(got, want.numpy())
            assert err < 1e-5, f"{arch} step {step} {name}: relative error {err:.2e}"
        np.testing.assert_array_equal(np.asarray(carry.halted), ocarry["halted"].numpy())
        np.testing.assert_array_equal(np.asarray(carry.current_data["inputs"]), ocarry["data"]["inputs"].numpy())


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_match_float64_oracle(arch):
    """Gradients of one step equal the oracle's with the reference's no-gradient updates, and differ
    from differentiating every update (so the test would see a wrong gradient split)."""
    ocfg = _oracle(arch)
    cfg = ref.arch_model_config(ocfg)
    sd = ref.random_state_dict(ocfg, seed=5)
    variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
    model = trm_jax.build_model(cfg)
    batch = ref.random_batch(ocfg, 2, seed=1)
    g = torch.Generator().manual_seed(3)
    w_logits = torch.randn(2, ocfg.seq_len, ocfg.vocab_size, generator=g, dtype=torch.float64)
    w_q = torch.randn(2, 2, generator=g, dtype=torch.float64)

    carry = trm_jax.initial_carry(cfg, _to_jax(batch))
    carry, _ = jax.jit(model.apply)(variables, carry, _to_jax(batch))  # a non-reset state

    def loss_fn(params):
        _, out = model.apply({**variables, "params": params}, carry, _to_jax(batch), train=False)
        return (jnp.sum(out["logits"] * jnp.asarray(w_logits.numpy(), jnp.float32))
                + jnp.sum(out["q_halt_logits"] * jnp.asarray(w_q[:, 0].numpy(), jnp.float32))
                + jnp.sum(out["q_continue_logits"] * jnp.asarray(w_q[:, 1].numpy(), jnp.float32)))

    grads = jax.jit(jax.grad(loss_fn))(variables["params"])
    got = trm_jax.to_torch({"params": grads}, cfg, prefix="", as_numpy=True)

    z = {n: torch.from_numpy(np.asarray(carry.z[n], np.float64)) for n in ocfg.latents}
    want = ref.output_grads(sd, ocfg, z, batch, w_logits, w_q, stop_early=True)
    assert set(got) == set(want), set(got) ^ set(want)
    for key in want:
        err = _rel_err(got[key], want[key])
        assert err < 2e-5, f"{arch} {key}: relative error {err:.2e}"
    if arch != "transformer":  # (the baseline has no no-gradient updates)
        full = ref.output_grads(sd, ocfg, z, batch, w_logits, w_q, stop_early=False)
        level = "L_level"
        key = f"inner.{level}.layers.0.mlp.down_proj.weight"
        assert _rel_err(got[key], full[key]) > 1e-3


def test_hrm_bootstraps_the_continue_logit_and_halts_on_q():
    """Training: the HRM's target for q_continue is the sigmoid of the next step's max Q (halt Q at
    the last step), and rows halt where q_halt > q_continue (exploration off)."""
    ocfg = _oracle("hrm", halt_max_steps=3)
    cfg = ref.arch_model_config(ocfg, halt_exploration_prob=0.0)
    sd = ref.random_state_dict(ocfg, seed=2)
    sd["inner.q_head.bias"] = torch.tensor([0.3, -0.2], dtype=torch.float64)  # some rows halt, some continue
    variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
    model = trm_jax.build_model(cfg)
    batches = [ref.random_batch(ocfg, 6, seed=s) for s in range(3)]
    carry = trm_jax.initial_carry(cfg, _to_jax(batches[0]))
    ocarry = ref.arch_initial_carry(ocfg, batches[0])
    halted_any = False
    apply = jax.jit(lambda v, c, b: model.apply(v, c, b, train=True))
    for batch in batches:
        carry, out = apply(variables, carry, _to_jax(batch))
        with torch.no_grad():
            ocarry, oout = ref.arch_act_step(sd, ocfg, ocarry, batch, halt_rule="q", bootstrap=True)
        assert _rel_err(out["target_q_continue"], oout["target_q_continue"].numpy()) < 1e-5
        np.testing.assert_array_equal(np.asarray(carry.halted), ocarry["halted"].numpy())
        halted_any |= bool(np.any(np.asarray(carry.halted) & (np.asarray(carry.steps) < 3)))
    assert halted_any  # the Q rule, not only the step limit, decided some rows


def test_transformer_act_switches():
    """act_inference: evaluation halts on q_halt > q_continue; act_enabled=False: training runs every
    step; no target Q unless compute_target_q (the reference's training never asks for it)."""
    ocfg = _oracle("transformer", halt_max_steps=3)
    sd = ref.random_state_dict(ocfg, seed=4)
    sd["inner.q_head.bias"] = torch.tensor([0.2, 0.0], dtype=torch.float64)
    batch = ref.random_batch(ocfg, 6, seed=0)

    def run(train, **kw):
        cfg = ref.arch_model_config(ocfg, halt_exploration_prob=0.0, **kw)
        model = trm_jax.build_model(cfg)
        variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
        carry = trm_jax.initial_carry(cfg, _to_jax(batch))
        return model.apply(variables, carry, _to_jax(batch), train=train)

    with torch.no_grad():
        ocarry, oout = ref.arch_act_step(sd, ocfg, ref.arch_initial_carry(ocfg, batch), batch, halt_rule="q",
                                         bootstrap=True)
    q_halted = ocarry["halted"].numpy()
    assert q_halted.any() and not q_halted.all()
    carry, _ = run(False)
    assert not np.asarray(carry.halted).any()  # default: exactly halt_max_steps in evaluation
    carry, _ = run(False, act_inference=True)
    np.testing.assert_array_equal(np.asarray(carry.halted), q_halted)
    carry, out = run(True)
    np.testing.assert_array_equal(np.asarray(carry.halted), q_halted)
    assert "target_q_continue" not in out
    carry, _ = run(True, act_enabled=False)
    assert not np.asarray(carry.halted).any()
    _, out = run(True, compute_target_q=True)
    assert _rel_err(out["target_q_continue"], oout["target_q_continue"].numpy()) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_with_reference_keys(arch):
    ocfg = _oracle(arch)
    cfg = ref.arch_model_config(ocfg)
    sd = ref.with_prefix(ref.random_state_dict(ocfg, seed=9))
    variables = trm_jax.from_torch(sd, cfg)
    back = trm_jax.to_torch(variables, cfg)
    assert set(back) == set(sd)  # every reference key, the latents' *_init buffers included
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key].float().numpy(), value.float().numpy(), err_msg=key)


def test_state_dict_of_another_architecture_is_refused_with_every_key_named():
    trm_ocfg = _oracle("hrm")
    sd = ref.with_prefix(ref.random_state_dict(ref.oracle_config(H_cycles=2, L_cycles=3), seed=1))
    with pytest.raises(trm_jax.StateDictError) as info:
        trm_jax.from_torch(sd, ref.arch_model_config(trm_ocfg))
    message = str(info.value)
    assert "missing keys" in message and "inner.H_level.layers.1.mlp.down_proj.weight" in message
    sd6 = ref.with_prefix(ref.random_state_dict(_oracle("trm_hier6"), seed=1))
    with pytest.raises(trm_jax.StateDictError, match="unexpected keys.*inner.L1_init"):
        trm_jax.from_torch(sd6, ref.arch_model_config(ref.oracle_config(H_cycles=2, L_cycles=3)))


@pytest.mark.parametrize("name,field,value,needle", [
    ("transformer", "H_cycles", 2, "H_cycles must be 1"),
    ("trm_hier6", "L_cycles", 7, "L_cycles must be <= 6"),
    ("hrm", "H_layers", 0, "H_layers=0 must be >= 1"),
    ("transformer", "pos_encodings", "none", "needs 'rope' or 'learned'"),
])
def test_configs_refuse_values_the_architecture_cannot_run(name, field, value, needle):
    cfg = dict(name=name, seq_len=10, vocab_size=7, hidden_size=32, num_heads=4, **{field: value})
    with pytest.raises(trm_jax.ConfigError, match=needle):
        trm_jax.build_model(cfg)


def test_transformer_config_has_no_recursion_fields():
    with pytest.raises(trm_jax.ConfigError, match="unknown field 'L_cycles'"):
        trm_jax.build_model(dict(name="transformer", seq_len=10, vocab_size=7, L_cycles=2))


@pytest.mark.parametrize("yaml_name,family,fields", [
    ("recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", "hrm",
     dict(halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4,
          hidden_size=512, num_heads=8, expansion=4, puzzle_emb_ndim=512, pos_encodings="rope",
          forward_dtype="bfloat16", mlp_t=False)),
    ("recursive_reasoning.transformers_baseline@Model_ACTV2", "transformer",
     dict(halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=1, H_layers=8, hidden_size=512, num_heads=12,
          expansion=4, puzzle_emb_ndim=512, pos_encodings="rope")),
    ("recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1", "trm_hier6",
     dict(halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2,
          hidden_size=512, num_heads=8, expansion=4, puzzle_emb_ndim=512, pos_encodings="rope",
          forward_dtype="bfloat16", mlp_t=False, puzzle_emb_len=16, no_ACT_continue=True)),
])
def test_the_reference_arch_yaml_maps_over_with_its_own_name(yaml_name, family, fields):
    """A reference ``config/arch/*.yaml`` (interpolations resolved, ``loss`` given as ``loss_type``)
    builds its architecture, named as the yaml names it."""
    from trm_jax.families import family_of

    section = dict(name=yaml_name, seq_len=81, vocab_size=11, loss_type="stablemax_cross_entropy", **fields)
    assert family_of(section).name == family
    model = trm_jax.build_model(section)
    assert type(model.config) is family_of(section).config_cls
    assert trm_jax.initial_carry(section, trm_jax.dummy_batch(section, 2)).z.keys() == set(model.config.LATENTS)
