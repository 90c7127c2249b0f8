"""The pixel-path datasets (data_pipeline/vision.py): the shared vocabulary, ``rendered_text``
(an image of a line of text -> its bytes, left to right) and ``arc_pixels`` (ARC with the input
grid given only as an image). Images are not stored: they are drawn when a batch is gathered
(``render_batch``), so the images checked here are always those of gathered batches."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import arc, lm_sources, render, vision

# The tiny preset with small counts: builds in about a second from the standard library.
TEXT_OPTIONS = {"preset": "tiny", "max_train": 64, "max_test": 16}
# The tiny ARC preset (6 tasks per subset, 4 augmentations): builds in about a second.
ARC_OPTIONS = {"preset": "tiny"}


# ------------------------------------------------------------------------------- vocabulary
def test_vocabulary_ids_and_text_round_trip():
    assert (vision.PAD, vision.EOS, vision.BOS, vision.VOCAB_SIZE) == (0, 1, 12, 269)
    # The ARC colours keep arc.py's token ids.
    assert (arc.PAD_TOKEN, arc.EOS_TOKEN, arc.COLOR_OFFSET, arc.VOCAB_SIZE) == (0, 1, 2, 12)
    tokens = vision.encode_text("A z~")
    assert tokens.dtype == np.int32
    assert tokens.tolist() == [13 + 65, 13 + 32, 13 + 122, 13 + 126]
    for text in ("def f(x): return x + 1", "", "naïve café ✓", " \t\n"):
        tokens = vision.encode_text(text)
        assert tokens.min(initial=13) >= 13 and tokens.max(initial=0) < 269
        assert vision.decode_text(tokens) == text
    # Stops at EOS or PAD; BOS, colours and ignored labels are skipped; bad UTF-8 is replaced.
    ab = vision.encode_text("ab").tolist()
    assert vision.decode_text([12] + ab + [1] + ab) == "ab"
    assert vision.decode_text(ab + [0] + ab) == "ab"
    assert vision.decode_text([5, ab[0], -100, ab[1], 11]) == "ab"
    assert vision.decode_text([13 + 0xC3]) == "\ufffd"


@pytest.mark.parametrize("line, unit", [
    ("  def   foo(x):\t return  x  ", "def foo(x): return x"),   # stripped, runs collapsed
    ("the quick brown fox jumps over", "the quick brown fox"),    # 30 chars: cut before a space
    ("aaaaaaaaaaaaaaaaaaaa bb", "a" * 20),                        # the space right after 20 chars
    ("aaaa bbbb cccc dddd eeee", "aaaa bbbb cccc dddd"),
    ("abcdefghijklmnopqrstuvwxyz0123 x", None),                   # no space within 20 chars
    ("a bcdefghijklmnopqrstuvwxyz", None),                        # the prefix "a" is too short
    ("café au lait", None),                                       # not ASCII
    ("ring\x07 the bell", None),                                  # not printable
    ("short", None),                                              # under min_chars 6
    ("      ", None),
    ("exactly 20 chars ok!", "exactly 20 chars ok!"),
])
def test_line_units(line, unit):
    assert vision.line_unit(line, 6, 20) == unit


# ------------------------------------------------------------------------------- rendered_text
@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("rendered_text"))
    meta = dp.ensure_built("rendered_text", data_dir, TEXT_OPTIONS)
    splits = {s: dp.load("rendered_text", s, data_dir, **TEXT_OPTIONS) for s in ("train", "test")}
    return data_dir, meta, splits


def test_rendered_text_rows(text_data):
    _, meta, splits = text_data
    style = render.TextStyle(height=32, width=128, font_size=10)
    for split, count in (("train", 64), ("test", 16)):
        m = meta[split]
        assert (m.seq_len, m.vocab_size, m.pad_id, m.ignore_label_id, m.num_puzzle_identifiers) == (21, 269, 0, 0, 1)
        assert m.num_examples == m.total_groups == m.total_puzzles == count
        c = splits[split].columns
        assert "image" not in c  # drawn when read
        assert c["inputs"].shape == c["labels"].shape == (count, 21)
        assert np.asarray(c["causal"]).tolist() == [1] * count
        assert set(np.asarray(c["puzzle_identifier"]).tolist()) == {0}
        for i in range(count):
            text = str(c["text"][i])
            raw = text.encode()
            assert 6 <= len(text) <= 20 and all(32 <= b < 127 for b in raw)
            assert text == text.strip() and "  " not in text
            inputs, labels = np.asarray(c["inputs"][i], np.int64), np.asarray(c["labels"][i], np.int64)
            n = len(raw)
            assert labels[:n].tolist() == [13 + b for b in raw] and labels[n] == 1 and not labels[n + 1:].any()
            assert inputs[0] == 12 and inputs[1:n + 1].tolist() == labels[:n].tolist() and not inputs[n + 1:].any()
            assert vision.decode_text(c["labels"][i]) == text
        # The batch the model gets: ignored labels, the stored inputs, causal, and each row's
        # image drawn from its stored text.
        batch = splits[split].gather(np.arange(count))
        assert set(batch) == {"inputs", "labels", "puzzle_identifiers", "causal", "image"}
        assert batch["image"].shape == (count, 32, 128, 3) and batch["image"].dtype == np.uint8
        assert batch["causal"].tolist() == [1] * count
        np.testing.assert_array_equal(batch["inputs"], np.asarray(c["inputs"]))
        assert (batch["labels"] == -100).sum() == (np.asarray(c["labels"]) == 0).sum()
        for i in range(count):
            np.testing.assert_array_equal(batch["image"][i], render.render_text(str(c["text"][i]), style))
            assert (batch["image"][i] < 128).any()  # some ink
        # Deterministic, and a row's image depends on the row only (not on its batch).
        rows = np.array([5, 0, 5, count - 1])
        again = splits[split].gather(rows)
        np.testing.assert_array_equal(again["image"], batch["image"][rows])
        np.testing.assert_array_equal(splits[split].gather(rows)["image"], again["image"])
        assert splits[split].gather(np.zeros(0, np.int64))["image"].shape == (0, 32, 128, 3)


def test_rendered_text_splits_are_disjoint_and_follow_the_documents(text_data):
    _, _, splits = text_data
    texts = {s: [str(t) for t in splits[s].columns["text"]] for s in splits}
    assert len(set(texts["train"])) == 64 and len(set(texts["test"])) == 16  # no repeats
    assert not set(texts["train"]) & set(texts["test"])
    # Every unit is a line of a document of its own split (the default source: stdlib + docs).
    found = {s: set() for s in splits}
    for stream in (lm_sources.code_documents("", (".py",)), lm_sources.text_documents("")):
        for doc in stream:
            side = "test" if lm_sources.split_of(doc.doc_id, 0.05, 0) == "validation" else "train"
            for line in doc.text.splitlines():
                unit = vision.line_unit(line, 6, 20)
                if unit is not None:
                    found[side].add(unit)
    for s in splits:
        assert set(texts[s]) <= found[s], s


def test_rendered_text_build_is_deterministic(text_data, tmp_path):
    _, _, splits = text_data
    other = str(tmp_path / "again")
    dp.ensure_built("rendered_text", other, TEXT_OPTIONS)
    for split in ("train", "test"):
        source = dp.load("rendered_text", split, other, **TEXT_OPTIONS)
        again = source.columns
        assert set(again) == set(splits[split].columns)
        for key, column in splits[split].columns.items():
            np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(column), err_msg=key)
        rows = np.arange(len(source))[::-1]
        a, b = source.gather(rows), splits[split].gather(rows)
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_rendered_text_loader_batches(text_data):
    data_dir, _, _ = text_data
    style = render.TextStyle(height=32, width=128, font_size=10)
    it = dp.train_iterator("rendered_text", data_dir, TEXT_OPTIONS, global_batch_size=8, seed=0,
                           process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (8, 32, 128, 3)
    assert batch["causal"].shape == (8,) and (np.asarray(batch["causal"]) == 1).all()
    assert batch["inputs"].shape == batch["labels"].shape == (8, 21)
    assert (batch["inputs"][:, 0] == 12).all()
    for image, labels in zip(batch["image"], batch["labels"]):  # each image shows its row's line
        np.testing.assert_array_equal(image, render.render_text(vision.decode_text(labels), style))
    # Evaluation pads the last batch after gathering (zeros for the image).
    batches = list(dp.eval_iterator("rendered_text", data_dir, TEXT_OPTIONS, global_batch_size=6,
                                    process_index=0, process_count=1))
    last = batches[-1]
    mask = np.asarray(last["mask"])
    assert last["image"].shape == (6, 32, 128, 3) and mask.sum() == 16 % 6
    assert not last["image"][~mask].any() and (last["image"][mask] < 128).any()


def test_rendered_text_from_files_splits_by_document(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected = {"train": set(), "test": set()}
    for i in range(24):
        code = f"def function_{i:02d}(x):\n    return x + {i}\n"
        prose = f"Document {i:02d} says hello.\n\nIt has   two   paragraphs.\n"
        (corpus / f"m{i:02d}.py").write_text(code)
        (corpus / f"p{i:02d}.txt").write_text(prose)
        for name, lines in ((f"m{i:02d}.py", [f"def function_{i:02d}(x):", f"return x + {i}"]),
                            (f"p{i:02d}.txt", [f"Document {i:02d} says hello."])):
            side = lm_sources.split_of(f"file:{name}", 0.3, 0)
            expected["test" if side == "validation" else "train"].update(lines)
    # "It has two paragraphs." repeats in every prose file: it is kept once (first document read).
    options = {"source": str(corpus), "height": 32, "width": 256, "font_size": 10, "max_chars": 40,
               "min_chars": 6, "validation_fraction": 0.3, "max_train": 1000, "max_test": 1000}
    data_dir = str(tmp_path / "data")
    dp.ensure_built("rendered_text", data_dir, options)
    texts = {s: [str(t) for t in dp.load("rendered_text", s, data_dir, **options).columns["text"]]
             for s in ("train", "test")}
    every = texts["train"] + texts["test"]
    assert every.count("It has two paragraphs.") == 1 and len(every) == len(set(every))
    for s, units in texts.items():
        assert set(units) - {"It has two paragraphs."} == expected[s], s
    assert "files_32x256_f10_c40" in os.fspath(dp.make_builder("rendered_text", data_dir, options).data_path)


def test_rendered_text_refusals(tmp_path):
    with pytest.raises(ValueError, match="max_chars"):
        dp.make_builder("rendered_text", str(tmp_path), {"min_chars": 10, "max_chars": 5})
    with pytest.raises(ValueError, match="validation_fraction"):
        dp.make_builder("rendered_text", str(tmp_path), {"validation_fraction": 0.0})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("tiny\n\nwords\n")  # no line of min_chars characters
    with pytest.raises(dp.DataError, match="corpus.*no line"):
        dp.ensure_built("rendered_text", str(tmp_path / "d"), {"source": str(corpus), "max_chars": 20})
    with pytest.raises(dp.DataError, match="does not exist"):
        dp.ensure_built("rendered_text", str(tmp_path / "d"), {"source": str(tmp_path / "missing")})


# ------------------------------------------------------------------------------- arc_pixels
@pytest.fixture(scope="module")
def arc_data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("arc_pixels"))
    meta = dp.ensure_built("arc_pixels", data_dir, ARC_OPTIONS)
    dp.ensure_built("arc", data_dir, ARC_OPTIONS)
    pixels = {s: dp.load("arc_pixels", s, data_dir, **ARC_OPTIONS) for s in ("train", "test")}
    tokens = {s: dp.load("arc", s, data_dir, **ARC_OPTIONS) for s in ("train", "test")}
    return data_dir, meta, pixels, tokens


def _grid_image(canvas_tokens, size):
    """The image of a 30x30 canvas, by render.render_grid and a mapping written out here."""
    canvas = np.asarray(canvas_tokens, np.int64).reshape(30, 30)
    return render.render_grid(np.where(canvas >= 2, canvas - 2, -1), size, size)


def test_arc_pixels_stores_arc_and_draws_the_input_when_read(arc_data):
    _, meta, pixels, tokens = arc_data
    assert "-px64_" in pixels["train"].where
    palette = {tuple(int(v) for v in rgb) for rgb in render.ARC_PALETTE} | {render.BACKGROUND}
    for split in ("train", "test"):
        m = meta[split]
        assert (m.seq_len, m.vocab_size, m.pad_id, m.ignore_label_id) == (900, 12, 0, 0)
        p, t = pixels[split].columns, tokens[split].columns
        n = len(pixels[split])
        assert n == len(tokens[split]) > 0
        # Stored: exactly arc's columns (inputs = the input canvases, not blanked) + causal 0.
        assert set(p) - set(t) == {"causal"} and set(t) <= set(p) and "image" not in p
        for key in t:  # inputs, labels, identifiers, task_id, offset, dihedral, ...
            np.testing.assert_array_equal(np.asarray(p[key]), np.asarray(t[key]), err_msg=key)
        assert np.asarray(p["inputs"]).any()
        assert not np.asarray(p["causal"]).any()
        # Read: the input canvas is only an image; the inputs are all PAD.
        batch = pixels[split].gather(np.arange(n))
        assert batch["image"].shape == (n, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["inputs"].shape == (n, 900) and not batch["inputs"].any()
        assert batch["causal"].tolist() == [0] * n
        np.testing.assert_array_equal(batch["labels"], tokens[split].gather(np.arange(n))["labels"])
        cell = 64 // 30  # the renderer's integer cell side
        for i in range(n):
            canvas = np.asarray(t["inputs"][i], np.int64).reshape(30, 30)
            image = batch["image"][i]
            np.testing.assert_array_equal(image, _grid_image(canvas, 64))
            if i % 7:
                continue
            # The input grid's top-left cell sits at the example's offset on the canvas.
            r, c = (int(x) for x in p["offset"][i])
            colour = canvas[r, c] - 2
            assert 0 <= colour < 10
            centre = image[r * cell + cell // 2, c * cell + cell // 2]
            np.testing.assert_array_equal(centre, render.ARC_PALETTE[colour])
            # A cell that is no grid cell (pad / end-of-grid marker) is background.
            empty = np.argwhere(canvas < 2)
            if len(empty):
                er, ec = empty[len(empty) // 2]
                assert tuple(image[er * cell + cell // 2, ec * cell + cell // 2]) == render.BACKGROUND
            assert (image[30 * cell:] == 255).all() and (image[:, 30 * cell:] == 255).all()
            assert {tuple(int(v) for v in rgb) for rgb in image.reshape(-1, 3)} <= palette
        # Deterministic, and a row's image depends on the row only.
        rows = np.array([3, 0, 3, n - 1])
        again = pixels[split].gather(rows)
        np.testing.assert_array_equal(again["image"], batch["image"][rows])
        np.testing.assert_array_equal(pixels[split].gather(rows)["image"], again["image"])
        assert pixels[split].gather(np.zeros(0, np.int64))["image"].shape == (0, 64, 64, 3)


def test_arc_pixels_on_disk_is_about_arc(arc_data):
    data_dir = arc_data[0]

    def size(name):
        root = os.fspath(dp.make_builder(name, data_dir, ARC_OPTIONS).data_path)
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)

    # 265 tiny examples: a stored 64x64 image each would be 12 KB, ~3.2 MB in all (and 2x that
    # with the column store); without images the two builds are about the same size.
    assert size("arc_pixels") < 1.5 * size("arc")
    assert size("arc_pixels") < 1_500_000


@pytest.mark.parametrize("size", [30, 60, 64, 100, 224])
def test_render_canvases_is_render_grid(size):
    rng = np.random.default_rng(size)
    tokens = rng.integers(0, 12, (9, 900))
    tokens[0] = 0  # an empty canvas: all background
    tokens[1] = rng.integers(2, 12, 900)  # a full 30x30 grid
    images = vision.render_canvases(tokens.astype(np.uint8), size)
    assert images.shape == (9, size, size, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    for row, image in zip(tokens, images):
        np.testing.assert_array_equal(image, _grid_image(row, size))
        np.testing.assert_array_equal(image, render.render_grid(vision.canvas_grid(row), size, size))
    assert (images[0] == 255).all()
    with pytest.raises(ValueError, match="0..11"):
        vision.render_canvases(np.full((1, 900), 12), size)
    with pytest.raises(ValueError, match="900"):
        vision.render_canvases(np.zeros((1, 899), np.int32), size)


def test_arc_pixels_batches_and_presets(arc_data):
    _, _, pixels, _ = arc_data
    batch = pixels["test"].gather(np.arange(3))
    assert batch["image"].shape == (3, 64, 64, 3) and batch["causal"].tolist() == [0, 0, 0]
    assert not batch["inputs"].any()
    cls = dp.get_builder_cls("arc_pixels")
    assert issubclass(cls, arc.Arc) and cls.batch_extras == ("causal",)
    assert str(cls.VERSION) == "1.1.0" and "1.1.0" in cls.RELEASE_NOTES
    assert str(dp.get_builder_cls("rendered_text").VERSION) == "1.1.0"
    # The view pickles (Grain may send it to worker processes) and reads the same after.
    view = pickle.loads(pickle.dumps(pixels["test"].view))
    rows = np.arange(3)
    np.testing.assert_array_equal(
        view(dict(pixels["test"].gather(rows), inputs=np.asarray(pixels["test"].columns["inputs"][:3], np.int32)),
             pixels["test"].columns, rows)["image"], batch["image"])
    assert set(cls.PRESETS) == set(arc.Arc.PRESETS)
    assert cls.make_options({"preset": "arc1"}).image_size == 224
    assert cls.make_options({"preset": "tiny"}) == cls.Options(**arc.Arc.PRESETS["tiny"], image_size=64)
    assert {"rendered_text", "arc_pixels"} <= set(dp.dataset_names())
