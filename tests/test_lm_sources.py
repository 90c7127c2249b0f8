"""Document readers of the language-model datasets (data_pipeline.lm_sources)."""
import itertools
import json
import logging
import os
import random

import pytest

from data_pipeline.common import DataError
from data_pipeline.lm_sources import (
    SourceDocument,
    code_documents,
    count_hint,
    parse_extensions,
    split_of,
    text_documents,
)


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


# -- code ---------------------------------------------------------------------------------------
def test_code_default_is_the_stdlib_without_tests_or_packages():
    docs = {d.doc_id: d.text for d in code_documents()}
    assert "def dumps" in docs["stdlib:json/__init__.py"]
    assert len(docs) > 300
    assert not any(part in {"test", "tests", "idle_test", "site-packages", "__pycache__"}
                   for doc_id in docs for part in doc_id.removeprefix("stdlib:").split("/")[:-1])
    assert list(docs) == sorted(docs)
    assert count_hint("", (".py",)) >= len(docs)


@pytest.fixture
def code_tree(tmp_path):
    root = tmp_path / "repo"
    _write(root / "b.py", "print('b')\n")
    _write(root / "a" / "z.py", "x = 1\n")
    _write(root / "web" / "app.js", "console.log(1);\n")
    _write(root / ".git" / "hook.py", "hidden = True\n")
    _write(root / "blank.py", "  \n\n")
    _write(root / "latin1.py", "s = 'caf\xe9'\n".encode("latin-1"))
    _write(root / "blob.py", b"x = 1\0\0\1\2")
    _write(root / "big.py", "y = 2\n" * 200)
    return root


def test_code_directory_filters_by_extension_and_skips_unusable_files(code_tree, caplog):
    with caplog.at_level(logging.WARNING):
        docs = list(code_documents(str(code_tree), (".py",), max_file_bytes=1000))
    assert [d.doc_id for d in docs] == ["file:a/z.py", "file:b.py"]
    assert docs[1] == SourceDocument("file:b.py", "print('b')\n")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 files" in warnings[0] and "binary" in warnings[0]
    assert "not UTF-8" in warnings[0] and "too large" in warnings[0]

    with_js = [d.doc_id for d in code_documents(str(code_tree), (".js", ".py"))]
    assert "file:web/app.js" in with_js and "file:big.py" in with_js
    assert [d.doc_id for d in code_documents(str(code_tree), (".js",))] == ["file:web/app.js"]
    assert count_hint(str(code_tree), (".js",)) == 1


def test_code_glob_and_single_file(code_tree):
    pattern = str(code_tree / "**" / "*.py")
    ids = [d.doc_id for d in code_documents(pattern)]
    assert ids == [f"file:{code_tree}/a/z.py", f"file:{code_tree}/b.py", f"file:{code_tree}/big.py"]
    single = list(code_documents(str(code_tree / "web" / "app.js")))
    assert single == [SourceDocument("file:app.js", "console.log(1);\n")]


def test_code_missing_or_empty_source_is_an_error(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere"):
        list(code_documents(missing))
    assert count_hint(missing, (".py",)) is None
    _write(tmp_path / "only" / "x.txt", "not code")
    with pytest.raises(DataError, match=r"only.*no files with extensions \.py,\.rs"):
        list(code_documents(str(tmp_path / "only"), (".py", ".rs")))
    with pytest.raises(DataError, match="skipped 1 files"):
        list(code_documents(_write(tmp_path / "bin.py", b"\0\0")))


def test_parse_extensions():
    assert parse_extensions("python,.js") == (".js", ".py")
    assert parse_extensions(" Rust , .rs,typescript") == (".rs", ".ts", ".tsx")
    with pytest.raises(ValueError, match="'cobol'.*javascript.*python"):
        parse_extensions("python,cobol")
    with pytest.raises(ValueError):
        parse_extensions(" , ")


# -- text files ---------------------------------------------------------------------------------
def test_tinystories_txt_is_split_at_the_separator(tmp_path):
    path = _write(tmp_path / "TinyStories-valid.txt",
                  "Once upon a time.\nThe end.\n<|endoftext|>\n  \n<|endoftext|>\n"
                  "Lily ran.\r\n<|endoftext|>Tom sat.\n")
    docs = list(text_documents(path))
    assert docs == [SourceDocument("file:TinyStories-valid.txt#0", "Once upon a time.\nThe end."),
                    SourceDocument("file:TinyStories-valid.txt#1", "Lily ran."),
                    SourceDocument("file:TinyStories-valid.txt#2", "Tom sat.")]


def test_plain_txt_is_one_document(tmp_path):
    path = _write(tmp_path / "essay.txt", "\ufeffFirst paragraph.\n\nSecond one.\n")
    assert list(text_documents(path)) == [SourceDocument("file:essay.txt",
                                                         "First paragraph.\n\nSecond one.")]


def test_wikitext_articles(tmp_path):
    raw = (" \n = Valkyria Chronicles = \n \n The game is a tactical RPG . \n \n"
           " = = Gameplay = = \n \n Players move units . \n"
           " = Tower Building = \n \n It is tall . \n = Valkyria Chronicles = \n Again . \n")
    docs = list(text_documents(_write(tmp_path / "wiki.valid.raw", raw)))
    assert [d.doc_id for d in docs] == ["file:wiki.valid.raw#Valkyria Chronicles",
                                        "file:wiki.valid.raw#Tower Building",
                                        "file:wiki.valid.raw#Valkyria Chronicles#2"]
    first = docs[0].text.splitlines()
    assert first[0] == "= Valkyria Chronicles ="
    assert "= = Gameplay = =" in first and first[-1] == "Players move units ."
    assert docs[1].text == "= Tower Building =\n\nIt is tall ."


def test_jsonl_records_and_story_fallback(tmp_path):
    lines = [json.dumps({"text": " Hello there. "}), "", json.dumps({"text": "Bye.", "id": 3})]
    path = _write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    assert list(text_documents(path)) == [SourceDocument("file:d.jsonl:1", "Hello there."),
                                          SourceDocument("file:d.jsonl:3", "Bye.")]
    story = _write(tmp_path / "s.jsonl", json.dumps({"story": "A cat.", "summary": "x"}) + "\n")
    assert [d.text for d in text_documents(story)] == ["A cat."]
    body = _write(tmp_path / "b.jsonl", json.dumps({"body": "Words."}) + "\n")
    assert [d.text for d in text_documents(body, text_field="body")] == ["Words."]


@pytest.mark.parametrize("bad, expected", [
    ("{not json", "not JSON"),
    (json.dumps(["a list"]), "got list"),
    (json.dumps({"title": "no text"}), "keys \\['title'\\]"),
    (json.dumps({"text": 42}), "'text' of type int"),
    (json.dumps("bare string"), "got str"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, expected):
    good = json.dumps({"text": "Fine."})
    path = _write(tmp_path / "bad.jsonl", f"{good}\n{good}\n{bad}\n")
    with pytest.raises(DataError, match=expected) as info:
        list(text_documents(path))
    assert path in str(info.value) and "line 3" in str(info.value)


def test_json_list(tmp_path):
    path = _write(tmp_path / "d.json", json.dumps(["One.", {"text": "Two."}, {"story": "Three."}]))
    assert [(d.doc_id, d.text) for d in text_documents(path)] == [
        ("file:d.json:0", "One."), ("file:d.json:1", "Two."), ("file:d.json:2", "Three.")]
    bad = _write(tmp_path / "e.json", json.dumps(["One.", {"text": None}]))
    with pytest.raises(DataError, match="item 1"):
        list(text_documents(bad))
    with pytest.raises(DataError, match="expected a JSON list"):
        list(text_documents(_write(tmp_path / "f.json", json.dumps({"text": "x"}))))


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"text": ["First.", "", "Third."], "n": [1, 2, 3]}), path,
                   row_group_size=2)
    assert [(d.doc_id, d.text) for d in text_documents(path)] == [
        ("file:d.parquet:0", "First."), ("file:d.parquet:2", "Third.")]
    with pytest.raises(DataError, match=r"d\.parquet.*no column 'body'.*'text', 'n'"):
        list(text_documents(path, text_field="body"))
    with pytest.raises(DataError, match="'n' has type int64"):
        list(text_documents(path, text_field="n"))
    nulls = str(tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"text": ["a", None]}), nulls)
    with pytest.raises(DataError, match="nulls.parquet, row 1: .*null"):
        list(text_documents(nulls))


def test_text_directory_reads_every_format_in_order(tmp_path):
    _write(tmp_path / "b" / "s.txt", "One.<|endoftext|>Two.")
    _write(tmp_path / "a.jsonl", json.dumps({"text": "Zero."}) + "\n")
    _write(tmp_path / "notes.md", "ignored")
    _write(tmp_path / ".cache" / "x.txt", "hidden")
    assert [d.doc_id for d in text_documents(str(tmp_path))] == [
        "file:a.jsonl:1", "file:b/s.txt#0", "file:b/s.txt#1"]


def test_text_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        list(text_documents(str(tmp_path / "missing")))
    latin = _write(tmp_path / "latin.txt", "Fine line.\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt.*line 2.*offset 14"):
        list(text_documents(latin))
    empty = _write(tmp_path / "d" / "empty.txt", b"")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        list(text_documents(empty))
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        list(text_documents(str(tmp_path / "d")))
    with pytest.raises(DataError, match="unknown text file type"):
        list(text_documents(_write(tmp_path / "x.csv", "a,b\n")))
    _write(tmp_path / "docs" / "readme.md", "not a data file")
    with pytest.raises(DataError, match=r"docs: no text files"):
        list(text_documents(str(tmp_path / "docs")))


# Pieces of the formats (JSON syntax, the separator, UTF-8 and invalid bytes) for the fuzz.
_FUZZ_TOKENS = [b"{", b"}", b"[", b"]", b'"text"', b'"story"', b":", b",", b'"', b"\\", b"1",
                b"null", b"\n", b"\r\n", b" ", b"Once", b"<|endoftext|>", b"\xc3\xa9", b"\xff",
                b"\0", b'{"text": "ok"}\n']


def test_random_bytes_give_documents_or_data_error(tmp_path):
    rng = random.Random(0)
    outcomes = set()
    for i in range(50):
        if i % 2:
            data = rng.randbytes(rng.randrange(1, 400))
        else:
            data = b"".join(rng.choices(_FUZZ_TOKENS, k=rng.randrange(1, 40)))
        for suffix in (".txt", ".jsonl"):
            path = _write(tmp_path / f"fuzz{i}{suffix}", data)
            try:
                docs = list(text_documents(path))
            except DataError as e:
                assert path in str(e)
                outcomes.add("error")
            else:
                assert docs and all(isinstance(d.text, str) and d.text for d in docs)
                outcomes.add("documents")
    assert outcomes == {"documents", "error"}


# -- default text, splits -----------------------------------------------------------------------
def test_text_default_is_english_prose():
    docs = list(itertools.islice(text_documents(), 150))
    assert len(docs) == 150
    assert len({d.doc_id for d in docs}) == 150
    assert docs[0].doc_id.startswith("pydoc:")
    for doc in docs[:5]:
        assert doc.text.strip()
        words = doc.text.split()
        assert len(words) > 20 and sum(w.lower() in {"the", "a", "is", "of"} for w in words) > 3
    assert count_hint("") > 150
    assert count_hint(str(os.sep)) is None


def test_split_of_is_stable_and_proportional():
    ids = [f"file:doc{i}" for i in range(200)]
    splits = [split_of(i, 0.5) for i in ids]
    assert splits == [split_of(i, 0.5) for i in ids]
    assert 70 <= splits.count("validation") <= 130
    assert split_of("stdlib:json/__init__.py", 0.5, seed=0) in ("train", "validation")
    assert {split_of(i, 0.0) for i in ids} == {"train"}
    assert {split_of(i, 1.0) for i in ids} == {"validation"}
    assert [split_of(i, 0.5, seed=1) for i in ids] != splits
    with pytest.raises(ValueError):
        split_of("x", 1.5)
