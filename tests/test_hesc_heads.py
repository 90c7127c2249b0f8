"""HESC heads: the 3-action Q-head, COCONUT latent planning, multi-token prediction (against NumPy)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trm_jax.hesc.mtp import MTPHeads, mtp_loss, mtp_targets
from trm_jax.hesc.planning import LatentPlanner
from trm_jax.hesc.qheads import CONTINUE, EXPAND, HALT, ActionQHead
from trm_jax.losses import softmax_cross_entropy, stablemax_cross_entropy

B, S, D, HID = 3, 5, 8, 16


def _init(module, *args, **kwargs):
    """``module.init(PRNGKey(0), ...)["params"]`` (eager: on CPU, cheaper than compiling each tiny graph)."""
    return module.init(jax.random.PRNGKey(0), *args, **kwargs)["params"]


def _apply_fn(module, jit=False, **kwargs):
    """``(params, *args) -> module.apply({"params": params}, *args, **kwargs)``; ``jit=True`` compiles it."""
    fn = lambda p, *a: module.apply({"params": p}, *a, **kwargs)
    return jax.jit(fn) if jit else fn


def _apply(module, params, *args, **kwargs):
    """``module.apply({"params": params}, *args, **kwargs)``."""
    return _apply_fn(module, **kwargs)(params, *args)


def _np(x):
    return np.asarray(x, np.float64)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _randomize(params, seed=0, scale=0.5):
    """Every leaf replaced by random normals (the zero-initialised output layer would hide bugs)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, S, D)).astype(np.float32)
    mask = np.ones((B, S), bool)
    mask[1, 3:] = False
    mask[2, :] = False  # a row with no valid position pools to zeros
    return jnp.asarray(h), jnp.asarray(mask)


# ----------------------------------------------------------------------------- Q-head

def _np_pool(head, p, h, mask):
    h = _np(h)
    m = np.asarray(mask, np.float64)
    if head.head_type == "attention":
        keys = h @ _np(p["attn_pool"]["key_proj"]["kernel"])
        scores = keys @ _np(p["attn_pool"]["query"]) / np.sqrt(D)
        scores = np.where(mask, scores, -np.inf)
        w = np.exp(scores - np.where(mask.any(-1), scores.max(-1), 0.0)[:, None])
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
        return np.einsum("bs,bsd->bd", np.nan_to_num(w), h)
    if head.pooling == "first":
        return h[:, 0]
    return (h * m[..., None]).sum(1) / np.maximum(m.sum(1), 1.0)[:, None]


def _np_q(head, p, x, state):
    out = p["q_out"]
    if head.head_type == "rnn":
        g = {k: {n: _np(v) for n, v in d.items()} for k, d in p["gru"].items()}
        r = _sigmoid(x @ g["ir"]["kernel"] + g["ir"]["bias"] + state @ g["hr"]["kernel"])
        z = _sigmoid(x @ g["iz"]["kernel"] + g["iz"]["bias"] + state @ g["hz"]["kernel"])
        n = np.tanh(x @ g["in"]["kernel"] + g["in"]["bias"] + r * (state @ g["hn"]["kernel"] + g["hn"]["bias"]))
        new = (1 - z) * n + z * state
        return new @ _np(out["kernel"]) + _np(out["bias"]), new
    hid = _silu(x @ _np(p["mlp_in"]["kernel"]) + _np(p["mlp_in"]["bias"]))
    return hid @ _np(out["kernel"]) + _np(out["bias"]), None


CONFIGS = [("mlp", "first"), ("mlp", "mean"), ("rnn", "first"), ("rnn", "mean"), ("attention", "mean")]


def test_action_constants():
    assert (CONTINUE, HALT, EXPAND) == (0, 1, 2)


@pytest.mark.parametrize("head_type,pooling", CONFIGS)
@pytest.mark.parametrize("num_actions", [2, 3])
def test_qhead_starts_at_zero_with_float32_params(head_type, pooling, num_actions):
    head = ActionQHead(num_actions, head_type, pooling, HID, jnp.bfloat16)
    h, mask = _inputs()
    params = _init(head, h.astype(jnp.bfloat16), None, mask)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    q, state, replay = _apply(head, params, h.astype(jnp.bfloat16), None, mask)
    assert q.shape == (B, num_actions) and q.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(q), 0.0)
    assert replay["x"].shape == (B, D) and replay["x"].dtype == jnp.float32
    if head_type == "rnn":
        assert state.shape == (B, HID) and state.dtype == jnp.float32
        assert float(jnp.abs(state).max()) > 0  # the GRU moved from its zero state
        np.testing.assert_array_equal(np.asarray(replay["h"]), 0.0)
    else:
        assert state is None and set(replay) == {"x"}


@pytest.mark.parametrize("head_type,pooling", CONFIGS)
def test_qhead_matches_numpy(head_type, pooling):
    head = ActionQHead(3, head_type, pooling, HID)
    h, mask = _inputs()
    params = _randomize(_init(head, h, None, mask))
    rng = np.random.default_rng(2)
    state = jnp.asarray(rng.normal(size=(B, HID)).astype(np.float32)) if head_type == "rnn" else None
    q, new_state, replay = _apply(head, params, h, state, mask)

    x = _np_pool(head, params, h, mask)
    np.testing.assert_allclose(_np(replay["x"]), x, rtol=1e-5, atol=1e-5)
    q_ref, state_ref = _np_q(head, params, x, _np(state) if state is not None else None)
    np.testing.assert_allclose(_np(q), q_ref, rtol=1e-4, atol=1e-5)
    if head_type == "rnn":
        np.testing.assert_allclose(_np(new_state), state_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(replay["h"]), np.asarray(state))
    if head_type != "attention":
        # mask matters for mean pooling only; the fully masked row pools to zeros.
        np.testing.assert_array_equal(np.asarray(replay["x"][2]), 0.0 if pooling == "mean" else np.asarray(h[2, 0]))


def test_rnn_state_none_means_zeros():
    head = ActionQHead(3, "rnn", "mean", HID)
    h, mask = _inputs()
    params = _randomize(_init(head, h))
    a = _apply(head, params, h, None, mask)
    b = _apply(head, params, h, head.initial_rnn_state(B), mask)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert head.initial_rnn_state(4).shape == (4, HID)


def test_attention_pooling_starts_as_masked_mean():
    head = ActionQHead(3, "attention", "mean", HID)
    h, mask = _inputs()
    params = _init(head, h, None, mask)
    _, _, replay = _apply(head, params, h, None, mask)
    ref = _np_pool(ActionQHead(3, "mlp", "mean", HID), None, h, mask)
    np.testing.assert_allclose(_np(replay["x"]), ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(replay["x"])).all()


@pytest.mark.parametrize("head_type,pooling", CONFIGS)
def test_q_from_replay_equals_call(head_type, pooling):
    head = ActionQHead(3, head_type, pooling, HID)
    h, mask = _inputs()
    params = _randomize(_init(head, h, None, mask))
    state = jnp.asarray(np.random.default_rng(3).normal(size=(B, HID)).astype(np.float32))
    q, _, replay = _apply_fn(head, jit=True)(params, h, state, mask)
    # The full tree from init works for the replay method (its tree is a subset) ...
    q_replay = _apply_fn(head, jit=True, method=ActionQHead.q_from_replay)(params, replay)
    np.testing.assert_allclose(np.asarray(q_replay), np.asarray(q), rtol=1e-6, atol=1e-6)
    # ... and it needs only the Q part (no attention-pooling parameters).
    q_part = {k: v for k, v in params.items() if k != "attn_pool"}
    q_only = _apply(head, q_part, replay, method=ActionQHead.q_from_replay)
    np.testing.assert_allclose(np.asarray(q_only), np.asarray(q), rtol=1e-6, atol=1e-6)
    # Other (target) parameters give other values on the same stored state.
    q_target = head.apply({"params": _randomize(params, seed=7)}, replay, method=ActionQHead.q_from_replay)
    assert not np.allclose(np.asarray(q_target), np.asarray(q))


def test_replay_state_is_gradient_stopped_and_q_is_differentiable():
    head = ActionQHead(3, "mlp", "mean", HID)
    h, mask = _inputs()
    params = _randomize(_init(head, h))
    g_replay = jax.grad(lambda h: _apply(head, params, h, None, mask)[2]["x"].sum())(h)
    np.testing.assert_array_equal(np.asarray(g_replay), 0.0)
    g_q = jax.grad(lambda h: _apply(head, params, h, None, mask)[0].sum())(h)
    assert float(jnp.abs(g_q).max()) > 0


# ----------------------------------------------------------------------------- planning

PB, PS, PD, PATHS, DEPTH = 2, 4, 6, 3, 2
W_F = np.random.default_rng(10).normal(size=(PD, PD)).astype(np.float32) / np.sqrt(PD)


def _counted_f():
    calls = []

    def f(h, injection):
        calls.append(h.shape)
        return jnp.tanh((h + injection) @ jnp.asarray(W_F))

    return f, calls


def _np_planner(params, h, combine):
    emb = _np(params["path_embedding"])
    finals = []
    for p in range(PATHS):
        hp = _np(h) + emb[p]
        for _ in range(DEPTH):
            hp = np.tanh((hp + hp) @ _np(W_F))
        finals.append(hp)
    finals = np.stack(finals, 1)  # [B, P, S, D]
    pooled = finals.mean(2)
    pooled = pooled / np.sqrt((pooled ** 2).mean(-1, keepdims=True) + 1e-5)
    sh, so = params["score_hidden"], params["score_out"]
    scores = (_silu(pooled @ _np(sh["kernel"]) + _np(sh["bias"])) @ _np(so["kernel"]) + _np(so["bias"]))[..., 0]
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    if combine == "best":
        out = finals[np.arange(PB), scores.argmax(-1)]
    else:
        out = np.einsum("bp,bpsd->bsd", w, finals)
    return out, scores, -(w * np.log(w)).sum(-1)


def _planner_inputs():
    return jnp.asarray(np.random.default_rng(11).normal(size=(PB, PS, PD)).astype(np.float32))


@pytest.mark.parametrize("combine", ["softmax", "best"])
def test_planner_matches_per_path_loop_and_folds_paths(combine):
    planner = LatentPlanner(PATHS, DEPTH, combine)
    h = _planner_inputs()
    f, calls = _counted_f()
    params = _init(planner, h, f=f)
    # Larger path embeddings so the paths (and their scores) clearly differ.
    params = {**params, "path_embedding": params["path_embedding"] * 50.0}
    calls.clear()
    out, info = _apply(planner, params, h, f=f)
    assert calls == [(PB * PATHS, PS, PD)] * DEPTH  # f runs once per depth, on the folded batch
    ref, scores, entropy = _np_planner(params, h, combine)
    np.testing.assert_allclose(_np(info["path_scores"]), scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(info["planning_entropy"]), entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-4, atol=1e-5)
    assert out.shape == h.shape and info["path_scores"].shape == (PB, PATHS)
    assert info["planning_entropy"].shape == (PB,)
    assert np.ptp(scores, axis=-1).min() > 1e-4  # the argmax is well defined


def test_planner_best_is_exactly_the_argmax_path():
    planner = LatentPlanner(PATHS, DEPTH, "best")
    h = _planner_inputs()
    f, _ = _counted_f()
    params = _init(planner, h, f=f)
    params = {**params, "path_embedding": params["path_embedding"] * 50.0}
    out, info = _apply(planner, params, h, f=f)
    best = np.asarray(jnp.argmax(info["path_scores"], -1))
    paths = h[:, None] + params["path_embedding"][None, :, None, :]  # [B, P, S, D]
    for _ in range(DEPTH):
        paths = f(paths, paths)
    for b in range(PB):
        dist = np.abs(np.asarray(paths[b]) - np.asarray(out[b])).max(axis=(1, 2))  # [P]
        assert dist[best[b]] < 1e-6 and np.delete(dist, best[b]).min() > 1e-3, dist


def test_planner_softmax_weights_sum_to_one():
    # When every path ends in the same state, any convex combination returns that state.
    planner = LatentPlanner(PATHS, DEPTH, "softmax")
    h = _planner_inputs()
    const = jnp.asarray(np.random.default_rng(12).normal(size=(PS, PD)).astype(np.float32))
    f = lambda x, inj: jnp.broadcast_to(const, x.shape) + 0.0 * x
    params = _init(planner, h, f=f)
    out, info = _apply(planner, params, h, f=f)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(const), out.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(info["planning_entropy"]), np.log(PATHS), rtol=1e-5)


class _ModelWithPlanner(nn.Module):
    """The planner inside a parent that owns the reasoning module, as the HESC model does."""

    combine: str

    @nn.compact
    def __call__(self, h):
        dense = nn.Dense(PD, name="f_dense")
        return LatentPlanner(PATHS, DEPTH, self.combine, name="planner")(h, lambda x, inj: jnp.tanh(dense(x + inj)))


@pytest.mark.parametrize("combine", ["softmax", "best"])
def test_planner_gradients_reach_embeddings_score_head_and_f(combine):
    model = _ModelWithPlanner(combine)
    h = _planner_inputs()
    params = _init(model, h)
    target = jnp.asarray(np.random.default_rng(13).normal(size=h.shape).astype(np.float32))

    def loss(p):
        out, _ = _apply(model, p, h)
        return jnp.sum((out - target) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    for path in [("planner", "path_embedding"), ("planner", "score_hidden", "kernel"),
                 ("planner", "score_out", "kernel"), ("f_dense", "kernel")]:
        g = grads
        for k in path:
            g = g[k]
        assert float(jnp.abs(g).max()) > 0, path


# ----------------------------------------------------------------------------- MTP

MB, ML, MD, MV = 2, 7, 16, 6


def test_mtp_targets_shift_against_numpy():
    labels = np.random.default_rng(20).integers(0, MV, size=(MB, ML)).astype(np.int32)
    labels[1, 5] = -100
    for depth in range(ML + 2):
        ref = np.full_like(labels, -100)
        if depth < ML:
            ref[:, :ML - depth] = labels[:, depth:]
        np.testing.assert_array_equal(np.asarray(mtp_targets(jnp.asarray(labels), depth)), ref)


def test_mtp_teacher_forcing_reads_the_expected_target_embeddings():
    heads = MTPHeads(3, MV)
    rng = np.random.default_rng(21)
    h = jnp.asarray(rng.normal(size=(MB, ML, MD)).astype(np.float32))
    emb = rng.normal(size=(MB, ML, MD)).astype(np.float32)
    params = _init(heads, h, jnp.asarray(emb))
    assert set(params) == {"depth_1", "depth_2", "depth_3"}
    apply = _apply_fn(heads)
    base = apply(params, h, jnp.asarray(emb))
    assert base.shape == (3, MB, ML, MV)
    j = 4
    emb2 = emb.copy()
    emb2[0, j] += 3.0  # the embedding of target j in row 0
    changed = np.abs(np.asarray(apply(params, h, jnp.asarray(emb2)) - base)).max(-1)
    for d in range(1, 4):
        # depth d at position t reads target t+d-1 directly and targets t..t+d-2 through h_{d-1}.
        expected = np.zeros((MB, ML), bool)
        expected[0, max(0, j - d + 1):j + 1] = True
        assert (changed[d - 1][expected] > 1e-4).all(), d
        assert (changed[d - 1][~expected] < 1e-6).all(), d
    # The last position of depth 2 reads past the end: zeros, so the last embedding is never read there.
    emb3 = emb.copy()
    emb3[:, -1] += 3.0
    changed = np.abs(np.asarray(apply(params, h, jnp.asarray(emb3)) - base)).max(-1)
    assert (changed[0][:, -1] > 1e-4).all() and (changed[0][:, :-1] < 1e-6).all()


def _np_log_stablemax(x):
    s = np.where(x >= 0, x + 1.0, 1.0 / (1.0 - np.minimum(x, 0.0)))
    return np.log(s) - np.log(s.sum(-1, keepdims=True))


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("loss_fn,np_logp", [(stablemax_cross_entropy, _np_log_stablemax),
                                             (softmax_cross_entropy, _np_log_softmax)])
def test_mtp_loss_matches_numpy(loss_fn, np_logp):
    rng = np.random.default_rng(22)
    Dp, Bn = 3, 3
    logits = rng.normal(size=(Dp, Bn, ML, MV)).astype(np.float32) * 2
    labels = rng.integers(0, MV, size=(Bn, ML)).astype(np.int32)
    labels[1, [2, 6]] = -100
    labels[2, 2:] = -100  # depths >= 2 see no target in row 2
    # Make some predictions right so the accuracy is not trivially 0.
    logits[0, 0, 0, labels[0, 1]] += 10.0
    row_mask = np.array([True, True, False])
    loss, metrics = mtp_loss(jnp.asarray(logits), jnp.asarray(labels), loss_fn, jnp.asarray(row_mask))

    losses, accs = [], []
    for d in range(1, Dp + 1):
        tgt = np.full_like(labels, -100)
        tgt[:, :ML - d] = labels[:, d:]
        valid = tgt != -100
        count = np.maximum(valid.sum(-1), 1)
        logp = np_logp(_np(logits[d - 1]))
        ce = -np.take_along_axis(logp, np.where(valid, tgt, 0)[..., None], -1)[..., 0] * valid
        losses.append((ce.sum(-1) / count).sum())
        correct = valid & (logits[d - 1].argmax(-1) == tgt)
        accs.append(((correct.sum(-1) / count) * row_mask).sum())
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mtp_loss"]), np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mtp_accuracy"]), np.mean(accs), rtol=1e-6)
    assert np.mean(accs) > 0


def test_mtp_training_reduces_loss():
    # A deterministic sequence where labels[t+1] = labels[t] + 1 (mod V): learnable from the
    # teacher-forced embedding alone; h is a fixed stand-in for the trunk.
    L = 10
    labels = np.stack([(np.arange(L) + b) % MV for b in range(MB)]).astype(np.int32)
    labels[1, -2:] = -100
    labels = jnp.asarray(labels)
    h = jnp.asarray(np.random.default_rng(23).normal(size=(MB, L, MD)).astype(np.float32))
    heads = MTPHeads(2, MV)

    def forward(p):
        emb = jnp.take(p["embed"], jnp.where(labels == -100, 0, labels), axis=0)
        return heads.apply({"params": p["mtp"]}, h, emb)

    params = {"embed": 0.5 * jax.random.normal(jax.random.PRNGKey(1), (MV, MD)),
              "mtp": _init(heads, h, h)}
    loss_fn = lambda p: mtp_loss(forward(p), labels, softmax_cross_entropy)[0]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(40):
        params, state, loss = step(params, state)  # the loss before this step's update
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- configuration and dtypes

def test_invalid_configurations_raise():
    h, _ = _inputs()
    with pytest.raises(ValueError, match="head_type"):
        _init(ActionQHead(3, "lstm"), h)
    with pytest.raises(ValueError, match="pooling"):
        _init(ActionQHead(3, "mlp", "max"), h)
    with pytest.raises(ValueError, match="combine"):
        _init(LatentPlanner(2, 1, "vote"), h, f=lambda x, inj: x)
    with pytest.raises(ValueError, match="num_depths"):
        _init(MTPHeads(0, MV), h, h)


def test_bfloat16_activations_keep_float32_params():
    h = _planner_inputs().astype(jnp.bfloat16)
    planner = LatentPlanner(PATHS, DEPTH, "softmax", jnp.bfloat16)
    f = lambda x, inj: jnp.tanh((x + inj) @ jnp.asarray(W_F, jnp.bfloat16))
    params = _init(planner, h, f=f)
    out, info = _apply(planner, params, h, f=f)
    assert out.dtype == jnp.bfloat16 and info["path_scores"].dtype == jnp.float32
    heads = MTPHeads(2, MV, jnp.bfloat16)
    mparams = _init(heads, h, h)
    logits = _apply(heads, mparams, h, h)
    assert logits.shape == (2, PB, PS, MV) and logits.dtype == jnp.bfloat16
    for tree in (params, mparams):
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(tree))
    assert np.isfinite(np.asarray(out, np.float32)).all() and np.isfinite(np.asarray(logits, np.float32)).all()
