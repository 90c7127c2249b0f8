"""The JAX all-MiniLM-L6-v2 encoder against the reference sentence-transformers model."""
import os

import numpy as np
import pytest

from data_pipeline import text_encoder

SENTENCES = [
    "The cat sat on the mat.",
    "A kitten is sitting on a rug.",
    "Stock markets fell sharply after the interest rate announcement.",
    "Return a new list containing all items from the iterable in ascending order.",
    "Café déjà vu: naïve façades, ¿qué? 東京 — emoji-free unicode.",
    "x",
    # > 256 word pieces: the reference truncates at max_seq_length = 256.
    "Sequences of the same type also support comparisons, element by element. " * 30,
]


@pytest.fixture(scope="module")
def encoder():
    return text_encoder.default_encoder()


@pytest.fixture(scope="module")
def ours(encoder):
    return encoder.encode(SENTENCES)


def test_parity_with_sentence_transformers(ours):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(text_encoder.model_dir()), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    assert ours.shape == expected.shape == (len(SENTENCES), text_encoder.EMBED_DIM)
    cosine = (ours * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_unit_norm_and_similarity(ours):
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    sim = ours @ ours.T
    # cat/mat vs kitten/rug is a paraphrase; the stock-market sentence is unrelated to both.
    assert sim[0, 1] > 0.5
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[1, 0] > sim[1, 2] + 0.3


def test_result_independent_of_batch_and_order(encoder, ours):
    """Bucketing and batching must not mix rows: one text alone or in another order gives the
    same vector, in the caller's order."""
    order = [6, 3, 0, 5]
    np.testing.assert_allclose(encoder.encode([SENTENCES[i] for i in order]), ours[order], atol=1e-6)
    np.testing.assert_allclose(encoder.encode([SENTENCES[2]])[0], ours[2], atol=1e-6)
    assert encoder.encode([]).shape == (0, text_encoder.EMBED_DIM)


def test_tokenizer_truncates_like_the_reference(encoder):
    ids = encoder.tokenize(["hello world", SENTENCES[-1]])
    assert ids[0][0] == 101 and ids[0][-1] == 102 and len(ids[0]) == 4  # [CLS] hello world [SEP]
    assert len(ids[1]) == encoder.max_seq_length == 256 and ids[1][-1] == 102


def test_missing_model_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv(text_encoder.MODEL_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        text_encoder.model_dir()
