"""Capsule dataset: windows of real documents as ``k`` sentence capsules with ``m`` children each.

Text comes from ``text_sources`` (the standard library's docstrings and the ``pydoc`` topics,
present on every Python install, or a directory of text files); windows from
``capsule_windows``; embeddings from all-MiniLM-L6-v2 (``text_encoder``, JAX, offline). One
example = one window of ``k`` consecutive capsules of a document (D = 384):

    sketches    float32 [k, D]     embedding of each capsule's text
    children    float32 [k, m, D]  embeddings of the capsule's m consecutive word windows
    checksums   float32 [k, R]     children.reshape(k, m * D) @ projection (fixed, seeded)
    concept_ids int32   [k]        nearest centroid of a k-means codebook of the train sketches
    inputs = labels     int32 [k]  concept_ids + 4 (0 pad, 1 mask, 2 bos, 3 eos are control ids)

A window shorter than ``k`` (a document's last one, at least ``min_capsules`` long) is padded:
zero vectors, concept id -1, token 0 (pad; labels 0 = ignored). Each document is one *group*
and each of its windows one *puzzle* (identifier 0), so a training epoch samples one window
per document, as it samples one augmentation per puzzle elsewhere. The ``test`` split holds
other documents (the first ``num_test_docs`` usable ones in the seeded document order); its
concept ids come from the train centroids. The codebook (``capsule_centroids.npy``, [K, D])
and the projection (``capsule_projection.npy``, [m * D, R]) are saved in the dataset directory
(``load_codebook``), and ``metadata.json`` records them under ``capsules``.

Encoding runs in shards of ``docs_per_shard`` documents saved in
``<data_dir>/capsules/<config>/encoding_shards/`` (``capsule_shards``): an interrupted build
resumes with the missing shards; the directory is removed once the dataset is written.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
import shutil
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.capsule_kmeans import fit_kmeans, nearest_centroid
from data_pipeline.capsule_shards import ShardStore
from data_pipeline.capsule_windows import Window, WindowSpec, document_windows
from data_pipeline.common import DataError, Puzzle, PuzzleGroup, StaticMetadata
from data_pipeline.registry import make_builder, register_dataset
from data_pipeline.text_encoder import EMBED_DIM, MODEL_NAME, default_encoder
from data_pipeline.text_sources import SOURCES, is_directory_source, iter_documents

log = logging.getLogger(__name__)

NUM_CONTROL_TOKENS = 4          # 0 pad, 1 mask, 2 bos, 3 eos
PAD_ID, MASK_ID, BOS_ID, EOS_ID = range(NUM_CONTROL_TOKENS)
CENTROIDS_FILE = "capsule_centroids.npy"
PROJECTION_FILE = "capsule_projection.npy"
WORK_DIR = "encoding_shards"
METADATA_KEY = "capsules"


@dataclasses.dataclass(frozen=True)
class CapsuleOptions:
    """Options that define a capsule dataset (each set of values has its own directory)."""

    source: str = "both"              # stdlib | pydoc | both | a directory of .txt/.md/.rst
    num_docs: int | None = None       # train documents (None = every usable one left)
    num_test_docs: int = 40           # held-out documents of the test split
    k: int = 12                       # capsules per example (= seq_len)
    m: int = 4                        # children per capsule
    R: int = 64                       # checksum size
    num_concepts: int = 2048          # k-means codebook size (vocab = num_concepts + 4)
    sentences_per_capsule: int = 1
    min_capsules: int = 4             # shortest window kept (capsules)
    min_words: int = 4                # shortest sentence kept (words)
    max_windows_per_doc: int | None = None  # None = every window of a document
    docs_per_shard: int = 32          # encoding shard size (documents)
    kmeans_iters: int = 25
    seed: int = 0                     # document order, k-means, projection


@dataclasses.dataclass(frozen=True)
class CapsuleCodebook:
    """centroids float32 [num_concepts, D]; projection float32 [m * D, R]."""

    centroids: np.ndarray
    projection: np.ndarray


def checksum_projection(m: int, R: int, seed: int, dim: int = EMBED_DIM) -> np.ndarray:
    """The fixed random projection float32 [m * dim, R] (N(0, 1 / (m * dim)) entries)."""
    rng = np.random.default_rng([seed, 0x636B73])
    return (rng.standard_normal((m * dim, R)) / np.sqrt(m * dim)).astype(np.float32)


def checksums_of(children: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """children [..., m, D] -> checksums float32 [..., R] (flattened children @ projection)."""
    flat = children.reshape(children.shape[:-2] + (-1,))
    return (flat @ projection).astype(np.float32)


@register_dataset
class Capsules(PuzzleDatasetBuilder):
    """TFDS builder of the capsule dataset (see module docstring)."""

    name = "capsules"
    Options = CapsuleOptions
    PRESETS = {
        # Seconds on 2 cores (plus compiling the encoder): a handful of docstring documents,
        # sized for configs/hesc.py's tiny text variant (vocab 68, checksum_dim 16).
        "tiny": {"source": "stdlib", "num_docs": 16, "num_test_docs": 4, "max_windows_per_doc": 2,
                 "num_concepts": 64, "R": 16, "docs_per_shard": 8},
        # The pydoc topics only (~2.6k sentences): minutes on 2 cores.
        "small": {"source": "pydoc", "num_test_docs": 8, "num_concepts": 256,
                  "docs_per_shard": 8},
        "default": {},
    }
    batch_extras = ("sketches", "children", "checksums", "concept_ids")

    # -- options -------------------------------------------------------------------------------
    @classmethod
    def normalize_options(cls, options: CapsuleOptions) -> CapsuleOptions:
        # ``source`` names a built-in corpus or a directory; only a directory becomes absolute.
        source = options.source
        if is_directory_source(source):
            source = os.path.abspath(os.path.expanduser(source))
        options = dataclasses.replace(options, source=source)
        for key in ("k", "m", "R", "num_concepts", "docs_per_shard", "kmeans_iters"):
            if getattr(options, key) < 1:
                raise ValueError(f"capsules option {key} must be >= 1, got {getattr(options, key)}")
        if options.num_docs is not None and options.num_docs < 1:
            raise ValueError(f"capsules option num_docs must be >= 1 or None, got {options.num_docs}")
        if options.num_test_docs < 1:
            raise ValueError(f"capsules option num_test_docs must be >= 1, got {options.num_test_docs}")
        cls.window_spec(options)  # validates k / m / min_capsules / ...
        return options

    @staticmethod
    def window_spec(o: CapsuleOptions) -> WindowSpec:
        return WindowSpec(k=o.k, m=o.m, sentences_per_capsule=o.sentences_per_capsule,
                          min_capsules=o.min_capsules, min_words=o.min_words,
                          max_windows=o.max_windows_per_doc)

    @classmethod
    def summary(cls, o: CapsuleOptions) -> str:
        source = o.source if o.source in SOURCES else "dir"
        return (f"{source}-d{o.num_docs or 'all'}-t{o.num_test_docs}-k{o.k}m{o.m}R{o.R}"
                f"-c{o.num_concepts}")

    # -- schema --------------------------------------------------------------------------------
    def static_metadata(self) -> StaticMetadata:
        o = self.options
        return StaticMetadata(seq_len=o.k, vocab_size=o.num_concepts + NUM_CONTROL_TOKENS,
                              pad_id=PAD_ID, ignore_label_id=PAD_ID, blank_identifier_id=0,
                              num_puzzle_identifiers=1, sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        o = self.options
        floats = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32,
                                                     encoding=tfds.features.Encoding.BYTES)
        return {
            "sketches": floats(o.k, EMBED_DIM),
            "children": floats(o.k, o.m, EMBED_DIM),
            "checksums": floats(o.k, o.R),
            "concept_ids": tfds.features.Tensor(shape=(o.k,), dtype=np.int32,
                                                encoding=tfds.features.Encoding.BYTES),
            "doc_id": tfds.features.Text(),
            "window_index": tfds.features.Scalar(dtype=np.int32),
            "num_capsules": tfds.features.Scalar(dtype=np.int32),
        }

    # -- documents -> windows --------------------------------------------------------------------
    @property
    def work_dir(self) -> str:
        """Encoding shards of this configuration (outside the TFDS version directory, so a
        failed build keeps them)."""
        return os.path.join(self.data_dir_root, self.name, self.builder_config.name, WORK_DIR)

    @functools.cached_property
    def documents(self) -> dict[str, list[list[Window]]]:
        """{split: [windows of each document]}: the first ``num_test_docs`` usable documents in
        the seeded order are the test split, the next ``num_docs`` the train split."""
        o = self.options
        spec = self.window_spec(o)
        splits: dict[str, list[list[Window]]] = {"test": [], "train": []}
        skipped = 0
        directory = is_directory_source(o.source)
        bar = tqdm(desc="capsules: reading documents", unit="doc", leave=False)
        for doc in iter_documents(o.source, order_seed=o.seed):
            bar.update(1)
            windows = document_windows(doc, spec)
            if not windows:
                if directory and not doc.sentences(o.min_words):
                    path = os.path.join(o.source, doc.doc_id.partition(":")[2])
                    raise DataError(f"document {doc.doc_id} yields no sentences (of >= "
                                    f"{o.min_words} words of prose)", path=path)
                skipped += 1  # too short for one window (e.g. a module without docstrings)
                continue
            if len(splits["test"]) < o.num_test_docs:
                splits["test"].append(windows)
            elif o.num_docs is None or len(splits["train"]) < o.num_docs:
                splits["train"].append(windows)
            else:
                break
        bar.close()
        wanted = o.num_test_docs + (o.num_docs or 1)
        usable = len(splits["test"]) + len(splits["train"])
        if usable < wanted:
            raise DataError(f"only {usable} documents have a window of >= {o.min_capsules} capsules; "
                            f"the options need {wanted} (num_test_docs {o.num_test_docs} + num_docs "
                            f"{o.num_docs or '>= 1'})", path=o.source)
        self.skipped_documents = skipped  # recorded in metadata.json
        return splits

    # -- encoding ------------------------------------------------------------------------------
    @functools.cached_property
    def shard_store(self) -> ShardStore:
        return ShardStore(self.work_dir, self.options.k, self.options.m, EMBED_DIM)

    def encoded_shards(self, split: str) -> Iterator[tuple[list[list[Window]], np.ndarray, np.ndarray]]:
        """(documents' windows, sketches [n, k, D], children [n, k, m, D]) per shard of
        ``split``, n = windows in the shard; loads finished shards, encodes the others."""
        docs = self.documents[split]
        per = self.options.docs_per_shard
        encoder = default_encoder()
        store = self.shard_store
        num_shards = -(-len(docs) // per)
        with tqdm(total=num_shards, desc=f"capsules {split}: encoding", unit="shard", leave=False) as bar:
            for shard in range(num_shards):
                shard_docs = docs[shard * per:(shard + 1) * per]
                windows = [w for doc in shard_docs for w in doc]
                sketches, children = store.get(split, shard, windows, encoder.encode)
                if store.encode_seconds:
                    bar.set_postfix(texts_per_s=f"{store.encoded_texts / store.encode_seconds:.0f}")
                bar.update(1)
                yield shard_docs, sketches, children

    @functools.cached_property
    def codebook(self) -> CapsuleCodebook:
        """k-means centroids of the real train sketches + the checksum projection (encodes the
        train shards first if needed)."""
        o = self.options
        real = []
        for shard_docs, sketches, _ in self.encoded_shards("train"):
            counts = [len(w.capsules) for doc in shard_docs for w in doc]
            real.append(sketches[_real_mask(counts, o.k)])
        train = np.concatenate(real)
        distinct = len(np.unique(train, axis=0))
        if distinct < o.num_concepts:
            raise DataError(f"the train split has {distinct} distinct capsules, fewer than "
                            f"num_concepts={o.num_concepts}; lower num_concepts or add documents",
                            path=o.source)
        centroids = fit_kmeans(train, o.num_concepts, o.seed, o.kmeans_iters, progress=True)
        return CapsuleCodebook(centroids, checksum_projection(o.m, o.R, o.seed))

    # -- records ---------------------------------------------------------------------------------
    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        o = self.options
        codebook = self.codebook
        self._save_codebook(codebook)
        for shard_docs, sketches, children in self.encoded_shards(split):
            counts = [len(w.capsules) for doc in shard_docs for w in doc]
            real = _real_mask(counts, o.k)
            concept_ids = np.full(real.shape, -1, dtype=np.int32)
            concept_ids[real] = nearest_centroid(sketches[real], codebook.centroids)
            tokens = np.where(real, concept_ids + NUM_CONTROL_TOKENS, PAD_ID).astype(np.int32)
            checksums = checksums_of(children, codebook.projection)
            row = 0
            for windows in shard_docs:
                puzzles = []
                for w in windows:
                    puzzles.append(Puzzle(
                        inputs=tokens[row][None], labels=tokens[row][None], identifier=0,
                        extras={"sketches": sketches[row], "children": children[row],
                                "checksums": checksums[row], "concept_ids": concept_ids[row],
                                "doc_id": w.doc_id, "window_index": w.index,
                                "num_capsules": len(w.capsules)}))
                    row += 1
                yield PuzzleGroup(puzzles)

    def _save_codebook(self, codebook: CapsuleCodebook) -> None:
        """Write the codebook into the dataset directory (TFDS's temporary one while building)
        and describe it in ``metadata.json``."""
        path = os.fspath(self.data_path)
        os.makedirs(path, exist_ok=True)
        np.save(os.path.join(path, CENTROIDS_FILE), codebook.centroids)
        np.save(os.path.join(path, PROJECTION_FILE), codebook.projection)
        o = self.options
        self.info.metadata[METADATA_KEY] = {
            "centroids_file": CENTROIDS_FILE, "projection_file": PROJECTION_FILE,
            "checksum": "children.reshape(k, m * D) @ projection",
            "embedding_dim": EMBED_DIM, "num_concepts": o.num_concepts,
            "control_tokens": {"pad": PAD_ID, "mask": MASK_ID, "bos": BOS_ID, "eos": EOS_ID},
            "encoder": MODEL_NAME, "encoder_weights_sha256": default_encoder().fingerprint,
            "python_version": platform.python_version(),  # the stdlib text depends on it
            "documents": {split: [doc[0].doc_id for doc in docs] for split, docs in self.documents.items()},
            "skipped_documents": self.skipped_documents,
        }

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        super().download_and_prepare(*args, **kwargs)
        # The shards now live in the dataset; a later rebuild encodes from scratch.
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _real_mask(counts: list[int], k: int) -> np.ndarray:
    """bool [n, k]: which capsule slots of n windows (with ``counts`` capsules) are real."""
    return np.arange(k)[None, :] < np.asarray(counts, dtype=np.int64)[:, None]


def load_codebook(data_dir: str | None = None, options: Mapping[str, Any] | None = None) -> CapsuleCodebook:
    """The codebook of a built capsule dataset (``ensure_built("capsules", ...)`` first):
    centroids [num_concepts, 384] and the checksum projection [m * 384, R]."""
    path = os.fspath(make_builder("capsules", data_dir, options).data_path)
    try:
        return CapsuleCodebook(np.load(os.path.join(path, CENTROIDS_FILE)),
                               np.load(os.path.join(path, PROJECTION_FILE)))
    except FileNotFoundError:
        raise FileNotFoundError(f"no capsule codebook in {path}; build the dataset with "
                                "data_pipeline.ensure_built('capsules', ...)") from None
