"""from_torch / to_torch: reference key names, round trips, and one clear error for a broken state dict."""
import jax
import numpy as np
import pytest
import torch

import trm_jax
from tests import reference_oracle as ref

CFG = dict(seq_len=8, vocab_size=6, num_puzzle_identifiers=4, hidden_size=16, num_heads=2, expansion=2.0,
           H_cycles=2, L_cycles=1, L_layers=2, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="bfloat16")


@pytest.fixture(scope="module")
def variables():
    return trm_jax.init_variables(CFG, jax.random.PRNGKey(0))


def _assert_trees_equal(a, b):
    fa, ta = jax.tree_util.tree_flatten(a)
    fb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_to_torch_uses_reference_names_layouts_and_dtypes(variables):
    sd = trm_jax.to_torch(variables, CFG)
    D, V = 16, 6
    expected = {
        "_orig_mod.model.inner.embed_tokens.embedding_weight": (V, D),
        "_orig_mod.model.inner.lm_head.weight": (V, D),
        "_orig_mod.model.inner.q_head.weight": (2, D),
        "_orig_mod.model.inner.q_head.bias": (2,),
        "_orig_mod.model.inner.puzzle_emb.weights": (4, 16),
        "_orig_mod.model.inner.H_init": (D,),
        "_orig_mod.model.inner.L_init": (D,),
        "_orig_mod.model.inner.L_level.layers.1.self_attn.qkv_proj.weight": (3 * D, D),
        "_orig_mod.model.inner.L_level.layers.1.self_attn.o_proj.weight": (D, D),
        "_orig_mod.model.inner.L_level.layers.0.mlp.gate_up_proj.weight": (2 * 256, D),
        "_orig_mod.model.inner.L_level.layers.0.mlp.down_proj.weight": (D, 256),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == 7 + 2 * 4
    assert sd["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16  # a forward_dtype buffer, like the reference
    assert sd["_orig_mod.model.inner.lm_head.weight"].dtype == torch.float32
    np.testing.assert_array_equal(sd["_orig_mod.model.inner.lm_head.weight"].numpy(),
                                  np.asarray(variables["params"]["inner"]["lm_head"]["kernel"]).T)
    # q-head starts at weight 0, bias -5; puzzle embeddings at 0.
    assert float(sd["_orig_mod.model.inner.q_head.weight"].abs().max()) == 0.0
    assert sd["_orig_mod.model.inner.q_head.bias"].tolist() == [-5.0, -5.0]
    assert float(sd["_orig_mod.model.inner.puzzle_emb.weights"].abs().max()) == 0.0


@pytest.mark.parametrize("prefix", ["", "model.", "_orig_mod.model.", "_orig_mod."])
def test_round_trip_with_every_prefix(variables, prefix):
    back = trm_jax.from_torch(trm_jax.to_torch(variables, CFG, prefix=prefix), CFG)
    # H_init/L_init pass through bfloat16 in the state dict: compare them after that rounding.
    want = jax.tree_util.tree_map(lambda x: x, variables)
    for name in ("H_init", "L_init"):
        want["buffers"]["inner"][name] = want["buffers"]["inner"][name].astype("bfloat16").astype("float32")
    _assert_trees_equal(back, want)


def test_round_trip_numpy_file_and_full_checkpoint(variables, tmp_path):
    sd_np = trm_jax.to_torch(variables, CFG, as_numpy=True)
    assert all(isinstance(v, np.ndarray) for v in sd_np.values())
    _assert_trees_equal(trm_jax.from_torch(sd_np, CFG), variables)
    path = tmp_path / "step_100"
    torch.save({"model": trm_jax.to_torch(variables, CFG), "step": 100}, path)
    back = trm_jax.from_torch(str(path), CFG)
    np.testing.assert_array_equal(back["params"]["inner"]["lm_head"]["kernel"],
                                  variables["params"]["inner"]["lm_head"]["kernel"])


def test_imported_reference_weights_give_oracle_numbers():
    ocfg = ref.oracle_config()
    sd = ref.random_state_dict(ocfg, seed=11)
    cfg = ref.model_config(ocfg)
    variables = trm_jax.from_torch(ref.with_prefix(sd, "_orig_mod.model."), cfg)
    batch = ref.random_batch(ocfg, 2, seed=0)
    jb = {k: jax.numpy.asarray(v.numpy()) for k, v in batch.items()}
    _, out = jax.jit(trm_jax.build_model(cfg).apply)(variables, trm_jax.initial_carry(cfg, jb), jb)
    with torch.no_grad():
        _, logits, _, _ = ref.act_eval_step(sd, ocfg, ref.initial_carry(ocfg, batch), batch)
    np.testing.assert_allclose(np.asarray(out["logits"]), logits.numpy(), rtol=1e-4, atol=1e-5)
    # And back: to_torch reproduces the imported tensors exactly.
    back = trm_jax.to_torch(variables, cfg, prefix="", as_numpy=True)
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value.float().numpy())


def test_broken_state_dict_lists_every_problem(variables):
    sd = dict(trm_jax.to_torch(variables, CFG))
    del sd["_orig_mod.model.inner.lm_head.weight"]
    del sd["_orig_mod.model.inner.L_init"]
    sd["_orig_mod.model.inner.extra.weight"] = torch.zeros(3)
    sd["_orig_mod.model.inner.puzzle_emb.weights"] = torch.zeros(9, 16)
    with pytest.raises(trm_jax.StateDictError) as err:
        trm_jax.from_torch(sd, CFG)
    msg = str(err.value)
    for part in ("missing keys (2)", "inner.lm_head.weight", "inner.L_init", "unexpected keys (1)",
                 "inner.extra.weight", "shape mismatches (1)", "inner.puzzle_emb.weights: checkpoint (9, 16) vs model (4, 16)"):
        assert part in msg, (part, msg)


def test_not_a_state_dict():
    with pytest.raises(trm_jax.StateDictError, match="expected a state dict"):
        trm_jax.from_torch([1, 2, 3], CFG)
