"""The Flax TRM computes the same function as an independent float64 statement of its equations
(docs/architecture.md#model)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import trm_jax
from tests import reference_oracle as ref

# (pos_encodings, mlp_t, H_cycles, L_cycles, puzzle_emb_ndim, puzzle_emb_len)
CASES = [
    ("rope", False, 2, 2, 48, 2),
    ("rope", False, 3, 1, 32, 0),   # P from ceil(ndim / D)
    ("learned", False, 1, 3, 48, 2),
    ("none", False, 2, 3, 0, 0),    # no puzzle embeddings
    ("none", True, 2, 2, 48, 2),    # TRM-MLP (token mixing over the sequence axis)
    ("none", True, 3, 2, 32, 1),
]


def _rel_err(a, b) -> float:
    """Norm-wise relative error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _to_jax(batch):
    return {k: jnp.asarray(v.numpy()) for k, v in batch.items()}


@pytest.mark.parametrize("pos,mlp_t,H,L,ndim,plen", CASES)
def test_forward_matches_float64_oracle_over_act_steps(pos, mlp_t, H, L, ndim, plen):
    ocfg = ref.oracle_config(pos_encodings=pos, mlp_t=mlp_t, H_cycles=H, L_cycles=L,
                             puzzle_emb_ndim=ndim, puzzle_emb_len=plen, halt_max_steps=2)
    cfg = ref.model_config(ocfg)
    sd = ref.random_state_dict(ocfg, seed=H * 10 + L)
    variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
    model = trm_jax.build_model(cfg)
    apply = jax.jit(lambda v, c, b: model.apply(v, c, b, train=False))

    batches = [ref.random_batch(ocfg, 3, seed=s) for s in range(3)]
    carry = trm_jax.initial_carry(cfg, _to_jax(batches[0]))
    ocarry = ref.initial_carry(ocfg, batches[0])
    for step, batch in enumerate(batches):  # step 3 resets every row (halt_max_steps=2)
        carry, out = apply(variables, carry, _to_jax(batch))
        with torch.no_grad():
            ocarry, logits, q_halt, q_cont = ref.act_eval_step(sd, ocfg, ocarry, batch)
        assert out["logits"].shape == (3, ocfg.seq_len, ocfg.vocab_size)
        for name, got, want in [("logits", out["logits"], logits), ("q_halt", out["q_halt_logits"], q_halt),
                                ("q_continue", out["q_continue_logits"], q_cont),
                                ("z_H", carry.z_H, ocarry["z_H"]), ("z_L", carry.z_L, ocarry["z_L"])]:
            err = _rel_err(got, want.numpy())
            assert err < 1e-5, f"step {step} {name}: relative error {err:.2e}"
        np.testing.assert_array_equal(np.asarray(carry.steps), ocarry["steps"].numpy())
        np.testing.assert_array_equal(np.asarray(carry.halted), ocarry["halted"].numpy())
        np.testing.assert_array_equal(np.asarray(carry.current_data["inputs"]), ocarry["data"]["inputs"].numpy())


def _jax_grads(model, variables, carry, batch, weights):
    def loss_fn(params):
        _, out = model.apply({**variables, "params": params}, carry, batch, train=False)
        return (jnp.sum(out["logits"] * weights["logits"]) + jnp.sum(out["q_halt_logits"] * weights["q"][:, 0])
                + jnp.sum(out["q_continue_logits"] * weights["q"][:, 1]))

    return jax.jit(jax.grad(loss_fn))(variables["params"])


@pytest.mark.parametrize("pos,mlp_t,H,L,remat", [("rope", False, 3, 2, "dots"), ("none", True, 2, 2, "full"),
                                                 ("learned", False, 2, 1, "none"), ("rope", False, 2, 2, "dots_no_batch")])
def test_gradients_flow_only_through_last_h_cycle(pos, mlp_t, H, L, remat):
    """Gradients equal the float64 oracle's, whatever the rematerialisation policy."""
    ocfg = ref.oracle_config(pos_encodings=pos, mlp_t=mlp_t, H_cycles=H, L_cycles=L)
    cfg = ref.model_config(ocfg, remat=remat)
    sd = ref.random_state_dict(ocfg, seed=7)
    variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
    model = trm_jax.build_model(cfg)
    batch = ref.random_batch(ocfg, 2, seed=1)
    g = torch.Generator().manual_seed(3)
    w_logits = torch.randn(2, ocfg.seq_len, ocfg.vocab_size, generator=g, dtype=torch.float64)
    w_q = torch.randn(2, 2, generator=g, dtype=torch.float64)

    # Start from a non-reset state so z_H/z_L carry information into the step.
    carry = trm_jax.initial_carry(cfg, _to_jax(batch))
    carry, _ = jax.jit(model.apply)(variables, carry, _to_jax(batch))
    grads = _jax_grads(model, variables, carry, _to_jax(batch),
                       {"logits": jnp.asarray(w_logits.numpy(), jnp.float32), "q": jnp.asarray(w_q.numpy(), jnp.float32)})
    got = trm_jax.to_torch({"params": grads}, cfg, prefix="", as_numpy=True)

    z = {n: torch.from_numpy(np.asarray(carry.z[n], np.float64)) for n in ("z_H", "z_L")}
    want = ref.output_grads(sd, ocfg, z, batch, w_logits, w_q, stop_early=True)
    assert set(got) == set(want), set(got) ^ set(want)
    for key in want:
        err = _rel_err(got[key], want[key])
        assert err < 2e-5, f"{key}: relative error {err:.2e}"

    # The check can fail: differentiating through every cycle gives other gradients.
    full = ref.output_grads(sd, ocfg, z, batch, w_logits, w_q, stop_early=False)
    key = "inner.L_level.layers.0.mlp.down_proj.weight"
    assert _rel_err(got[key], full[key]) > 1e-3


def test_bfloat16_forward_is_close_to_float32():
    ocfg = ref.oracle_config()
    sd = ref.random_state_dict(ocfg, seed=4)
    batch = _to_jax(ref.random_batch(ocfg, 2, seed=2))
    outs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = ref.model_config(ocfg, forward_dtype=dtype)
        variables = trm_jax.from_torch(ref.with_prefix(sd), cfg)
        model = trm_jax.build_model(cfg)
        carry, out = jax.jit(model.apply)(variables, trm_jax.initial_carry(cfg, batch), batch)
        assert carry.z_H.dtype == jnp.dtype(dtype)
        assert out["q_halt_logits"].dtype == jnp.float32
        assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
        outs[dtype] = np.asarray(out["logits"], np.float32)
    err = _rel_err(outs["bfloat16"], outs["float32"])
    assert 0 < err < 0.1


@pytest.mark.parametrize("with_bias", [False, True])
def test_padded_attention_equals_unpadded(with_bias):
    """The odd-length path used for cuDNN (one masked pad position) computes the same attention."""
    from trm_jax.models.layers import fused_attention, padded_attention

    kq, kk, kv, kb = jax.random.split(jax.random.PRNGKey(3), 4)
    B, S, H, K = 2, 7, 2, 8
    q, k, v = (jax.random.normal(key, (B, S, H, K)) for key in (kq, kk, kv))
    bias = jax.random.normal(kb, (B, H, S, S)) if with_bias else None
    expected = fused_attention(q, k, v, bias, "xla")
    got = padded_attention(q, k, v, bias, "xla")
    assert got.shape == (B, S, H, K)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # The mask matters: attending to the zero pad position as well gives another result.
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    unmasked = jax.nn.dot_product_attention(*(jnp.pad(t, pad) for t in (q, k, v)),
                                            bias=None if bias is None else jnp.pad(bias, ((0, 0), (0, 0), (0, 1), (0, 1))))
    assert float(jnp.abs(unmasked[:, :S] - expected).max()) > 1e-3


def test_auto_attention_is_xla_off_gpu_and_for_float32():
    from trm_jax.models.layers import resolve_attention_impl

    assert resolve_attention_impl("auto", jnp.float32, 64) == "xla"
    assert resolve_attention_impl("cudnn", jnp.float32, 64) == "cudnn"
    assert resolve_attention_impl("auto", jnp.bfloat16, 64, has_bias=True) == "xla"
    if jax.default_backend() != "gpu":
        assert resolve_attention_impl("auto", jnp.bfloat16, 64) == "xla"
