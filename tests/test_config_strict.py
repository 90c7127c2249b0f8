"""Model configs are strict: a misspelt or meaningless field is an error that names it.

Every variant of every config file must still build its family's model config, and the
errors must reach the user as one line (Python API and ``python -m trm_jax.main``).
"""
import dataclasses
import importlib
import itertools
import os
import re
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from tests.conftest import REPO
from trm_jax.families import get_family
from trm_jax.hesc.config import HESCConfig
from trm_jax.models.config import ConfigError, TRMConfig

# The variant names each config file's get_config knows (checked against its own error message below,
# so a variant added to a config file is enumerated here or this test fails).
ARCHS = ("hrm", "trm_singlez", "trm_hier6", "transformer")
KNOWN_VARIANTS = {
    "sudoku": ("mlp", "tiny") + ARCHS,
    "maze": ("tiny",) + ARCHS,
    "arc": ("arc2", "tiny", "pixels", "unified") + ARCHS,
    "hesc": ("full", "tiny", "text", "arc", "vision", "unified"),
    "vision": ("tiny", "unified"),
}
# The combinations the config files' docstrings document: these must build.
DOCUMENTED = {
    "sudoku": ["", "mlp", "tiny", "mlp,tiny"] + [f"{a}{t}" for a in ARCHS for t in ("", ",tiny")]
    + ["mlp,trm_singlez", "mlp,hrm"],
    "maze": ["", "tiny"] + [f"{a}{t}" for a in ARCHS for t in ("", ",tiny")],
    "arc": ["", "arc2", "tiny", "arc2,tiny", "pixels", "tiny,pixels", "pixels,unified", "tiny,pixels,unified"]
    + [f"{a}{t}" for a in ARCHS for t in ("", ",tiny")],
    "vision": ["", "tiny", "unified", "tiny,unified"],
    "hesc": ["", "full", "tiny", "text", "tiny,arc", "tiny,text", "vision", "full,vision", "tiny,vision",
             "vision,unified", "full,vision,unified", "tiny,vision,unified"],
}


def _all_combinations(name):
    names = KNOWN_VARIANTS[name]
    for r in range(len(names) + 1):
        for combo in itertools.combinations(names, r):
            yield ",".join(combo)


CASES = [(name, combo) for name in KNOWN_VARIANTS for combo in _all_combinations(name)]


@pytest.mark.parametrize("name", sorted(KNOWN_VARIANTS))
def test_known_variants_are_the_config_files_own(name):
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError, match="unknown config variant") as info:
        module.get_config("no_such_variant")
    known = re.search(r"known: \[(.*)\]", str(info.value)).group(1)
    assert sorted(re.findall(r"'(\w+)'", known)) == sorted(KNOWN_VARIANTS[name])


@pytest.mark.parametrize("name,variants", CASES, ids=[f"{n}:{v or 'default'}" for n, v in CASES])
def test_every_config_variant_builds_its_model_config(name, variants):
    """Each combination either is refused by the config file itself or builds a model config
    that keeps every key of the model section (nothing dropped, nothing altered)."""
    module = importlib.import_module(f"configs.{name}")
    try:
        config = module.get_config(variants)
    except ValueError as e:  # a combination the config file refuses (e.g. hesc 'arc' without 'tiny')
        assert variants not in DOCUMENTED[name], f"documented variant {name}:{variants} refused: {e}"
        return
    family = get_family(config.model.name)
    family.config_cls.check_fields(config.model)
    model_cfg = family.config_cls.from_any(config.model)
    assert type(model_cfg) is family.config_cls
    section = config.model.to_dict()
    for key, value in section.items():
        if key in family.config_cls.NON_MODEL_KEYS:
            continue
        assert getattr(model_cfg, key) == value, key


def test_documented_variants_are_enumerated():
    for name, combos in DOCUMENTED.items():
        enumerated = {",".join(sorted(c.split(","))) for n, c in CASES if n == name}
        for combo in combos:
            assert ",".join(sorted(combo.split(","))) in enumerated, (name, combo)


# ------------------------------------------------------------------ unknown fields
BASE = dict(seq_len=81, vocab_size=11)
HESC_BASE = dict(name="hesc", seq_len=81, vocab_size=11, capsule_grid=9, capsule_regions=3, capsule_subregions=3)


def test_unknown_field_names_it_and_the_closest_valid_name():
    with pytest.raises(ConfigError) as info:
        TRMConfig.from_any({**BASE, "hiden_size": 3})
    assert str(info.value) == "config.model: unknown field 'hiden_size' (did you mean 'hidden_size'?)"


def test_unknown_field_suggestion_ignores_case():
    with pytest.raises(ConfigError, match=r"unknown field 'h_cycles' \(did you mean 'H_cycles'\?\)"):
        TRMConfig.from_any({**BASE, "h_cycles": 2})


def test_every_unknown_field_is_listed_in_one_line():
    with pytest.raises(ConfigError) as info:
        TRMConfig.from_any({**BASE, "zzz_nothing_like_it": 1, "L_cycle": 2})
    message = str(info.value)
    assert "\n" not in message
    assert "unknown field 'zzz_nothing_like_it'" in message and "did you mean" not in message.split(";")[0]
    assert "unknown field 'L_cycle' (did you mean 'L_cycles'?)" in message


def test_unknown_field_in_a_config_dict_section():
    """What ``Trainer`` meets: the model section of a config file carrying a misspelt key."""
    config = importlib.import_module("configs.sudoku").get_config("tiny")
    with config.unlocked():
        config.model.rope_thetta = 1e4
    for build in (TRMConfig.check_fields, TRMConfig.from_any):
        with pytest.raises(ConfigError, match=r"unknown field 'rope_thetta' \(did you mean 'rope_theta'\?\)"):
            build(config.model)


def test_hesc_unknown_field_suggests_a_hesc_field():
    with pytest.raises(ConfigError, match=r"unknown field 'dqn_gama' \(did you mean 'dqn_gamma'\?\)"):
        HESCConfig.from_any({**HESC_BASE, "dqn_gama": 0.9})


def test_hesc_field_in_a_trm_config_points_to_the_hesc_family():
    with pytest.raises(ConfigError, match=r"unknown field 'enable_dqn' \(a HESC field.*name='hesc'"):
        TRMConfig.from_any({**BASE, "name": "trm", "enable_dqn": True})


def test_reference_loss_section_points_to_loss_type():
    with pytest.raises(ConfigError, match=r"unknown field 'loss' \(.*loss_type"):
        TRMConfig.from_any({**BASE, "loss": {"loss_type": "softmax_cross_entropy"}})


def test_trainer_keys_stay_valid():
    """``name`` (the family) is the one non-model key; the trainer's model options are fields."""
    cfg = TRMConfig.from_any({**BASE, "name": "trm", "loss_type": "softmax_cross_entropy", "remat": "none",
                              "attention_impl": "xla"})
    assert (cfg.loss_type, cfg.remat, cfg.attention_impl) == ("softmax_cross_entropy", "none", "xla")
    assert HESCConfig.from_any(HESC_BASE).capsule_grid == 9


def test_non_model_keys_are_explicit_sets():
    for cls in (TRMConfig, HESCConfig):
        assert cls.NON_MODEL_KEYS == frozenset({"name"})
        assert not cls.NON_MODEL_KEYS & {f.name for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------ refused values
@pytest.mark.parametrize("cls,base", [(TRMConfig, BASE), (HESCConfig, HESC_BASE)])
def test_h_layers_must_be_zero(cls, base):
    assert cls.from_any({**base, "H_layers": 0}).H_layers == 0
    with pytest.raises(ConfigError) as info:
        cls.from_any({**base, "H_layers": 2})
    message = str(info.value)
    assert "H_layers=2" in message and "no separate H module" in message and "HRM" in message
    with pytest.raises(ConfigError, match="H_layers=2"):  # the early check refuses it too
        cls.check_fields({**base, "H_layers": "2"})


def test_trm_keeps_its_act_options():
    cfg = TRMConfig.from_any({**BASE, "halt_exploration_prob": 0.3, "no_ACT_continue": False})
    assert cfg.halt_exploration_prob == 0.3 and cfg.no_ACT_continue is False


def test_hesc_accepts_the_trms_act_options_and_refuses_what_it_would_ignore():
    # HESC honours both ACT options (tests/test_hesc_model.py checks what they do).
    cfg = HESCConfig.from_any({**HESC_BASE, "halt_exploration_prob": 0.1, "no_ACT_continue": "false"})
    assert cfg.halt_exploration_prob == 0.1 and cfg.no_ACT_continue is False
    # Entropy regularisation of a 3-action policy would be ignored with two actions: refused by name.
    two = {**HESC_BASE, "q_head_num_actions": 2, "enable_capsule_expansion": False, "enable_dqn": False}
    with pytest.raises(ConfigError, match="enable_entropy_regularization"):
        HESCConfig.from_any(two)
    assert HESCConfig.from_any({**two, "enable_entropy_regularization": False}).q_head_num_actions == 2
    with pytest.raises(ConfigError, match="expansion_anneal_schedule='exponential' needs positive"):
        HESCConfig.from_any({**HESC_BASE, "expansion_anneal_schedule": "exponential"})  # starts at cost 0
    with pytest.raises(ConfigError, match="q_temperature_schedule='sigmoid' not in"):
        HESCConfig.from_any({**HESC_BASE, "q_temperature_schedule": "sigmoid"})


# ------------------------------------------------------------------ what the user meets
def test_train_and_evaluate_refuses_before_touching_workdir_or_data(tmp_path):
    from trm_jax.train import train_and_evaluate

    config = importlib.import_module("configs.sudoku").get_config("tiny")
    data_dir, workdir = tmp_path / "data", tmp_path / "run"
    with config.unlocked():
        config.model.hiden_size = 3
        config.data.data_dir = str(data_dir)
    with pytest.raises(ConfigError) as info:
        train_and_evaluate(config, str(workdir))
    assert str(info.value) == "config.model: unknown field 'hiden_size' (did you mean 'hidden_size'?)"
    assert not data_dir.exists() and not workdir.exists()


def _cli(tmp_path, config, *overrides):
    """``(exit status, non-empty stderr lines, workdir, data dir)`` of ``python -m trm_jax.main``."""
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    cmd = [sys.executable, "-m", "trm_jax.main", f"--config={config}", f"--workdir={workdir}",  # --config first
           f"--config.data.data_dir={data_dir}", "--config.wandb_mode=disabled", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines, workdir, data_dir


def test_cli_override_of_a_misspelt_field_is_one_line(tmp_path):
    # ml_collections' locked config refuses the new key while the flags are parsed.
    rc, lines, workdir, _ = _cli(tmp_path, "configs/sudoku.py:tiny", "--config.model.hiden_size=3")
    assert rc == 1
    assert lines == ["error: --config.model.hiden_size=3: config.model has no field 'hiden_size' "
                     "(did you mean 'hidden_size'?)"]
    assert not workdir.exists()


def test_cli_config_file_with_a_misspelt_field_and_a_refused_value(tmp_path):
    """A config file carrying a wrong key, and a refused value on the command line: one line each,
    before the dataset is built."""
    config_file = tmp_path / "my_config.py"
    config_file.write_text(textwrap.dedent("""
        from configs import sudoku

        def get_config(arg=""):
            config = sudoku.get_config(arg)
            config.model.hiden_size = 3
            return config
    """))
    rc, lines, workdir, data_dir = _cli(tmp_path, f"{config_file}:tiny")
    assert rc == 1
    assert lines == ["error: config.model: unknown field 'hiden_size' (did you mean 'hidden_size'?)"]
    assert not data_dir.exists() and not workdir.exists()

    rc, lines, workdir, data_dir = _cli(tmp_path, "configs/hesc.py:tiny", "--config.model.H_layers=1",
                                        "--config.model.q_temperature_schedule=sigmoid")
    assert rc == 1 and len(lines) == 1
    assert lines[0].startswith("error: config.model: H_layers=1: HESC (built on the TRM) has no separate H module")
    assert "q_temperature_schedule='sigmoid' not in" in lines[0]
    assert not data_dir.exists() and not workdir.exists()


def test_locked_config_dict_still_refuses_new_keys():
    """The CLI's first line of defence (ml_collections), which the one-line message above relies on."""
    config = ml_collections.ConfigDict({"model": {"hidden_size": 1}})
    config.lock()
    with pytest.raises(AttributeError, match="hidden_size"):
        config.model.hiden_size = 3


# ------------------------------------------------------------------ the dataclass is the one source of defaults
# What each config file's default variant sets differently from its family's dataclass (seq_len and
# vocab_size compared with common.REQUIRED_PLACEHOLDERS): a file that departs from a default without
# it being recorded here fails, so a config file and its dataclass cannot drift apart again.
FILE_OVERRIDES = {
    "sudoku": {},
    "maze": {"seq_len": 900, "vocab_size": 6, "L_cycles": 4},
    "arc": {"seq_len": 900, "vocab_size": 12, "L_cycles": 4},
    "hesc": {"seq_len": 900, "vocab_size": 12, "L_cycles": 2, "halt_max_steps": 8},
}


def _defaults(cls):
    from configs.common import REQUIRED_PLACEHOLDERS

    return {f.name: REQUIRED_PLACEHOLDERS[f.name] if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name,variants", CASES, ids=[f"{n}:{v or 'default'}" for n, v in CASES])
def test_model_section_has_exactly_the_dataclass_fields(name, variants):
    """Every field (so each can be set on the command line), ``name``, and nothing else."""
    try:
        section = importlib.import_module(f"configs.{name}").get_config(variants).model
    except ValueError:
        return  # a combination the file refuses (checked above)
    cls = get_family(section.name).config_cls
    assert set(section.keys()) == {"name"} | {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", sorted(FILE_OVERRIDES))
def test_fields_a_config_file_does_not_set_are_the_dataclass_defaults(name):
    section = importlib.import_module(f"configs.{name}").get_config("").model.to_dict()
    cls = get_family(section.pop("name")).config_cls
    defaults = _defaults(cls)
    differing = {k: v for k, v in section.items() if v != defaults[k] or type(v) is not type(defaults[k])}
    assert differing == FILE_OVERRIDES[name]
    assert type(cls.from_any(section)) is cls


def test_model_section_refuses_an_override_that_is_not_a_field():
    from configs import common, hesc

    with pytest.raises(ConfigError, match=r"unknown field 'hiden_size' \(did you mean 'hidden_size'\?\)"):
        common.trm_model(hiden_size=3)
    with pytest.raises(ConfigError, match=r"unknown field 'enable_dqn' \(a HESC field"):
        common.trm_model(enable_dqn=False)
    with pytest.raises(ConfigError, match=r"unknown field 'loss_confidnce_weight' \(did you mean "
                                          r"'loss_confidence_weight'\?\)"):
        hesc._hesc_model(loss_confidnce_weight=0.2)
    assert hesc._hesc_model(loss_confidence_weight=0.2).loss_confidence_weight == 0.2


def _parse_config_flags(*overrides):
    """The trainer's ``--config`` flag (``trm_jax/main.py``: a locked config file flag) on its own flag set."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'hesc.py')}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_cli_sets_any_hesc_field_and_it_reaches_the_model_config():
    config = _parse_config_flags("--config.model.loss_confidence_weight=0.2", "--config.model.memory_hit_threshold=0.7",
                                 "--config.model.dqn_epsilon_schedule=cosine")
    cfg = HESCConfig.from_any(config.model)
    assert (cfg.loss_confidence_weight, cfg.memory_hit_threshold, cfg.dqn_epsilon_schedule) == (0.2, 0.7, "cosine")
    assert HESCConfig.from_any(_parse_config_flags().model).loss_confidence_weight == 0.1  # the dataclass default


def test_cli_refuses_a_misspelt_hesc_field(tmp_path):
    with pytest.raises((AttributeError, KeyError), match="loss_confidnce_weight"):
        _parse_config_flags("--config.model.loss_confidnce_weight=0.2")
    # What the user meets: one line naming the field and the closest one, before anything is built.
    rc, lines, workdir, _ = _cli(tmp_path, "configs/hesc.py", "--config.model.loss_confidnce_weight=0.2")
    assert rc == 1
    assert lines == ["error: --config.model.loss_confidnce_weight=0.2: config.model has no field "
                     "'loss_confidnce_weight' (did you mean 'loss_confidence_weight'?)"]
    assert not workdir.exists()
