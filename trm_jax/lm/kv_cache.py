"""The decoding state of a causal model: keys and values of every attention application, exact.

A causal model's position ``t`` depends only on positions ``<= t``, in every state of the recursion.
So when a token is appended, the earlier positions' states do not change, and neither do the keys
and values each attention application computed from them. The recursion applies each attention
module ``A`` times per token (the TRM's shared module: ``halt_max_steps x H_cycles x (L_cycles + 1)``;
the transformer baseline's layers once), each time to different states, so the cache keeps one
``k``/``v`` slot per application: ``[A, B, S, H, K]`` per module. A forward of ``T`` new tokens
computes only their states, writing their keys/values into each slot before attending to the slot's
positions ``<= pos + i`` (trm_jax/models/layers.py: ``Attention.cached_attention``).

The cache is the ``cache`` variable collection, laid out like the parameters: per attention module
``{"k", "v", "index", "pos"}`` (``index``: the application under way; the H- and L-cycle scans carry
it), and ``inner/pos`` for the positional encodings. ``A`` is counted by running the model once on
one token with counters only (:func:`count_applications`), so every architecture's recursion is
covered without listing it.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from trm_jax.models.layers import DECODE_CACHE

Cache = Dict[str, Any]


def attention_modules(params: Any) -> list:
    """Paths (tuples of names) of the attention modules in a parameter tree (``.../self_attn``)."""
    flat = traverse_util.flatten_dict(dict(params))
    return sorted({path[:path.index("self_attn") + 1] for path in flat if "self_attn" in path})


def _with(paths: list, leaves: Dict[str, Any], pos: Any) -> Cache:
    flat = {path + (name,): value for path in paths for name, value in leaves.items()}
    flat[("inner", "pos")] = pos
    return traverse_util.unflatten_dict(flat)


def decode_forward(model_cls: Any, cfg: Any, variables: Dict[str, Any], cache: Cache,
                   tokens_BT: jax.Array) -> Tuple[jax.Array, Cache]:
    """Logits ``[B, T, V]`` of ``T`` new tokens at positions ``pos ..`` and the updated cache: every ACT
    step (a causal model runs exactly ``halt_max_steps``), each application filling its slot."""
    import dataclasses

    step_cfg = dataclasses.replace(cfg, seq_len=tokens_BT.shape[1])
    model = model_cls(step_cfg)
    B = tokens_BT.shape[0]
    batch = {"inputs": tokens_BT, "labels": jnp.zeros_like(tokens_BT), "puzzle_identifiers": jnp.zeros((B,), jnp.int32),
             "label_bytes": jnp.zeros((B,), jnp.int32)}
    carry = model.initial_carry(batch)
    for _ in range(cfg.halt_max_steps):
        (carry, out), mutated = model.apply({**variables, DECODE_CACHE: cache}, carry, batch, train=False,
                                            mutable=[DECODE_CACHE])
        cache = mutated[DECODE_CACHE]
    return out["logits"], cache


def count_applications(model_cls: Any, cfg: Any, variables: Dict[str, Any]) -> Dict[tuple, int]:
    """How many times one forward applies each attention module (a one-token run with counters only)."""
    paths = attention_modules(variables["params"])
    counters = _with(paths, {"index": jnp.zeros((), jnp.int32), "pos": jnp.zeros((), jnp.int32)},
                     jnp.zeros((), jnp.int32))
    _, counted = decode_forward(model_cls, cfg, variables, counters, jnp.zeros((1, 1), jnp.int32))
    flat = traverse_util.flatten_dict(counted)
    return {path: int(flat[path + ("index",)]) for path in paths}


def init_cache(cfg: Any, applications: Dict[tuple, int], batch_size: int) -> Cache:
    """An empty cache (position 0) for ``batch_size`` sequences of up to ``cfg.seq_len`` tokens."""
    H = cfg.num_heads
    K = cfg.hidden_size // H
    flat = {}
    for path, A in applications.items():
        shape = (A, batch_size, cfg.seq_len, H, K)
        flat[path + ("k",)] = jnp.zeros(shape, cfg.dtype)
        flat[path + ("v",)] = jnp.zeros(shape, cfg.dtype)
        flat[path + ("index",)] = jnp.zeros((), jnp.int32)
        flat[path + ("pos",)] = jnp.zeros((), jnp.int32)
    flat[("inner", "pos")] = jnp.zeros((), jnp.int32)
    return traverse_util.unflatten_dict(flat)


def at_position(cache: Cache, pos: int | jax.Array) -> Cache:
    """The cache with every ``pos`` set to ``pos`` (the next token's position) and every ``index`` at 0."""
    flat = traverse_util.flatten_dict(cache)
    for path in flat:
        if path[-1] == "pos":
            flat[path] = jnp.asarray(pos, jnp.int32)
        elif path[-1] == "index":
            flat[path] = jnp.zeros((), jnp.int32)
    return traverse_util.unflatten_dict(flat)


def cache_bytes(cache: Cache) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
