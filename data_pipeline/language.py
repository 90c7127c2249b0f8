"""Language-model datasets: ``code`` (source files) and ``text`` (natural language).

Each builds like every dataset here (TFDS -> ArrayRecord -> Grain, docs/data.md):

1. documents come from ``data_pipeline/lm_sources.py`` (``code``: by default the running
   interpreter's standard library; ``text``: by default the Python documentation that ships with
   the interpreter; or a directory/file/glob in the formats people have: TinyStories, WikiText raw,
   ``.txt``/``.jsonl``/``.parquet``);
2. each document goes to ``train`` or ``test`` (the held-out validation documents) by a hash of its id
   (``split_of``), so no document spans the two, and at most ``max_documents`` are read;
3. a byte-level BPE (``data_pipeline/tokenizer.py``) of ``vocab_size`` tokens is trained on the
   training documents only and saved beside the data (``tokenizer.json``, one of the dataset's
   ``artifacts``: a run copies it into its workdir);
4. each split is one token stream ``<|endoftext|> doc <|endoftext|> doc ... <|endoftext|>`` cut into
   rows of ``seq_len + 1`` tokens that overlap by one: ``inputs`` = the first ``seq_len``,
   ``labels`` = the next-token targets (the last row padded with ``<pad>`` = 0, whose labels are
   ignored). Each row is one group (an epoch visits every row once) and carries ``label_bytes``,
   the UTF-8 bytes its labels stand for (bits per byte).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline import lm_sources, tokenizer as bpe
from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import DataError, Puzzle, PuzzleGroup, StaticMetadata
from data_pipeline.registry import register_dataset

SPLIT_OF = {"train": "train", "test": "validation"}  # dataset split -> lm_sources.split_of's name
STATS_FILE = "language_stats.json"


class LanguageDatasetBuilder(PuzzleDatasetBuilder):
    """Documents -> BPE -> packed next-token rows (module docstring); a subclass says where documents come from."""

    batch_extras: ClassVar[tuple[str, ...]] = ("label_bytes",)
    artifacts: ClassVar[tuple[str, ...]] = (bpe.FILE_NAME,)
    VERSION = tfds.core.Version("1.0.0")
    PRESETS = {"tiny": dict(vocab_size=2048, seq_len=128)}
    # The config-name words for the offline default source ("") and for a user's source.
    SOURCE_NAMES: ClassVar[tuple[str, str]] = ("default", "files")

    # -- hooks ---------------------------------------------------------------------------------
    def documents(self) -> Iterator[lm_sources.SourceDocument]:
        """Every document of the source, in a fixed order."""
        raise NotImplementedError

    @classmethod
    def summary(cls, options: Any) -> str:
        source = cls.SOURCE_NAMES[bool(options.source)]
        return f"{source}_v{options.vocab_size}_L{options.seq_len}"

    # -- metadata ------------------------------------------------------------------------------
    def static_metadata(self) -> StaticMetadata:
        o = self.options
        return StaticMetadata(seq_len=o.seq_len, vocab_size=o.vocab_size, pad_id=bpe.PAD_ID, ignore_label_id=bpe.PAD_ID)

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"label_bytes": tfds.features.Scalar(dtype=np.int32)}

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        options = super().normalize_options(options)
        if options.seq_len < 2:
            raise ValueError(f"{cls.name}: seq_len={options.seq_len} must be >= 2")
        if not 0.0 < options.validation_fraction < 1.0:
            raise ValueError(f"{cls.name}: validation_fraction={options.validation_fraction} must be in (0, 1)")
        if options.vocab_size < 258:
            raise ValueError(f"{cls.name}: vocab_size={options.vocab_size} must be >= 258 (256 bytes + 2 special)")
        return options

    # -- documents by split --------------------------------------------------------------------
    def split_documents(self, split: str) -> Iterator[lm_sources.SourceDocument]:
        """The documents of ``split`` (``train``/``test``) among the first ``max_documents``."""
        o = self.options
        docs: Iterable[lm_sources.SourceDocument] = self.documents()
        if o.max_documents:
            docs = itertools.islice(docs, o.max_documents)
        want = SPLIT_OF[split]
        return (d for d in docs if lm_sources.split_of(d.doc_id, o.validation_fraction, o.seed) == want)

    def tokenizer(self):
        """The BPE of the training documents, trained once per builder and saved beside the data."""
        if getattr(self, "_tokenizer", None) is None:
            texts = (d.text for d in tqdm(self.split_documents("train"), desc=f"{self.name}: training BPE",
                                          unit="doc", leave=False, mininterval=2.0))
            self._tokenizer = bpe.train_bpe(texts, self.options.vocab_size)
            bpe.save(self._tokenizer, os.fspath(self.data_path))
        return self._tokenizer

    # -- rows ----------------------------------------------------------------------------------
    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        tokenizer = self.tokenizer()
        L = self.options.seq_len
        byte_lengths = bpe.token_byte_lengths(tokenizer, self.options.vocab_size)
        stats = {"documents": 0, "bytes": 0, "tokens": 0, "rows": 0}

        def texts() -> Iterator[str]:
            for doc in tqdm(self.split_documents(split), desc=f"{self.name} {split}", unit="doc", leave=False,
                            mininterval=2.0):
                stats["documents"] += 1
                stats["bytes"] += len(doc.text.encode("utf-8"))
                yield doc.text

        pending = np.zeros(0, np.int32)  # tokens not yet in a row; rows overlap by one token
        for ids in itertools.chain(bpe.stream(tokenizer, texts()), [[bpe.SEPARATOR_ID]]):
            stats["tokens"] += len(ids)
            pending = np.concatenate([pending, np.asarray(ids, np.int32)])
            while len(pending) >= L + 1:
                yield self._row(pending[:L + 1], byte_lengths)
                stats["rows"] += 1
                pending = pending[L:]
        if len(pending) >= 2:  # the stream's tail, padded
            yield self._row(np.pad(pending, (0, L + 1 - len(pending))), byte_lengths)
            stats["rows"] += 1
        if not stats["documents"]:
            raise DataError(f"{self.name}: no {SPLIT_OF[split]} documents (of {self.options.max_documents or 'all'} "
                            f"read; validation_fraction={self.options.validation_fraction})",
                            path=self.options.source or None)
        self._write_stats(split, stats)

    @staticmethod
    def _row(window: np.ndarray, byte_lengths: np.ndarray) -> PuzzleGroup:
        labels = window[1:]
        row = Puzzle(inputs=window[None, :-1], labels=labels[None],
                     extras={"label_bytes": int(byte_lengths[labels].sum())})
        return PuzzleGroup([row])

    def _write_stats(self, split: str, stats: dict) -> None:
        path = os.path.join(os.fspath(self.data_path), STATS_FILE)
        stored = {}
        if os.path.isfile(path):
            with open(path) as f:
                stored = json.load(f)
        stored[split] = stats
        with open(path, "w") as f:
            json.dump(stored, f, indent=2)
        logging.getLogger(__name__).info("%s %s: %s", self.name, split, stats)


@dataclasses.dataclass(frozen=True)
class LanguageOptions:
    """The options every language dataset has: where the documents are (``source`` "" = the
    dataset's offline default), the BPE size, the row length, the validation share, how many
    documents to read (0: all) and the split seed."""

    source: str = ""
    vocab_size: int = 4096
    seq_len: int = 512
    validation_fraction: float = 0.05
    max_documents: int = 0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CodeOptions(LanguageOptions):
    """``source`` "" = the running interpreter's standard library, else a directory, file or glob of
    source files with the ``extensions`` given by language names or suffixes (``python,javascript`` or
    ``.py,.js``)."""

    extensions: str = "python"


@dataclasses.dataclass(frozen=True)
class TextOptions(LanguageOptions):
    """``source`` "" = the Python documentation shipped with the interpreter (the language reference's
    topics and the standard library's docstrings, as prose), else a file or directory of TinyStories
    ``.txt``/``.jsonl``, WikiText ``.raw``, or ``.txt``/``.jsonl``/``.parquet`` files whose documents
    are in ``text_field``."""

    seq_len: int = 256
    text_field: str = "text"


@register_dataset
class CodeDataset(LanguageDatasetBuilder):
    """Source code for a causal language model (the PyTorch system's ``code_optimized`` data)."""

    name = "code"
    Options = CodeOptions
    SOURCE_NAMES = ("stdlib", "src")

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        options = super().normalize_options(options)
        extensions = ",".join(lm_sources.parse_extensions(options.extensions))
        return dataclasses.replace(options, extensions=extensions)

    def documents(self) -> Iterator[lm_sources.SourceDocument]:
        return lm_sources.code_documents(self.options.source, tuple(self.options.extensions.split(",")))


@register_dataset
class TextDataset(LanguageDatasetBuilder):
    """Natural language for a causal language model (the PyTorch system's ``text_optimized`` data)."""

    name = "text"
    Options = TextOptions
    SOURCE_NAMES = ("pydoc", "files")

    def documents(self) -> Iterator[lm_sources.SourceDocument]:
        return lm_sources.text_documents(self.options.source, self.options.text_field)
