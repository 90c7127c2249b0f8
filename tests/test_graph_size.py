"""The recursion is scanned: the compiled graph does not grow with H_cycles or L_cycles."""
import jax

import trm_jax

BASE = dict(seq_len=8, vocab_size=6, num_puzzle_identifiers=2, hidden_size=16, num_heads=2, expansion=2.0,
            L_layers=2, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="float32", halt_max_steps=4)


def _hlo_size(train: bool, **cycles) -> int:
    cfg = {**BASE, **cycles}
    model = trm_jax.build_model(cfg)
    batch = trm_jax.dummy_batch(cfg, 2)
    variables = jax.eval_shape(lambda k: trm_jax.init_variables(cfg, k), jax.random.PRNGKey(0))
    carry = trm_jax.initial_carry(cfg, batch)

    def loss(params, buffers, carry, batch, key):
        new, out = model.apply({"params": params, "buffers": buffers}, carry, batch, train=train,
                               rngs={"exploration": key})
        return trm_jax.act_loss(new, out)[0]

    fn = jax.grad(loss) if train else loss
    lowered = jax.jit(fn).lower(variables["params"], variables["buffers"], carry, batch, jax.random.PRNGKey(0))
    return len(lowered.as_text())


def test_forward_graph_size_independent_of_cycles():
    small, big = _hlo_size(False, H_cycles=3, L_cycles=2), _hlo_size(False, H_cycles=6, L_cycles=6)
    assert abs(big - small) / small < 0.02, (small, big)


def test_training_gradient_graph_size_independent_of_cycles():
    small, big = _hlo_size(True, H_cycles=3, L_cycles=2), _hlo_size(True, H_cycles=6, L_cycles=6)
    assert abs(big - small) / small < 0.02, (small, big)
    # The check can fail: an extra layer (unrolled, not scanned) does grow the graph.
    deeper = _hlo_size(True, H_cycles=3, L_cycles=2, L_layers=3)
    assert deeper > small * 1.1
