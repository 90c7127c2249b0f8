"""The pixel path of a vision-unified TRM: ``rendered_text`` and ``arc_pixels``.

Both datasets give the model an *image* and ask for *tokens*, in one shared vocabulary, so
that they (and the token datasets whose ids they reuse) can be mixed in one run:

=============  ==========================================================================
token          meaning
=============  ==========================================================================
``0``          ``PAD``: padding (labels: no loss; ``StaticMetadata.ignore_label_id``)
``1``          ``EOS``: end of a text / of an ARC grid row or column (``arc.EOS_TOKEN``)
``2 .. 11``    ARC colours 0..9 (the very ids of ``data_pipeline/arc.py``)
``12``         ``BOS``: start of a generated text (the first input of ``rendered_text``)
``13 .. 268``  a UTF-8 byte ``b`` is token ``13 + b`` (``encode_text`` / ``decode_text``)
=============  ==========================================================================

``VOCAB_SIZE = 269``. ``rendered_text`` uses every id up to 268 (its ``vocab_size``);
``arc_pixels`` only 0..11 and keeps ARC's ``vocab_size`` 12, so its data is ``arc``'s.

Every example of both carries two batch extras (``PuzzleSource.gather`` puts them in batches):

* ``image`` uint8 [H, W, 3], drawn by ``data_pipeline/render.py``;
* ``causal`` int32 scalar: 1 when the labels are a token sequence generated left to right
  (``rendered_text``: teacher forcing, ``inputs`` = the labels shifted right behind ``BOS``),
  0 when all outputs are predicted at once (``arc_pixels``).

``rendered_text`` (``RenderedText``): an image of one line of real code or prose -> its bytes.
  Documents come from ``data_pipeline/lm_sources.py``: by default the running interpreter's
  standard library source files (code, as the ``code`` dataset) and its documentation (prose,
  as the ``text`` dataset: the pydoc topics and the stdlib docstrings), read alternately (the
  stream with fewer candidate lines so far gives the next document) so code and prose are both
  present however early the reading stops; otherwise ``source`` is a path in any format those
  readers take (text formats by suffix, any other file / glob / a directory's code files as
  source code). A unit of text is one non-blank line: surrounding whitespace stripped, runs of
  whitespace collapsed to one space, kept only if it is printable ASCII (the renderer draws
  exactly these glyphs, and one byte is one character, so byte accuracy is character accuracy)
  of ``min_chars..max_chars`` characters; a longer line gives its longest prefix that ends
  before a space and has at most ``max_chars`` characters, if that prefix has ``min_chars``.
  Each document goes to train or test by ``lm_sources.split_of`` (as the language datasets);
  a unit is kept at its first occurrence only, so a line never sits in both splits. Reading
  stops once both splits have ``CANDIDATE_FACTOR`` x their maximum count of candidates (the
  whole standard library is not needed for 20k lines); a seeded permutation of each split's
  candidates is then walked, keeping units that ``render.fits`` the image, up to
  ``max_train`` / ``max_test``. One unit = one group of one puzzle of one example, identifier
  0; extra ``text`` (the unit, not a batch extra) serves evaluators and printed predictions.

``arc_pixels`` (``ArcPixels``): the ``arc`` dataset (same sources, presets, augmentations,
  identifiers, labels and extras, so the ARC evaluator reads it unchanged) whose *input* grid
  is only an image: the augmented 30x30 input canvas (the grid at the example's ``offset``,
  which its output shares) is rendered whole by ``render.render_grid`` (colour tokens -> ARC
  colours, pad and end-of-grid -> background) at ``image_size`` x ``image_size``, and the
  ``inputs`` tokens are all ``PAD``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipeline import arc, lm_sources, render, text_sources
from data_pipeline.builder import PuzzleDatasetBuilder
from data_pipeline.common import DataError, Puzzle, PuzzleGroup, StaticMetadata
from data_pipeline.registry import register_dataset

# -- the shared vocabulary ----------------------------------------------------------------------
PAD = 0
EOS = 1
COLOR_OFFSET = arc.COLOR_OFFSET      # ARC colour c is token c + 2 (2..11)
BOS = 12
BYTE_OFFSET = 13                     # UTF-8 byte b is token 13 + b
VOCAB_SIZE = BYTE_OFFSET + 256       # 269
assert (arc.PAD_TOKEN, arc.EOS_TOKEN, arc.VOCAB_SIZE) == (PAD, EOS, BOS)

BATCH_EXTRAS = ("image", "causal")
# Reading stops once each split has this many times its maximum count of candidate units.
CANDIDATE_FACTOR = 4


def encode_text(text: str) -> np.ndarray:
    """Tokens int32 [n] of the UTF-8 bytes of ``text`` (byte b -> ``13 + b``)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET


def decode_text(tokens: Any) -> str:
    """The text of ``tokens``: bytes up to the first ``EOS`` or ``PAD``; other non-byte tokens
    (``BOS``, colours, -100 ignore labels) are skipped; invalid UTF-8 becomes U+FFFD."""
    out = bytearray()
    for t in np.asarray(tokens).ravel().tolist():
        if t in (EOS, PAD):
            break
        if BYTE_OFFSET <= t < VOCAB_SIZE:
            out.append(t - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


def _image_feature(height: int, width: int) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(height, width, 3), dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES)


# -- rendered_text ------------------------------------------------------------------------------
def line_unit(line: str, min_chars: int, max_chars: int) -> str | None:
    """The unit of text of one line (module docstring), or None when the line gives none."""
    unit = " ".join(line.split())
    if len(unit) < min_chars or not (unit.isascii() and unit.isprintable()):
        return None
    if len(unit) > max_chars:
        cut = unit.rfind(" ", 0, max_chars + 1)  # the prefix unit[:cut] ends before a space
        if cut < min_chars:
            return None
        unit = unit[:cut]
    return unit


def _interleave(streams: list[Iterator[lm_sources.SourceDocument]], counts: list[int]
                ) -> Iterator[tuple[int, lm_sources.SourceDocument]]:
    """``(stream, document)``: the next document always from the live stream whose ``counts``
    (updated by the caller) is lowest, the first such stream on ties."""
    live = list(range(len(streams)))
    while live:
        k = min(live, key=lambda i: counts[i])
        document = next(streams[k], None)
        if document is None:
            live.remove(k)
        else:
            yield k, document


@dataclasses.dataclass(frozen=True)
class RenderedTextOptions:
    """``source`` "" = the interpreter's standard library code and documentation (offline),
    else a file, directory or glob (module docstring); ``height`` x ``width`` images of text at
    ``font_size``; units of ``min_chars..max_chars`` characters; at most ``max_train`` /
    ``max_test`` units per split; documents to test by ``validation_fraction``; ``seed`` for
    the split and the sample."""

    source: str = ""
    height: int = 224
    width: int = 224
    font_size: int = 12
    max_chars: int = 64
    min_chars: int = 8
    max_train: int = 20000
    max_test: int = 1000
    validation_fraction: float = 0.05
    seed: int = 0


SPLIT_OF = {"train": "train", "test": "validation"}  # dataset split -> lm_sources.split_of's name


@register_dataset
class RenderedText(PuzzleDatasetBuilder):
    """Image of a line of code or prose -> its byte tokens, left to right (module docstring)."""

    name = "rendered_text"
    Options = RenderedTextOptions
    VERSION = tfds.core.Version("1.0.0")
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "tiny": {"height": 32, "width": 128, "font_size": 10, "max_chars": 20, "min_chars": 6,
                 "max_train": 4000, "max_test": 256}}
    batch_extras: ClassVar[tuple[str, ...]] = BATCH_EXTRAS

    def __init__(self, **kwargs: Any):
        self._units: dict[str, list[str]] | None = None
        super().__init__(**kwargs)

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        options = super().normalize_options(options)
        o = options
        for field in ("height", "width", "font_size", "min_chars", "max_train", "max_test"):
            if getattr(o, field) < 1:
                raise ValueError(f"{cls.name}: {field}={getattr(o, field)} must be >= 1")
        if o.max_chars < o.min_chars:
            raise ValueError(f"{cls.name}: max_chars={o.max_chars} must be >= min_chars={o.min_chars}")
        if not 0.0 < o.validation_fraction < 1.0:
            raise ValueError(f"{cls.name}: validation_fraction={o.validation_fraction} must be in (0, 1)")
        return options

    @classmethod
    def summary(cls, o: Any) -> str:
        source = "files" if o.source else "default"
        return f"{source}_{o.height}x{o.width}_f{o.font_size}_c{o.max_chars}"

    @property
    def style(self) -> render.TextStyle:
        o = self.options
        return render.TextStyle(height=o.height, width=o.width, font_size=o.font_size)

    def static_metadata(self) -> StaticMetadata:
        return StaticMetadata(seq_len=self.options.max_chars + 1, vocab_size=VOCAB_SIZE, pad_id=PAD,
                              ignore_label_id=PAD, blank_identifier_id=0, num_puzzle_identifiers=1,
                              sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"image": _image_feature(self.options.height, self.options.width),
                "causal": tfds.features.Scalar(dtype=np.int32),
                "text": tfds.features.Text()}

    # -- units -------------------------------------------------------------------------------
    def document_streams(self) -> list[Iterator[lm_sources.SourceDocument]]:
        """The documents of the source, as streams read alternately (module docstring)."""
        source = self.options.source
        code_suffixes = tuple(sorted({s for v in lm_sources.CODE_EXTENSIONS.values() for s in v}))
        if not source:
            return [lm_sources.code_documents("", (".py",)), lm_sources.text_documents("")]
        if os.path.isfile(source):
            if source.endswith(lm_sources.TEXT_FILE_SUFFIXES):
                return [lm_sources.text_documents(source)]
            return [lm_sources.code_documents(source, code_suffixes)]
        if os.path.isdir(source):
            streams = []
            names = [name for _, _, files in os.walk(source) for name in files]
            if any(n.endswith(code_suffixes) for n in names):
                streams.append(lm_sources.code_documents(source, code_suffixes))
            if any(n.endswith(lm_sources.TEXT_FILE_SUFFIXES) for n in names):
                streams.append(lm_sources.text_documents(source))
            if not streams:
                raise DataError(f"no text files ({', '.join(lm_sources.TEXT_FILE_SUFFIXES)}) and no "
                                f"source files ({', '.join(code_suffixes)})", path=source)
            return streams
        if any(c in source for c in "*?["):
            return [lm_sources.code_documents(source, code_suffixes)]
        raise DataError("rendered_text source does not exist (expected a file, a directory or a glob "
                        "pattern; an empty source means the Python standard library)", path=source)

    def candidates(self) -> dict[str, list[str]]:
        """Every split's distinct candidate units in reading order (first occurrence wins),
        until both splits have ``CANDIDATE_FACTOR`` x their maximum (or the source ends)."""
        o = self.options
        want = {"train": CANDIDATE_FACTOR * o.max_train, "test": CANDIDATE_FACTOR * o.max_test}
        found: dict[str, list[str]] = {"train": [], "test": []}
        seen: set[str] = set()
        streams = self.document_streams()
        counts = [0] * len(streams)
        hint = lm_sources.count_hint("", (".py",)) + lm_sources.count_hint("") if not o.source else None
        documents = tqdm(_interleave(streams, counts), desc=f"{self.name}: reading", unit="doc",
                         total=hint, leave=False, mininterval=2.0)
        for k, document in documents:
            split = "test" if lm_sources.split_of(document.doc_id, o.validation_fraction,
                                                  o.seed) == "validation" else "train"
            units = found[split]
            for line in document.text.splitlines():
                unit = line_unit(line, o.min_chars, o.max_chars)
                if unit is not None and unit not in seen:
                    seen.add(unit)
                    units.append(unit)
                    counts[k] += 1
            if all(len(found[s]) >= want[s] for s in found):
                break
        documents.close()
        return found

    def units(self) -> dict[str, list[str]]:
        """The units of each split (made once per builder): a seeded sample of the candidates
        that fit the image, in the sample's order."""
        if self._units is None:
            o = self.options
            style = self.style
            found = self.candidates()
            maximum = {"train": o.max_train, "test": o.max_test}
            self._units = {}
            for i, split in enumerate(("train", "test")):
                pool = found[split]
                rng = np.random.default_rng([o.seed, i])
                chosen: list[str] = []
                train = set(self._units.get("train", ()))
                for j in rng.permutation(len(pool)):
                    unit = pool[j]
                    if unit not in train and render.fits(unit, style):
                        chosen.append(unit)
                        if len(chosen) == maximum[split]:
                            break
                self._units[split] = chosen
        return self._units

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        return self.generate_groups_from(split, 0)

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        units = self.units()[split]
        if not units:
            o = self.options
            raise DataError(f"{self.name} {split}: no line of {o.min_chars}-{o.max_chars} printable "
                            f"ASCII characters that fits a {o.height}x{o.width} image at font size "
                            f"{o.font_size} (validation_fraction={o.validation_fraction})",
                            path=o.source or text_sources.stdlib_dir())
        style = self.style
        seq_len = self.options.max_chars + 1
        for unit in tqdm(units[start:], desc=f"{self.name} {split}", unit="line", leave=False,
                         initial=start, total=len(units), mininterval=2.0):
            tokens = encode_text(unit)
            n = len(tokens)
            inputs = np.full(seq_len, PAD, dtype=np.int32)
            labels = np.full(seq_len, PAD, dtype=np.int32)
            inputs[0] = BOS
            inputs[1:n + 1] = tokens
            labels[:n] = tokens
            labels[n] = EOS
            yield PuzzleGroup([Puzzle(inputs=inputs[None], labels=labels[None], identifier=0,
                                      extras={"image": render.render_text(unit, style), "causal": 1,
                                              "text": unit})])


# -- arc_pixels ---------------------------------------------------------------------------------
# Canvas token -> render grid cell: colours 2..11 -> 0..9, pad and end-of-grid -> -1 (no cell).
_CANVAS_CELL = np.array([-1, -1] + list(range(arc.NUM_COLORS)), dtype=np.int64)


def canvas_grid(tokens: Any) -> np.ndarray:
    """ARC canvas tokens [900] (or [30, 30]) -> the render grid int [30, 30] (-1 = no cell)."""
    return _CANVAS_CELL[np.asarray(tokens, dtype=np.int64).reshape(arc.GRID_SIZE, arc.GRID_SIZE)]


@dataclasses.dataclass(frozen=True)
class ArcPixelsOptions(arc.ArcOptions):
    """``arc``'s options and the side of the square input images."""

    image_size: int = 224


@register_dataset
class ArcPixels(arc.Arc):
    """ARC with each input grid given as an image (module docstring)."""

    name = "arc_pixels"
    Options = ArcPixelsOptions
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        **arc.Arc.PRESETS, "tiny": {**arc.Arc.PRESETS["tiny"], "image_size": 64}}
    batch_extras: ClassVar[tuple[str, ...]] = BATCH_EXTRAS

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        options = super().normalize_options(options)
        if options.image_size < 1:
            raise ValueError(f"{cls.name}: image_size={options.image_size} must be >= 1")
        return options

    @classmethod
    def summary(cls, o: Any) -> str:
        return f"{super().summary(o)}-px{o.image_size}"

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        size = self.options.image_size
        return {**super().extra_features(), "image": _image_feature(size, size),
                "causal": tfds.features.Scalar(dtype=np.int32)}

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        size = self.options.image_size
        for group in super().generate_groups_from(split, start):
            for puzzle in group.puzzles:
                puzzle.example_extras["image"] = [render.render_grid(canvas_grid(row), size, size)
                                                  for row in puzzle.inputs]
                puzzle.extras["causal"] = 0
                puzzle.inputs = np.full_like(puzzle.inputs, PAD)
            yield group
