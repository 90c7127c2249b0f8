"""Model definitions: TRM layers, recursion, ACT wrapper, and the reference's other architectures
(``hrm``, ``trm_singlez``, ``trm_hier6``, ``transformer``) as TRM variants."""
from trm_jax.models.carry import ACTCarry, initial_carry
from trm_jax.models.config import ConfigError, ModelConfig, TRMConfig
from trm_jax.models.trm import TRM, TRMInner, build_model, dummy_batch, init_variables, random_batch
from trm_jax.models.hrm import HRM, HRMConfig
from trm_jax.models.trm_singlez import SingleZConfig, SingleZTRM
from trm_jax.models.trm_hier6 import Hier6Config, Hier6TRM
from trm_jax.models.transformer import Transformer, TransformerConfig

__all__ = ["ACTCarry", "ConfigError", "HRM", "HRMConfig", "Hier6Config", "Hier6TRM", "ModelConfig", "SingleZConfig",
           "SingleZTRM", "TRM", "TRMConfig", "TRMInner", "Transformer", "TransformerConfig", "build_model",
           "dummy_batch", "init_variables", "initial_carry", "random_batch"]
