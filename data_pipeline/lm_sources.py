"""Documents for the language-model datasets: source code (``code``) and prose (``text``).

This module only *reads*: it turns a source (a path, a glob, or the offline default) into a
stream of ``SourceDocument(doc_id, text)``; the builders tokenize and pack them. Ids are stable
and unique within a source, because ``split_of`` hashes them to assign each whole document to
train or validation (a document never spans the two splits).

* ``code_documents``: source files. The default is the running interpreter's standard library,
  present on every machine, so the dataset builds offline. Real source trees contain binary,
  non-UTF-8 and huge generated files: those are skipped and counted, not errors.
* ``text_documents``: prose. The default is the Python documentation (``text_sources``); files
  may be TinyStories (``.txt`` with ``<|endoftext|>`` separators), WikiText (``.raw`` /
  ``.tokens``), JSON lines, a JSON list or Parquet. User data is strict: a malformed file is a
  ``DataError`` naming the file and the line / row, since a silently dropped shard skews the data.
  Large files are streamed (TinyStories-train.txt is 1.9 GB).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from data_pipeline import text_sources
from data_pipeline.common import DataError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceDocument:
    """One document: ``doc_id`` is stable and unique within its source (it decides the split)."""

    doc_id: str
    text: str


# -- code ---------------------------------------------------------------------------------------
CODE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "python": (".py",),
    "javascript": (".js", ".mjs", ".cjs", ".jsx"),
    "typescript": (".ts", ".tsx"),
    "c": (".c", ".h"),
    "cpp": (".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx"),
    "java": (".java",),
    "go": (".go",),
    "rust": (".rs",),
    "shell": (".sh",),
}
# Not the standard library proper: installed packages, bytecode, the test suites, and the
# build's Makefile/config directory.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_STDLIB_SKIP_PREFIXES = ("config-", ".")
_GLOB_CHARS = "*?["


def parse_extensions(spec: str) -> tuple[str, ...]:
    """``'python,javascript'`` or ``'.py,.js'`` (mixed allowed) -> sorted unique suffixes.

    Raises ValueError for an unknown language name (listing the known ones) or an empty spec.
    """
    suffixes: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.startswith("."):
            suffixes.add(item)
        elif item.lower() in CODE_EXTENSIONS:
            suffixes.update(CODE_EXTENSIONS[item.lower()])
        else:
            raise ValueError(f"unknown language {item!r}: known languages are "
                             f"{', '.join(sorted(CODE_EXTENSIONS))} (or give suffixes like .py)")
    if not suffixes:
        raise ValueError(f"no extensions in {spec!r}")
    return tuple(sorted(suffixes))


def _walk(root: str, skip_dir: Callable[[str], bool]) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the non-hidden files under ``root``;
    directories for which ``skip_dir(name)`` is true are not entered."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not skip_dir(d)]
        found.extend(os.path.relpath(os.path.join(here, f), root) for f in files
                     if not _is_hidden(f))
    return sorted(p.replace(os.sep, "/") for p in found)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_stdlib_skipped(name: str) -> bool:
    return name in _STDLIB_SKIP_DIRS or name.startswith(_STDLIB_SKIP_PREFIXES)


def _code_files(source: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(doc_id, path)`` of every candidate file of a code source, in sorted path order."""
    if not source:
        root = text_sources.stdlib_dir()
        return [(f"stdlib:{rel}", os.path.join(root, rel))
                for rel in _walk(root, _is_stdlib_skipped) if rel.endswith(extensions)]
    if os.path.isdir(source):
        return [(f"file:{rel}", os.path.join(source, rel))
                for rel in _walk(source, _is_hidden) if rel.endswith(extensions)]
    if os.path.isfile(source):
        return [(f"file:{os.path.basename(source)}", source)]
    if any(c in source for c in _GLOB_CHARS):
        return [(f"file:{path}", path) for path in sorted(glob.glob(source, recursive=True))
                if path.endswith(extensions) and os.path.isfile(path)]
    raise DataError("code source does not exist (expected a directory, a file or a glob "
                    "pattern; an empty source means the Python standard library)", path=source)


class _Skipped(Exception):
    """A code file that is not text we can use; the message is the reason."""


def _read_code(path: str, max_file_bytes: int) -> str:
    """The file's text; raises _Skipped when it is too large, unreadable, binary or not UTF-8."""
    try:
        if os.path.getsize(path) > max_file_bytes:
            raise _Skipped("too large")
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise _Skipped("unreadable") from None
    if b"\0" in data:
        raise _Skipped("binary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Skipped("not UTF-8") from None


def code_documents(source: str = "", extensions: tuple[str, ...] = (".py",),
                   max_file_bytes: int = 1_000_000) -> Iterator[SourceDocument]:
    """Source files of ``source`` as documents, in sorted path order.

    ``source``: ``""`` = the interpreter's standard library without its test suites and
    installed packages (ids ``stdlib:<relpath>``); a directory = its files with a suffix in
    ``extensions``, recursively, hidden entries skipped (``file:<relpath>``); a glob pattern
    (``*``, ``?`` or ``[``, recursive ``**``) = the matching files with those suffixes
    (``file:<path as matched>``); a file = that file whatever its suffix (``file:<name>``).

    Files that are larger than ``max_file_bytes``, contain NUL bytes (binary) or are not UTF-8
    are skipped, and one warning counting them is logged when the stream ends: real source
    trees contain such files. Whitespace-only files are skipped silently. The text is the file's
    content unchanged. Raises DataError when the source does not exist or yields no document.
    """
    files = _code_files(source, extensions)
    skipped: collections.Counter[str] = collections.Counter()
    example = ""
    count = 0
    try:
        for doc_id, path in files:
            try:
                text = _read_code(path, max_file_bytes)
            except _Skipped as reason:
                skipped[str(reason)] += 1
                example = example or path
                continue
            if text.strip():
                count += 1
                yield SourceDocument(doc_id, text)
        if not count:
            where = source or text_sources.stdlib_dir()
            why = f" ({_skip_summary(skipped, example)})" if skipped else ""
            raise DataError(f"no files with extensions {','.join(extensions)}{why}", path=where)
    finally:
        if skipped:
            logger.warning("code source %s: %s", source or "stdlib", _skip_summary(skipped, example))


def _skip_summary(skipped: collections.Counter[str], example: str) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} files ({reasons}), e.g. {example}"


# -- text ---------------------------------------------------------------------------------------
TINYSTORIES_SEPARATOR = "<|endoftext|>"
TEXT_FILE_SUFFIXES = (".txt", ".raw", ".tokens", ".jsonl", ".json", ".parquet")
# A WikiText article title: ' = Title = ' (sections are ' = = Section = = ').
_WIKITEXT_TITLE = re.compile(r"= ([^=](?:.*[^=])?) =")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of a UTF-8 file, 1-based, without the line ending, streamed.

    Raises DataError naming the line and byte offset of invalid UTF-8 or a NUL byte (binary
    data is never valid text); a leading byte-order mark is dropped.
    """
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"line {number}: not UTF-8 (invalid byte at offset "
                                f"{offset + e.start}): {e.reason}", path=path) from None
            if "\0" in line:
                raise DataError(f"line {number}: NUL byte at offset {offset + raw.index(0)} "
                                "(a binary file?)", path=path)
            if number == 1:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            yield number, line.rstrip("\r\n")


def _tinystories_documents(path: str, rel: str) -> Iterator[SourceDocument]:
    """A ``.txt`` file: one document per non-empty piece between ``<|endoftext|>``
    separators (``file:<rel>#<i>``), or the whole file (``file:<rel>``) without separators."""
    pieces: list[str] = []
    index = 0
    separated = False
    for _, line in _lines(path):
        parts = line.split(TINYSTORIES_SEPARATOR)
        pieces.append(parts[0])
        for part in parts[1:]:
            separated = True
            text = "\n".join(pieces).strip()
            if text:
                yield SourceDocument(f"file:{rel}#{index}", text)
                index += 1
            pieces = [part]
    text = "\n".join(pieces).strip()
    if text:
        yield SourceDocument(f"file:{rel}#{index}" if separated else f"file:{rel}", text)


def _wikitext_documents(path: str, rel: str) -> Iterator[SourceDocument]:
    """A WikiText ``.raw`` / ``.tokens`` file: one document per article (``file:<rel>#<title>``,
    ``#<n>`` added for the n-th repeat of a title), its heading the first line. Lines keep their
    text without WikiText's leading and trailing space; text before the first heading is one
    document ``file:<rel>``."""
    seen: collections.Counter[str] = collections.Counter()
    doc_id = f"file:{rel}"
    lines: list[str] = []
    for _, line in _lines(path):
        line = line.removeprefix(" ").rstrip()
        title = _WIKITEXT_TITLE.fullmatch(line)
        if title:
            text = "\n".join(lines).strip()
            if text:
                yield SourceDocument(doc_id, text)
            name = title.group(1).strip()
            seen[name] += 1
            doc_id = f"file:{rel}#{name}" + (f"#{seen[name]}" if seen[name] > 1 else "")
            lines = []
        lines.append(line)
    text = "\n".join(lines).strip()
    if text:
        yield SourceDocument(doc_id, text)


def _field_text(record: Any, text_field: str, where: str, path: str) -> str:
    """The text of one JSON record: a string, or an object's ``text_field`` (``story`` when the
    default ``text`` is absent, as in some TinyStories releases)."""
    if isinstance(record, str):
        return record
    field = text_field
    if isinstance(record, dict) and field == "text" and field not in record and "story" in record:
        field = "story"
    if isinstance(record, dict) and isinstance(record.get(field), str):
        return record[field]
    if not isinstance(record, dict):
        got = type(record).__name__
    elif field not in record:
        keys = sorted(record)
        got = f"an object with keys {keys[:10]}{' ...' if len(keys) > 10 else ''}"
    else:
        got = f"{field!r} of type {type(record[field]).__name__}"
    raise DataError(f"{where}: expected a string or a JSON object with a string field "
                    f"{text_field!r}, got {got}", path=path)


def _jsonl_documents(path: str, rel: str, text_field: str) -> Iterator[SourceDocument]:
    """JSON lines: one object per line (blank lines skipped), id ``file:<rel>:<line>``."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line {number}: not JSON ({e.msg} at column {e.colno})",
                            path=path) from None
        except RecursionError:
            raise DataError(f"line {number}: JSON nested too deeply", path=path) from None
        if isinstance(record, str):  # a bare string is JSON but not a record
            raise DataError(f"line {number}: expected a JSON object with a string field "
                            f"{text_field!r}, got str", path=path)
        text = _field_text(record, text_field, f"line {number}", path).strip()
        if text:
            yield SourceDocument(f"file:{rel}:{number}", text)


def _json_documents(path: str, rel: str, text_field: str) -> Iterator[SourceDocument]:
    """A JSON list of objects or strings, id ``file:<rel>:<index>`` (0-based). Loaded whole:
    the standard library has no streaming JSON parser; use JSON lines for big data."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        records = json.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 (invalid byte at offset {e.start}): {e.reason}",
                        path=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"line {e.lineno}: not JSON ({e.msg} at column {e.colno})",
                        path=path) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path=path) from None
    if not isinstance(records, list):
        raise DataError(f"expected a JSON list of objects or strings, got "
                        f"{type(records).__name__}", path=path)
    for index, record in enumerate(records):
        text = _field_text(record, text_field, f"item {index}", path).strip()
        if text:
            yield SourceDocument(f"file:{rel}:{index}", text)


def _parquet_documents(path: str, rel: str, text_field: str) -> Iterator[SourceDocument]:
    """A Parquet file's string column ``text_field`` (``story`` when the default ``text`` is
    absent), streamed in record batches; id ``file:<rel>:<row>`` (0-based); a null is an error."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet needs pyarrow: pip install pyarrow", path=path) from None
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file: {e}", path=path) from None
    column = text_field
    if column == "text" and column not in schema.names and "story" in schema.names:
        column = "story"
    if column not in schema.names:
        raise DataError(f"no column {text_field!r}; columns: {schema.names}", path=path)
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"column {column!r} has type {kind}, expected a string column; "
                        f"columns: {schema.names}", path=path)
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[column]):
            for text in batch.column(0).to_pylist():
                if text is None:
                    raise DataError(f"column {column!r} is null", path=path, row=row)
                if text.strip():
                    yield SourceDocument(f"file:{rel}:{row}", text.strip())
                row += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read Parquet data near row {row}: {e}", path=path) from None


def _file_documents(path: str, rel: str, text_field: str) -> Iterator[SourceDocument]:
    """The documents of one data file, by suffix; a file without documents is an error."""
    if os.path.getsize(path) == 0:
        raise DataError("empty file", path=path)
    if path.endswith(".txt"):
        documents = _tinystories_documents(path, rel)
    elif path.endswith((".raw", ".tokens")):
        documents = _wikitext_documents(path, rel)
    elif path.endswith(".jsonl"):
        documents = _jsonl_documents(path, rel, text_field)
    elif path.endswith(".json"):
        documents = _json_documents(path, rel, text_field)
    elif path.endswith(".parquet"):
        documents = _parquet_documents(path, rel, text_field)
    else:
        raise DataError(f"unknown text file type (expected one of "
                        f"{', '.join(TEXT_FILE_SUFFIXES)})", path=path)
    count = 0
    for document in documents:
        count += 1
        yield document
    if not count:
        raise DataError("no documents in file (only blank text)", path=path)


def _default_text_documents() -> Iterator[SourceDocument]:
    """The Python documentation as prose: the language reference topics, then the stdlib
    docstrings, cleaned to paragraphs (code, doctests and tables dropped)."""
    for source in ("pydoc", "stdlib"):
        for document in text_sources.iter_documents(source):
            text = "\n\n".join(text_sources.prose_paragraphs(document.text))
            if text:
                yield SourceDocument(document.doc_id, text)


def text_documents(source: str = "", text_field: str = "text") -> Iterator[SourceDocument]:
    """Natural-language documents of ``source``.

    ``""``: the Python documentation shipped with the interpreter (offline; ids ``pydoc:…``,
    ``stdlib:…``). A file, or a directory's files (recursively, sorted, hidden entries skipped,
    other suffixes ignored), by suffix: ``.txt`` (TinyStories pieces between ``<|endoftext|>``,
    else the whole file), ``.raw`` / ``.tokens`` (WikiText articles), ``.jsonl`` / ``.json``
    (records with the string field ``text_field``) and ``.parquet`` (column ``text_field``).
    Texts are stripped; blank ones skipped. Raises DataError for a missing path, a file that is
    empty, not UTF-8 or malformed (naming it and the line / row), or a source with no documents.
    """
    if not source:
        yield from _default_text_documents()
        return
    if os.path.isfile(source):
        yield from _file_documents(source, os.path.basename(source), text_field)
        return
    if not os.path.isdir(source):
        raise DataError("text source does not exist (expected a file or a directory; an empty "
                        "source means the Python documentation)", path=source)
    files = [rel for rel in _walk(source, _is_hidden) if rel.endswith(TEXT_FILE_SUFFIXES)]
    if not files:
        raise DataError(f"no text files ({', '.join('*' + s for s in TEXT_FILE_SUFFIXES)})",
                        path=source)
    for rel in files:
        yield from _file_documents(os.path.join(source, rel), rel, text_field)


# -- splits and progress ------------------------------------------------------------------------
def split_of(doc_id: str, validation_fraction: float, seed: int = 0) -> str:
    """``'train'`` or ``'validation'``, from a SHA-1 of ``f'{seed}/{doc_id}'``: stable across
    runs, machines and Python versions (unlike ``hash``), so a document never moves between
    splits when a build is repeated or extended. A fraction of 0 always gives ``'train'``."""
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    digest = hashlib.sha1(f"{seed}/{doc_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if position < validation_fraction else "train"


def count_hint(source: str, extensions: tuple[str, ...] | None = None) -> int | None:
    """At most how many documents the source yields, for a progress-bar total, when that is
    cheap to know; None otherwise.

    With ``extensions`` (a code source): the candidate files of ``code_documents(source,
    extensions)`` (skipped files make the real count lower). Without (a text source): the
    documentation pages of the default ``""``, and None for files and directories, since one
    ``.txt`` or ``.jsonl`` file may hold millions of documents. None for a missing path.
    """
    if extensions is not None:
        try:
            return len(_code_files(source, extensions))
        except DataError:
            return None
    if source:
        return None
    return len(text_sources.document_ids("pydoc")) + len(text_sources.document_ids("stdlib"))
