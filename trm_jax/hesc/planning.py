"""COCONUT-style latent planning: parallel continuous-thought paths through the reasoning module.

Shapes: batch ``B``, positions ``S``, hidden ``D``, paths ``P = num_paths``.

Each path starts from ``h + path_embedding[p]`` and, for ``depth`` steps, feeds its last
hidden state back as the next input, ``h_p <- f(h_p, h_p)`` (``f`` is the model's shared
reasoning module — the "continuous thought" is the hidden state itself, never a token).
The paths are folded into the batch (``[B*P, S, D]``) so ``f`` is traced ``depth`` times,
not ``P * depth``. A small head scores each path's mean-pooled final state (the mean over a
row's ``mask`` positions when given); the paths are combined by ``softmax(scores)``
(differentiable) or by the best score (straight-through).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from trm_jax.models.layers import lecun_trunc_normal_init, rms_norm, trunc_normal_init

COMBINES = ("softmax", "best")

# f(h [N, S, D], injection [N, S, D]) -> h [N, S, D]
ReasoningFn = Callable[[jax.Array, jax.Array], jax.Array]


def path_weights(scores_BP: jax.Array, combine: str) -> jax.Array:
    """Combination weights ``[B, P]`` float32 from path scores.

    ``softmax``: ``softmax(scores)``. ``best``: one-hot of the argmax in the forward pass with
    the softmax's gradient (straight-through), so the score head still learns.
    """
    soft = jax.nn.softmax(scores_BP.astype(jnp.float32), axis=-1)
    if combine == "softmax":
        return soft
    hard = jax.nn.one_hot(jnp.argmax(scores_BP, axis=-1), scores_BP.shape[-1], dtype=jnp.float32)
    # soft - stop_gradient(soft) is exactly 0 forward, so the output is exactly the best path.
    return hard + (soft - jax.lax.stop_gradient(soft))


class LatentPlanner(nn.Module):
    """``(h [B, S, D], f) -> (h_out [B, S, D], info)`` over ``num_paths`` latent paths of ``depth`` steps.

    ``info = {"path_scores": [B, P] float32, "planning_entropy": [B] float32}`` (entropy of
    ``softmax(path_scores)``, in nats). Parameters: ``path_embedding [P, D]`` (truncated normal,
    std ``embed_std``, small so the paths start as perturbations of ``h``) and the score head
    ``score_hidden`` (Dense -> SiLU) -> ``score_out`` (Dense -> 1) on the RMS-normalised pool.
    """

    num_paths: int = 4
    depth: int = 2
    combine: str = "softmax"
    dtype: Any = jnp.float32
    embed_std: float = 0.02
    score_width: int = 128
    rms_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, h_BSD: jax.Array, f: ReasoningFn,
                 mask_BS: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """Run the paths and combine them.

        Args:
          h_BSD: ``[B, S, D]`` starting state (e.g. ``z_H``).
          f: the shared reasoning module as ``f(h, injection) -> h``, shapes ``[N, S, D]``;
            called ``depth`` times on the folded batch ``N = B * P``.
          mask_BS: ``[B, S] bool``, the positions the path scores read (None: all). A row read left
            to right scores from positions that see no token, so the mix (which every position
            takes) cannot carry a later token to an earlier one.

        Returns:
          ``h_out [B, S, D]`` in ``h``'s dtype, and ``info`` (see the class docstring).
        """
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.num_paths < 1 or self.depth < 1:
            raise ValueError(f"num_paths and depth must be >= 1, got {self.num_paths}, {self.depth}")
        B, S, D = h_BSD.shape
        P = self.num_paths
        emb_PD = self.param("path_embedding", trunc_normal_init(self.embed_std), (P, D), jnp.float32)

        paths = h_BSD[:, None] + emb_PD[None, :, None, :].astype(h_BSD.dtype)  # [B, P, S, D]
        paths = paths.reshape(B * P, S, D)
        for _ in range(self.depth):
            paths = f(paths, paths)
        paths_BPSD = paths.reshape(B, P, S, D)

        paths32 = paths_BPSD.astype(jnp.float32)
        if mask_BS is None:
            mean_BPD = jnp.mean(paths32, axis=2)
        else:
            w_BS = mask_BS.astype(jnp.float32)
            mean_BPD = (jnp.sum(paths32 * w_BS[:, None, :, None], axis=2)
                        / jnp.maximum(w_BS.sum(-1), 1.0)[:, None, None])
        pooled_BPD = rms_norm(mean_BPD, self.rms_norm_eps)
        hid = nn.Dense(self.score_width, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=lecun_trunc_normal_init(), name="score_hidden")(pooled_BPD.astype(self.dtype))
        scores_BP = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=lecun_trunc_normal_init(),
                             name="score_out")(nn.silu(hid))[..., 0].astype(jnp.float32)

        w_BP = path_weights(scores_BP, self.combine)
        h_out = jnp.einsum("bp,bpsd->bsd", w_BP, paths_BPSD.astype(jnp.float32)).astype(h_BSD.dtype)

        logp_BP = jax.nn.log_softmax(scores_BP, axis=-1)
        entropy_B = -jnp.sum(jnp.exp(logp_BP) * logp_BP, axis=-1)
        return h_out, {"path_scores": scores_BP, "planning_entropy": entropy_B}
