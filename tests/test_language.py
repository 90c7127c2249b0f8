"""Language models: causal masking, the next-token objective against a float64 oracle, the byte-level
BPE, packing by document without cross-split leakage, sampling and generation (docs/language_models.md)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_pipeline as dp
import trm_jax
import trm_jax.families
from configs import common
from data_pipeline import lm_sources, tokenizer as bpe
from trm_jax.lm import kv_cache
from trm_jax.lm.generation import LanguageModel, stream_text
from trm_jax.lm.objective import language_metrics, lm_metrics
from trm_jax.lm.sampling import Sampling, filtered_logits, next_token
from trm_jax.models.carry import ACTCarry
from trm_jax.models.config import ConfigError, TRMConfig

WORDS = ("river stone garden window lantern meadow harbor candle forest valley bridge mirror orchard "
         "thunder silver copper marble velvet").split()


def lm_config(arch: str = "trm", seq_len: int = 24, vocab_size: int = 300, **overrides):
    size = dict(hidden_size=32, num_heads=2, expansion=2.0, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=2,
                forward_dtype="float32")
    size.update(overrides)
    section = common.language_model({"transformer"} if arch == "transformer" else set(), seq_len, vocab_size,
                                    **size)
    from trm_jax.families import family_of

    return family_of(section).config_cls.from_any(section)


def _logits(cfg, variables, inputs):
    """Logits ``[B, L, V]`` after every ACT step of a fresh carry (a causal model runs them all)."""
    return _logits_fn(cfg)(variables, inputs)


@functools.lru_cache(maxsize=None)
def _logits_fn(cfg):
    model = trm_jax.build_model(cfg)

    def logits(variables, inputs):
        B = inputs.shape[0]
        batch = {"inputs": inputs, "labels": jnp.zeros_like(inputs), "puzzle_identifiers": jnp.zeros((B,), jnp.int32),
                 "label_bytes": jnp.zeros((B,), jnp.int32)}
        carry = model.initial_carry(batch)
        for _ in range(cfg.halt_max_steps):
            carry, out = model.apply(variables, carry, batch)
        return out["logits"]

    return jax.jit(logits)


# Both architectures; the baseline's case in the slow step (the fast suite's time is near its budget).
ARCHS = ["trm", pytest.param("transformer", marks=pytest.mark.slow)]


# ----------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("arch", ARCHS)
def test_a_future_token_cannot_change_an_earlier_positions_logits(arch):
    cfg = lm_config(arch)
    variables = trm_jax.init_variables(cfg, jax.random.PRNGKey(0))
    inputs = jax.random.randint(jax.random.PRNGKey(1), (2, cfg.seq_len), 2, cfg.vocab_size)
    t = 13
    changed = inputs.at[:, t].set((inputs[:, t] + 7) % cfg.vocab_size)
    a, b = _logits(cfg, variables, inputs), _logits(cfg, variables, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :t]), np.asarray(b[:, :t]))
    assert float(jnp.abs(a[:, t:] - b[:, t:]).max()) > 1e-4  # later positions do see it


def test_the_same_model_without_causal_sees_the_future():
    cfg = lm_config()
    open_cfg = TRMConfig(**{**cfg.__dict__, "causal": False})
    variables = trm_jax.init_variables(open_cfg, jax.random.PRNGKey(0))
    inputs = jax.random.randint(jax.random.PRNGKey(1), (1, cfg.seq_len), 2, cfg.vocab_size)
    changed = inputs.at[:, -1].set((inputs[:, -1] + 1) % cfg.vocab_size)
    assert float(jnp.abs(_logits(open_cfg, variables, inputs)[:, 0] - _logits(open_cfg, variables, changed)[:, 0]).max()) > 0


def test_a_causal_model_has_no_halting_head_and_the_baseline_has_equal_parameters():
    trm, base = lm_config("trm"), lm_config("transformer")
    p_trm = trm_jax.init_variables(trm, jax.random.PRNGKey(0))["params"]
    p_base = trm_jax.init_variables(base, jax.random.PRNGKey(0))["params"]
    assert "q_head" not in p_trm["inner"] and "q_head" not in p_base["inner"]
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))  # noqa: E731
    assert count(p_trm) == count(p_base)


@pytest.mark.parametrize("overrides, field", [
    (dict(mlp_t=True), "mlp_t"), (dict(puzzle_emb_ndim=32), "puzzle_emb_ndim"),
    (dict(halt_exploration_prob=0.1), "halt_exploration_prob"), (dict(loss_type="stablemax_cross_entropy"), "loss_type"),
    (dict(no_ACT_continue=False), "no_ACT_continue"),
])
def test_settings_a_causal_model_cannot_honour_are_refused_by_name(overrides, field):
    with pytest.raises(ConfigError, match=field):
        lm_config(**overrides)


def test_hesc_and_a_halting_baseline_refuse_causal():
    from trm_jax.hesc.config import HESCConfig
    from trm_jax.models.transformer import TransformerConfig

    with pytest.raises(ConfigError, match="HESC is not a language model"):
        HESCConfig.check_fields({"causal": True})
    with pytest.raises(ConfigError, match="act_enabled"):
        TransformerConfig.check_fields({"causal": True, "puzzle_emb_ndim": 0, "halt_exploration_prob": 0.0,
                                        "loss_type": "softmax_cross_entropy"})


# ------------------------------------------------------------------------------------- objective
def test_lm_objective_matches_a_float64_oracle():
    rng = np.random.default_rng(0)
    B, L, V = 3, 7, 11
    logits = rng.normal(size=(B, L, V)) * 2
    labels = rng.integers(0, V, size=(B, L))
    labels[1, 4:] = -100  # padding
    labels[2, :] = -100   # an all-padding row
    label_bytes = np.array([9, 5, 0])
    carry = ACTCarry(z={}, steps=jnp.array([2, 2, 2]), halted=jnp.array([True, True, True]),
                     current_data={"labels": jnp.asarray(labels), "label_bytes": jnp.asarray(label_bytes)})
    loss, m = lm_metrics(carry, {"logits": jnp.asarray(logits, jnp.float32)})
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != -100
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0] * valid
    np.testing.assert_allclose(float(loss) / B, nll.sum() / valid.sum(), rtol=1e-5)  # token mean after / batch
    np.testing.assert_allclose(float(m["token_nll"]), nll.sum(), rtol=1e-5)
    assert float(m["tokens"]) == valid.sum() and float(m["bytes"]) == 14 and float(m["count"]) == 2
    acc = ((logits.argmax(-1) == labels) & valid).sum(-1)[:2] / valid.sum(-1)[:2]
    np.testing.assert_allclose(float(m["accuracy"]), acc.sum(), rtol=1e-6)
    derived = language_metrics({"eval/token_nll": nll.sum() / 2, "eval/tokens": valid.sum() / 2,
                                "eval/bytes": 14 / 2}, "eval", token_mean_loss=True)
    np.testing.assert_allclose(derived["eval/perplexity"], np.exp(nll.sum() / valid.sum()), rtol=1e-9)
    np.testing.assert_allclose(derived["eval/bits_per_byte"], nll.sum() / np.log(2) / 14, rtol=1e-9)
    np.testing.assert_allclose(derived["eval/lm_loss"], nll.sum() / valid.sum(), rtol=1e-9)
    assert language_metrics({"eval/accuracy": 1.0}, "eval") == {}  # not a language model's metrics


# ------------------------------------------------------------------------------------- tokenizer
def _corpus(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(20, 60))) + "." for _ in range(n)]


@pytest.mark.parametrize("text", ["def f(x):\n\treturn x ** 2  # squared\n", "héllo wörld — ünïcödé ✓ 🙂 中文",
                                  "   leading and trailing spaces   \n\n\r\n", "\x00\x01 control \x7f bytes", ""])
def test_bpe_round_trips_any_text_and_its_bytes(text):
    tok = bpe.train_bpe(_corpus(), 300)
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    pieces = bpe.token_bytes(tok, 300)
    assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")
    assert bpe.token_byte_lengths(tok, 300)[ids].sum() == len(text.encode("utf-8"))


def test_bpe_layout_and_refusals():
    tok = bpe.train_bpe(_corpus(), 300)
    assert tok.token_to_id(bpe.PAD) == 0 and tok.token_to_id(bpe.SEPARATOR) == 1
    assert tok.get_vocab_size() <= 300
    assert bpe.token_byte_lengths(tok, 300)[[0, 1]].tolist() == [0, 0]
    with pytest.raises(ValueError, match="at least 258"):
        bpe.train_bpe(_corpus(), 100)


# --------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory):
    """A ``text`` dataset built from 40 documents, each naming itself with a unique marker."""
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, body in enumerate(_corpus(40, seed=1)):
        (corpus / f"doc{i:02d}.txt").write_text(f"marker{i:02d}x {body}")
    options = dict(source=str(corpus), vocab_size=300, seq_len=16, validation_fraction=0.25)
    data_dir = str(root / "data")
    meta = dp.ensure_built("text", data_dir, options)
    return corpus, data_dir, options, meta


def test_packing_splits_by_document_and_rows_are_next_token_windows(text_dataset):
    corpus, data_dir, options, meta = text_dataset
    builder = dp.make_builder("text", data_dir, options)
    tok = bpe.load(os.fspath(builder.data_path))
    byte_lengths = bpe.token_byte_lengths(tok, 300)
    texts = {}
    for split in ("train", "test"):
        src = dp.load("text", split, data_dir, **options)
        batch = src.gather(np.arange(len(src)))
        inputs, labels = batch["inputs"], batch["labels"]
        valid = labels != -100
        # Each row is a window of the stream: labels are the inputs shifted by one (padding: input 0,
        # label ignored), and consecutive rows overlap by one token.
        np.testing.assert_array_equal(np.where(valid[:, :-1], inputs[:, 1:], -100), labels[:, :-1])
        np.testing.assert_array_equal(inputs[1:, 0], labels[:-1, -1])
        assert valid[:-1].all() and not (inputs[-1][1:][~valid[-1][:-1]]).any()  # only the last row is padded
        np.testing.assert_array_equal(batch["label_bytes"], (byte_lengths[np.where(valid, labels, 0)] * valid).sum(-1))
        n_last = int(valid[-1].sum())
        stream = np.concatenate([inputs[:-1].ravel(), inputs[-1, :n_last], labels[-1, n_last - 1:n_last]])
        texts[split] = tok.decode(list(stream), skip_special_tokens=False)
    for i in range(40):
        want = lm_sources.split_of(f"file:doc{i:02d}.txt", 0.25, 0)
        in_train, in_test = f"marker{i:02d}x" in texts["train"], f"marker{i:02d}x" in texts["test"]
        assert (in_train, in_test) == (want == "train", want == "validation"), i
    assert texts["test"].count(bpe.SEPARATOR) == sum(lm_sources.split_of(f"file:doc{i:02d}.txt", 0.25, 0) == "validation"
                                                     for i in range(40)) + 1
    assert meta["train"].vocab_size == 300 and meta["train"].seq_len == 16


def test_the_tokenizer_is_trained_on_the_training_documents_only(text_dataset):
    corpus, data_dir, options, _ = text_dataset
    builder = dp.make_builder("text", data_dir, options)
    train_docs = [d.text for d in lm_sources.text_documents(str(corpus))
                  if lm_sources.split_of(d.doc_id, 0.25, 0) == "train"]
    assert bpe.load(os.fspath(builder.data_path)).to_str() == bpe.train_bpe(train_docs, 300).to_str()


def test_bad_language_options_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown options"):
        dp.make_builder("code", str(tmp_path), {"extension": "python"})
    with pytest.raises(ValueError, match="klingon"):
        dp.make_builder("code", str(tmp_path), {"extensions": "python,klingon"})
    with pytest.raises(ValueError, match="vocab_size"):
        dp.make_builder("text", str(tmp_path), {"vocab_size": 100})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(dp.DataError, match="bad.jsonl.*line 2"):
        dp.ensure_built("text", str(tmp_path / "d"), {"source": str(bad), "vocab_size": 300})


# -------------------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_and_respects_top_k_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    key = jax.random.PRNGKey(3)
    args = lambda s: Sampling(*s).as_arrays().values()  # noqa: E731
    draws = [int(next_token(logits, jax.random.fold_in(key, i), *args((1.0, 0, 1.0)))[0]) for i in range(200)]
    again = [int(next_token(logits, jax.random.fold_in(key, i), *args((1.0, 0, 1.0)))[0]) for i in range(200)]
    assert draws == again and set(draws) == {0, 1, 2, 3, 4} - (set() if len(set(draws)) == 5 else {4})
    assert {int(next_token(logits, jax.random.fold_in(key, i), *args((1.0, 2, 1.0)))[0]) for i in range(100)} == {0, 1}
    # top_p 0.75: the smallest set with probability >= 0.75 is {0, 1} (0.5 + 0.3)
    assert np.isfinite(np.asarray(filtered_logits(logits, jnp.int32(0), jnp.float32(0.75)))).tolist() == [
        [True, True, False, False, False]]
    assert int(next_token(logits, key, *args((0.0, 0, 1.0)))[0]) == 0  # greedy
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


@pytest.fixture(scope="module")
def random_lm():
    cfg = lm_config(seq_len=64)
    tok = bpe.train_bpe(_corpus(), 300)
    return LanguageModel(cfg, trm_jax.init_variables(cfg, jax.random.PRNGKey(0)), tok)


def test_generation_is_deterministic_under_a_seed_and_stops_at_the_separator(random_lm):
    prompt = random_lm.prompt("river stone")
    a = list(random_lm.stream(prompt, 12, Sampling(1.0, 0, 1.0), seed=5))
    b = list(random_lm.stream(prompt, 12, Sampling(1.0, 0, 1.0), seed=5))
    c = list(random_lm.stream(prompt, 12, Sampling(1.0, 0, 1.0), seed=6))
    assert a == b and len(a) == 12 and a != c
    first = list(random_lm.stream(prompt, 1, Sampling(0.0)))[0]
    assert list(random_lm.stream(prompt, 5, Sampling(0.0), stop_ids=(first,))) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_the_key_value_cache_gives_the_full_forwards_logits(arch):
    """Decoding with the cache (a prompt forward, then one token at a time) is exact: every position's
    logits equal those of one forward over the whole sequence."""
    cfg = lm_config(arch, seq_len=32)
    variables = trm_jax.init_variables(cfg, jax.random.PRNGKey(0))
    model_cls = trm_jax.families.get_family(arch).model_cls
    counts = kv_cache.count_applications(model_cls, cfg, variables)
    per_token = cfg.halt_max_steps * (cfg.H_cycles * (cfg.L_cycles + 1) if arch == "trm" else 1)
    layers = cfg.L_layers if arch == "trm" else cfg.H_layers
    assert sorted(counts.values()) == [per_token] * layers
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (1, 20), 2, cfg.vocab_size))
    full = np.asarray(_logits(cfg, variables, jnp.asarray(np.pad(tokens, ((0, 0), (0, 12))))))[0, :20]
    cache = kv_cache.init_cache(cfg, counts, 1)
    forward = jax.jit(lambda c, t, pos: kv_cache.decode_forward(model_cls, cfg, variables, kv_cache.at_position(c, pos), t))
    n = 11  # the prompt, padded to 16 positions as generation does
    padded = np.zeros((1, 16), np.int32)
    padded[0, :n] = tokens[0, :n]
    logits, cache = forward(cache, jnp.asarray(padded), 0)
    got = [np.asarray(logits[0, :n])]
    for t in range(n, 20):
        logits, cache = forward(cache, jnp.asarray(tokens[:, t:t + 1]), t)
        got.append(np.asarray(logits[0]))
    np.testing.assert_allclose(np.concatenate(got), full, atol=2e-5, rtol=1e-5)


def test_streamed_text_holds_back_a_split_character(random_lm):
    tok = random_lm.tokenizer
    ids = tok.encode("a🙂b", add_special_tokens=False).ids
    byte_ids = [i for c in "🙂".encode() for i in tok.encode(bytes([c]).decode("latin-1"), add_special_tokens=False).ids]
    pieces = list(stream_text(random_lm, iter(ids)))
    assert "".join(pieces) == "a🙂b" and all("\ufffd" not in p for p in pieces)
    del byte_ids


def test_code_dataset_reads_the_source_files_of_the_chosen_languages(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(8):
        (src / "pkg" / f"mod{i}.py").write_text(f"def pyfunc{i}(x):\n    return x + {i}\n")
        (src / f"app{i}.js").write_text(f"function jsfunc{i}(x) {{ return x * {i}; }}\n")
    options = dict(source=str(src), extensions="javascript", vocab_size=300, seq_len=16, validation_fraction=0.25)
    dp.ensure_built("code", str(tmp_path / "data"), options)
    tok = bpe.load(os.fspath(dp.make_builder("code", str(tmp_path / "data"), options).data_path))
    text = ""
    for split in ("train", "test"):
        source = dp.load("code", split, str(tmp_path / "data"), **options)
        text += tok.decode(list(source.gather(np.arange(len(source)))["inputs"].ravel()))
    assert all(f"jsfunc{i}" in text for i in range(8)) and "pyfunc" not in text


def test_generation_refuses_a_model_that_is_not_causal(random_lm):
    from trm_jax.lm.generation import GenerationError

    cfg = TRMConfig(seq_len=8, vocab_size=300, puzzle_emb_ndim=0)
    with pytest.raises(GenerationError, match="not a language model"):
        LanguageModel(cfg, {}, random_lm.tokenizer)
