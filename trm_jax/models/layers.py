"""Building blocks of the TRM: initialisers, RMSNorm, SwiGLU, attention with RoPE.

Every layer keeps float32 parameters and computes in the dtype of its input
(``forward_dtype``), like the reference's ``CastedLinear``/``CastedEmbedding``.
Parameter names follow the PyTorch reference so checkpoints map one to one
(``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``); Flax kernels are
``[in, out]`` (the transpose of torch's ``[out, in]``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it makes
# the *truncated* distribution have the requested std (the reference's
# ``trunc_normal_init_`` does the same correction, JAX's plain
# ``truncated_normal`` does not).
_TRUNC_STD = 0.87962566103423978

CosSin = Tuple[jax.Array, jax.Array]

# Mesh axes a batch is split over (see trm_jax/sharding.py).
BATCH_AXES = ("data", "fsdp")


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin an activation's batch axis to the mesh's batch axes, when a mesh is set.

    With FSDP the weights are sharded; without this hint XLA may shard the
    activations like the weights and re-gather them, instead of gathering the
    weights. A no-op outside ``jax.set_mesh`` (single device, tests, notebooks).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(axis in mesh.axis_names for axis in BATCH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(BATCH_AXES))


def trunc_normal_init(std: float) -> nn.initializers.Initializer:
    """Normal truncated at +-2 std whose *actual* standard deviation is ``std``."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if std == 0:
            return jnp.zeros(shape, dtype)
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * (std / _TRUNC_STD)

    return init


def lecun_trunc_normal_init() -> nn.initializers.Initializer:
    """Truncated LeCun normal for a ``[in, out]`` kernel: std = 1/sqrt(in)."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return trunc_normal_init(1.0 / math.sqrt(shape[0]))(key, shape, dtype)

    return init


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis with no learned scale, computed in float32."""
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(variance + eps)).astype(x.dtype)


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """The reference's inner size: ``round(expansion*D*2/3)`` rounded up to 256."""
    inter = round(expansion * hidden_size * 2 / 3)
    return -(inter // -256) * 256


def casted_dense(features: int, use_bias: bool, dtype, name: Optional[str] = None,
                 kernel_init: Optional[nn.initializers.Initializer] = None,
                 bias_init: nn.initializers.Initializer = nn.initializers.zeros) -> nn.Dense:
    """A bias-optional linear layer with float32 params computing in ``dtype``.

    ``name`` for ``nn.compact`` callers; in ``setup`` the attribute names the layer (leave it None).
    """
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init or lecun_trunc_normal_init(),
        bias_init=bias_init,
        name=name,
    )


class SwiGLU(nn.Module):
    """``down(silu(gate) * up)`` with a fused gate/up projection; x: [..., hidden_size]."""

    hidden_size: int
    expansion: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inter = swiglu_intermediate_size(self.hidden_size, self.expansion)
        gate_up = casted_dense(2 * inter, False, self.dtype, "gate_up_proj")(x)
        gate, up = jnp.split(gate_up, 2, axis=-1)
        return casted_dense(self.hidden_size, False, self.dtype, "down_proj")(nn.silu(gate) * up)


def rope_cos_sin(head_dim: int, max_len: int, theta: float, offset: jax.Array | int = 0) -> CosSin:
    """cos/sin tables ``[max_len, head_dim]`` (float32), half-split layout, of positions
    ``offset .. offset + max_len - 1`` (``offset``: the first new token's position when decoding)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    t = jnp.arange(max_len, dtype=jnp.float32) + jnp.asarray(offset, jnp.float32)
    freqs = jnp.outer(t, inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(q_BSHK: jax.Array, k_BSHK: jax.Array, cos_sin: CosSin) -> Tuple[jax.Array, jax.Array]:
    """Rotate q/k ``[B, S, H, K]`` in float32, returning them in their own dtype."""
    cos, sin = (t[:, None, :] for t in cos_sin)  # [S, 1, K]
    dtype = q_BSHK.dtype
    q, k = q_BSHK.astype(cos.dtype), k_BSHK.astype(cos.dtype)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.astype(dtype), k.astype(dtype)


def resolve_attention_impl(impl: str, dtype, head_dim: int, has_bias: bool = False) -> str:
    """``"xla"`` or ``"cudnn"`` for a config's ``attention_impl`` (``"auto"``, ``"xla"`` or ``"cudnn"``).

    ``auto`` takes cuDNN's fused (flash) attention where it applies (a CUDA backend, 16-bit
    compute, head dim a multiple of 8 up to 128) and XLA's otherwise. The fused kernel never
    materialises the ``[B, H, S, S]`` scores: on an H100 the paper's ARC config at 192 examples
    per GPU needs 57 GB with it and does not fit in 80 GB without it. With an attention bias
    (HESC's hierarchical bias) ``auto`` stays with XLA: cuDNN's biased kernel has not been
    measured on a GPU here (``cudnn`` still forces it).
    """
    if impl != "auto":
        return impl
    if has_bias:
        return "xla"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128 else "xla"


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
                    implementation: str, causal: bool = False) -> jax.Array:
    """Attention over ``[B, S, H, K]`` q/k/v; ``bias`` broadcastable to ``[B, H, S, S]``; ``causal``:
    position ``i`` attends to positions ``<= i`` only (a language model).

    cuDNN's kernel rejects an odd sequence length in training (Sudoku: 81 + 16 = 97): the
    sequence is then padded by one position that no query attends to (``key_value_seq_lengths``)
    and the padded row is dropped, so the result is the unpadded attention exactly.
    """
    B, S, H, _ = q.shape
    if bias is not None:
        bias = jnp.broadcast_to(bias, (B, H, S, S)).astype(q.dtype)
    if implementation != "cudnn" or S % 2 == 0:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal,
                                            implementation=None if implementation == "xla" else implementation)
    return padded_attention(q, k, v, bias, implementation, causal)


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
                     implementation: str, causal: bool = False) -> jax.Array:
    """Attention of ``[B, S, H, K]`` inputs computed on ``S + 1`` positions, the extra one masked out."""
    B, S, _, _ = q.shape
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
    if bias is not None:
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 1), (0, 1)))
    lengths = jnp.full((B,), S, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths,
                                       implementation=None if implementation == "xla" else implementation)
    return out[:, :S]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, no biases; ``causal``: each position
    attends to itself and earlier positions only."""

    hidden_size: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    implementation: str = "xla"  # "auto", "xla" or "cudnn" (see resolve_attention_impl)
    causal: bool = False

    @nn.compact
    def __call__(self, x_BSD: jax.Array, cos_sin: Optional[CosSin], bias: Optional[jax.Array] = None) -> jax.Array:
        """``bias``: optional additive attention bias broadcastable to ``[B, H, S, S]``."""
        B, S, _ = x_BSD.shape
        head_dim = self.hidden_size // self.num_heads
        qkv = casted_dense(3 * self.num_heads * head_dim, False, self.dtype, "qkv_proj")(x_BSD)
        qkv = qkv.reshape(B, S, 3 * self.num_heads, head_dim)
        q, k, v = jnp.split(qkv, 3, axis=2)  # each [B, S, H, K]
        if cos_sin is not None:
            q, k = apply_rope(q, k, cos_sin)
        if self.has_variable(DECODE_CACHE, "index"):  # decoding a causal model (trm_jax/lm/kv_cache.py)
            out = self.cached_attention(q, k, v)
        else:
            impl = resolve_attention_impl(self.implementation, self.dtype, head_dim, has_bias=bias is not None)
            out = fused_attention(q, k, v, bias, impl, self.causal)
        out = out.reshape(B, S, self.num_heads * head_dim)
        return casted_dense(self.hidden_size, False, self.dtype, "o_proj")(out)


    def cached_attention(self, q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array) -> jax.Array:
        """Causal attention of ``T`` new positions ``pos .. pos + T - 1`` over every position so far.

        The ``cache`` collection holds, for each application of this module in one forward (the
        recursion applies it many times, each with its own keys and values), ``k``/``v``
        ``[A, B, S, H, K]``, plus ``index`` (the application under way) and ``pos``. This writes the new
        keys/values into slot ``index`` and attends to positions ``<= pos + i``; without ``k`` (the
        pass that counts applications) it attends among the new positions only.
        """
        index = self.variable(DECODE_CACHE, "index", lambda: jnp.zeros((), jnp.int32))
        a = index.value
        index.value = a + 1
        if not self.has_variable(DECODE_CACHE, "k"):
            return jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, is_causal=True)
        pos = self.get_variable(DECODE_CACHE, "pos")
        keys, values = self.variable(DECODE_CACHE, "k", None), self.variable(DECODE_CACHE, "v", None)
        start = (a, 0, pos, 0, 0)
        keys.value = jax.lax.dynamic_update_slice(keys.value, k_BTHK[None].astype(keys.value.dtype), start)
        values.value = jax.lax.dynamic_update_slice(values.value, v_BTHK[None].astype(values.value.dtype), start)
        k_BSHK = jax.lax.dynamic_index_in_dim(keys.value, a, 0, keepdims=False)
        v_BSHK = jax.lax.dynamic_index_in_dim(values.value, a, 0, keepdims=False)
        T, S = q_BTHK.shape[1], k_BSHK.shape[1]
        mask_TS = jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None]
        return jax.nn.dot_product_attention(q_BTHK, k_BSHK.astype(q_BTHK.dtype), v_BSHK.astype(q_BTHK.dtype),
                                            mask=mask_TS[None, None])


# Variable collection of a causal model's decoding state (keys/values per attention application,
# positions): trm_jax/lm/kv_cache.py builds it; absent in training and evaluation.
DECODE_CACHE = "cache"

# Variable collection of zero row offsets that turns the puzzle table's gradient row-sparse
# (see trm_jax/puzzle_rows.py).
ROW_OFFSETS = "puzzle_rows"


class CastedEmbedding(nn.Module):
    """Embedding table (float32 param ``embedding`` [num_embeddings, features]).

    Rows are gathered *before* the cast to ``dtype`` so a large table (the
    puzzle embeddings, up to ~1M rows) is never cast as a whole. When the
    ``puzzle_rows`` collection holds an offset ``delta [B, features]`` for this
    module, gradients flow to the gathered rows (through ``delta``) instead of
    the table: :mod:`trm_jax.puzzle_rows` builds the table's gradient from them.
    """

    num_embeddings: int
    features: int
    init_std: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param("embedding", trunc_normal_init(self.init_std),
                           (self.num_embeddings, self.features), jnp.float32)
        if self.has_variable(ROW_OFFSETS, "delta"):
            rows = jnp.take(jax.lax.stop_gradient(table), ids, axis=0) + self.get_variable(ROW_OFFSETS, "delta")
        else:
            rows = jnp.take(table, ids, axis=0)
        return rows.astype(self.dtype)
