"""Tests of data_pipeline/render.py: ARC grids and monospace text drawn to RGB images.

Expected images are built here with explicit loops (not with the module's numpy code path), and
text tests look at ink (pixels darker than 128) per character cell.
"""
import os

import numpy as np
import pytest

from data_pipeline import render
from data_pipeline.render import (
    ARC_PALETTE,
    BACKGROUND,
    INK,
    TextStyle,
    fits,
    font_path,
    glyph_box,
    grid_cell_size,
    render_grid,
    render_text,
    wrap_text,
)

SMALL = TextStyle(height=32, width=128, font_size=10)  # 20 columns x 2 rows


def ink_mask(image_HW3: np.ndarray, below: int = 128) -> np.ndarray:
    """bool [H, W]: pixels darker than ``below``; the default counts strokes, not faint anti-aliasing."""
    return image_HW3.min(axis=2) < below


def crop(image_HW3: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    return image_HW3[top:bottom, left:right]


def expected_grid_image(grid: list[list[int]], height: int, width: int, cell: int) -> np.ndarray:
    """The image render_grid should produce, written pixel by pixel."""
    palette = {
        0: (0x00, 0x00, 0x00), 1: (0x00, 0x74, 0xD9), 2: (0xFF, 0x41, 0x36), 3: (0x2E, 0xCC, 0x40),
        4: (0xFF, 0xDC, 0x00), 5: (0xAA, 0xAA, 0xAA), 6: (0xF0, 0x12, 0xBE), 7: (0xFF, 0x85, 0x1B),
        8: (0x7F, 0xDB, 0xFF), 9: (0x87, 0x0C, 0x25), -1: (255, 255, 255),
    }
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            r, c = y // cell, x // cell
            inside = r < len(grid) and c < len(grid[0])
            image[y, x] = palette[grid[r][c]] if inside else (255, 255, 255)
    return image


# ----------------------------------------------------------------------------------------- grids


def test_palette_and_colours():
    assert ARC_PALETTE.shape == (10, 3) and ARC_PALETTE.dtype == np.uint8
    hex_colours = ["000000", "0074D9", "FF4136", "2ECC40", "FFDC00", "AAAAAA", "F012BE", "FF851B",
                   "7FDBFF", "870C25"]
    for symbol, hex_colour in enumerate(hex_colours):
        assert tuple(ARC_PALETTE[symbol]) == tuple(bytes.fromhex(hex_colour)), symbol
    assert BACKGROUND == (255, 255, 255) and INK == (0, 0, 0)
    assert not any((ARC_PALETTE == BACKGROUND).all(axis=1))  # "no cell" never looks like a colour
    with pytest.raises(ValueError):
        ARC_PALETTE[0, 0] = 1  # read-only: a caller cannot recolour everyone's renders


def test_render_grid_pixels():
    grid = [[0, 1, 2, 3],
            [4, -1, 6, 7],
            [8, 9, 5, 1]]
    image = render_grid(np.array(grid), height=32, width=40)
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    assert grid_cell_size((3, 4), 32, 40) == 10
    np.testing.assert_array_equal(image, expected_grid_image(grid, 32, 40, cell=10))
    # Spot checks of the same facts, spelled out: whole squares, the -1 cell, the rows below the grid.
    assert (image[10:20, 20:30] == ARC_PALETTE[6]).all()
    assert (image[10:20, 10:20] == BACKGROUND).all()
    assert (image[30:, :] == BACKGROUND).all()


def test_render_grid_width_limited_leaves_right_side_blank():
    grid = [[3, 4], [9, 0]]
    image = render_grid(np.array(grid, dtype=np.int8), height=30, width=11)  # cell = min(15, 5) = 5
    np.testing.assert_array_equal(image, expected_grid_image(grid, 30, 11, cell=5))
    assert (image[:, 10:] == BACKGROUND).all() and (image[10:, :] == BACKGROUND).all()


def test_render_grid_padded_canvas():
    canvas = np.full((30, 30), -1)
    canvas[:2, :3] = [[1, 2, 3], [4, 5, 6]]
    image = render_grid(canvas)  # 224 // 30 = 7 px per cell
    assert grid_cell_size((30, 30), 224, 224) == 7
    assert (image[:7, 14:21] == ARC_PALETTE[3]).all()
    assert (image[7:14, :7] == ARC_PALETTE[4]).all()
    image[:14, :21] = BACKGROUND
    assert (image == BACKGROUND).all()  # every other cell, and the 14-px border, is paper


def test_grid_cell_size():
    assert grid_cell_size((1, 1), 5, 3) == 3
    assert grid_cell_size((2, 7), 224, 224) == 32
    assert grid_cell_size((30, 30), 30, 30) == 1
    with pytest.raises(ValueError, match="does not fit"):
        grid_cell_size((31, 2), 30, 30)
    with pytest.raises(ValueError, match="shape"):
        grid_cell_size((0, 2), 30, 30)


@pytest.mark.parametrize(
    "grid, match",
    [
        (np.array([[0, 10]]), "-1..9"),
        (np.array([[-2, 0]]), "-1..9"),
        (np.zeros((2, 2, 2), dtype=int), "2-D"),
        (np.zeros((3,), dtype=int), "2-D"),
        (np.zeros((2, 2), dtype=float), "integers"),
        (np.zeros((40, 2), dtype=int), "does not fit"),
        (np.zeros((0, 2), dtype=int), "shape"),
    ],
)
def test_render_grid_errors(grid, match):
    with pytest.raises(ValueError, match=match):
        render_grid(grid, height=32, width=32)


# ------------------------------------------------------------------------------------------ text


def test_font_path():
    path = font_path()
    assert os.path.isfile(path) and path.endswith(".ttf")
    assert os.path.basename(path) == "DejaVuSansMono.ttf"


def test_text_style_metrics():
    default = TextStyle()
    assert (default.char_width, default.line_height) == (7, 15)
    assert (default.columns, default.rows) == (31, 14)
    assert (SMALL.char_width, SMALL.line_height, SMALL.columns, SMALL.rows) == (6, 13, 20, 2)
    for style in (default, SMALL, TextStyle(height=100, width=300, font_size=20, margin=0)):
        usable_w, usable_h = style.width - 2 * style.margin, style.height - 2 * style.margin
        assert style.columns * style.char_width <= usable_w < (style.columns + 1) * style.char_width
        assert style.rows * style.line_height <= usable_h < (style.rows + 1) * style.line_height


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"height": 0}, "height"),
        ({"width": -3}, "width"),
        ({"font_size": 0}, "font_size"),
        ({"margin": -1}, "margin"),
        ({"width": 10}, "width"),    # 10 - 4 = 6 px: no 7-px character fits
        ({"height": 16}, "height"),  # 16 - 4 = 12 px: no 15-px line fits
    ],
)
def test_text_style_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TextStyle(**kwargs)


def test_glyph_box():
    style = TextStyle()
    assert glyph_box(0, 0, style) == (2, 2, 17, 9)
    assert glyph_box(2, 3, style) == (2 + 2 * 15, 2 + 3 * 7, 2 + 3 * 15, 2 + 4 * 7)
    with pytest.raises(ValueError):
        glyph_box(style.rows, 0, style)
    with pytest.raises(ValueError):
        glyph_box(0, style.columns, style)


def assert_ink_only_in_cells(image_HW3: np.ndarray, lines: list[str], style: TextStyle, below: int = 128) -> None:
    """Non-space cells hold ink (a pixel darker than ``below``), space cells none, and every pixel
    outside the used cells is paper."""
    used = np.zeros(image_HW3.shape[:2], dtype=bool)
    for i, line in enumerate(lines):
        for j, char in enumerate(line):
            box = glyph_box(i, j, style)
            has_ink = ink_mask(crop(image_HW3, box), below).any()
            assert has_ink == (char != " "), (i, j, char)
            top, left, bottom, right = box
            used[top:bottom, left:right] = True
    assert (image_HW3[~used] == BACKGROUND).all()


def test_render_text_glyph_positions():
    style = TextStyle()
    image = render_text("ab c", style)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert_ink_only_in_cells(image, ["ab c"], style)
    assert ink_mask(image).any() and (image.reshape(-1, 3)[ink_mask(image).ravel()] < 128).all()


def test_render_text_second_line():
    image = render_text("ab\n x y", SMALL)
    assert image.shape == (32, 128, 3)
    assert_ink_only_in_cells(image, ["ab", " x y"], SMALL)
    # The second line starts one line_height below the first.
    assert glyph_box(1, 1, SMALL)[0] == SMALL.margin + SMALL.line_height


@pytest.mark.parametrize("font_size", [10, 12])
def test_one_call_per_line_matches_single_characters(font_size):
    """Each glyph of a line drawn in one call sits exactly in its cell: a line of all printable ASCII
    has, cell by cell, the same ink as each character drawn alone (no drift, no kerning)."""
    ascii_chars = "".join(chr(code) for code in range(32, 127))
    probe = TextStyle(font_size=font_size)
    style = TextStyle(width=2 * probe.margin + len(ascii_chars) * probe.char_width, height=probe.line_height + 4,
                      font_size=font_size)
    line_image = render_text(ascii_chars, style)
    # Any non-paper pixel counts here: at size 10 the thin strokes of ' and | fall between pixel
    # columns and no pixel is darker than 128.
    assert_ink_only_in_cells(line_image, [ascii_chars], style, below=255)
    for j, char in enumerate(ascii_chars):
        alone = render_text(char, style)
        np.testing.assert_array_equal(ink_mask(crop(line_image, glyph_box(0, j, style))),
                                      ink_mask(crop(alone, glyph_box(0, 0, style))), err_msg=repr(char))


def test_different_characters_differ():
    style = TextStyle()
    box = glyph_box(0, 0, style)
    chars = "ABl1O0"
    cells = [crop(render_text(char, style), box) for char in chars]
    for a in range(len(chars)):
        for b in range(a + 1, len(chars)):
            assert not np.array_equal(cells[a], cells[b]), (chars[a], chars[b])


def test_unsupported_characters_render_as_question_mark():
    question = render_text("?", SMALL)
    assert np.array_equal(render_text("\u4e00", SMALL), question)  # CJK: not in DejaVu Sans Mono
    assert np.array_equal(render_text("\x07", SMALL), question)    # control character
    assert np.array_equal(render_text("\u00a0", SMALL), render_text(" ", SMALL))  # no-break space: blank
    accented = render_text("\u00e9", SMALL)  # é is in the font: drawn as itself
    assert not np.array_equal(accented, question)
    assert not np.array_equal(accented, render_text("e", SMALL))


def test_wrap_text_at_spaces():
    sentence = "the quick brown fox jumps over the lazy dog and keeps running far away"
    lines = wrap_text(sentence, SMALL)
    assert lines == ["the quick brown fox", "jumps over the lazy", "dog and keeps", "running far away"]
    assert all(len(line) <= SMALL.columns for line in lines)
    assert " ".join(lines) == sentence  # only the break spaces were dropped
    assert not fits(sentence, SMALL)
    with pytest.raises(ValueError, match=r"4 lines.*rows is 2"):
        render_text(sentence, SMALL)


def test_wrap_text_rules():
    assert wrap_text("", SMALL) == [""]
    assert wrap_text("a\n", SMALL) == ["a", ""]
    assert wrap_text("a\r\nb", SMALL) == ["a", "b"]
    assert wrap_text("\tx", SMALL) == ["    x"]
    assert wrap_text("x" * 45, SMALL) == ["x" * 20, "x" * 20, "x" * 5]           # word broken at columns
    assert wrap_text("a" * 20 + " b", SMALL) == ["a" * 20, "b"]                  # space right after a full line
    assert wrap_text("ab" + " " * 30 + "cd", SMALL) == ["ab", "cd"]              # spaces at the break dropped
    assert wrap_text("a" * 18 + " " * 5, SMALL) == ["a" * 18]                   # overflowing spaces: no blank line
    assert wrap_text("short  line  ", SMALL) == ["short  line  "]                # no wrap: spaces kept
    assert wrap_text("aaaa bbbbbbbbbbbbbbbbbbbbbbbbb", SMALL) == ["aaaa", "b" * 20, "b" * 5]


def test_fits_boundary():
    assert fits("one\ntwo", SMALL)
    assert not fits("one\ntwo\nthree", SMALL)
    assert fits("x" * 40, SMALL) and not fits("x" * 41, SMALL)
    render_text("x" * 40, SMALL)  # exactly full: draws
    with pytest.raises(ValueError, match="3 lines"):
        render_text("x" * 41, SMALL)


def test_render_text_deterministic_and_stateless():
    text = "Determinism: same text,\nsame bytes. W_# \u00e9\u4e00"
    first = render_text(text)
    assert render_text(text).tobytes() == first.tobytes()
    old_font = render._font(font_path(), 12)
    for cached in (render._font, render._cell_metrics, render._glyph_is_drawable):
        cached.cache_clear()
    assert render._font(font_path(), 12) is not old_font  # really a fresh font object
    assert render_text(text).tobytes() == first.tobytes()
    render_text("something else entirely", SMALL)  # other sizes in between leave no trace
    assert render_text(text).tobytes() == first.tobytes()
