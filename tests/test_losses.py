"""Loss head against float64 NumPy statements of the reference formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax.losses import IGNORE_LABEL_ID, act_loss, normalize_metrics


def _np_log_stablemax(x):
    x = x.astype(np.float64)
    s = np.where(x >= 0, x + 1.0, 1.0 / (1.0 - x))
    return np.log(s / s.sum(-1, keepdims=True))


def _np_ce(logits, labels, kind):
    if kind == "stablemax":
        logp = _np_log_stablemax(logits)
    else:
        x = logits.astype(np.float64)
        logp = x - x.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = labels != IGNORE_LABEL_ID
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return np.where(valid, -picked, 0.0)


@pytest.mark.parametrize("kind", ["stablemax", "softmax"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])
def test_cross_entropy_matches_float64(kind, scale):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 9, 11)) * scale).astype(np.float32)
    labels = rng.integers(0, 11, (4, 9))
    labels[rng.random((4, 9)) < 0.3] = IGNORE_LABEL_ID
    fn = trm_jax.stablemax_cross_entropy if kind == "stablemax" else trm_jax.softmax_cross_entropy
    got = np.asarray(fn(jnp.asarray(logits), jnp.asarray(labels)))
    want = _np_ce(logits, labels, kind)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    assert (got[labels == IGNORE_LABEL_ID] == 0).all()


def test_stablemax_gradient_is_finite_for_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0, 3.0]], jnp.float32)
    grad = jax.grad(lambda x: trm_jax.stablemax_cross_entropy(x, jnp.array([1])).sum())(logits)
    assert np.isfinite(np.asarray(grad)).all()
    # d/dx_label of -log(s(x_label)/sum s): for x < 0, s = 1/(1-x), so d log s/dx = 1/(1-x).
    assert float(grad[0, 1]) < 0


def _fake_step(B=5, L=7, V=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, V, (B, L))
    labels[rng.random((B, L)) < 0.3] = IGNORE_LABEL_ID
    labels[0] = IGNORE_LABEL_ID  # a row with no labels
    logits = rng.standard_normal((B, L, V)).astype(np.float32) * 2
    logits[1] = -5.0
    logits[1, np.arange(L), np.where(labels[1] == IGNORE_LABEL_ID, 0, labels[1])] = 5.0  # row 1 exactly right
    q_halt = rng.standard_normal(B).astype(np.float32)
    q_cont = rng.standard_normal(B).astype(np.float32)
    halted = np.array([True, True, False, True, True])[:B]
    steps = rng.integers(1, 5, B).astype(np.int32)
    carry = trm_jax.ACTCarry(z={"z_H": jnp.zeros((B, 1, 1)), "z_L": jnp.zeros((B, 1, 1))}, steps=jnp.asarray(steps),
                             halted=jnp.asarray(halted), current_data={"labels": jnp.asarray(labels, jnp.int32)})
    outputs = {"logits": jnp.asarray(logits), "q_halt_logits": jnp.asarray(q_halt),
               "q_continue_logits": jnp.asarray(q_cont)}
    return carry, outputs, dict(labels=labels, logits=logits, q_halt=q_halt, q_cont=q_cont, halted=halted, steps=steps)


def _bce(x, y):
    x = x.astype(np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("with_target", [False, True])
def test_act_loss_and_metrics_match_reference_formulas(with_target):
    carry, outputs, d = _fake_step()
    if with_target:
        outputs["target_q_continue"] = jnp.asarray([0.1, 0.9, 0.5, 0.3, 0.7], jnp.float32)
    loss, m = act_loss(carry, outputs)

    mask = d["labels"] != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    div = np.maximum(counts, 1)[:, None]
    lm = (_np_ce(d["logits"], d["labels"], "stablemax") / div).sum()
    correct = mask & (d["logits"].argmax(-1) == d["labels"])
    seq = correct.sum(-1) == counts
    qh = _bce(d["q_halt"], seq.astype(np.float64)).sum()
    qc = _bce(d["q_cont"], np.asarray(outputs["target_q_continue"], np.float64)).sum() if with_target else 0.0
    np.testing.assert_allclose(float(loss), lm + 0.5 * (qh + qc), rtol=1e-5)
    np.testing.assert_allclose(float(m["lm_loss"]), lm, rtol=1e-5)
    np.testing.assert_allclose(float(m["q_halt_loss"]), qh, rtol=1e-5)
    np.testing.assert_allclose(float(m["q_continue_loss"]), qc, rtol=1e-5, atol=1e-7)

    valid = d["halted"] & (counts > 0)  # row 0 has no labels, row 2 has not halted
    assert float(m["count"]) == valid.sum() == 3
    np.testing.assert_allclose(float(m["accuracy"]), (correct / div).sum(-1)[valid].sum(), rtol=1e-6)
    assert float(m["exact_accuracy"]) == (valid & seq).sum() >= 1
    assert float(m["q_halt_accuracy"]) == (valid & ((d["q_halt"] >= 0) == seq)).sum()
    assert float(m["steps"]) == d["steps"][valid].sum()


def test_normalize_metrics_like_reference():
    out = normalize_metrics({"count": 4.0, "accuracy": 2.0, "lm_loss": 8.0, "q_halt_loss": 1.0}, 16)
    assert out == {"count": 4.0, "accuracy": 0.5, "lm_loss": 0.5, "q_halt_loss": 1.0 / 16}
    assert normalize_metrics({"count": 0.0, "accuracy": 0.0}, 8)["accuracy"] == 0.0
