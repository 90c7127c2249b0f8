"""Deterministic rendering of text and ARC grids to RGB images (uint8 [height, width, 3]).

Why: models that read pixels instead of tokens need the same puzzle or sentence to give the same
image on every machine, and need to know where each character / cell ended up. This module
draws both kinds of input with Pillow and numpy only:

* ``render_text`` lays text out on a fixed monospace character grid (``TextStyle``): line ``i``,
  column ``j`` occupies the cell ``glyph_box(i, j, style)``. ``wrap_text`` and ``fits`` give the
  layout without drawing, so a data builder can drop or split texts that do not fit.
* ``render_grid`` paints an ARC grid (symbols 0..9, -1 = "no cell") as squares of the standard
  ARC colours (``ARC_PALETTE``), top-left aligned, with the largest integer cell size that fits.

Determinism. The font is DejaVu Sans Mono from matplotlib's data directory (``font_path``), so
every machine reads the same font file. Pillow is told to use its BASIC layout engine (FreeType
only): the optional libraqm engine is present on some installs and not on others, and it places
glyphs at fractional positions (7.22 px per character at size 12), whereas BASIC uses the hinted,
whole-pixel advance (7 px), which is what makes one ``ImageDraw.text`` call per line land glyph
``j`` exactly at column ``j``. Pixels are then a function of (text, style, Pillow's bundled
FreeType); Pillow wheels of one version bundle the same FreeType, so pin Pillow for bit-identical
images across machines.

Character cells. Cell boxes are ``char_width`` (the font's advance) x ``line_height`` (ascent +
descent) pixels. Each line is drawn on its own strip of exactly its cells and pasted in, so no
pixel outside the cells of a line's characters is ever touched. Inside a line, a few wide glyphs
(``#``, ``W``, ``_``, ``w`` at some sizes) leave faint anti-aliasing (never darker than 128 for
printable ASCII at the sizes checked) in the first pixel column of the neighbouring cell, because
their outline is a fraction of a pixel wider than the rounded advance.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Standard ARC colours for symbols 0..9 (the palette of the ARC-AGI web app).
ARC_PALETTE: np.ndarray = np.array(
    [
        [0x00, 0x00, 0x00],  # 0 black
        [0x00, 0x74, 0xD9],  # 1 blue
        [0xFF, 0x41, 0x36],  # 2 red
        [0x2E, 0xCC, 0x40],  # 3 green
        [0xFF, 0xDC, 0x00],  # 4 yellow
        [0xAA, 0xAA, 0xAA],  # 5 grey
        [0xF0, 0x12, 0xBE],  # 6 magenta
        [0xFF, 0x85, 0x1B],  # 7 orange
        [0x7F, 0xDB, 0xFF],  # 8 azure
        [0x87, 0x0C, 0x25],  # 9 maroon
    ],
    dtype=np.uint8,
)
ARC_PALETTE.setflags(write=False)  # a shared constant: a caller's in-place edit must not recolour later renders

# Paper of text images and everything outside a grid. White is not an ARC colour, so "no cell"
# can never be confused with a cell of colour 0 (black).
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
INK: tuple[int, int, int] = (0, 0, 0)  # text colour

TAB_SPACES = 4  # a tab becomes this many spaces (plain replacement, no tab stops)

# A code point that no font maps (U+10FFFF is a Unicode noncharacter): drawing it shows the
# font's ".notdef" glyph, which is what any other missing character would show too.
_NOTDEF_PROBE = "\U0010ffff"


def font_path() -> str:
    """Path of DejaVuSansMono.ttf inside matplotlib's data directory (matplotlib is a dependency)."""
    import matplotlib  # imported here: only this function needs it, and only to find the file

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSansMono.ttf")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"DejaVuSansMono.ttf not found at {path}; render.py needs the font shipped with "
            f"matplotlib (reinstall matplotlib)"
        )
    return path


@functools.lru_cache(maxsize=16)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """The font at ``size`` px, loaded once per (path, size): loading parses the whole file."""
    # BASIC layout: whole-pixel advances and the same result whether or not libraqm is installed.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=64)
def _cell_metrics(size: int) -> tuple[int, int]:
    """(char_width, line_height) in pixels of the font at ``size``."""
    font = _font(font_path(), size)
    advance = font.getlength("M")  # monospace: every supported character has this advance
    if advance != int(advance) or advance < 1:
        # Cannot happen with BASIC layout (FreeType's hinted advances are whole pixels); if a
        # future Pillow changes that, the one-call-per-line layout would drift off the cells.
        raise RuntimeError(f"font size {size}: advance width {advance} is not a whole number of pixels")
    ascent, descent = font.getmetrics()
    return int(advance), ascent + descent


@functools.lru_cache(maxsize=65536)
def _glyph_is_drawable(char: str, size: int) -> bool:
    """True when the font draws ``char`` as a real glyph exactly one cell wide."""
    font = _font(font_path(), size)
    char_width, line_height = _cell_metrics(size)
    if not char.isprintable() or font.getlength(char) != char_width:
        return False  # control characters, and anything that would break the monospace grid

    def coverage(c: str) -> bytes:
        image = Image.new("L", (3 * char_width, 2 * line_height), 0)
        ImageDraw.Draw(image).text((char_width, 0), c, fill=255, font=font, anchor="la")
        return image.tobytes()

    # Pillow has no "does the font have this glyph" query; a missing glyph renders as .notdef.
    return coverage(char) != coverage(_NOTDEF_PROBE)


@dataclasses.dataclass(frozen=True)
class TextStyle:
    """Image size, font size and margin of a text image; derives the character grid from the font.

    ``columns`` x ``rows`` character cells of ``char_width`` x ``line_height`` pixels start at
    (``margin``, ``margin``); the rest of the image is paper.
    """

    height: int = 224
    width: int = 224
    font_size: int = 12
    margin: int = 2

    def __post_init__(self) -> None:
        for name in ("height", "width", "font_size", "margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"TextStyle.{name} must be an int, got {value!r}")
            if value < (0 if name == "margin" else 1):
                bound = "non-negative" if name == "margin" else "positive"
                raise ValueError(f"TextStyle.{name} must be {bound}, got {value}")
        if self.columns < 1:
            raise ValueError(
                f"TextStyle.width={self.width} with margin={self.margin} fits no character of "
                f"font_size={self.font_size} (char_width={self.char_width})"
            )
        if self.rows < 1:
            raise ValueError(
                f"TextStyle.height={self.height} with margin={self.margin} fits no line of "
                f"font_size={self.font_size} (line_height={self.line_height})"
            )

    @property
    def char_width(self) -> int:
        """Advance width of every character in pixels (the font is monospace)."""
        return _cell_metrics(self.font_size)[0]

    @property
    def line_height(self) -> int:
        """Distance between the tops of consecutive lines in pixels (ascent + descent)."""
        return _cell_metrics(self.font_size)[1]

    @property
    def columns(self) -> int:
        """Characters per line that fit inside the margins."""
        return (self.width - 2 * self.margin) // self.char_width

    @property
    def rows(self) -> int:
        """Lines that fit inside the margins."""
        return (self.height - 2 * self.margin) // self.line_height


def _wrap_line(line: str, columns: int) -> list[str]:
    """Split one line (no newlines) into pieces of at most ``columns`` characters."""
    pieces: list[str] = []
    while len(line) > columns:
        # A space just after the first `columns` characters is a valid break too, hence +1.
        head = line[: columns + 1]
        cut = head.rfind(" ")
        if cut <= 0 or not head[:cut].strip(" "):
            # No space, or only indentation before the last one: break the word at `columns`.
            pieces.append(line[:columns])
            line = line[columns:]
        else:
            # Break at the space; the spaces around the break are dropped (like textwrap).
            pieces.append(head[:cut].rstrip(" "))
            line = line[cut + 1 :].lstrip(" ")
    if line or not pieces:  # the spaces that overflowed a wrapped line do not make a blank line
        pieces.append(line)
    return pieces


def wrap_text(text: str, style: TextStyle) -> list[str]:
    """Lay ``text`` out into lines of at most ``style.columns`` characters.

    * A tab becomes 4 spaces; ``"\\r\\n"`` counts as ``"\\n"``.
    * ``"\\n"`` starts a new line, so ``"a\\n"`` is two lines (the second empty) and ``""`` is one.
    * A longer line is wrapped at the last space that keeps the piece <= ``columns`` characters;
      a word longer than a line is broken at ``columns``. Only ``" "`` is a break point (a
      no-break space does not break).
    * Wrapping drops the spaces at each break: the trailing spaces of a wrapped piece and the
      leading spaces of its continuation. Lines that need no wrapping keep all their spaces.

    Each output character maps to one cell; ``render_text`` draws them 1:1.
    """
    text = text.replace("\r\n", "\n").replace("\t", " " * TAB_SPACES)
    lines: list[str] = []
    for line in text.split("\n"):
        lines.extend(_wrap_line(line, style.columns))
    return lines


def fits(text: str, style: TextStyle) -> bool:
    """True when ``render_text(text, style)`` can draw ``text`` (its wrapped lines fit ``style.rows``)."""
    return len(wrap_text(text, style)) <= style.rows


def glyph_box(line: int, column: int, style: TextStyle) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of character cell (line, column); bottom/right exclusive."""
    if not (0 <= line < style.rows and 0 <= column < style.columns):
        raise ValueError(f"cell ({line}, {column}) is outside the {style.rows} x {style.columns} character grid")
    top = style.margin + line * style.line_height
    left = style.margin + column * style.char_width
    return top, left, top + style.line_height, left + style.char_width


def _drawable(line: str, font_size: int) -> str:
    """``line`` with whitespace shown as a blank and characters the font cannot draw as ``"?"``."""
    return "".join(
        " " if char.isspace() else char if _glyph_is_drawable(char, font_size) else "?" for char in line
    )


def render_text(text: str, style: TextStyle = TextStyle()) -> np.ndarray:
    """Draw ``text`` as INK on BACKGROUND paper; returns uint8 [style.height, style.width, 3].

    The layout is ``wrap_text(text, style)``: line ``i``, character ``j`` fills
    ``glyph_box(i, j, style)``. Whitespace (other than the ``"\\n"`` line breaks) is drawn blank;
    a character the font lacks, a control character, or a character whose advance is not one
    cell (e.g. CJK) is drawn as ``"?"``. Combining marks are not composed with their base
    character: each takes its own cell. Raises ValueError when the text needs more than
    ``style.rows`` lines.
    """
    lines = wrap_text(text, style)
    if len(lines) > style.rows:
        raise ValueError(
            f"text needs {len(lines)} lines but style.rows is {style.rows} "
            f"({style.columns} characters per line)"
        )
    font = _font(font_path(), style.font_size)
    image_HW3 = np.empty((style.height, style.width, 3), dtype=np.uint8)
    image_HW3[:] = BACKGROUND
    for i, line in enumerate(lines):
        if not line:
            continue
        # Draw the line on a strip of exactly its cells, so no glyph can touch other lines or the
        # paper beyond the line's last character (image bounds clip it).
        strip = Image.new("RGB", (len(line) * style.char_width, style.line_height), BACKGROUND)
        ImageDraw.Draw(strip).text((0, 0), _drawable(line, style.font_size), fill=INK, font=font, anchor="la")
        top, left, bottom, _ = glyph_box(i, 0, style)
        image_HW3[top:bottom, left : left + strip.width] = np.asarray(strip)
    return image_HW3


def grid_cell_size(shape: tuple[int, int], height: int, width: int) -> int:
    """Largest integer cell side ``c`` with ``shape[0] * c <= height`` and ``shape[1] * c <= width``."""
    rows, cols = shape
    if rows < 1 or cols < 1:
        raise ValueError(f"grid shape must be positive, got {tuple(shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    cell = min(height // rows, width // cols)
    if cell < 1:
        raise ValueError(
            f"a {rows} x {cols} grid does not fit a {height} x {width} image (needs >= 1 pixel per cell)"
        )
    return cell


def render_grid(grid: np.ndarray, height: int = 224, width: int = 224) -> np.ndarray:
    """Paint an ARC grid; returns uint8 [height, width, 3].

    ``grid`` is an integer array [h, w] of symbols 0..9, or -1 for "no cell" (e.g. the unused
    part of a padded 30 x 30 canvas). Cell (r, c) fills the ``s`` x ``s`` square at
    (r * s, c * s), ``s = grid_cell_size((h, w), height, width)``, with ``ARC_PALETTE[symbol]``;
    -1 cells and everything outside the h*s x w*s area are BACKGROUND, so the grid's own size
    stays visible.
    """
    grid_hw = np.asarray(grid)
    if grid_hw.ndim != 2:
        raise ValueError(f"grid must be 2-D [h, w], got shape {grid_hw.shape}")
    if grid_hw.size and not np.issubdtype(grid_hw.dtype, np.integer):
        raise ValueError(f"grid must hold integers, got dtype {grid_hw.dtype}")
    if grid_hw.size and (grid_hw.min() < -1 or grid_hw.max() > 9):
        bad = sorted({int(v) for v in grid_hw[(grid_hw < -1) | (grid_hw > 9)].ravel()})
        raise ValueError(f"grid values must be in -1..9 (-1 = no cell), got {bad[:10]}")
    cell = grid_cell_size(grid_hw.shape, height, width)  # also rejects an empty grid
    h, w = grid_hw.shape

    # Row 10 of this palette is BACKGROUND, and index -1 picks the last row: -1 cells need no
    # special case.
    palette_11x3 = np.concatenate([ARC_PALETTE, np.array([BACKGROUND], dtype=np.uint8)])
    cells_hw3 = palette_11x3[grid_hw.astype(np.int64)]
    # Each cell becomes a cell x cell square.
    squares_HW3 = np.repeat(np.repeat(cells_hw3, cell, axis=0), cell, axis=1)

    image_HW3 = np.empty((height, width, 3), dtype=np.uint8)
    image_HW3[:] = BACKGROUND
    image_HW3[: h * cell, : w * cell] = squares_HW3
    return image_HW3
