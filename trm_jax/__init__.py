"""trm_jax: Tiny Recursive Reasoning Models (TRM) in JAX/Flax.

Public API::

    import trm_jax
    model = trm_jax.build_model(model_cfg)                  # flax.linen.Module; model_cfg.name picks the
                                                            # architecture: trm, hrm, trm_singlez, trm_hier6,
                                                            # transformer (or hesc)
    variables = trm_jax.from_torch(state_dict, model_cfg)   # reference checkpoint -> Flax variables
    carry = trm_jax.initial_carry(model_cfg, batch)         # every row halted (any family)
    carry, out = model.apply(variables, carry, batch, train=False)
    state_dict = trm_jax.to_torch(variables, model_cfg)     # and back (torch tensors)
    trm_jax.save_torch(variables, model_cfg, "step_N.pt")   # a reference .pt, written without torch
    config, variables = trm_jax.load_checkpoint(workdir)    # a trained run's config and (EMA) weights
    lm = trm_jax.LanguageModel.load(workdir)                # a language run (configs/code.py, text.py):
    text = lm.generate("def fib(n):", max_new_tokens=64, sampling=trm_jax.Sampling(temperature=0))
"""
from trm_jax.losses import act_loss, normalize_metrics, softmax_cross_entropy, stablemax_cross_entropy
from trm_jax.families import initial_carry
from trm_jax.models import (ACTCarry, ConfigError, ModelConfig, TRM, TRMConfig, build_model, dummy_batch, init_variables,
                            random_batch)
from trm_jax.pt_format import PtFormatError, UnsafeCheckpointError, load_pt, save_pt
from trm_jax.torch_io import StateDictError, from_torch, save_torch, to_torch
from trm_jax.pretrained import CheckpointInfo, load_checkpoint
from trm_jax.lm.generation import LanguageModel
from trm_jax.lm.sampling import Sampling

__version__ = "0.1.0"

__all__ = [
    "ACTCarry", "ConfigError", "ModelConfig", "StateDictError", "TRM", "TRMConfig", "act_loss", "build_model", "dummy_batch",
    "from_torch", "init_variables", "initial_carry", "normalize_metrics", "softmax_cross_entropy",
    "random_batch", "stablemax_cross_entropy", "to_torch",
    "PtFormatError", "UnsafeCheckpointError", "load_pt", "save_pt", "save_torch",
]
__all__ += ["CheckpointInfo", "load_checkpoint", "LanguageModel", "Sampling"]
