"""Reader for the public puzzle CSV layout ``source,question,answer,rating`` (header line first).

Used by the Sudoku-Extreme and Maze-Hard importers. Files can hold millions of rows, so rows
are returned in chunks with the boards as uint8 ASCII arrays [n, board_len] for vectorised
validation; every chunk keeps each row's 1-based line number (the header is line 1) so a
validator can name the offending row in its ``DataError``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterator

import numpy as np

from data_pipeline.common import DataError

CSV_HEADER = ("source", "question", "answer", "rating")


@dataclasses.dataclass
class CsvChunk:
    """A block of rows. questions/answers: uint8 [n, board_len] ASCII codes; ratings: float64 [n]."""

    path: str
    line_numbers: np.ndarray
    sources: list[str]
    questions: np.ndarray
    answers: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)

    def error(self, i: int, message: str) -> DataError:
        """A DataError naming this file and the line of row ``i`` of the chunk."""
        return DataError(message, path=self.path, row=int(self.line_numbers[i]))

    def select(self, keep: np.ndarray) -> "CsvChunk":
        """Rows where boolean ``keep`` [n] is true."""
        idx = np.flatnonzero(keep)
        return CsvChunk(self.path, self.line_numbers[idx], [self.sources[i] for i in idx],
                        self.questions[idx], self.answers[idx], self.ratings[idx])


def _board_bytes(strings: list[str]) -> np.ndarray:
    # Lengths were checked to be equal; non-ASCII characters become '?' (rejected by validators)
    # so that one character is always one byte.
    joined = "".join(strings).encode("ascii", errors="replace")
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(strings), -1)


def iter_csv_chunks(path: str | os.PathLike, board_len: int,
                    chunk_rows: int = 100_000) -> Iterator[CsvChunk]:
    """Yield the rows of a puzzle CSV in chunks, checking the layout of every row.

    Raises ``DataError`` (file + row) for: an empty file, a wrong header, a row without 4
    columns, a question/answer whose length is not ``board_len``, a rating that is not a number.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError("empty file (expected the header 'source,question,answer,rating')",
                            path=path)
        if tuple(h.strip().lower() for h in header) != CSV_HEADER:
            raise DataError(f"expected the header {','.join(CSV_HEADER)!r}, got {','.join(header)!r}",
                            path=path, row=1)
        lines: list[int] = []
        sources: list[str] = []
        questions: list[str] = []
        answers: list[str] = []
        ratings: list[float] = []
        any_rows = False

        def flush() -> CsvChunk:
            chunk = CsvChunk(path, np.asarray(lines, dtype=np.int64), list(sources),
                             _board_bytes(questions), _board_bytes(answers),
                             np.asarray(ratings, dtype=np.float64))
            for buf in (lines, sources, questions, answers, ratings):
                buf.clear()
            return chunk

        for row in reader:
            line = reader.line_num
            if not row:  # blank line
                continue
            if len(row) != 4:
                raise DataError(f"expected 4 columns (source,question,answer,rating), got {len(row)}",
                                path=path, row=line)
            source, q, a, rating = row
            if len(q) != board_len:
                raise DataError(f"question has {len(q)} characters, expected {board_len}",
                                path=path, row=line)
            if len(a) != board_len:
                raise DataError(f"answer has {len(a)} characters, expected {board_len}",
                                path=path, row=line)
            try:
                r = float(rating)
            except ValueError:
                raise DataError(f"rating {rating!r} is not a number", path=path, row=line) from None
            lines.append(line)
            sources.append(source)
            questions.append(q)
            answers.append(a)
            ratings.append(r)
            any_rows = True
            if len(lines) >= chunk_rows:
                yield flush()
        if not any_rows:
            raise DataError("empty file: a header but no data rows", path=path)
        if lines:
            yield flush()


def check_charset(chunk: CsvChunk, boards: np.ndarray, allowed: str, what: str) -> None:
    """Raise DataError at the first row of ``boards`` [n, L] (ASCII) with a char outside ``allowed``."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed.encode("ascii"), dtype=np.uint8)] = True
    bad_rows = np.flatnonzero(~table[boards].all(axis=1))
    if bad_rows.size:
        i = int(bad_rows[0])
        bad = sorted({chr(c) for c in boards[i] if not table[c]})
        raise chunk.error(i, f"{what} contains unknown characters {bad!r} (allowed: {allowed!r})")
