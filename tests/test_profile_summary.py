"""experiments/profile_summary.py folds a real jax.profiler trace into time per op, per JAX source
operation and per pass (forward / backward)."""
import os
import sys

import jax
import jax.numpy as jnp

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, "experiments"))
import profile_summary  # noqa: E402


def test_a_traced_gradient_is_attributed_to_its_named_ops_and_passes(tmp_path):
    def loss(w, x):
        with jax.named_scope("proj"):
            h = jnp.tanh(x @ w)
        return (h ** 2).sum()

    step = jax.jit(jax.grad(loss))
    w, x = jnp.ones((256, 256)) * 0.01, jnp.ones((512, 256))
    compiled = step.lower(w, x).compile()
    compiled(w, x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            out = compiled(w, x)
        out.block_until_ready()

    events = list(profile_summary._device_op_events(
        jax.profiler.ProfileData.from_file(profile_summary.latest_xspace(str(tmp_path)))))
    assert events and all(ns >= 0 for _, ns, _ in events)
    summary = profile_summary.summarize(events, profile_summary.hlo_op_names(compiled.as_text()))
    assert summary["total_ns"] == sum(ns for _, ns, _ in events) > 0
    parts = {name: ns for name, ns, _ in summary["parts"]}
    # The forward matmul and its gradient (JAX's transpose) are told apart under the named scope.
    assert any(p.startswith("forward | ") and "proj" in p for p in parts), parts
    assert any(p.startswith("backward | ") and "proj" in p for p in parts), parts
    table = profile_summary.format_summary(summary, top=5, steps=2)
    assert "ms per step (2 step(s) traced)" in table and "proj" in table


def test_hlo_op_names_and_phases():
    hlo = ('  %fusion.3 = f32[4]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(step)/transpose(jvp(TRM))/'
           'inner/layers_1/mlp/down_proj/dot_general" source_file="x.py"}\n'
           '  ROOT %add.1 = f32[4]{0} add(%a, %b), metadata={op_name="jit(step)/add"}\n')
    names = profile_summary.hlo_op_names(hlo)
    assert names == {"fusion.3": "jit(step)/transpose(jvp(TRM))/inner/layers_1/mlp/down_proj/dot_general",
                     "add.1": "jit(step)/add"}
    assert profile_summary._phase_part(names["fusion.3"]) == "backward | mlp/down_proj/dot_general"
    assert profile_summary._phase_part("jit(step)/jvp(TRM)/inner/layers_0/checkpoint/mlp/x") == "forward | inner/mlp/x"
    assert profile_summary._phase_part(names["add.1"]).startswith("other | ")
