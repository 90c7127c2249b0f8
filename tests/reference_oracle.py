"""An independent float64 PyTorch statement of the TRM equations (docs/architecture.md#model), for tests.

Written from the equations, functionally, over a state dict with the
reference's key names (``inner.L_level.layers.0.self_attn.qkv_proj.weight``,
torch ``[out, in]`` layout). It shares no code with ``trm_jax``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class OracleConfig:
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    hidden_size: int
    num_heads: int
    expansion: float
    H_cycles: int
    L_cycles: int
    L_layers: int
    puzzle_emb_ndim: int
    puzzle_emb_len: int
    pos_encodings: str
    mlp_t: bool
    halt_max_steps: int = 4
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # The architecture: "trm", "hrm", "trm_singlez", "trm_hier6" or "transformer".
    arch: str = "trm"
    H_layers: int = 0

    @property
    def levels(self) -> Dict[str, int]:
        """Reasoning modules and their depths."""
        return {"trm": {"L_level": self.L_layers}, "trm_singlez": {"L_level": self.L_layers},
                "trm_hier6": {"L_level": self.L_layers},
                "hrm": {"L_level": self.L_layers, "H_level": self.H_layers},
                "transformer": {"H_level": self.H_layers}}[self.arch]

    @property
    def latents(self):
        return {"trm": ("z_H", "z_L"), "hrm": ("z_H", "z_L"), "trm_singlez": ("z_L",),
                "trm_hier6": ("z_H",) + tuple(f"z_L{i}" for i in range(1, 7)), "transformer": ("z_H",)}[self.arch]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def P(self) -> int:
        if self.puzzle_emb_ndim == 0:
            return 0
        return self.puzzle_emb_len or math.ceil(self.puzzle_emb_ndim / self.hidden_size)

    @property
    def S(self) -> int:
        return self.seq_len + self.P


def inner_size(hidden: int, expansion: float) -> int:
    return math.ceil(round(expansion * hidden * 2 / 3) / 256) * 256


def random_state_dict(cfg: OracleConfig, seed: int = 0, branch_scale: float = 0.5) -> Dict[str, Tensor]:
    """Random float64 weights (values representable in float32) under reference names.

    Every tensor is random, q-head and puzzle embeddings included, so every path is exercised.
    The residual branches' output projections are scaled by ``branch_scale`` so the
    recursion is not chaotic: with fully random weights, dozens of stacked blocks
    amplify float32 rounding (torch float32 vs float64 then differs by >1e-5 too),
    and a parity test would measure the weights' conditioning, not the implementation.
    """
    g = torch.Generator().manual_seed(seed)
    D = cfg.hidden_size

    def lin(out_f: int, in_f: int) -> Tensor:
        return torch.randn(out_f, in_f, generator=g, dtype=torch.float64) / math.sqrt(in_f)

    sd = {
        "inner.embed_tokens.embedding_weight": torch.randn(cfg.vocab_size, D, generator=g, dtype=torch.float64) / math.sqrt(D),
        "inner.lm_head.weight": lin(cfg.vocab_size, D),
        "inner.q_head.weight": lin(2, D),
        "inner.q_head.bias": torch.randn(2, generator=g, dtype=torch.float64),
    }
    for name in cfg.latents:
        sd[f"inner.{name[2:]}_init"] = torch.randn(D, generator=g, dtype=torch.float64)
    if cfg.puzzle_emb_ndim > 0:
        sd["inner.puzzle_emb.weights"] = torch.randn(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim,
                                                     generator=g, dtype=torch.float64)
    if cfg.pos_encodings == "learned":
        sd["inner.embed_pos.embedding_weight"] = torch.randn(cfg.S, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    HK = cfg.num_heads * cfg.head_dim
    for level, n_layers in cfg.levels.items():
        for i in range(n_layers):
            p = f"inner.{level}.layers.{i}."
            if cfg.mlp_t:
                t_inner = inner_size(cfg.S, cfg.expansion)
                sd[p + "mlp_t.gate_up_proj.weight"] = lin(2 * t_inner, cfg.S)
                sd[p + "mlp_t.down_proj.weight"] = branch_scale * lin(cfg.S, t_inner)
            else:
                sd[p + "self_attn.qkv_proj.weight"] = lin(3 * HK, D)
                sd[p + "self_attn.o_proj.weight"] = branch_scale * lin(D, HK)
            d_inner = inner_size(D, cfg.expansion)
            sd[p + "mlp.gate_up_proj.weight"] = lin(2 * d_inner, D)
            sd[p + "mlp.down_proj.weight"] = branch_scale * lin(D, d_inner)
    # Round to float32 so the float32 model and the float64 oracle hold the same numbers.
    return {k: v.float().double() for k, v in sd.items()}


def rms_norm(x: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def swiglu(x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    gate, up = (x @ w_gate_up.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w_down.T


def rope_tables(cfg: OracleConfig):
    hd = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(cfg.S, dtype=torch.float64)[:, None] * inv[None, :]  # [S, hd/2]
    return torch.cos(ang), torch.sin(ang)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by the position angle; x: [B, S, H, hd]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def attention(x: Tensor, w_qkv: Tensor, w_o: Tensor, cfg: OracleConfig, rope) -> Tensor:
    B, S, D = x.shape
    H, hd = cfg.num_heads, cfg.head_dim
    qkv = (x @ w_qkv.T).view(B, S, 3, H, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if rope is not None:
        q, k = rotate(q, *rope), rotate(k, *rope)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)
    return out.reshape(B, S, H * hd) @ w_o.T


def block(sd: Dict[str, Tensor], i: int, h: Tensor, cfg: OracleConfig, rope, level: str = "L_level") -> Tensor:
    p = f"inner.{level}.layers.{i}."
    eps = cfg.rms_norm_eps
    if cfg.mlp_t:
        hT = h.transpose(1, 2)  # [B, D, S]: mix tokens, normalise over the sequence axis
        hT = rms_norm(hT + swiglu(hT, sd[p + "mlp_t.gate_up_proj.weight"], sd[p + "mlp_t.down_proj.weight"]), eps)
        h = hT.transpose(1, 2)
    else:
        h = rms_norm(h + attention(h, sd[p + "self_attn.qkv_proj.weight"], sd[p + "self_attn.o_proj.weight"], cfg, rope), eps)
    return rms_norm(h + swiglu(h, sd[p + "mlp.gate_up_proj.weight"], sd[p + "mlp.down_proj.weight"]), eps)


def f(sd, h, inj, cfg, rope, level: str = "L_level"):
    """A reasoning module: ``blocks(h + inj)`` (``inj`` None: ``blocks(h)``)."""
    if inj is not None:
        h = h + inj
    for i in range(cfg.levels[level]):
        h = block(sd, i, h, cfg, rope, level)
    return h


def input_embeddings(sd, cfg: OracleConfig, inputs: Tensor, puzzle_ids: Tensor) -> Tensor:
    D = cfg.hidden_size
    e = sd["inner.embed_tokens.embedding_weight"][inputs.long()]
    if cfg.puzzle_emb_ndim > 0:
        pe = sd["inner.puzzle_emb.weights"][puzzle_ids.long()]
        pe = torch.cat([pe, pe.new_zeros(pe.shape[0], cfg.P * D - cfg.puzzle_emb_ndim)], dim=-1)
        e = torch.cat([pe.view(-1, cfg.P, D), e], dim=1)
    if cfg.pos_encodings == "learned":
        e = 0.707106781 * (e + sd["inner.embed_pos.embedding_weight"])
    return math.sqrt(D) * e


def inner(sd, cfg: OracleConfig, z_H: Tensor, z_L: Tensor, inputs: Tensor, puzzle_ids: Tensor,
          stop_early_cycles: bool = True):
    """One recursion step; the first H_cycles-1 cycles without gradient (unless told otherwise)."""
    rope = rope_tables(cfg) if cfg.pos_encodings == "rope" else None
    x = input_embeddings(sd, cfg, inputs, puzzle_ids)
    for h_step in range(cfg.H_cycles):
        last = h_step == cfg.H_cycles - 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and (last or not stop_early_cycles)):
            for _ in range(cfg.L_cycles):
                z_L = f(sd, z_L, z_H + x, cfg, rope)
            z_H = f(sd, z_H, z_L, cfg, rope)
    logits = (z_H @ sd["inner.lm_head.weight"].T)[:, cfg.P:]
    q = z_H[:, 0] @ sd["inner.q_head.weight"].T + sd["inner.q_head.bias"]
    return z_H.detach(), z_L.detach(), logits, q[:, 0], q[:, 1]


def act_eval_step(sd, cfg: OracleConfig, carry: Dict[str, Tensor], batch: Dict[str, Tensor]):
    """One evaluation ACT step: reset halted rows, recurse, halt at halt_max_steps."""
    halted = carry["halted"]
    D = cfg.hidden_size
    z_H = torch.where(halted[:, None, None], sd["inner.H_init"].expand(1, 1, D), carry["z_H"])
    z_L = torch.where(halted[:, None, None], sd["inner.L_init"].expand(1, 1, D), carry["z_L"])
    data = {k: torch.where(halted.view(-1, *([1] * (v.ndim - 1))), batch[k], v) for k, v in carry["data"].items()}
    steps = torch.where(halted, 0, carry["steps"]) + 1
    z_H, z_L, logits, q_halt, q_cont = inner(sd, cfg, z_H, z_L, data["inputs"], data["puzzle_identifiers"])
    new = {"z_H": z_H, "z_L": z_L, "steps": steps, "halted": steps >= cfg.halt_max_steps, "data": data}
    return new, logits, q_halt, q_cont


def initial_carry(cfg: OracleConfig, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    B = batch["inputs"].shape[0]
    zeros = torch.zeros(B, cfg.S, cfg.hidden_size, dtype=torch.float64)
    return {"z_H": zeros, "z_L": zeros, "steps": torch.zeros(B, dtype=torch.int32),
            "halted": torch.ones(B, dtype=torch.bool), "data": {k: torch.zeros_like(v) for k, v in batch.items()}}


def stablemax_ce(logits: Tensor, labels: Tensor, ignore: int = -100) -> Tensor:
    """Per-token stable-max cross-entropy in float64 (NumPy-equivalent definition)."""
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - x))
    logp = torch.log(s / s.sum(-1, keepdim=True))
    valid = labels != ignore
    picked = logp.gather(-1, torch.where(valid, labels, 0).long()[..., None])[..., 0]
    return torch.where(valid, -picked, torch.zeros_like(picked))


def with_prefix(sd: Dict[str, Tensor], prefix: str = "_orig_mod.model.", dtype=torch.float32) -> Dict[str, Tensor]:
    return {prefix + k: v.to(dtype) for k, v in sd.items()}


def oracle_config(**kw) -> OracleConfig:
    base = dict(seq_len=10, vocab_size=7, num_puzzle_identifiers=5, hidden_size=32, num_heads=4, expansion=2.0,
                H_cycles=2, L_cycles=2, L_layers=2, puzzle_emb_ndim=48, puzzle_emb_len=2, pos_encodings="rope",
                mlp_t=False, halt_max_steps=3)
    base.update(kw)
    return OracleConfig(**base)


def model_config(ocfg: OracleConfig, **kw) -> dict:
    """The trm_jax model config equal to an oracle config (float32 forward)."""
    cfg = {k: getattr(ocfg, k) for k in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size",
                                          "num_heads", "expansion", "H_cycles", "L_cycles", "L_layers",
                                          "puzzle_emb_ndim", "puzzle_emb_len", "pos_encodings", "mlp_t",
                                          "halt_max_steps", "rope_theta", "rms_norm_eps")}
    cfg.update(forward_dtype="float32", halt_exploration_prob=0.1)
    cfg.update(kw)
    return cfg


def random_batch(cfg: OracleConfig, batch_size: int, seed: int = 0, ignore_frac: float = 0.2) -> Dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len), generator=g, dtype=torch.int32)
    labels = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len), generator=g, dtype=torch.int32)
    labels = torch.where(torch.rand(batch_size, cfg.seq_len, generator=g) < ignore_frac, -100, labels).int()
    pids = torch.randint(0, cfg.num_puzzle_identifiers, (batch_size,), generator=g, dtype=torch.int32)
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": pids}



# ---------------------------------------------------------------------------------------------
# Every architecture of the reference (docs/architecture.md#variants), from its equations.

def _graded(last: bool, stop_early: bool):
    return torch.set_grad_enabled(torch.is_grad_enabled() and (last or not stop_early))


def arch_inner(sd, cfg: OracleConfig, z: Dict[str, Tensor], inputs: Tensor, puzzle_ids: Tensor,
               stop_early: bool = True):
    """One recursion step of ``cfg.arch``: ``(z, logits, q_halt, q_continue)``; ``stop_early``: the
    reference's no-gradient updates (False: differentiate every update)."""
    rope = rope_tables(cfg) if cfg.pos_encodings == "rope" else None
    x = input_embeddings(sd, cfg, inputs, puzzle_ids)
    H, L = cfg.H_cycles, cfg.L_cycles
    z = dict(z)
    if cfg.arch == "transformer":
        z["z_H"] = f(sd, z["z_H"], x, cfg, rope, "H_level")
        out = z["z_H"]
    elif cfg.arch == "hrm":
        # Only the very last L update and the very last H update carry gradient.
        for h in range(H):
            for l_step in range(L):
                with _graded(h == H - 1 and l_step == L - 1, stop_early):
                    z["z_L"] = f(sd, z["z_L"], z["z_H"] + x, cfg, rope, "L_level")
            with _graded(h == H - 1, stop_early):
                z["z_H"] = f(sd, z["z_H"], z["z_L"], cfg, rope, "H_level")
        out = z["z_H"]
    elif cfg.arch == "trm_singlez":
        for h in range(H):
            with _graded(h == H - 1, stop_early):
                for _ in range(L):
                    z["z_L"] = f(sd, z["z_L"] + x, None, cfg, rope)
                z["z_L"] = f(sd, z["z_L"], None, cfg, rope)
        out = z["z_L"]
    elif cfg.arch == "trm_hier6":
        names = [f"z_L{i}" for i in range(1, 7)]
        for h in range(H):
            with _graded(h == H - 1, stop_early):
                for l_step in range(L):
                    total = z[names[0]]
                    for n in names[1:]:
                        total = total + z[n]
                    z[names[l_step]] = f(sd, total, z["z_H"] + x, cfg, rope)
                total = z[names[0]]
                for n in names[1:]:
                    total = total + z[n]
                z["z_H"] = f(sd, z["z_H"], total, cfg, rope)
        out = z["z_H"]
    else:  # the TRM: its own statement above
        z_H, z_L, logits, q_halt, q_cont = inner(sd, cfg, z["z_H"], z["z_L"], inputs, puzzle_ids, stop_early)
        return {"z_H": z_H, "z_L": z_L}, logits, q_halt, q_cont
    logits = (out @ sd["inner.lm_head.weight"].T)[:, cfg.P:]
    q = out[:, 0] @ sd["inner.q_head.weight"].T + sd["inner.q_head.bias"]
    return {k: v.detach() for k, v in z.items()}, logits, q[:, 0], q[:, 1]


def output_grads(sd, cfg: OracleConfig, z: Dict[str, Tensor], batch: Dict[str, Tensor], w_logits: Tensor,
                 w_q: Tensor, stop_early: bool = True) -> Dict[str, "object"]:
    """Gradients (NumPy, by state-dict key) of ``sum(logits * w_logits) + sum(q_halt * w_q[:, 0]) +
    sum(q_continue * w_q[:, 1])`` after one recursion step of ``cfg.arch`` from the states ``z``, with
    respect to every tensor but the ``*_init`` buffers; ``stop_early`` as in :func:`arch_inner`."""
    params = {k: v.clone().requires_grad_(not k.endswith("_init")) for k, v in sd.items()}
    _, logits, q_halt, q_cont = arch_inner(params, cfg, z, batch["inputs"], batch["puzzle_identifiers"],
                                           stop_early=stop_early)
    loss = (logits * w_logits).sum() + (q_halt * w_q[:, 0]).sum() + (q_cont * w_q[:, 1]).sum()
    loss.backward()
    return {k: p.grad.numpy() for k, p in params.items() if p.grad is not None}


def arch_initial_carry(cfg: OracleConfig, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    B = batch["inputs"].shape[0]
    z = {n: torch.zeros(B, cfg.S, cfg.hidden_size, dtype=torch.float64) for n in cfg.latents}
    return {"z": z, "steps": torch.zeros(B, dtype=torch.int32), "halted": torch.ones(B, dtype=torch.bool),
            "data": {k: torch.zeros_like(v) for k, v in batch.items()}}


def arch_act_step(sd, cfg: OracleConfig, carry, batch, halt_rule: str = "max", bootstrap: bool = False):
    """One ACT step without exploration: reset halted rows, recurse, halt at ``halt_max_steps``
    (``halt_rule`` "q": also where ``q_halt > q_continue``); ``bootstrap``: the target of the continue
    logit from a second forward of the new state."""
    halted = carry["halted"]
    D = cfg.hidden_size
    z = {n: torch.where(halted[:, None, None], sd[f"inner.{n[2:]}_init"].expand(1, 1, D), v)
         for n, v in carry["z"].items()}
    data = {k: torch.where(halted.view(-1, *([1] * (v.ndim - 1))), batch[k], v) for k, v in carry["data"].items()}
    steps = torch.where(halted, 0, carry["steps"]) + 1
    z, logits, q_halt, q_cont = arch_inner(sd, cfg, z, data["inputs"], data["puzzle_identifiers"])
    is_last = steps >= cfg.halt_max_steps
    new_halted = is_last | (q_halt > q_cont) if halt_rule == "q" else is_last
    out = {"logits": logits, "q_halt": q_halt, "q_continue": q_cont}
    if bootstrap:
        _, _, nq_halt, nq_cont = arch_inner(sd, cfg, z, data["inputs"], data["puzzle_identifiers"])
        out["target_q_continue"] = torch.sigmoid(torch.where(is_last, nq_halt, torch.maximum(nq_halt, nq_cont)))
    return {"z": z, "steps": steps, "halted": new_halted, "data": data}, out


def arch_model_config(ocfg: OracleConfig, **kw) -> dict:
    """The trm_jax model section equal to an oracle config (float32 forward), any architecture."""
    cfg = model_config(ocfg)
    cfg["name"] = ocfg.arch
    if ocfg.arch == "hrm":
        cfg["H_layers"] = ocfg.H_layers
    if ocfg.arch == "transformer":
        for key in ("L_cycles", "L_layers", "mlp_t", "puzzle_emb_len"):
            cfg.pop(key)
        cfg.update(H_cycles=1, H_layers=ocfg.H_layers)
    cfg.update(kw)
    return cfg
