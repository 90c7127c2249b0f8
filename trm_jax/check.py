"""Check that configs build: parameters, per-device memory of a train step, and one real step.

    python -m trm_jax.check --config=configs/sudoku.py:hrm      # one config (file[:variants])
    python -m trm_jax.check --config=hrm                         # an architecture: configs/sudoku.py:hrm
    python -m trm_jax.check --all [--quiet]                      # every config file and variant

For each config: the model at its configured size is built without allocating it
(``jax.eval_shape``) and its parameters are counted per module; the train step at the configured
global batch is compiled for the mesh the config asks for (``config.mesh``, on this machine's
devices) and XLA's memory analysis gives the per-device bytes of its arguments (parameters,
optimizer state, EMA, ACT carry, batch) and of its temporaries (activations); then the same config
with its ``tiny`` variant runs one forward/backward and optimizer step on random data. Any failure
is reported and the exit status is 1, so CI can run ``--all``. Dataset-dependent fields
(``seq_len``, ``vocab_size``, ``num_puzzle_identifiers``) take the config's values; a run sets them
from its dataset (the puzzle-embedding table of a large dataset adds ``ids x puzzle_emb_ndim``
parameters). Nothing is read from or written to disk besides the config files.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "", "A config file and its variants, e.g. configs/sudoku.py:hrm "
                              "(or sudoku:hrm), or an architecture's name (hrm: configs/sudoku.py:hrm).")
_ALL = flags.DEFINE_bool("all", False, "Check every config file in configs/ with every variant, alone and with "
                         "'tiny'.")
_QUIET = flags.DEFINE_bool("quiet", False, "One line per config.")
_SKIP_MEMORY = flags.DEFINE_bool("skip_memory", False, "Do not compile the full-size step (parameters and the "
                                 "tiny step only).")

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass
class Report:
    """What :func:`check` found for one config."""

    target: str
    family: str = ""
    reference: str = ""
    params_by_module: Dict[str, int] = dataclasses.field(default_factory=dict)
    memory: Dict[str, int] = dataclasses.field(default_factory=dict)  # bytes per device
    mesh: str = ""
    tiny: str = ""  # the config whose step ran
    tiny_loss: float = float("nan")
    tiny_seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def total_params(self) -> int:
        return sum(self.params_by_module.values())


# ---------------------------------------------------------------------------------------------- configs
def config_path(name: str) -> str:
    """``configs/sudoku.py`` for ``configs/sudoku.py`` or ``sudoku``."""
    if os.path.exists(name):
        return name
    path = os.path.join(CONFIG_DIR, name if name.endswith(".py") else name + ".py")
    if not os.path.exists(path):
        known = sorted(os.path.basename(p)[:-3] for p in _config_files())
        raise ValueError(f"no config file {name!r} (known: {known})")
    return path


def _config_files() -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                  if os.path.basename(p) not in ("__init__.py", "common.py"))


def _module(path: str) -> Any:
    if os.path.dirname(os.path.abspath(CONFIG_DIR)) not in sys.path:
        sys.path.insert(0, os.path.dirname(os.path.abspath(CONFIG_DIR)))  # configs import configs.common
    spec = importlib.util.spec_from_file_location(f"_check_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_target(target: str) -> str:
    """``file[:variants]`` for a target; an architecture's name alone (``hrm``, as the PyTorch system's
    ``scripts/test.py --config hrm``) is that architecture on the paper's Sudoku (``configs/sudoku.py:hrm``)."""
    from trm_jax.families import ARCHITECTURES

    name, _, arg = target.partition(":")
    if name in ARCHITECTURES and not os.path.exists(name) and \
            not os.path.exists(os.path.join(CONFIG_DIR, name + ".py")):
        variants = [v for v in (name if name != "trm" else "", arg) if v]
        return "configs/sudoku.py" + (":" + ",".join(variants) if variants else "")
    return target


def load_config(target: str) -> Any:
    """The ConfigDict of ``file[:variants]`` (or an architecture's name, :func:`resolve_target`)."""
    name, _, arg = resolve_target(target).partition(":")
    return _module(config_path(name)).get_config(arg)


def all_targets() -> List[str]:
    """Every config file with no variant, each variant alone and each with ``tiny`` (the file's
    ``VARIANTS``; ``INVALID_VARIANTS`` names combinations the file refuses on purpose)."""
    targets = []
    for path in _config_files():
        module = _module(path)
        rel = os.path.relpath(path, os.path.dirname(CONFIG_DIR))
        invalid = set(getattr(module, "INVALID_VARIANTS", ()))
        names = [""] + list(module.VARIANTS) + [f"{v},tiny" for v in module.VARIANTS if v != "tiny"]
        targets += [f"{rel}:{n}" if n else rel for n in names if n not in invalid]
    return targets


def tiny_target(target: str) -> str:
    """The ``tiny`` version of a target (itself if it has it)."""
    name, _, arg = target.partition(":")
    variants = [v for v in arg.split(",") if v]
    if "tiny" not in variants:
        variants.append("tiny")
    return f"{name}:{','.join(variants)}"


# ---------------------------------------------------------------------------------------------- checks
def count_params(model_cfg: Any) -> Dict[str, int]:
    """Parameters per module (``inner/L_level``, ...) of the model, built abstractly (no memory)."""
    import jax

    from trm_jax.models import init_variables

    shapes = jax.eval_shape(lambda key: init_variables(model_cfg, key), jax.random.PRNGKey(0))
    counts: Dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
        keys = [p.key for p in path]
        module = "/".join(keys[:2]) if keys[0] == "inner" and len(keys) > 2 else "/".join(keys[:-1]) or keys[0]
        counts[module] = counts.get(module, 0) + int(math.prod(leaf.shape))
    return counts


@dataclasses.dataclass
class CompiledStep:
    """A config's train step compiled for its mesh, with what running it needs."""

    compiled: Any            # the compiled ``train_step(state, batch)``
    make_state: Any          # ``() -> TrainState`` (fresh state)
    state_shardings: Any
    abstract_batch: Dict[str, Any]
    batch_shardings: Any
    mesh: Any


def compile_step(config: Any, total_steps: int = 1000) -> CompiledStep:
    """The trainer's train step (``trm_jax.steps.make_train_step``) for ``config``, compiled at its
    global batch for the mesh it asks for, from abstract inputs (nothing is allocated)."""
    import jax

    from trm_jax import optim, sharding
    from trm_jax.families import get_family
    from trm_jax.steps import make_train_step
    from trm_jax.train_state import create_train_state, state_shardings

    family = get_family(config.model.name)
    model_cfg = family.config_cls.from_any(config.model)
    model = family.build_model(model_cfg)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_global_batch(config.global_batch_size, mesh)
    tx = optim.build_optimizer(config, total_steps)

    def make_state():
        return create_train_state(model_cfg, tx, config.global_batch_size, config.seed, bool(config.ema))

    abstract = jax.eval_shape(make_state)
    shardings = state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
    batch = jax.eval_shape(lambda: model.example_batch(config.global_batch_size))
    batch_shardings = sharding.batch_tree_shardings(batch, mesh)
    with_sharding = lambda tree, sh: jax.tree.map(  # noqa: E731
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    step = jax.jit(make_train_step(model, tx, config, total_steps), in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    compiled = step.lower(with_sharding(abstract, shardings), with_sharding(batch, batch_shardings)).compile()
    return CompiledStep(compiled, make_state, shardings, batch, batch_shardings, mesh)


def memory_per_device(step: CompiledStep) -> Tuple[Dict[str, int], str]:
    """XLA's memory analysis of a compiled train step (bytes per device) and the mesh in words."""
    stats = step.compiled.memory_analysis()
    memory = {"arguments": int(stats.argument_size_in_bytes), "temporaries": int(stats.temp_size_in_bytes),
              "outputs": int(stats.output_size_in_bytes), "aliased": int(stats.alias_size_in_bytes)}
    # Donated state: outputs alias the arguments, so the peak is arguments + temporaries + unaliased outputs.
    memory["peak"] = memory["arguments"] + memory["temporaries"] + max(0, memory["outputs"] - memory["aliased"])
    mesh = step.mesh
    shape = ", ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
    return memory, f"{shape} on {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"


def run_one_step(config: Any, step: Optional[CompiledStep] = None) -> float:
    """One real train step (forward, backward, optimizer) on random data; the loss, checked finite.

    ``step``: the config's step if already compiled (:func:`compile_step`).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    step = step or compile_step(config)
    state = jax.jit(step.make_state, out_shardings=step.state_shardings)()
    key = jax.random.PRNGKey(0)
    batch = {}
    for name, leaf in step.abstract_batch.items():
        key, sub = jax.random.split(key)
        if name in ("inputs", "labels"):
            value = jax.random.randint(sub, leaf.shape, 1, int(config.model.vocab_size), leaf.dtype)
        elif name == "puzzle_identifiers":
            value = jax.random.randint(sub, leaf.shape, 0, int(config.model.num_puzzle_identifiers), leaf.dtype)
        elif jnp.issubdtype(leaf.dtype, jnp.floating):
            value = jax.random.normal(sub, leaf.shape, leaf.dtype)
        else:
            value = jnp.zeros(leaf.shape, leaf.dtype)
        batch[name] = jax.device_put(value, step.batch_shardings[name])
    state, metrics = step.compiled(state, batch)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise FloatingPointError(f"non-finite metrics after one step: {bad}")
    return metrics.get("lm_loss", float("nan")) / config.global_batch_size  # (summed over rows, as logged)


def check(target: str, memory: bool = True, tiny_done: Optional[Dict[str, Tuple[float, float, str]]] = None) -> Report:
    """Check one config (``file[:variants]``); never raises: failures are in ``Report.error``.

    ``tiny_done`` caches the tiny step's result by tiny target (``--all`` runs each tiny config once).
    """
    import jax

    from trm_jax.families import get_family

    target = resolve_target(target)
    report = Report(target)
    try:
        config = load_config(target)
        family = get_family(config.model.name)
        report.family, report.reference = family.name, family.reference
        family.config_cls.check_fields(config.model)
        model_cfg = family.config_cls.from_any(config.model)
        report.params_by_module = count_params(model_cfg)
        report.tiny = tiny_target(target)
        step = None
        if memory:
            step = compile_step(config)
            report.memory, report.mesh = memory_per_device(step)
        if report.tiny != target:  # a tiny target's step is the one just compiled
            step = None
            jax.clear_caches()
        cache = tiny_done if tiny_done is not None else {}
        if report.tiny not in cache:
            start = time.perf_counter()
            try:
                loss = run_one_step(load_config(report.tiny), step)
                cache[report.tiny] = (loss, time.perf_counter() - start, "")
            except Exception as e:  # noqa: BLE001 - reported
                cache[report.tiny] = (float("nan"), time.perf_counter() - start, _describe(e))
            jax.clear_caches()
        report.tiny_loss, report.tiny_seconds, tiny_error = cache[report.tiny]
        if tiny_error:
            report.error = f"one step of {report.tiny} failed: {tiny_error}"
    except Exception as e:  # noqa: BLE001 - reported
        report.error = _describe(e)
    return report


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" (at {os.path.relpath(frame.filename)}:{frame.lineno})" if frame else ""
    return (text if len(text) < 2000 else text[:2000] + " ...") + where


# ---------------------------------------------------------------------------------------------- output
def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


def format_report(report: Report, quiet: bool) -> str:
    status = "OK  " if report.ok else "FAIL"
    if quiet:
        parts = [f"{status} {report.target}"]
        if report.params_by_module:
            parts.append(f"{report.total_params / 1e6:.2f}M params")
        if report.memory:
            parts.append(f"{_gib(report.memory['peak'])}/device")
        if report.error:
            parts.append(report.error)
        return "  ".join(parts)
    lines = [f"{report.target}  [{report.family}: reference {report.reference or '-'}]"]
    if report.params_by_module:
        lines.append("  parameters:")
        for module, n in sorted(report.params_by_module.items()):
            lines.append(f"    {module:<32} {n:>14,}")
        lines.append(f"    {'total':<32} {report.total_params:>14,}")
    if report.memory:
        m = report.memory
        lines.append(f"  train step memory per device ({report.mesh}):")
        lines.append(f"    arguments (params, optimizer, EMA, carry, batch)  {_gib(m['arguments'])}")
        lines.append(f"    temporaries (activations)                         {_gib(m['temporaries'])}")
        lines.append(f"    peak (arguments + temporaries + new outputs)      {_gib(m['peak'])}")
    if report.tiny and not report.error:
        lines.append(f"  one step of {report.tiny}: loss {report.tiny_loss:.4f} ({report.tiny_seconds:.1f} s)")
    lines.append(f"  {status.strip()}" + (f": {report.error}" if report.error else ""))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(_CONFIG.value) == bool(_ALL.value):
        raise app.UsageError("give --config=FILE[:VARIANTS] or --all")
    targets = all_targets() if _ALL.value else [_CONFIG.value]
    tiny_cache: Dict[str, Tuple[float, float, str]] = {}
    failures = 0
    start = time.perf_counter()
    for target in targets:
        report = check(target, memory=not _SKIP_MEMORY.value, tiny_done=tiny_cache)
        failures += not report.ok
        print(format_report(report, _QUIET.value), flush=True)
    print(f"{len(targets) - failures}/{len(targets)} configs OK ({time.perf_counter() - start:.0f} s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    app.run(main)
