"""Format ``amazon2018``: ratings-only CSV + meta_<Category>.json.gz, on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from format_checks import check_leave_one_out, cli_error, cli_ok, sequences, steps, truncate_gz, write_gz

from unisrec.datasets import load_processed, prepare
from unisrec.datasets.amazon2018 import MAX_FIELD_CHARS, item_text

CATEGORY = "Tiny_Category"


def meta_lines() -> list[str]:
    def line(asin: str, **fields: object) -> str:
        return json.dumps({"asin": asin, **fields})

    cats = ["Tiny Category", "Tools &amp; Parts"]
    return [
        line("A0", title='Widget &amp; "Pro"', category=cats, brand="Acme", description=["long " * 999]),
        line("A1", title="First", category=["Tiny Category"], brand="One"),
        "{'asin': 'A2', 'title': 'Literal', 'category': [], 'brand': '" + "B" * 2000 + "'}",  # older dumps
        line("A3", title="Three...", category=["Tiny Category", "Sub"]),
        "",
        line("A4", title="Four", category=[], brand="Four Co"),
        line("A5", title="Five", category=[], brand=""),
        line("EMPTY", title="", category=[], brand=" "),
        line("A1", title="Second", category=[], brand="Two"),  # repeated asin: the first line counts
        line("UNRATED", title="Nobody rated this"),
    ]


def rating_rows() -> list[str]:
    rows = [f"A{(u + k) % 5},U{u},5.0,{1500000000 + 100 * k + u}" for u in range(6) for k in range(5)]
    rows += [f"NOMETA,U{u},4.0,{1500000050 + u}" for u in range(3)]
    rows += ["EMPTY,U3,3.0,1500000060", "A5,U4,2.0,1500000070", "A5,U5,2.0,1500000070"]
    rows.append("A0,U0,5.0,1500000000")  # the same rating twice
    return rows


def write_source(folder: Path, *, meta: list[str] | None = None, ratings: list[str] | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / f"{CATEGORY}.csv").write_text("\n".join(rating_rows() if ratings is None else ratings) + "\n")
    write_gz(folder / f"meta_{CATEGORY}.json.gz", "\n".join(meta_lines() if meta is None else meta) + "\n")
    return folder


def test_prepare_tiny_category(tmp_path: Path) -> None:
    source = write_source(tmp_path / "amazon")
    prepare(source, "amazon2018", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    assert (data.n_users, data.n_items, data.n_interactions) == (6, 5, 30)
    assert list(data.item_ids) == ["A0", "A1", "A2", "A3", "A4"]  # metadata order
    assert data.item_texts == [
        "Widget & Pro. Tiny Category Tools & Parts. Acme",
        "First. Tiny Category. One",
        "Literal",
        "Three. Tiny Category Sub",
        "Four. Four Co",
    ]
    assert list(data.user_ids) == [f"U{u}" for u in range(6)]
    assert sequences(data)["U1"] == ["A1", "A2", "A3", "A4", "A0"]
    assert data.timestamps[:2].tolist() == [1500000000, 1500000100]
    check_leave_one_out(data)
    assert data.stats["split"] == {"train": 18, "valid": 6, "test": 6}
    assert data.stats["input"] == {"interactions": 37, "catalogue_items": 6}
    assert steps(data) == [
        ("drop repeated ratings (same user, item, rating and time)", 1, 0, 0),
        ("drop interactions whose item has no text", 4, 0, 2),
        ("iterative k-core: users >= 5, items >= 5 interactions", 2, 0, 1),
    ]
    assert data.info["metadata_lines"] == 9
    assert data.info["repeated_metadata_lines"] == 1
    assert data.info["rated_items_with_empty_text"] == 1
    assert data.info["rated_items_without_metadata"] == 1
    assert data.name == "amazon"


def test_ratings_file_as_source_and_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_source(tmp_path / "amazon")
    (source / f"{CATEGORY}.csv").rename(source / f"{CATEGORY}.csv.plain")
    write_gz(source / f"{CATEGORY}.csv.gz", (source / f"{CATEGORY}.csv.plain").read_text())
    (source / f"{CATEGORY}.csv.plain").unlink()
    summary = cli_ok(capsys, [str(source / f"{CATEGORY}.csv.gz"), "--format", "amazon2018"], tmp_path / "a")
    assert summary["name"] == CATEGORY and summary["interactions"] == 30
    write_gz(source / "meta_Other.json.gz", "")
    summary = cli_ok(capsys, [str(source), "--format", "amazon2018", "--name", CATEGORY], tmp_path / "b")
    assert summary["name"] == CATEGORY and summary["items"] == 5


def test_item_text_rules() -> None:
    assert item_text({"title": "x" * MAX_FIELD_CHARS, "brand": "b"}) == "x" * MAX_FIELD_CHARS + ". b"
    assert item_text({"title": "x" * (MAX_FIELD_CHARS + 1), "brand": "b"}) == "b"
    assert item_text({"title": ' A  "B"\n C. ', "category": ["c1", ["c2"]], "brand": None}) == "A B C. c1 c2"
    assert item_text({"title": 12, "category": "not a list"}) == "12. not a list"


def _error(capsys: pytest.CaptureFixture[str], source: Path, out: Path, *extra: str) -> str:
    return cli_error(capsys, [str(source), "--format", "amazon2018", *extra], out)


def test_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_source(tmp_path / "amazon")
    out = tmp_path / "out"
    meta = source / f"meta_{CATEGORY}.json.gz"
    meta.rename(tmp_path / "meta")
    ratings = source / f"{CATEGORY}.csv"
    assert _error(capsys, ratings, out) == (
        f"{ratings}: no metadata file meta_{CATEGORY}.json.gz beside this ratings file"
    )
    assert _error(capsys, source, out) == f"{source}: no meta_<Category>.json.gz file in this folder"
    (tmp_path / "meta").rename(meta)
    write_gz(source / "meta_Other.json.gz", "")
    assert _error(capsys, source, out) == (f"{source}: several categories (Other, {CATEGORY}); choose one with --name")
    (source / "meta_Other.json.gz").unlink()
    ratings.unlink()
    assert _error(capsys, source, out) == (
        f"{source}: no ratings file {CATEGORY}.csv or {CATEGORY}.csv.gz beside meta_{CATEGORY}.json.gz"
    )
    assert _error(capsys, ratings, out) == f"{ratings}: file not found"


def test_bad_metadata_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    lines = meta_lines()
    lines[3] = '{"asin": "A3", "title": "Three" "category": []}'
    source = write_source(tmp_path / "amazon", meta=lines)
    meta = source / f"meta_{CATEGORY}.json.gz"
    assert _error(capsys, source, out) == (
        f"{meta}, line 4: not a JSON object (Expecting ',' delimiter at character 33)"
    )
    lines[3] = '["A3", "Three"]'
    write_source(source, meta=lines)
    assert _error(capsys, source, out) == f"{meta}, line 4: expected a JSON object with an 'asin' string"
    write_gz(meta, "\n".join(meta_lines()).encode("utf-8").replace(b'"First"', b'"F\xffirst"'))
    assert _error(capsys, source, out) == f"{meta}, line 2: not valid UTF-8 text"
    lines[3] = "{[1]: 2, 'asin': 'A3'}"  # a Python literal that is no dict: TypeError, a traceback before
    write_source(source, meta=lines)
    assert _error(capsys, source, out).startswith(f"{meta}, line 4: not a JSON object (")
    lines[3] = "[" * 100_000  # deeper than the JSON parser's recursion
    write_source(source, meta=lines)
    assert _error(capsys, source, out) == f"{meta}, line 4: not a JSON object (nested too deeply to parse)"
    write_source(source)
    truncate_gz(meta)
    assert _error(capsys, source, out).startswith(f"{meta}: truncated or corrupted gzip file (")


def test_an_item_whose_line_names_another_asin_first_keeps_its_text(tmp_path: Path) -> None:
    """The quick asin look-up skipped a rated item's line when another "asin" came first in it (a nested record,
    a text quoting one) or its asin was escaped: the item was dropped as having no metadata."""
    lines = meta_lines()
    lines[1] = json.dumps({"related": {"asin": "zz"}, "asin": "A1", "title": "First", "category": [], "brand": ""})
    lines[3] = json.dumps({"description": "see 'asin': 'zz' here", "asin": "A3", "title": "Three", "category": []})
    lines[5] = '{"asin": "\\u0041\\u0034", "title": "Four", "category": [], "brand": "Four Co"}'  # "A4" escaped
    source = write_source(tmp_path / "amazon", meta=lines)
    prepare(source, "amazon2018", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    texts = dict(zip(data.item_ids, data.item_texts, strict=True))
    assert texts["A1"].startswith("First") and texts["A3"].startswith("Three") and texts["A4"].startswith("Four")


def test_bad_ratings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rows = rating_rows()
    ratings = tmp_path / "amazon" / f"{CATEGORY}.csv"
    rows[2] = "A2,U0,5.0,soon"
    source = write_source(tmp_path / "amazon", ratings=rows)
    assert _error(capsys, source, out) == (
        f"{ratings}, line 3, column 'time': unparsable timestamp 'soon': expected Unix seconds or an ISO 8601 date-time"
    )
    rows[2] = "A2,U0,1500000200"
    write_source(source, ratings=rows)
    assert _error(capsys, source, out) == f"{ratings}, line 3: expected 4 fields separated by ',', found 3"
    rows[2] = "A2,,5.0,1500000200"
    write_source(source, ratings=rows)
    assert _error(capsys, source, out) == f"{ratings}, line 3, column 'user': empty user id"
