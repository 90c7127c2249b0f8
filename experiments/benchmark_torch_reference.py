"""Same-GPU comparison with the PyTorch reference TRM, and a parity check against it.

    git clone https://github.com/SamsungSAILMontreal/TinyRecursiveModels /path/to/TinyRecursiveModels
    python experiments/benchmark_torch_reference.py --reference_dir=/path/to/TinyRecursiveModels \
        --config=configs/sudoku.py --steps=20 [--batch_size=768] [--nocompile] [--parity]

Imports the reference's own model (``models/recursive_reasoning/trm.py``) from the user's
checkout (nothing of it ships with trm_jax) and times its training step the way its
``pretrain.py`` runs one: the ACT forward and loss head under ``torch.compile``, then
``loss / global_batch_size`` backward, AdamAtan2 on the dense parameters and the
reference's sparse sign-SGD on the puzzle-embedding rows of the batch. The loss head is
restated here from the reference's ``models/losses.py`` (stable-max cross-entropy in
float64, Q-halt BCE). AdamAtan2 comes from the ``adam-atan2-pytorch`` package (the
reference's CUDA ``adam-atan2`` build does the same update).

``--parity`` loads the reference model's randomly initialised weights into trm_jax with
``trm_jax.from_torch`` and runs ``halt_max_steps`` evaluation ACT steps of both on one
batch, in float32 (matmuls at full precision) and in the config's ``forward_dtype``,
reporting the relative difference of the logits and Q-logits at every step.

The reference hard-codes ``cuda:0``: this script needs a CUDA GPU. Time trm_jax's side with
``experiments/benchmark.py`` on the same machine (``experiments/gpu_benchmarks.sh`` runs both).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU to torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sudoku.py", "Config file[:variant].")
_REF = flags.DEFINE_string("reference_dir", "", "Checkout of SamsungSAILMontreal/TinyRecursiveModels.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after the warm-up steps).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (the first one compiles).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (0: the config's global_batch_size).")
_COMPILE = flags.DEFINE_bool("compile", True, "torch.compile the model and loss head, as pretrain.py does.")
_PARITY = flags.DEFINE_bool("parity", False, "Also compare outputs with trm_jax on the same weights.")
_PARITY_BATCH = flags.DEFINE_integer("parity_batch_size", 16, "Batch of the parity check.")
_JSON = flags.DEFINE_string("json_out", "", "Append the results as JSON lines to this file.")

IGNORE_LABEL_ID = -100


def reference_config(model_cfg, batch_size: int, **overrides) -> dict:
    """The reference's ``arch`` dict for a trm_jax model config (the field names are the same)."""
    names = ("seq_len", "puzzle_emb_ndim", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles",
             "H_layers", "L_layers", "hidden_size", "expansion", "num_heads", "pos_encodings", "rms_norm_eps",
             "rope_theta", "halt_max_steps", "halt_exploration_prob", "forward_dtype", "mlp_t", "puzzle_emb_len",
             "no_ACT_continue")
    cfg = {name: getattr(model_cfg, name) for name in names}
    cfg.update(batch_size=batch_size, **overrides)
    return cfg


def stablemax_xent(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token stable-max cross-entropy in float64 (the reference's ``stablemax_cross_entropy``)."""
    x = logits.to(torch.float64)
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    picked = torch.gather(logprobs, -1, torch.where(mask, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, picked, 0)


class LossHead(torch.nn.Module):
    """The reference's ``ACTLossHead`` (no_ACT_continue path): LM loss + 0.5 * Q-halt BCE."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, carry, batch):
        carry, out = self.model(carry, batch)
        labels = carry.current_data["labels"]
        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            correct = mask & (out["logits"].argmax(-1) == labels)
            seq_correct = correct.sum(-1) == counts
            valid = carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.float() / counts.clamp_min(1).unsqueeze(-1)).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((out["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }
        lm_loss = (stablemax_xent(out["logits"], labels, mask) / counts.clamp_min(1).unsqueeze(-1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(out["q_halt_logits"], seq_correct.to(out["q_halt_logits"].dtype),
                                                         reduction="sum")
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        return carry, lm_loss + 0.5 * q_halt_loss, metrics, out


def torch_batch(model_cfg, batch_size: int, seed: int) -> dict:
    import jax
    import trm_jax
    batch = trm_jax.random_batch(model_cfg, batch_size, jax.random.PRNGKey(seed))
    return {k: torch.from_numpy(np.array(v)).cuda() for k, v in batch.items()}


def time_training(trm_module, config, model_cfg, batch_size: int) -> dict:
    from adam_atan2_pytorch import AdamAtan2
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    with torch.device("cuda"):  # as pretrain.py: buffers created on the GPU stay leaves
        model = trm_module.TinyRecursiveReasoningModel_ACTV1(reference_config(model_cfg, batch_size))
    head = LossHead(model).train()
    n_params = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if name.endswith("puzzle_emb.weights"))
    optimizers = [AdamAtan2(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                            weight_decay=config.weight_decay)]
    if model_cfg.puzzle_emb_ndim > 0:
        optimizers.append(CastedSparseEmbeddingSignSGD_Distributed(
            model.inner.puzzle_emb.buffers(), world_size=1, lr=config.puzzle_emb_lr,
            weight_decay=config.puzzle_emb_weight_decay))
    forward = torch.compile(head) if _COMPILE.value else head
    batch = torch_batch(model_cfg, batch_size, config.seed)
    carry = model.initial_carry(batch)

    def step(carry):
        carry, loss, metrics, _ = forward(carry, batch)
        (loss / batch_size).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        return carry, metrics

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    carry, metrics = step(carry)
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value - 1):
        carry, metrics = step(carry)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        carry, metrics = step(carry)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / _STEPS.value
    return {
        "impl": "pytorch-reference" + (" (torch.compile)" if _COMPILE.value else " (eager)"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "params": int(n_params),
        "global_batch_size": batch_size,
        "forward_dtype": model_cfg.forward_dtype,
        "first_step_s": round(first_step_s, 2),
        "ms_per_step": round(step_s * 1e3, 2),
        "examples_per_s": round(batch_size / step_s, 1),
        "device_peak_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1),
    }


def parity(trm_module, model_cfg, dtype: str, attention_impl: str) -> dict:
    """Relative differences of trm_jax vs the reference on the reference's own weights, per ACT step.

    In float32 both sides compute at full precision (torch's math attention, no TF32; JAX's
    ``highest`` matmul precision), so differences are float32 rounding carried through the
    recursion.
    """
    import jax
    import trm_jax

    torch.manual_seed(0)
    B = _PARITY_BATCH.value
    with torch.device("cuda"):
        model = trm_module.TinyRecursiveReasoningModel_ACTV1(reference_config(model_cfg, B, forward_dtype=dtype))
    model.eval()
    with torch.no_grad():  # the reference zero-initialises the puzzle table: give it content to compare
        if model_cfg.puzzle_emb_ndim > 0:
            model.inner.puzzle_emb.weights.normal_(0, 0.1)
        model.inner.q_head.weight.normal_(0, 0.02)
    cfg = dataclasses.replace(model_cfg, forward_dtype=dtype, attention_impl=attention_impl)
    variables = trm_jax.from_torch(model.state_dict(), cfg)
    jmodel = trm_jax.build_model(cfg)
    batch_t = torch_batch(cfg, B, seed=1)
    batch_j = {k: jax.numpy.asarray(v.cpu().numpy()) for k, v in batch_t.items()}
    apply = jax.jit(lambda c, b: jmodel.apply(variables, c, b, train=False))

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    rows = []
    precision = "highest" if dtype == "float32" else "default"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [SDPBackend.MATH] if dtype == "float32" else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                            SDPBackend.MATH]
    with torch.no_grad(), jax.default_matmul_precision(precision), sdpa_kernel(backends):
        torch.backends.cuda.matmul.allow_tf32 = False
        carry_t = model.initial_carry(batch_t)
        carry_j = trm_jax.initial_carry(cfg, batch_j)
        for step in range(cfg.halt_max_steps):
            carry_t, out_t = model(carry_t, batch_t)
            carry_j, out_j = apply(carry_j, batch_j)
            rows.append({
                "step": step + 1,
                "logits_rel": rel(out_j["logits"].astype(np.float32), out_t["logits"].float().cpu()),
                "q_halt_rel": rel(out_j["q_halt_logits"], out_t["q_halt_logits"].cpu()),
                "argmax_agree": float((np.asarray(out_j["logits"].argmax(-1)) ==
                                       out_t["logits"].argmax(-1).cpu().numpy()).mean()),
            })
    worst = max(r["logits_rel"] for r in rows)
    from trm_jax.models.layers import resolve_attention_impl
    return {"impl": "parity trm_jax vs pytorch-reference", "forward_dtype": dtype, "batch_size": B,
            "jax_attention": resolve_attention_impl(attention_impl, cfg.dtype, cfg.hidden_size // cfg.num_heads),
            "device": torch.cuda.get_device_name(), "jax_device": str(jax.devices()[0]),
            "max_logits_rel": worst, "min_argmax_agree": min(r["argmax_agree"] for r in rows), "per_step": rows}


def main(_):
    if not torch.cuda.is_available():
        raise SystemExit("benchmark_torch_reference.py needs a CUDA GPU (the reference hard-codes cuda:0)")
    if not _REF.value or not os.path.isfile(os.path.join(_REF.value, "models", "recursive_reasoning", "trm.py")):
        raise SystemExit(f"--reference_dir={_REF.value!r} is not a TinyRecursiveModels checkout "
                         "(models/recursive_reasoning/trm.py not found)")
    sys.path.insert(0, os.path.abspath(_REF.value))
    from models.recursive_reasoning import trm as trm_module

    import trm_jax
    config = _CONFIG.value
    model_cfg = trm_jax.TRMConfig.from_any(config.model)
    B = _BATCH.value or config.global_batch_size

    def record(result: dict) -> None:
        if _JSON.value:
            with open(_JSON.value, "a") as f:
                f.write(json.dumps(result) + "\n")

    if _PARITY.value:
        cases = [("float32", "xla")]
        if model_cfg.forward_dtype != "float32":
            cases += [(model_cfg.forward_dtype, "xla"), (model_cfg.forward_dtype, "auto")]
        for dtype, impl in cases:
            result = parity(trm_module, model_cfg, dtype, impl)
            record(result)
            steps = [(r["step"], f"{r['logits_rel']:.2e}", f"{r['argmax_agree']:.3f}") for r in result["per_step"]]
            print(json.dumps({k: v for k, v in result.items() if k != "per_step"}), flush=True)
            print("  per step (step, logits rel. diff, argmax agreement):", steps, flush=True)
    if _STEPS.value > 0:
        result = time_training(trm_module, config, model_cfg, B)
        record(result)
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    app.run(main)
