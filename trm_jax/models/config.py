"""Typed, validated model configuration with the reference architecture's field names.

A user's Hydra ``arch/trm.yaml`` maps field by field onto :class:`TRMConfig` (its
``loss: {loss_type: ...}`` is the field ``loss_type``); the ``model`` section of an
``ml_collections`` config is converted with :func:`TRMConfig.from_any`, which refuses
unknown keys and values the model would ignore (docs/architecture.md#model-config).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar, Dict, FrozenSet, List, Mapping, Tuple, Union

import jax.numpy as jnp

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
_POS_ENCODINGS = ("rope", "learned", "none")
_LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")


class ConfigError(ValueError):
    """A model configuration that cannot describe a valid TRM."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The fields every architecture of the family shares: embeddings, blocks, ACT halting, dtype.

    The reference's architectures (TRM, HRM, single-z and 6-level TRM, transformer baseline) each
    add their own recursion fields in a subclass (docs/architecture.md#variants).
    """

    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int = 1
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    puzzle_emb_ndim: int = 512
    pos_encodings: str = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "bfloat16"
    loss_type: str = "stablemax_cross_entropy"
    remat: str = "dots"  # "none", "dots", "dots_no_batch" or "full": activations kept per block for backward
    attention_impl: str = "auto"  # "auto", "xla" or "cudnn" (layers.resolve_attention_impl)
    # A language model: causal self-attention, logits predict the next token at every position
    # (docs/language_models.md). No puzzle prefix, no halting head: every row runs exactly
    # halt_max_steps deep-supervision steps.
    causal: bool = False
    # The pixel path (docs/vision.md): each example's ``image`` [H, W, 3] uint8 is cut into
    # patch_size x patch_size patches, encoded (patch embedding + learned 2-D positions, no RoPE,
    # then TRM blocks) and pooled into ``vision_capsules`` positions between the puzzle prefix and
    # the tokens. image_height = image_width = 0: no image. With an image, a row whose ``causal``
    # batch entry is 1 predicts its tokens left to right (a prefix-LM mask: the prefix and capsules
    # are visible to every token, a token sees no later token).
    image_height: int = 0
    image_width: int = 0
    patch_size: int = 16
    vision_capsules: int = 12
    vision_layers: int = 2  # blocks of the encoder's own TRM module (unused with vision_shared)
    vision_pooling: str = "queries"  # "queries" (learned queries attend to the patches) or "regions"
    # trm_unified: no encoder blocks of its own; the reasoning module's recursion (H_cycles cycles)
    # runs over the patch tokens first, with the same weights that then reason over the sequence.
    vision_shared: bool = False
    # With an image: rows whose batch entry ``causal`` is 1 read their tokens left to right
    # (models/vision.py:prefix_lm_bias); evaluation then also generates them greedily
    # (eval/char_accuracy, eval/line_accuracy). False: every output is predicted at once (ARC).
    prefix_lm: bool = False

    # Keys the trainer keeps in the model section that are not hyper-parameters of the model:
    # ``name`` picks the family (trm_jax/families.py). Anything else that is not a field is refused.
    NON_MODEL_KEYS: ClassVar[FrozenSet[str]] = frozenset({"name"})
    # The family name used in error messages.
    FAMILY: ClassVar[str] = "model"
    # Fields that must be >= 1.
    POSITIVE_FIELDS: ClassVar[Tuple[str, ...]] = ("seq_len", "vocab_size", "hidden_size", "num_heads",
                                                  "halt_max_steps", "num_puzzle_identifiers")
    # The latent states the ACT carry holds, by the reference's inner-carry names; each is reset to a
    # fixed random buffer named after it (``z_H`` -> ``H_init``, ``z_L1`` -> ``L1_init``).
    LATENTS: ClassVar[Tuple[str, ...]] = ("z_H",)
    # The latent the output heads read.
    OUTPUT_LATENT: ClassVar[str] = "z_H"

    def __post_init__(self) -> None:
        errors = type(self).refused_values(self.__dict__) + self.value_errors()
        if errors:
            raise ConfigError("invalid model config: " + "; ".join(errors))

    def value_errors(self) -> List[str]:
        """Messages for invalid values (a subclass extends this with its own fields)."""
        errors = [f"{name}={getattr(self, name)} must be >= 1" for name in type(self).POSITIVE_FIELDS
                  if int(getattr(self, name)) < 1]
        head_dim = self.hidden_size // max(self.num_heads, 1)
        if head_dim < 1:
            errors.append(f"hidden_size={self.hidden_size} is smaller than num_heads={self.num_heads}")
        elif self.pos_encodings == "rope" and head_dim % 2:
            errors.append(f"rope needs an even head dim: hidden_size={self.hidden_size} // num_heads={self.num_heads} "
                          f"= {head_dim}")
        if self.pos_encodings not in _POS_ENCODINGS:
            errors.append(f"pos_encodings={self.pos_encodings!r} not in {_POS_ENCODINGS}")
        if self.forward_dtype not in _DTYPES:
            errors.append(f"forward_dtype={self.forward_dtype!r} not in {tuple(_DTYPES)}")
        if self.loss_type not in _LOSS_TYPES:
            errors.append(f"loss_type={self.loss_type!r} not in {_LOSS_TYPES}")
        if self.remat not in ("none", "dots", "dots_no_batch", "full"):
            errors.append(f"remat={self.remat!r} not in ('none', 'dots', 'dots_no_batch', 'full')")
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            errors.append(f"attention_impl={self.attention_impl!r} not in ('auto', 'xla', 'cudnn')")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len_setting < 0:
            errors.append("puzzle_emb_ndim and puzzle_emb_len must be >= 0")
        elif self.puzzle_emb_ndim > self.puzzle_len * self.hidden_size:
            errors.append(f"puzzle_emb_ndim={self.puzzle_emb_ndim} exceeds puzzle_emb_len*hidden_size="
                          f"{self.puzzle_len * self.hidden_size}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            errors.append(f"halt_exploration_prob={self.halt_exploration_prob} not in [0, 1]")
        return errors + self.vision_errors()

    def vision_errors(self) -> List[str]:
        """Messages for an image input the encoder cannot cut into patches or pool."""
        if (self.image_height > 0) != (self.image_width > 0):
            return [f"image_height={self.image_height} and image_width={self.image_width}: set both (an image) "
                    "or neither"]
        if not self.has_image:
            return ["prefix_lm=True reads the tokens after an image: set image_height and image_width"] \
                if self.prefix_lm else []
        errors = []
        if self.patch_size < 1 or self.image_height % self.patch_size or self.image_width % self.patch_size:
            errors.append(f"patch_size={self.patch_size} must divide image_height={self.image_height} and "
                          f"image_width={self.image_width}")
        elif self.vision_capsules < 1 or (self.vision_pooling == "regions"
                                          and self.vision_capsules > self.num_patches):
            errors.append(f"vision_capsules={self.vision_capsules} must be >= 1 (and at most the "
                          f"{self.num_patches} patches with regions pooling)")
        if self.vision_pooling not in ("queries", "regions"):
            errors.append(f"vision_pooling={self.vision_pooling!r} not in ('queries', 'regions')")
        if self.vision_layers < 1 and not self.vision_shared:
            errors.append(f"vision_layers={self.vision_layers} must be >= 1 (or vision_shared=True)")
        if self.causal:
            errors.append("causal=True with an image: rows are generated left to right by their 'causal' batch "
                          "entry (a prefix-LM mask over the image capsules), not by the model-wide causal switch")
        if self.prefix_lm and getattr(self, "mlp_t", False):
            errors.append("prefix_lm=True needs attention blocks (mlp_t mixes every position into every other)")
        if self.vision_shared and getattr(self, "mlp_t", False):
            errors.append("vision_shared=True needs attention blocks (mlp_t mixes a fixed sequence length; the "
                          "patches are another)")
        return errors

    @property
    def has_image(self) -> bool:
        """Whether every example carries an image (the pixel path)."""
        return self.image_height > 0 and self.image_width > 0

    @property
    def patch_grid(self) -> Tuple[int, int]:
        """``(rows, columns)`` of patches."""
        return self.image_height // self.patch_size, self.image_width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def vision_len(self) -> int:
        """Positions the image takes in the hidden sequence (its capsules), after the puzzle prefix."""
        return self.vision_capsules if self.has_image else 0

    @property
    def puzzle_emb_len_setting(self) -> int:
        """The configured prefix length (0: from ``puzzle_emb_ndim``); architectures without the field take 0."""
        return int(getattr(self, "puzzle_emb_len", 0))

    @property
    def puzzle_len(self) -> int:
        """P, the number of puzzle-embedding prefix positions.

        As in the reference, ``puzzle_emb_len`` when non-zero, else
        ``ceil(puzzle_emb_ndim / hidden_size)``. Without puzzle embeddings
        (``puzzle_emb_ndim == 0``) there is no prefix: the reference would fail
        on a non-zero ``puzzle_emb_len`` there, we take P = 0.
        """
        if self.puzzle_emb_ndim == 0:
            return 0
        if self.puzzle_emb_len_setting:
            return self.puzzle_emb_len_setting
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def total_len(self) -> int:
        """Length of the hidden sequence, ``P + vision capsules + seq_len``."""
        return self.puzzle_len + self.vision_len + self.seq_len

    @property
    def has_token_positions(self) -> bool:
        """Whether the input tokens are embedded as positions of the hidden sequence (always, for the TRM)."""
        return True

    @property
    def label_offset(self) -> int:
        """Index of the first predicted position (after the puzzle prefix and any image capsules)."""
        return self.puzzle_len + self.vision_len

    @property
    def dtype(self) -> Any:
        return _DTYPES[self.forward_dtype]

    @classmethod
    def refused_values(cls, values: Mapping[str, Any]) -> List[str]:
        """Messages for fields this family accepts by name but not with these values.

        ``values`` maps field names to values (missing fields take their defaults). The
        reference's field names are kept so its configs map over, but a value this model
        does not implement must not be accepted and silently ignored.
        """
        return cls.causal_refusals(values) if truthy(cls._value(values, "causal")) else []

    @classmethod
    def _value(cls, values: Mapping[str, Any], name: str) -> Any:
        """``values[name]``, else the field's default."""
        if name in values:
            return values[name]
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]

    # Fields a causal language model needs at one value: (field, required value, why).
    CAUSAL_REQUIREMENTS: ClassVar[Tuple[Tuple[str, Any, str], ...]] = (
        ("puzzle_emb_ndim", 0, "a language model has no puzzle identifiers (no puzzle-embedding prefix)"),
        ("halt_exploration_prob", 0.0, "a causal model runs exactly halt_max_steps deep-supervision steps: "
                                       "there is no halting to explore"),
        ("loss_type", "softmax_cross_entropy", "perplexity, bits per byte and sampling read softmax probabilities"),
    )

    @classmethod
    def causal_refusals(cls, values: Mapping[str, Any]) -> List[str]:
        """Messages for fields a causal language model (``causal=True``) cannot honour."""
        errors = []
        for name, required, why in cls.CAUSAL_REQUIREMENTS:
            value = cls._value(values, name)
            if isinstance(required, bool):
                same = truthy(value) == required
            elif isinstance(required, float):
                same = float(value) == required
            else:
                same = value == required
            if not same:
                errors.append(f"causal=True needs {name}={required!r} (got {value!r}): {why}")
        return errors

    @classmethod
    def check_fields(cls, cfg: Union[Mapping[str, Any], Any]) -> None:
        """Refuse unknown keys and refused values of a model section before anything is built.

        Checks only what does not depend on the dataset (``seq_len`` and ``vocab_size`` are set
        from it at run time), so a misspelt field fails before a dataset is built.

        Raises:
          ConfigError: one line naming each unknown field (with the closest valid name) or
            refused value.
        """
        values = cls._as_mapping(cfg)
        errors = cls._unknown_key_errors(values)
        known = {f.name: f for f in dataclasses.fields(cls)}
        errors += cls.refused_values({k: _coerce(k, v, known[k].type) for k, v in values.items() if k in known})
        if errors:
            raise ConfigError("config.model: " + "; ".join(errors))

    @classmethod
    def _as_mapping(cls, cfg: Any) -> Mapping[str, Any]:
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"expected a mapping or ConfigDict for the model config, got {type(cfg).__name__}")
        return cfg

    @classmethod
    def _unknown_key_errors(cls, cfg: Mapping[str, Any]) -> List[str]:
        """One message per key that is neither a field nor one of ``NON_MODEL_KEYS``."""
        valid = [f.name for f in dataclasses.fields(cls)] + sorted(cls.NON_MODEL_KEYS)
        errors = []
        for key in cfg:
            if key in valid:
                continue
            errors.append(f"unknown field {key!r}{cls._unknown_key_hint(str(key), valid)}")
        return errors

    @classmethod
    def _unknown_key_hint(cls, key: str, valid: List[str]) -> str:
        """`` (did you mean 'x'?)`` or where the key's meaning lives, else ``""``."""
        if key in _REFERENCE_ONLY_KEYS:
            return f" ({_REFERENCE_ONLY_KEYS[key]})"
        if cls.FAMILY == "TRM":
            from trm_jax.hesc.config import HESCConfig  # imported here: hesc.config imports this module

            if key in {f.name for f in dataclasses.fields(HESCConfig)}:
                return " (a HESC field: the TRM has no such option; HESC models take name='hesc', configs/hesc.py)"
        # Compared case-folded, so 'h_cycles' finds 'H_cycles'.
        folded: Dict[str, str] = {v.lower(): v for v in valid}
        close = difflib.get_close_matches(key.lower(), list(folded), n=1)
        if close:
            return f" (did you mean {folded[close[0]]!r}?)"
        return ""

    @classmethod
    def from_any(cls, cfg: Union["ModelConfig", Mapping[str, Any], Any]) -> Any:
        """Build from a TRMConfig, a dict or an ``ml_collections.ConfigDict``.

        Every key must be a field of this class or one of ``NON_MODEL_KEYS`` (the family's
        ``name``): a misspelt or meaningless key is an error naming it and the closest valid
        name, never silently dropped. Types are coerced so command-line overrides such as
        ``--config.model.expansion=4`` work.

        Raises:
          ConfigError: unknown keys, missing ``seq_len``/``vocab_size``, or invalid values.
        """
        if isinstance(cls, type) and isinstance(cfg, cls):
            return cfg
        cfg = cls._as_mapping(cfg)
        unknown = cls._unknown_key_errors(cfg)
        if unknown:
            raise ConfigError("config.model: " + "; ".join(unknown))
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name in cfg:
                value = cfg[field.name]
                kwargs[field.name] = _coerce(field.name, value, field.type)
        missing = [n for n in ("seq_len", "vocab_size") if n not in kwargs]
        if missing:
            raise ConfigError(f"model config is missing required fields: {missing}")
        return cls(**kwargs)



@dataclasses.dataclass(frozen=True)
class TRMConfig(ModelConfig):
    """Hyper-parameters of the TRM (reference ``TinyRecursiveReasoningModel_ACTV1Config``)."""

    H_cycles: int = 3
    L_cycles: int = 6
    H_layers: int = 0  # must be 0: kept so the reference's arch yaml (which carries it for the HRM) maps over
    L_layers: int = 2
    puzzle_emb_len: int = 16
    mlp_t: bool = False
    no_ACT_continue: bool = True

    FAMILY: ClassVar[str] = "TRM"
    POSITIVE_FIELDS: ClassVar[Tuple[str, ...]] = ModelConfig.POSITIVE_FIELDS + ("H_cycles", "L_cycles", "L_layers")
    CAUSAL_REQUIREMENTS: ClassVar[Tuple[Tuple[str, Any, str], ...]] = ModelConfig.CAUSAL_REQUIREMENTS + (
        ("mlp_t", False, "mlp_t mixes every position into every other (a SwiGLU over the sequence), so a "
                         "future token would change an earlier position's prediction"),
        ("no_ACT_continue", True, "a causal model has no halting head to bootstrap"),
    )
    LATENTS: ClassVar[Tuple[str, ...]] = ("z_H", "z_L")

    @classmethod
    def refused_values(cls, values: Mapping[str, Any]) -> List[str]:
        errors = super().refused_values(values)
        h_layers = values.get("H_layers", 0)
        if h_layers != 0:
            model = "the TRM" if cls.FAMILY == "TRM" else f"{cls.FAMILY} (built on the TRM)"
            errors.append(f"H_layers={h_layers}: {model} has no separate H module (one network of "
                          "L_layers blocks updates both z_L and z_H; the HRM, name='hrm', is the model with an "
                          "H module), so H_layers must be 0; set the depth with L_layers")
        return errors


def truthy(value: Any) -> bool:
    """A bool field's value as the command line may give it ("True", "false", 1)."""
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


# Keys of the reference's Hydra arch yaml that have no field of that name here.
_REFERENCE_ONLY_KEYS = {
    "loss": "the reference's loss: {loss_type: ...} is the field loss_type here",
}


def _coerce(name: str, value: Any, type_name: str) -> Any:
    try:
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "bool":
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if type_name == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model config field {name}={value!r} is not a valid {type_name}") from None
    return value
