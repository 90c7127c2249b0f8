"""Documents -> windows of ``k`` sentence capsules, each with ``m`` finer child spans (text only).

A *capsule* is ``sentences_per_capsule`` consecutive sentences of a document; its *children*
are the capsule's words cut into ``m`` consecutive, near-equal word windows (a capsule of
fewer than ``m`` words repeats words, so there are always ``m`` children). A document's
capsules are cut into non-overlapping *windows* of ``k`` capsules; a last window with fewer
than ``min_capsules`` capsules is dropped, a shorter one is kept and padded later (a document
with fewer than ``min_capsules`` capsules yields no window); ``max_windows`` keeps a
document's first windows only.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from data_pipeline.text_sources import Document


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How documents become windows (every field changes the data)."""

    k: int = 12                    # capsules per window (= seq_len)
    m: int = 4                     # children per capsule
    sentences_per_capsule: int = 1
    min_capsules: int = 4          # fewest real capsules in a window
    min_words: int = 4             # shortest sentence kept (words)
    max_windows: int | None = None  # per document (None = all): bounds long documents

    def __post_init__(self):
        for name in ("k", "m", "sentences_per_capsule", "min_capsules", "min_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {self.max_windows}")
        if self.min_capsules > self.k:
            raise ValueError(f"min_capsules ({self.min_capsules}) must be <= k ({self.k})")


@dataclasses.dataclass(frozen=True)
class Window:
    """``capsules``: 1..k capsule texts; ``children[i]``: the m child spans of capsule i."""

    doc_id: str
    index: int                                 # window number within the document
    capsules: tuple[str, ...]
    children: tuple[tuple[str, ...], ...]


def child_spans(text: str, m: int) -> tuple[str, ...]:
    """``text`` cut into ``m`` consecutive word windows of near-equal size (word i of n goes to
    window floor(i * m / n)); with fewer than m words, windows repeat words in order."""
    words = text.split()
    n = len(words)
    if n == 0:
        raise ValueError("a capsule needs at least one word")
    if n >= m:
        bounds = [(j * n) // m for j in range(m + 1)]
        return tuple(" ".join(words[bounds[j]:bounds[j + 1]]) for j in range(m))
    return tuple(words[(j * n) // m] for j in range(m))


def group_sentences(sentences: Sequence[str], per_capsule: int) -> list[str]:
    """Consecutive sentences joined ``per_capsule`` at a time (a shorter last group is kept)."""
    return [" ".join(sentences[i:i + per_capsule]) for i in range(0, len(sentences), per_capsule)]


def document_windows(doc: Document, spec: WindowSpec) -> list[Window]:
    """The windows of ``doc`` in order (empty if it has fewer than ``min_capsules`` capsules)."""
    capsules = group_sentences(doc.sentences(spec.min_words), spec.sentences_per_capsule)
    windows = []
    for w, start in enumerate(range(0, len(capsules), spec.k)):
        texts = tuple(capsules[start:start + spec.k])
        if len(texts) < spec.min_capsules or (spec.max_windows is not None and w >= spec.max_windows):
            break
        windows.append(Window(doc.doc_id, w, texts, tuple(child_spans(t, spec.m) for t in texts)))
    return windows
