"""The train state: one pytree holding everything a run needs to continue exactly."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from trm_jax import optim, sharding
from trm_jax.models import ACTCarry


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: int32 scalar, optimizer steps taken (skipped non-finite steps included).
      params: trained parameters (float32).
      buffers: the model's non-trained variables (``H_init``/``L_init``; HESC: also the RND target
        network and an EMA codebook), saved with the model.
      opt_state: optax state (AdamAtan2 moments, sign-SGD count, NaN guard counters).
      ema_params: EMA of the parameters except the puzzle table (``{}`` when EMA is off).
      carry: the ACT carry over the global batch (rows mid-way through their examples).
      rng: base PRNG key; step ``t`` uses ``fold_in(rng, t)``.
      aux: the family's non-differentiated state (``Objective.init_aux``; HESC: a ``HESCAux`` with
        the replay buffer, target Q-parameters, memory bank, running statistics); ``{}`` for the TRM.
    """

    step: jax.Array
    params: Any
    buffers: Any
    opt_state: Any
    ema_params: Any
    carry: ACTCarry
    rng: jax.Array
    aux: Any = dataclasses.field(default_factory=dict)


def create_train_state(model_cfg: Any, tx: optax.GradientTransformation, global_batch_size: int,
                       seed: int, use_ema: bool) -> TrainState:
    """A fresh state for any family (``model_cfg``: its typed config, or a model section with ``name``).

    Reference initialisation, every carry row halted, the family's auxiliary state initialised.
    """
    from trm_jax.families import family_of, objective_of

    family = family_of(model_cfg)
    cfg = family.config_cls.from_any(model_cfg)
    model = family.build_model(cfg)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    batch = model.example_batch(1)
    variables = dict(model.init({"params": init_key}, model.initial_carry(batch), batch, train=False,
                                **objective_of(cfg).init_inputs(cfg)))
    params = variables.pop("params")
    buffers = variables.pop("buffers", {})
    if variables:
        raise ValueError(f"the model made variable collections the train state does not keep: {sorted(variables)}")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        buffers=buffers,
        opt_state=tx.init(params),
        ema_params=optim.ema_init(params) if use_ema else {},
        carry=model.initial_carry(model.example_batch(global_batch_size)),
        rng=run_key,
        aux=objective_of(cfg).init_aux(cfg, params, buffers, jax.random.fold_in(init_key, 1)),
    )


def state_shardings(abstract_state: TrainState, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> TrainState:
    """Shardings for every leaf: parameter-like trees by the FSDP rule, the carry over the batch."""
    param_like = lambda tree: sharding.param_shardings(tree, mesh, fsdp_min_size)  # noqa: E731
    return TrainState(
        step=sharding.replicated(mesh),
        params=param_like(abstract_state.params),
        buffers=jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state.buffers),
        opt_state=param_like(abstract_state.opt_state),
        ema_params=param_like(abstract_state.ema_params),
        carry=sharding.batch_tree_shardings(abstract_state.carry, mesh),
        rng=sharding.replicated(mesh),
        aux=jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state.aux),
    )


def init_sharded_state(make_state: Callable[[], TrainState], mesh: Mesh,
                       fsdp_min_size: int = 2 ** 14) -> tuple[TrainState, TrainState]:
    """Create the state directly in its shardings; returns ``(state, shardings)``."""
    abstract = jax.eval_shape(make_state)
    shardings = state_shardings(abstract, mesh, fsdp_min_size)
    return jax.jit(make_state, out_shardings=shardings)(), shardings


def param_count(params: Dict[str, Any]) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
