"""Every architecture against the PyTorch reference's own code, on its own weights, on the CPU.

    git clone https://github.com/SamsungSAILMontreal/TinyRecursiveModels /path/to/TinyRecursiveModels
    python experiments/reference_parity_cpu.py --reference_dir=/path/to/TinyRecursiveModels [--json_out=FILE]

For each architecture (``trm``, ``hrm``, ``trm_singlez``, ``trm_hier6``, ``transformer``) the
reference's class (``models/recursive_reasoning/<file>.py``, imported from the user's checkout:
nothing of it ships with trm_jax) is built in float32 at a small shape with random weights (its
zero-initialised puzzle table and Q-head given random content so they are compared too), its
``state_dict()`` goes through ``trm_jax.from_torch``, and both run the same ACT steps on the same
batches: evaluation steps over a reset, then training steps with exploration off (the halting
decision and, where the architecture learns it, the bootstrapped ``target_q_continue``). Printed:
per ACT step the largest norm-wise relative difference of the logits, Q-logits, every carried latent
and the target (float32 on both sides: the recursion carries float32 rounding from step to step),
and whether the halting decisions are identical. Needs torch (``pip install -e '.[torch]'``).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from absl import app, flags

_REF = flags.DEFINE_string("reference_dir", "", "Checkout of SamsungSAILMontreal/TinyRecursiveModels.")
_JSON = flags.DEFINE_string("json_out", "", "Append one JSON line per architecture to this file.")

# name -> (reference module, class, trm_jax overrides of the common small config)
ARCHS = {
    "trm": ("trm", "TinyRecursiveReasoningModel_ACTV1", dict(H_cycles=2, L_cycles=3, L_layers=2, puzzle_emb_len=2)),
    "hrm": ("hrm", "HierarchicalReasoningModel_ACTV1", dict(H_cycles=2, L_cycles=3, H_layers=2, L_layers=2)),
    "trm_singlez": ("trm_singlez", "TinyRecursiveReasoningModel_ACTV1",
                    dict(H_cycles=2, L_cycles=3, L_layers=2, puzzle_emb_len=2)),
    "trm_hier6": ("trm_hier6", "TinyRecursiveReasoningModel_ACTV1",
                  dict(H_cycles=2, L_cycles=4, L_layers=2, puzzle_emb_len=2)),
    # 5 heads at hidden 40: head dim 8, 40 attention features (the reference's 12 x 42 at 512 is the same shape rule).
    "transformer": ("transformers_baseline", "Model_ACTV2", dict(H_cycles=1, H_layers=3, num_heads=5)),
}
COMMON = dict(seq_len=12, vocab_size=9, num_puzzle_identifiers=6, hidden_size=40, num_heads=4, expansion=2.0,
              puzzle_emb_ndim=40, pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.0,
              forward_dtype="float32")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _batch(seed: int, B: int = 6):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, COMMON["vocab_size"], (B, COMMON["seq_len"]), generator=g, dtype=torch.int32),
            "labels": torch.randint(0, COMMON["vocab_size"], (B, COMMON["seq_len"]), generator=g, dtype=torch.int32),
            "puzzle_identifiers": torch.randint(0, COMMON["num_puzzle_identifiers"], (B,), generator=g,
                                                dtype=torch.int32)}


def _latents(carry) -> dict:
    inner = carry.inner_carry
    return {f.name: getattr(inner, f.name) for f in inner.__dataclass_fields__.values()}


def compare(name: str) -> dict:
    import importlib

    import jax
    import jax.numpy as jnp

    import trm_jax

    module_name, class_name, overrides = ARCHS[name]
    module = importlib.import_module(f"models.recursive_reasoning.{module_name}")
    cfg = {**COMMON, **overrides, "name": name}
    ref_cfg = {k: v for k, v in cfg.items() if k != "name"}
    ref_cfg.update(batch_size=6, H_layers=cfg.get("H_layers", 0), L_layers=cfg.get("L_layers", 0),
                   L_cycles=cfg.get("L_cycles", 1), no_ACT_continue=False if name == "hrm" else True)
    torch.manual_seed(0)
    model = getattr(module, class_name)(ref_cfg)
    with torch.no_grad():  # zero-initialised in the reference: give them content to compare
        model.inner.puzzle_emb.weights.normal_(0, 0.5)
        model.inner.q_head.weight.normal_(0, 0.1)
        model.inner.q_head.bias.copy_(torch.tensor([0.2, -0.1]))
    variables = trm_jax.from_torch(model.state_dict(), cfg)
    jmodel = trm_jax.build_model(cfg)
    per_step, halts_equal, targets = [], True, 0
    with jax.default_matmul_precision("highest"), torch.no_grad():
        for train in (False, True):
            model.train(train)
            batches = [_batch(s) for s in range(4)]
            carry_t = model.initial_carry(batches[0])
            carry_j = trm_jax.initial_carry(cfg, {k: jnp.asarray(v.numpy()) for k, v in batches[0].items()})
            for batch in batches:
                carry_t, out_t = model(carry_t, batch) if name != "transformer" or not train else \
                    model(carry_t, batch, compute_target_q=False)
                carry_j, out_j = jmodel.apply(variables, carry_j, {k: jnp.asarray(v.numpy()) for k, v in batch.items()},
                                              train=train, rngs={"exploration": jax.random.PRNGKey(0)})
                pairs = [(out_j["logits"], out_t["logits"]), (out_j["q_halt_logits"], out_t["q_halt_logits"]),
                         (out_j["q_continue_logits"], out_t["q_continue_logits"])]
                pairs += [(carry_j.z[k], v) for k, v in _latents(carry_t).items()]
                if "target_q_continue" in out_t:
                    pairs.append((out_j["target_q_continue"], out_t["target_q_continue"]))
                    targets += 1
                elif "target_q_continue" in out_j:
                    raise AssertionError(f"{name}: trm_jax bootstraps the continue logit, the reference does not")
                per_step.append(max(_rel(a, b.numpy()) for a, b in pairs))
                halts_equal &= bool(np.array_equal(np.asarray(carry_j.halted), carry_t.halted.numpy()))
    return {"architecture": name, "reference": f"{module_name}@{class_name}",
            "max_rel_diff_first_two_eval_steps": max(per_step[:2]), "max_rel_diff": max(per_step),
            "per_step_eval_then_train": [float(f"{x:.2e}") for x in per_step],
            "halting_identical": halts_equal, "target_q_steps_compared": targets, "torch": torch.__version__,
            "jax": jax.__version__}


def main(_):
    if not _REF.value or not os.path.isfile(os.path.join(_REF.value, "models", "recursive_reasoning", "hrm.py")):
        raise SystemExit(f"--reference_dir={_REF.value!r} is not a TinyRecursiveModels checkout")
    sys.path.insert(0, os.path.abspath(_REF.value))
    for name in ARCHS:
        result = compare(name)
        print(json.dumps(result), flush=True)
        if _JSON.value:
            with open(_JSON.value, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    app.run(main)
