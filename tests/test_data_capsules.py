"""The capsule dataset: text sources, windows, k-means, sharded resumable build, loader batches."""
import json
import os

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import capsule_shards, capsules, text_encoder, text_sources
from data_pipeline.capsule_kmeans import fit_kmeans, nearest_centroid
from data_pipeline.capsule_windows import WindowSpec, child_spans, document_windows
from data_pipeline.text_sources import Document, split_sentences

D = text_encoder.EMBED_DIM
# 4 train + 2 test documents, at most 2 windows of 4 capsules each: 3 shards of 2 documents.
TINY = {"source": "stdlib", "num_docs": 4, "num_test_docs": 2, "k": 4, "m": 2, "R": 8,
        "num_concepts": 4, "max_windows_per_doc": 2, "min_capsules": 2, "docs_per_shard": 2}
NUM_SHARDS = 3
FIELDS = ("inputs", "labels", "puzzle_identifier", "group_id", "puzzle_index", "sketches",
          "children", "checksums", "concept_ids", "doc_id", "window_index", "num_capsules")


# -- text ------------------------------------------------------------------------------------------
def test_sentence_splitting_and_prose_filter():
    text = """Title line
==========

The parser reads a file, e.g. a config file. It returns a dict! Does it fail? Yes.
Dr. Smith wrote it in 1999.

   x = compute(a, b)
   return x

>>> parse("a")
{'a': 1}

Example:

    for line in lines: handle(line)

* A list item that is prose
  spanning two lines.
"""
    assert split_sentences(text, min_words=2) == [
        "The parser reads a file, e.g. a config file.", "It returns a dict!", "Does it fail?",
        "Dr. Smith wrote it in 1999.", "A list item that is prose spanning two lines."]
    assert "Does it fail?" not in split_sentences(text, min_words=4)  # 3 words
    assert split_sentences("") == [] and split_sentences("a = b(c) + d[e]  # no prose") == []


def test_document_ids_are_deterministic_and_seeded():
    pydoc = text_sources.document_ids("pydoc")
    assert pydoc == sorted(pydoc) and "pydoc:assert" in pydoc
    stdlib = text_sources.document_ids("stdlib")
    assert "stdlib:json/decoder.py" in stdlib and not any("/test/" in i or "encodings/" in i for i in stdlib)
    both = text_sources.document_ids("both", order_seed=3)
    assert sorted(both) == sorted(pydoc + stdlib) and both == text_sources.document_ids("both", order_seed=3)
    assert both != text_sources.document_ids("both", order_seed=4)
    doc = text_sources.read_document("stdlib:json/decoder.py")
    assert any(s.startswith("Simple JSON") or "JSON" in s for s in doc.sentences())
    assert len(text_sources.read_document("pydoc:assert").sentences()) >= 3


def test_windows_and_children():
    assert child_spans("a b c d e f g", 3) == ("a b", "c d", "e f g")
    assert child_spans("one two", 4) == ("one", "one", "two", "two")  # short: repeat in order
    sentences = " ".join(f"Sentence number {i} says something." for i in range(11))
    spec = WindowSpec(k=4, m=2, min_capsules=3)
    windows = document_windows(Document("file:x.txt", sentences), spec)
    # 11 capsules -> windows of 4, 4, and the last 3 (>= min_capsules) kept.
    assert [len(w.capsules) for w in windows] == [4, 4, 3] and [w.index for w in windows] == [0, 1, 2]
    assert windows[2].capsules[-1] == "Sentence number 10 says something."
    assert all(len(kids) == 2 for w in windows for kids in w.children)
    assert len(document_windows(Document("file:x.txt", sentences), WindowSpec(k=4, min_capsules=4))) == 2
    assert len(document_windows(Document("file:x.txt", sentences),
                                WindowSpec(k=4, min_capsules=1, max_windows=1))) == 1
    with pytest.raises(ValueError, match="min_capsules"):
        WindowSpec(k=4, min_capsules=5)


def test_kmeans_recovers_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16)) * 3
    truth = rng.integers(0, 6, 600)
    x = (centers[truth] + 0.1 * rng.normal(size=(600, 16))).astype(np.float32)
    centroids = fit_kmeans(x, 6, seed=1)
    ids = nearest_centroid(x, centroids)
    # Each found cluster is exactly one true cluster.
    assert all(len(set(truth[ids == c])) == 1 for c in range(6)) and len(set(ids)) == 6
    np.testing.assert_array_equal(centroids, fit_kmeans(x, 6, seed=1))
    with pytest.raises(ValueError, match="distinct"):
        fit_kmeans(np.ones((10, 4), np.float32), 2, seed=0)


# -- the built dataset ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("capsule_data"))
    meta = dp.ensure_built("capsules", data_dir, TINY)
    return data_dir, meta


def _columns(data_dir, split):
    source = dp.load("capsules", split, data_dir, **TINY)
    return source, {f: np.asarray(source.columns[f]) for f in FIELDS}


def test_metadata_and_shapes(built):
    data_dir, meta = built
    k, m, R = TINY["k"], TINY["m"], TINY["R"]
    for split in ("train", "test"):
        assert meta[split].seq_len == k and meta[split].vocab_size == TINY["num_concepts"] + 4
        source, c = _columns(data_dir, split)
        n = len(source)
        assert n == meta[split].num_examples > 0
        assert c["sketches"].shape == (n, k, D) and c["sketches"].dtype == np.float32
        assert c["children"].shape == (n, k, m, D) and c["children"].dtype == np.float32
        assert c["checksums"].shape == (n, k, R) and c["checksums"].dtype == np.float32
        assert c["concept_ids"].shape == (n, k) and c["inputs"].shape == (n, k)
        item = source[0]
        assert item["sketches"].shape == (k, D) and item["children"].shape == (k, m, D)
        real = c["concept_ids"] >= 0
        np.testing.assert_array_equal(real.sum(axis=1), c["num_capsules"])
        np.testing.assert_array_equal(c["labels"], np.where(real, c["concept_ids"] + 4, 0))
        np.testing.assert_array_equal(c["inputs"], c["labels"])
        assert c["concept_ids"].max() < TINY["num_concepts"] and (c["puzzle_identifier"] == 0).all()
        norms = np.linalg.norm(c["sketches"], axis=-1)
        np.testing.assert_allclose(norms[real], 1.0, atol=1e-5)
        assert (norms[~real] == 0).all() and (c["children"][~real] == 0).all()
        # One group per document; windows of a document are its puzzles, in order.
        assert len(np.unique(c["group_id"])) == len(set(c["doc_id"])) == meta[split].total_groups
        for g in np.unique(c["group_id"]):
            assert len(set(c["doc_id"][c["group_id"] == g])) == 1
            np.testing.assert_array_equal(c["window_index"][c["group_id"] == g],
                                          np.arange((c["group_id"] == g).sum()))
    assert (_columns(data_dir, "test")[1]["num_capsules"] >= TINY["min_capsules"]).all()


def test_concepts_are_nearest_train_centroids(built):
    data_dir, _ = built
    book = capsules.load_codebook(data_dir, TINY)
    assert book.centroids.shape == (TINY["num_concepts"], D)
    train_ids = []
    for split in ("train", "test"):
        _, c = _columns(data_dir, split)
        real = c["concept_ids"] >= 0
        x = c["sketches"][real].astype(np.float64)
        dist = ((x[:, None, :] - book.centroids[None].astype(np.float64)) ** 2).sum(-1)
        chosen = dist[np.arange(len(x)), c["concept_ids"][real]]
        np.testing.assert_allclose(chosen, dist.min(axis=1), rtol=0, atol=1e-9)
        if split == "train":
            train_ids = c["concept_ids"][real]
    # k-means on the train sketches: every code is used by the training data.
    assert set(train_ids.tolist()) == set(range(TINY["num_concepts"]))


def test_checksums_are_the_saved_projection_of_the_children(built):
    data_dir, _ = built
    book = capsules.load_codebook(data_dir, TINY)
    m, R = TINY["m"], TINY["R"]
    assert book.projection.shape == (m * D, R)
    np.testing.assert_array_equal(book.projection, capsules.checksum_projection(m, R, seed=0))
    _, c = _columns(data_dir, "train")
    n, k = c["concept_ids"].shape
    expected = c["children"].reshape(n, k, m * D).astype(np.float64) @ book.projection.astype(np.float64)
    np.testing.assert_allclose(c["checksums"], expected, atol=1e-5)
    path = os.fspath(dp.make_builder("capsules", data_dir, TINY).data_path)
    with open(os.path.join(path, "metadata.json")) as f:
        stored = json.load(f)["capsules"]
    assert stored["projection_file"] == capsules.PROJECTION_FILE
    assert stored["encoder"] == text_encoder.MODEL_NAME


def test_sketches_and_children_embed_the_document_text(built):
    """Re-derive one stored window from its document and the encoder."""
    data_dir, _ = built
    _, c = _columns(data_dir, "test")
    doc_id, index = str(c["doc_id"][-1]), int(c["window_index"][-1])
    spec = capsules.Capsules.window_spec(dp.get_builder_cls("capsules").make_options(TINY))
    window = document_windows(text_sources.read_document(doc_id), spec)[index]
    n = len(window.capsules)
    enc = text_encoder.default_encoder()
    np.testing.assert_allclose(c["sketches"][-1, :n], enc.encode(list(window.capsules)), atol=1e-5)
    kids = enc.encode([t for ks in window.children for t in ks]).reshape(n, TINY["m"], D)
    np.testing.assert_allclose(c["children"][-1, :n], kids, atol=1e-5)


def test_train_and_test_documents_are_disjoint(built):
    data_dir, _ = built
    train = set(_columns(data_dir, "train")[1]["doc_id"])
    test = set(_columns(data_dir, "test")[1]["doc_id"])
    assert len(train) == TINY["num_docs"] and len(test) == TINY["num_test_docs"]
    assert not train & test


def test_interrupted_build_resumes_shard_by_shard(built, tmp_path, monkeypatch):
    data_dir, _ = built
    other = str(tmp_path / "data")
    calls = []
    original = capsule_shards.encode_windows

    def failing(*args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 2:
            raise RuntimeError("injected failure after shard 1")
        return original(*args, **kwargs)

    monkeypatch.setattr(capsule_shards, "encode_windows", failing)
    with pytest.raises(RuntimeError, match="injected"):
        dp.ensure_built("capsules", other, TINY)
    builder = dp.make_builder("capsules", other, TINY)
    assert not builder.is_built()
    assert sorted(os.listdir(builder.work_dir)) == ["train-00000.npz"]

    calls.clear()
    monkeypatch.setattr(capsule_shards, "encode_windows",
                        lambda *a, **kw: calls.append(len(a[0])) or original(*a, **kw))
    dp.ensure_built("capsules", other, TINY)
    assert len(calls) == NUM_SHARDS - 1  # only the shards that were missing
    assert not os.path.exists(builder.work_dir)  # shards are dropped once the dataset exists
    # Same data as the uninterrupted build (which also shows two builds agree exactly).
    for split in ("train", "test"):
        a, b = _columns(data_dir, split)[1], _columns(other, split)[1]
        for field in FIELDS:
            np.testing.assert_array_equal(a[field], b[field], err_msg=f"{split} {field}")
    np.testing.assert_array_equal(capsules.load_codebook(data_dir, TINY).centroids,
                                  capsules.load_codebook(other, TINY).centroids)


def test_stale_shard_is_encoded_again(tmp_path):
    store = capsule_shards.ShardStore(str(tmp_path), k=2, m=1, dim=3)
    doc = Document("file:a.txt", "First sentence is here. Second sentence is here.")
    windows = document_windows(doc, WindowSpec(k=2, m=1, min_capsules=1))
    fake = lambda texts: np.arange(len(texts) * 3, dtype=np.float32).reshape(-1, 3)
    sketches, children = store.get("train", 0, windows, fake)
    assert sketches.shape == (1, 2, 3) and children.shape == (1, 2, 1, 3) and store.encoded_shards == 1
    store.get("train", 0, windows, fake)
    assert store.encoded_shards == 1  # loaded
    other = document_windows(Document("file:b.txt", doc.text), WindowSpec(k=2, m=1, min_capsules=1))
    store.get("train", 0, other, fake)
    assert store.encoded_shards == 2  # the file held another document's windows
    edited = document_windows(Document("file:b.txt", doc.text.replace("First", "Edited")),
                              WindowSpec(k=2, m=1, min_capsules=1))
    store.get("train", 0, edited, fake)
    assert store.encoded_shards == 3  # same document and window, other text


def test_loader_batches_carry_the_float_fields(built):
    data_dir, _ = built
    k, m, R = TINY["k"], TINY["m"], TINY["R"]
    source, c = _columns(data_dir, "train")
    train = dp.train_iterator("capsules", data_dir, TINY, global_batch_size=4, seed=0,
                              process_index=0, process_count=1)
    batch = next(train)
    assert batch["sketches"].shape == (4, k, D) and batch["sketches"].dtype == np.float32
    assert batch["children"].shape == (4, k, m, D) and batch["checksums"].shape == (4, k, R)
    assert batch["concept_ids"].shape == (4, k) and batch["concept_ids"].dtype == np.int32
    assert batch["inputs"].shape == (4, k) and batch["puzzle_identifiers"].shape == (4,)
    # Rows are consistent: the labels are the concept ids of the sketches in the same row.
    real = batch["concept_ids"] >= 0
    np.testing.assert_array_equal(batch["labels"], np.where(real, batch["concept_ids"] + 4, -100))
    rows = [int(np.flatnonzero((c["sketches"] == s).all(axis=(1, 2)))[0]) for s in batch["sketches"]]
    np.testing.assert_array_equal(batch["checksums"], c["checksums"][rows])

    n_test = len(dp.load("capsules", "test", data_dir, **TINY))
    batches = list(dp.eval_iterator("capsules", data_dir, TINY, global_batch_size=8,
                                    process_index=0, process_count=1))
    last = batches[-1]
    assert sum(int(b["mask"].sum()) for b in batches) == n_test
    assert last["children"].shape == (8, k, m, D)
    if not last["mask"].all():  # padded rows are zeros
        assert (last["sketches"][~last["mask"]] == 0).all()


# -- bad input -------------------------------------------------------------------------------------
def test_bad_directory_sources_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(dp.DataError, match="no documents"):
        dp.ensure_built("capsules", str(tmp_path / "d1"), {**TINY, "source": str(empty)})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("A real sentence with words. " * 8)
    (corpus / "code_only.md").write_text("x = f(y)\nreturn [a, b]\n")
    with pytest.raises(dp.DataError, match=r"code_only\.md.*no sentences"):
        dp.ensure_built("capsules", str(tmp_path / "d2"), {**TINY, "source": str(corpus)})
    (corpus / "code_only.md").unlink()
    with pytest.raises(dp.DataError, match="only 1 documents"):
        dp.ensure_built("capsules", str(tmp_path / "d3"), {**TINY, "source": str(corpus)})


def test_options_are_validated():
    cls = dp.get_builder_cls("capsules")
    with pytest.raises(ValueError, match="min_capsules"):
        cls.make_options({"k": 3, "min_capsules": 4})
    with pytest.raises(ValueError, match="num_concepts"):
        cls.make_options({"num_concepts": 0})
    assert cls.make_options({"source": "pydoc"}).source == "pydoc"  # not made a path
    assert os.path.isabs(cls.make_options({"source": "some/dir"}).source)
    assert cls.make_options({"preset": "default"}) == cls.make_options({})
