"""Real English prose present on every Python install, as documents of sentences.

Sources (``document_ids(source)``):

* ``pydoc``: the topics of the language reference that ``help()`` shows
  (``pydoc_data.topics.topics``, ~80 long documents); id ``pydoc:<topic>``.
* ``stdlib``: the docstrings (module, classes, functions, in source order) of the standard
  library's own ``*.py`` files (``sysconfig.get_paths()["stdlib"]``, ~700 files outside the
  test suites); id ``stdlib:<relative path>``.
* ``both``: the two together.
* a directory: its ``*.txt`` / ``*.md`` / ``*.rst`` files; id ``file:<relative path>``.

The text is cleaned to prose (``prose_paragraphs``): code blocks, doctests, grammar rules,
tables and headings are dropped. ``split_sentences`` is a simple rule-based splitter (terminal
punctuation followed by a capital, with common abbreviations protected). Documents come in
a fixed order: sorted ids, or a seeded permutation of them (``order_seed``), read lazily so a
small build touches few files. The stdlib text is that of the running interpreter, so a
different Python version gives different documents.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
import re
import sysconfig
from typing import Iterator, Sequence

from data_pipeline.common import DataError

SOURCES = ("stdlib", "pydoc", "both")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
# Not prose, or machine-generated near-duplicates (100+ codec modules share one docstring).
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
                     "encodings", "pydoc_data", "lib2to3"}
_STDLIB_SKIP_PREFIXES = ("config-",)  # the build's Makefile/config directory

_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "cf.", "mr.", "mrs.", "dr.", "no.", "fig.",
                  "approx.", "resp.", "al.", "st.", "jr.", "sr.", "ca.", "viz."}
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[*]*[A-Z0-9]|``)")
_UNDERLINE = re.compile(r"^\s*([=*\-~^#+`])\1{2,}\s*$")
_LIST_MARKER = re.compile(r"^\s*(?:[*\-+]|\(?\d+[.)]|\(?[a-z][.)])\s+")
_CODE_MARKERS = (">>>", "...", "|", "+-", "$ ", "%")


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: ``doc_id`` (``pydoc:…``, ``stdlib:…`` or ``file:…``) and its prose
    ``text`` (paragraphs separated by blank lines; may be empty)."""

    doc_id: str
    text: str

    def sentences(self, min_words: int = 4) -> list[str]:
        return split_sentences(self.text, min_words=min_words)


# -- cleaning and sentence splitting ------------------------------------------------------------
def _is_prose(paragraph: str) -> bool:
    """A paragraph worth keeping: mostly letters, a sentence terminator, no code markers."""
    lines = paragraph.splitlines()
    if any(line.lstrip().startswith(_CODE_MARKERS) for line in lines) or "::=" in paragraph:
        return False
    if not re.search(r"[A-Za-z]{2,}[\"')\]]*[.!?]", paragraph):
        return False
    chars = [c for c in paragraph if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    # Code has many symbols; rST markup (quotes, asterisks) a few.
    return bool(chars) and letters / len(chars) >= 0.75


def prose_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of ``text``, each joined to one line with single spaces.

    Dropped: headings (a line over an ``====``/``****``/``----`` underline), paragraphs that
    look like code, doctests, grammar rules (``::=``) or tables, and code blocks (a paragraph
    indented deeper than the paragraph before it that ends with ``:``).
    """
    lines = [line for line in text.replace("\t", "    ").splitlines()]
    kept_lines: list[str] = []
    for i, line in enumerate(lines):
        if _UNDERLINE.match(line):
            if kept_lines and kept_lines[-1].strip():
                kept_lines[-1] = ""  # the heading above the underline
            continue
        kept_lines.append(line)
    paragraphs: list[str] = []
    block: list[str] = []
    previous_indent, previous_colon = 0, False
    for line in kept_lines + [""]:
        if line.strip():
            block.append(line)
            continue
        if not block:
            continue
        indent = min(len(b) - len(b.lstrip()) for b in block)
        body = "\n".join(block)
        code_block = previous_colon and indent > previous_indent
        if not code_block and _is_prose(body):
            joined = " ".join(b.strip() for b in block)
            paragraphs.append(_LIST_MARKER.sub("", joined, count=1))
        if not code_block:
            previous_indent, previous_colon = indent, body.rstrip().endswith(":")
        block = []
    return paragraphs


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences of the prose in ``text`` (see ``prose_paragraphs``), in order.

    A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) before whitespace
    and then a capital or digit (maybe after opening quotes/brackets) or an rST literal, unless
    the word before is a known abbreviation (``e.g.``) or an initial. Sentences with fewer
    than ``min_words`` words or fewer than 60% letters among their non-space characters are
    dropped.
    """
    sentences: list[str] = []
    for paragraph in prose_paragraphs(text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        pieces = _SENTENCE_BREAK.split(paragraph)
        merged: list[str] = []
        for piece in pieces:
            last_word = merged[-1].rsplit(" ", 1)[-1].lower().lstrip("\"'([") if merged else ""
            if merged and (last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last_word)):
                merged[-1] = f"{merged[-1]} {piece}"
            else:
                merged.append(piece)
        for sentence in merged:
            sentence = sentence.strip()
            chars = [c for c in sentence if not c.isspace()]
            if (len(sentence.split()) >= min_words and chars
                    and sum(c.isalpha() for c in chars) / len(chars) >= 0.6):
                sentences.append(sentence)
    return sentences


# -- sources -------------------------------------------------------------------------------------
def stdlib_dir() -> str:
    """Directory of the running interpreter's standard library."""
    return sysconfig.get_paths()["stdlib"]


def _stdlib_files() -> list[str]:
    root = stdlib_dir()
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs
                         if d not in _STDLIB_SKIP_DIRS and not d.startswith(_STDLIB_SKIP_PREFIXES))
        found.extend(os.path.relpath(os.path.join(here, f), root) for f in files if f.endswith(".py"))
    return sorted(p.replace(os.sep, "/") for p in found)


def _pydoc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics
    return topics


def _text_files(directory: str) -> list[str]:
    found = []
    for here, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.relpath(os.path.join(here, f), directory)
                     for f in files if f.endswith(TEXT_SUFFIXES))
    return sorted(p.replace(os.sep, "/") for p in found)


def is_directory_source(source: str) -> bool:
    return source not in SOURCES


def document_ids(source: str, order_seed: int | None = None) -> list[str]:
    """Ids of every document of ``source`` (``SOURCES`` or a directory): sorted, or in a
    permutation fixed by ``order_seed`` (a SHA-1 of seed and id: stable across runs).

    Raises DataError when the source has no documents (e.g. an empty directory).
    """
    if source == "pydoc":
        ids = [f"pydoc:{t}" for t in sorted(_pydoc_topics())]
    elif source == "stdlib":
        ids = [f"stdlib:{p}" for p in _stdlib_files()]
    elif source == "both":
        ids = document_ids("pydoc") + document_ids("stdlib")
    else:
        if not os.path.isdir(source):
            raise DataError(f"text source is neither one of {SOURCES} nor a directory", path=source)
        ids = [f"file:{p}" for p in _text_files(source)]
    if not ids:
        raise DataError(f"no documents (looked for {', '.join('*' + s for s in TEXT_SUFFIXES)})"
                        if is_directory_source(source) else "no documents", path=source)
    if order_seed is not None:
        ids.sort(key=lambda i: hashlib.sha1(f"{order_seed}/{i}".encode()).digest())
    return ids


def _docstrings(tree: ast.AST) -> list[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    found = []
    doc = ast.get_docstring(tree, clean=True) if isinstance(
        tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc:
        found.append(doc)
    for child in getattr(tree, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found.extend(_docstrings(child))
    return found


def read_document(doc_id: str, source: str | None = None) -> Document:
    """The document ``doc_id``; ``source`` is the directory for ``file:`` ids.

    A stdlib file that does not parse gives an empty document (it has no prose for us);
    an unreadable directory file raises DataError naming it.
    """
    kind, _, name = doc_id.partition(":")
    if kind == "pydoc":
        return Document(doc_id, _pydoc_topics()[name])
    if kind == "stdlib":
        try:
            with open(os.path.join(stdlib_dir(), name), "rb") as f:
                tree = ast.parse(f.read(), filename=name)
        except (OSError, SyntaxError, ValueError):
            return Document(doc_id, "")
        return Document(doc_id, "\n\n".join(_docstrings(tree)))
    if kind == "file" and source is not None:
        path = os.path.join(source, name)
        try:
            with open(path, encoding="utf-8") as f:
                return Document(doc_id, f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read document {doc_id}: {e}", path=path) from None
    raise ValueError(f"unknown document id {doc_id!r}")


def iter_documents(source: str, *, order_seed: int | None = None, limit: int | None = None,
                   skip: Sequence[str] = ()) -> Iterator[Document]:
    """Documents of ``source`` in ``document_ids`` order (at most ``limit``; ids in ``skip``
    left out), read lazily."""
    skipped = set(skip)
    count = 0
    for doc_id in document_ids(source, order_seed):
        if limit is not None and count >= limit:
            return
        if doc_id in skipped:
            continue
        yield read_document(doc_id, source if is_directory_source(source) else None)
        count += 1
