"""Model definitions: TRM layers, recursion, ACT wrapper."""
from trm_jax.models.carry import ACTCarry, initial_carry
from trm_jax.models.config import ConfigError, TRMConfig
from trm_jax.models.trm import TRM, TRMInner, build_model, dummy_batch, init_variables, random_batch

__all__ = ["ACTCarry", "ConfigError", "TRM", "TRMConfig", "TRMInner", "build_model", "dummy_batch",
           "init_variables", "initial_carry", "random_batch"]
