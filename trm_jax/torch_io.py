"""Convert between PyTorch reference state dicts and Flax variables, for every architecture.

The TRM, HRM, single-z TRM, 6-level TRM and transformer baseline share the key scheme (the
HRM's and the baseline's ``inner.H_level.layers.N...``, the latents' ``inner.L1_init`` ... follow
the same rule); the model config (its ``name``) says which tree to expect.

Key mapping (after stripping ``_orig_mod.`` / ``model.`` prefixes), one rule
for every leaf of the Flax tree:

=========================================  =============================================
PyTorch (reference)                        Flax
=========================================  =============================================
``inner.L_level.layers.0.mlp.down_proj.weight``  ``params/inner/L_level/layers_0/mlp/down_proj/kernel`` (transposed)
``inner.q_head.bias``                      ``params/inner/q_head/bias``
``inner.embed_tokens.embedding_weight``    ``params/inner/embed_tokens/embedding``
``inner.puzzle_emb.weights``               ``params/inner/puzzle_emb/embedding``
``inner.H_init`` / ``inner.L_init``        ``buffers/inner/H_init`` / ``buffers/inner/L_init``
=========================================  =============================================

Torch is never needed: checkpoint files are read by :mod:`trm_jax.pt_format` (a restricted
unpickler: a ``.pt`` from an untrusted source cannot run code here) and written by
:func:`save_torch`; torch is only imported when torch tensors are given or asked for.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple, Union

import jax
import ml_dtypes
import numpy as np

from trm_jax.models.config import ModelConfig
from trm_jax.pt_format import load_pt, save_pt

_STRIP_PREFIXES = ("_orig_mod.", "model.")
# Default prefix of ``to_torch``: what the reference ``pretrain.py`` saves and
# loads (the torch.compile'd ACTLossHead wrapping the model).
REFERENCE_PREFIX = "_orig_mod.model."


class StateDictError(ValueError):
    """A state dict that does not match the model config (lists every problem)."""


def _typed(model_cfg: Any) -> ModelConfig:
    """The typed config of any architecture (a model section's ``name`` picks it; default the TRM)."""
    from trm_jax.families import family_of

    return family_of(model_cfg).config_cls.from_any(model_cfg)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _torch_key(path: Tuple[str, ...]) -> Tuple[str, bool]:
    """Torch key for a Flax path (collection first) and whether the value is transposed."""
    *modules, leaf = path[1:]  # drop the collection ('params' / 'buffers')
    parts = [m.replace("layers_", "layers.") if m.startswith("layers_") else m for m in modules]
    transpose = False
    if leaf == "kernel":
        leaf, transpose = "weight", True
    elif leaf == "embedding":
        leaf = "weights" if modules[-1] == "puzzle_emb" else "embedding_weight"
    return ".".join(parts + [leaf]), transpose


def _expected_leaves(cfg: ModelConfig) -> Dict[Tuple[str, ...], jax.ShapeDtypeStruct]:
    from trm_jax.models.trm import init_variables

    shapes = jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.PRNGKey(0))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(p.key for p in path): leaf for path, leaf in flat}


def _to_numpy(value: Any) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if not value.dtype.is_floating_point:
            return value.numpy()
        return value.float().numpy()  # bfloat16 has no NumPy dtype; float32 holds it exactly
    return np.asarray(value)


def _load_state_dict(source: Union[Mapping[str, Any], str, os.PathLike], trust_pickle: bool) -> Mapping[str, Any]:
    if isinstance(source, (str, os.PathLike)):
        source = load_pt(source, trust_pickle=trust_pickle)  # FileNotFoundError first, then format/safety errors
    if isinstance(source, Mapping) and isinstance(source.get("model"), Mapping):
        source = source["model"]  # a full reference checkpoint {"model", "optimizers", "step"}
    if not isinstance(source, Mapping):
        raise StateDictError(f"expected a state dict (mapping of names to tensors), got {type(source).__name__}")
    return source


def from_torch(state_dict: Union[Mapping[str, Any], str, os.PathLike], model_cfg: Any, *,
               trust_pickle: bool = False) -> Dict[str, Any]:
    """Flax variables ``{'params', 'buffers'}`` (float32) from a reference TRM state dict.

    Args:
      state_dict: ``model.state_dict()`` of the reference (possibly wrapped in
        ``ACTLossHead`` and ``torch.compile``: ``model.``/``_orig_mod.`` prefixes
        are stripped), values torch tensors or NumPy arrays; or a path to a file
        written by ``torch.save`` (read without torch, see :func:`trm_jax.pt_format.load_pt`);
        or a full checkpoint dict with a ``model`` entry.
      model_cfg: the model config the weights belong to.
      trust_pickle: for a path: the file is trusted, so a pickle that needs more than
        tensors is loaded with ``torch.load(weights_only=False)`` (runs its code; needs torch).

    Raises:
      FileNotFoundError: the path does not exist.
      trm_jax.pt_format.UnsafeCheckpointError: the file's pickle asks for something other
        than tensors (the file and the global are named) and ``trust_pickle`` is false.
      trm_jax.pt_format.PtFormatError: the file is not a readable PyTorch checkpoint.
      StateDictError: listing every missing key, unexpected key and shape mismatch.
    """
    cfg = _typed(model_cfg)
    stripped: Dict[str, Any] = {}
    for key, value in _load_state_dict(state_dict, trust_pickle).items():
        stripped[_strip(key)] = value

    variables: Dict[str, Any] = {}
    missing: List[str] = []
    mismatched: List[str] = []
    used = set()
    for path, leaf in _expected_leaves(cfg).items():
        key, transpose = _torch_key(path)
        if key not in stripped:
            missing.append(key)
            continue
        used.add(key)
        array = _to_numpy(stripped[key])
        array = array.T if transpose else array
        if array.shape != leaf.shape:
            expected = leaf.shape[::-1] if transpose else leaf.shape
            got = array.shape[::-1] if transpose else array.shape
            mismatched.append(f"{key}: checkpoint {tuple(got)} vs model {tuple(expected)}")
            continue
        node = variables
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = jax.numpy.asarray(array, dtype=leaf.dtype)
    unexpected = sorted(set(stripped) - used)

    if missing or unexpected or mismatched:
        lines = ["state dict does not match the model config:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        raise StateDictError("\n".join(lines))
    return variables


def _numpy_state_dict(variables: Mapping[str, Any], cfg: ModelConfig, prefix: str,
                      buffer_dtype: Any) -> "OrderedDict[str, np.ndarray]":
    """Reference keys -> C-contiguous NumPy arrays (parameters float32, buffers ``buffer_dtype``)."""
    flat = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for path, leaf in flat:
        names = tuple(p.key for p in path)
        key, transpose = _torch_key(names)
        array = np.asarray(jax.device_get(leaf), dtype=np.float32)
        array = np.array(array.T if transpose else array, copy=True, order="C")  # writable for torch
        out[prefix + key] = array.astype(buffer_dtype) if names[0] == "buffers" else array
    return out


def to_torch(variables: Mapping[str, Any], model_cfg: Any, prefix: str = REFERENCE_PREFIX,
             as_numpy: bool = False) -> "OrderedDict[str, Any]":
    """A reference state dict from Flax variables.

    Keys carry ``prefix`` (default ``"_orig_mod.model."``, what the reference's
    ``pretrain.py`` saves and loads; use ``"model."`` for an uncompiled
    ``ACTLossHead`` or ``""`` for the bare model). Parameters are float32;
    ``H_init``/``L_init`` are in ``forward_dtype`` like the reference buffers.
    Values are torch tensors (needs torch: ``pip install -e '.[torch]'``), or NumPy
    arrays with ``as_numpy=True`` (bfloat16 buffers are then given as float32).
    To write a ``.pt`` file without torch use :func:`save_torch`.
    """
    cfg = _typed(model_cfg)
    arrays = _numpy_state_dict(variables, cfg, prefix, np.float32)
    if as_numpy:
        return arrays
    try:
        import torch
    except ImportError:
        raise ImportError("to_torch returns torch tensors and needs PyTorch: pip install -e '.[torch]' "
                          "(or pass as_numpy=True, or write a .pt without torch with save_torch)") from None
    buffer_keys = {prefix + _torch_key(tuple(p.key for p in path))[0]
                   for path, _ in jax.tree_util.tree_flatten_with_path({"buffers": dict(variables).get("buffers", {})})[0]}
    out: "OrderedDict[str, Any]" = OrderedDict()
    for key, array in arrays.items():
        tensor = torch.from_numpy(array)
        out[key] = tensor.to(getattr(torch, cfg.forward_dtype)) if key in buffer_keys else tensor
    return out


def save_torch(variables: Mapping[str, Any], model_cfg: Any, path: Union[str, os.PathLike],
               prefix: str = REFERENCE_PREFIX) -> None:
    """Write Flax variables as a reference ``.pt`` checkpoint, without torch.

    The file holds what :func:`to_torch` returns (same keys, float32 parameters,
    ``forward_dtype`` buffers), in ``torch.save``'s format: the reference loads it with
    ``model.load_state_dict(torch.load(path, weights_only=True))``, and :func:`from_torch`
    reads it back.
    """
    cfg = _typed(model_cfg)
    dtype = ml_dtypes.bfloat16 if cfg.forward_dtype == "bfloat16" else np.dtype(cfg.forward_dtype)
    save_pt(_numpy_state_dict(variables, cfg, prefix, dtype), path)
