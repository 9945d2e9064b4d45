"""Format ``csv``: interactions.csv + items.csv, on small files written here."""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_csv
from format_checks import check_leave_one_out, cli_error, cli_ok, sequences, steps, truncate_gz

from unisrec.cli import main
from unisrec.datasets import CsvColumns, PrepareOptions, load_processed, prepare
from unisrec.datasets.csv_io import _may_hold_line_break, parse_timestamps

TINY_STEPS = [
    ("drop interactions whose item has no text", 0, 0, 0),
    ("iterative k-core: users >= 5, items >= 5 interactions", 0, 0, 0),
]


def test_tiny_source(tiny_csv_source: Path, tmp_path: Path) -> None:
    prepare(tiny_csv_source, "csv", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    assert (data.n_users, data.n_items, data.n_interactions) == (8, 6, 48)
    assert list(data.user_ids) == [f"u{u}" for u in range(8)]
    assert list(data.item_ids) == [f"i{i}" for i in range(6)]
    assert data.item_texts[0] == 'Item 0, "quoted" title'
    assert sequences(data)["u3"] == [f"i{(3 + s) % 6}" for s in range(6)]
    assert data.timestamps[:6].tolist() == [1000, 1010, 1020, 1030, 1040, 1050]
    check_leave_one_out(data)
    assert data.stats["split"] == {"train": 32, "valid": 8, "test": 8}
    assert data.stats["input"] == {"interactions": 48, "catalogue_items": 7}
    assert data.stats["catalogue_items_without_interactions"] == 1
    assert steps(data) == TINY_STEPS
    assert data.info["source_format"] == "csv" and data.name == "tiny"


def _gzip_folder(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("interactions", "items"):
        (target / f"{name}.csv.gz").write_bytes(gzip.compress((source / f"{name}.csv").read_bytes()))
    return target


def test_gz_input_gives_the_same_dataset(tiny_csv_source: Path, tmp_path: Path) -> None:
    gz = _gzip_folder(tiny_csv_source, tmp_path / "gz")
    prepare(tiny_csv_source, "csv", tmp_path / "a")
    prepare(gz, "csv", tmp_path / "b")
    a, b = load_processed(tmp_path / "a"), load_processed(tmp_path / "b")
    assert sequences(a) == sequences(b) and a.item_texts == b.item_texts
    assert (a.timestamps == b.timestamps).all()


def test_custom_columns_iso_times_and_joined_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    rows = [f"c{u};p{(u + s) % 5};2020-01-0{1 + s} 10:00:00" for u in range(6) for s in range(5)]
    write_csv(folder / "interactions.csv", "customer;product;when", rows)
    items = [f"p{i};\"Thing {i}, &lt;new&gt;\";Brand{i}" for i in range(5)]
    write_csv(folder / "items.csv", "pid;name;maker", items)
    args = [str(folder), "--format", "csv", "--delimiter", ";", "--user-column", "customer"]
    args += ["--item-column", "product", "--time-column", "when", "--items-id-column", "pid"]
    summary = cli_ok(capsys, [*args, "--text-columns", "name,maker"], tmp_path / "out")
    assert summary["users"] == 6 and summary["items"] == 5 and summary["interactions"] == 30
    data = load_processed(tmp_path / "out")
    assert data.item_texts[0] == "Thing 0, <new>. Brand0"
    assert data.timestamps[0] == 1577872800  # 2020-01-01 10:00:00 UTC
    assert sequences(data)["c1"] == ["p1", "p2", "p3", "p4", "p0"]


def test_explicit_files_and_api_columns(tiny_csv_source: Path, tmp_path: Path) -> None:
    columns = CsvColumns(text="text|title")
    data = prepare(
        "unused", "csv", tmp_path / "out", name="mine", columns=columns,
        interactions=tiny_csv_source / "interactions.csv", items=tiny_csv_source / "items.csv",
    )  # fmt: skip
    assert data.name == "mine" and data.n_items == 6


def test_ties_keep_input_order(tmp_path: Path) -> None:
    folder = tmp_path / "ties"
    folder.mkdir()
    rows = [f"u{u},i{i},100" for u in range(5) for i in (4, 2, 0, 3, 1)]
    write_csv(folder / "interactions.csv", "user_id,item_id,timestamp", rows)
    write_csv(folder / "items.csv", "item_id,title", [f"i{i},T{i}" for i in range(5)])
    data = prepare(folder, "csv", tmp_path / "out")
    assert sequences(data)["u2"] == ["i4", "i2", "i0", "i3", "i1"]


@pytest.fixture
def source(tiny_csv_source: Path) -> Path:
    return tiny_csv_source


def _replace_line(path: Path, number: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = line
    path.write_text("\n".join(lines) + "\n")


def _error(capsys: pytest.CaptureFixture[str], source: Path, out: Path, *extra: str) -> str:
    return cli_error(capsys, [str(source), "--format", "csv", *extra], out)


def test_missing_folder_and_file(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert _error(capsys, missing, tmp_path / "out") == f"{missing}: folder not found"
    assert _error(capsys, source / "items.csv", tmp_path / "out") == (
        f"{source / 'items.csv'}: expected a folder holding interactions.csv[.gz] and items.csv[.gz] "
        "(or give both files with --interactions and --items)"
    )
    (source / "items.csv").unlink()
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{source}: no items.csv or items.csv.gz in this folder (or pass --items FILE)"


def test_truncated_gzip(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gz = _gzip_folder(source, tmp_path / "gz")
    truncate_gz(gz / "interactions.csv.gz")
    message = _error(capsys, gz, tmp_path / "out")
    assert message.startswith(f"{gz / 'interactions.csv.gz'}: truncated or corrupted gzip file (")


def test_invalid_utf8_names_the_line(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "items.csv"
    data = path.read_bytes().splitlines(keepends=True)
    data[3] = b"i2,Caf\xe9\n"
    path.write_bytes(b"".join(data))
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{path}, line 4: not valid utf-8 text; re-encode the file or pass --encoding"
    summary = cli_ok(capsys, [str(source), "--format", "csv", "--encoding", "latin-1"], tmp_path / "out")
    assert summary["items"] == 6
    assert load_processed(tmp_path / "out").item_texts[2] == "Café"


def test_unparsable_timestamp(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    _replace_line(path, 5, "u3,i3,yesterday")
    message = _error(capsys, source, tmp_path / "out")
    assert message == (
        f"{path}, line 5, column 'timestamp': unparsable timestamp 'yesterday': "
        "expected Unix seconds or an ISO 8601 date-time"
    )


def test_unparsable_iso_timestamp_among_iso(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    lines = path.read_text().splitlines()
    lines = [lines[0]] + [",".join([*line.split(",")[:2], "2021-03-04 05:06:07"]) for line in lines[1:]]
    lines[10] = "u1,i2,2021-13-45 05:06:07"
    path.write_text("\n".join(lines) + "\n")
    message = _error(capsys, source, tmp_path / "out")
    assert message == (
        f"{path}, line 11, column 'timestamp': unparsable timestamp '2021-13-45 05:06:07': "
        "expected Unix seconds or an ISO 8601 date-time"
    )


def test_empty_title(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "items.csv"
    _replace_line(path, 3, "i1,  ")
    message = _error(capsys, source, tmp_path / "out")
    assert message == (f"{path}, line 3, column 'title': empty text for item 'i1': expected a non-empty title or text")


def test_duplicate_item_id(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "items.csv"
    _replace_line(path, 6, "i1,Again")
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{path}, line 6, column 'item_id': duplicate item id 'i1' (first on line 3): expected unique ids"


def test_missing_column(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    _replace_line(path, 1, "user,item_id,timestamp")
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{path}, line 1: missing column 'user_id'; the header has: user, item_id, timestamp"
    message = _error(capsys, source, tmp_path / "out", "--text-columns", "title,brand")
    assert message == f"{source / 'items.csv'}, line 1: missing text column 'brand'; the header has: item_id, title"


def test_row_with_wrong_field_count(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    _replace_line(path, 7, "u5,i0,1000,extra")
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{path}, line 7: expected 3 fields separated by ',', found 4"


def test_empty_id_and_blank_lines(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    lines = path.read_text().splitlines()
    lines.insert(3, "")  # a blank line is skipped, and line numbers still count it
    lines[8] = ",i1,1234"
    path.write_text("\n".join(lines) + "\n")
    message = _error(capsys, source, tmp_path / "out")
    assert message == f"{path}, line 9, column 'user_id': empty id"


def test_failed_overwrite_keeps_the_old_dataset(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    prepare(source, "csv", out)
    before = (out / "interactions.parquet").read_bytes()
    _replace_line(source / "items.csv", 2, "i0,")
    assert main(["prepare", str(source), "--format", "csv", "--out", str(out), "--overwrite"]) == 2
    assert "empty text for item 'i0'" in capsys.readouterr().err
    assert (out / "interactions.parquet").read_bytes() == before
    assert load_processed(out).n_items == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out", "tiny"]  # no temporaries left


def test_integer_timestamps_are_exact_and_out_of_range_is_an_error(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ns"
    folder.mkdir()
    base = 1_700_000_000_000_000_000  # nanoseconds: beyond float64's 2**53, where +4, +3, ... would collapse
    rows = [f"u{u},i{i},{base + (5 - i) * 1 + u}" for u in range(6) for i in range(5, 0, -1)]  # increasing time
    write_csv(folder / "interactions.csv", "user_id,item_id,timestamp", rows)
    write_csv(folder / "items.csv", "item_id,title", [f"i{i},Item {i}" for i in range(1, 6)])
    data = prepare(folder, "csv", tmp_path / "out", options=PrepareOptions(user_core=0, item_core=0))
    for user in range(data.n_users):
        assert list(data.item_ids[data.sequence(user)]) == ["i5", "i4", "i3", "i2", "i1"]  # file order = time order
    stored = pq.read_table(tmp_path / "out" / "interactions.parquet").column("timestamp").to_numpy()
    assert stored.min() == base and len(set(stored.tolist())) == 10  # exact values, none collapsed
    _replace_line(folder / "interactions.csv", 4, "u0,i3,1000000000000000000000000000000")
    message = cli_error(capsys, [str(folder), "--format", "csv"], tmp_path / "bad")
    assert message == (f"{folder / 'interactions.csv'}, line 4, column 'timestamp': timestamp "
                       "'1000000000000000000000000000000' is out of range (64-bit integer seconds)")


def test_fractional_timestamps_are_floored_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = pa.array(["1.9", "2", "-1.5", "-2.0", "3.000"])
    got = parse_timestamps(values, tmp_path / "f.csv", "t", header=True)
    assert got.tolist() == [1, 2, -2, -2, 3]
    assert "2 fractional timestamps rounded down to whole seconds" in capsys.readouterr().err


def test_events_of_one_second_are_ordered_by_their_fractions(tmp_path: Path) -> None:
    """Fractions were cut before the sort, so events of one second followed the file's order, not their times:
    the validation item could be the later event."""
    from unisrec.datasets.csv_io import fractions_of_seconds

    values = pa.array(["2020-01-01T00:00:00.900Z", "2020-01-01 00:00:00,1+01:00", "100", "100.25", "-5.25", "7"])
    nanos = fractions_of_seconds(values)
    assert nanos is not None and nanos.tolist() == [900_000_000, 100_000_000, 0, 250_000_000, 750_000_000, 0]
    assert fractions_of_seconds(pa.array(["100", "2020-01-01T00:00:00", "3.000"])) is None
    for stamps in (["2020-01-01T00:00:00.900Z", "2020-01-01T00:00:00.100Z", "2020-01-01T00:00:01Z"],
                   ["100.9", "100.1", "101"]):
        folder = tmp_path / f"src-{len(stamps[0])}"
        folder.mkdir()
        rows = [f"u1,i{n},{t}" for n, t in enumerate(stamps, start=1)] + [f"u2,i{n},{stamps[2]}" for n in (1, 2, 3)]
        (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
        (folder / "items.csv").write_text("item_id,title\ni1,One\ni2,Two\ni3,Three\n")
        prepare(folder, "csv", tmp_path / f"out-{len(stamps[0])}", options=PrepareOptions(user_core=0, item_core=0))
        data = load_processed(tmp_path / f"out-{len(stamps[0])}")
        assert sequences(data) == {"u1": ["i2", "i1", "i3"], "u2": ["i1", "i2", "i3"]}  # u2: file order on ties


def test_duplicate_header_column_is_rejected(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = source / "interactions.csv"
    lines = path.read_text().splitlines()
    lines = ["user_id,item_id,timestamp,timestamp"] + [line + ",0" for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    message = _error(capsys, source, tmp_path / "out")
    assert message == (f"{path}, line 1: column 'timestamp' appears 2 times in the header; which one to use "
                       "is ambiguous")


def test_spaces_after_the_commas_are_not_part_of_names_nor_ids(tiny_csv_source: Path, tmp_path: Path) -> None:
    spaced = tmp_path / "spaced"
    spaced.mkdir()
    for name in ("interactions", "items"):
        lines = (tiny_csv_source / f"{name}.csv").read_text().splitlines()
        head, *rows = lines
        if name == "interactions":
            rows = [row.replace(",", ", ") for row in rows]  # "u0, i0, 1000"
        (spaced / f"{name}.csv").write_text("\n".join([head.replace(",", ", "), *rows]) + "\n")
    prepare(tiny_csv_source, "csv", tmp_path / "a")
    prepare(spaced, "csv", tmp_path / "b")
    a, b = load_processed(tmp_path / "a"), load_processed(tmp_path / "b")
    assert sequences(a) == sequences(b) and a.item_texts == b.item_texts and list(b.item_ids) == list(a.item_ids)


def test_what_empties_the_data_is_named(tiny_csv_source: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    interactions = tiny_csv_source / "interactions.csv"
    original = interactions.read_text()
    interactions.write_text("user_id,item_id,timestamp\n")
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == "tiny: the input holds no interactions"
    head, *rows = original.splitlines()
    interactions.write_text("\n".join([head, *(r.replace(",i", ",x") for r in rows)]) + "\n")  # unknown items
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        "tiny: none of the 48 interactions is with an item of the items file (e.g. item 'x0'; the items file "
        "has 7 items, e.g. 'i0', 'i1', 'i2')")
    interactions.write_text(original)
    assert _error(capsys, tiny_csv_source, tmp_path / "o", "--user-core", "7") == (
        "tiny: no interactions left after the k-core filtering (users >= 7, items >= 5 interactions; before it 48 "
        "interactions of 8 users and 6 items); lower --user-core / --item-core")


def test_an_unclosed_quote_is_an_error_and_a_quoted_line_break_is_text(tiny_csv_source: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    items = tiny_csv_source / "items.csv"
    lines = items.read_text().splitlines()
    lines[4] = 'i3,"unbalanced title'  # the quote never closes: pyarrow would read the rest of the file into it
    items.write_text("\n".join(lines) + "\n")
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        f"{items}, line 5: a quoted field opens on this line and is never closed (the rest of the file would "
        "become one value); close the quote or remove it")
    lines[4] = 'i3,"a title on\ntwo lines"'
    items.write_text("\n".join(lines) + "\n")
    prepare(tiny_csv_source, "csv", tmp_path / "ok")
    assert load_processed(tmp_path / "ok").item_texts[3] == "a title on two lines"


def test_an_unclosed_quote_in_a_column_not_read_is_an_error_not_lost_rows(tiny_csv_source: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Only the columns a format reads are parsed into values: a quote never closed in another column swallowed
    every later row into that (unread) value, and the rows were gone without a word."""
    interactions = tiny_csv_source / "interactions.csv"
    head, *rows = interactions.read_text().splitlines()
    with_review = [f"{head},review", *(f"{r},fine" for r in rows)]
    with_review[3] = with_review[3].replace(",fine", ',"5"" screen')
    interactions.write_text("\n".join(with_review) + "\n")
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        f"{interactions}, line 4: a quoted field opens on this line and is never closed (the rest of the file would "
        "become one value); close the quote or remove it")
    with_review[3] = with_review[3].replace(',"5"" screen', ',"5"" screen,\nnew line"')  # closed: a quoted break
    interactions.write_text("\n".join(with_review) + "\n\n")  # and a blank line
    prepare(tiny_csv_source, "csv", tmp_path / "ok", options=PrepareOptions(user_core=0, item_core=0))
    assert load_processed(tmp_path / "ok").stats["input"]["interactions"] == len(rows)


def test_overwrite_replaces_only_a_dataset_folder(tiny_csv_source: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--overwrite deleted any folder holding a file named dataset.json, with everything else in it."""
    from unisrec.datasets.processed import DATASET_ENTRIES
    from unisrec.text_cache import EMBEDDINGS_DIR

    def refused(out: Path) -> str:  # the folder stays: cli_error's "no output folder" does not apply
        capsys.readouterr()
        assert main(["prepare", str(tiny_csv_source), "--format", "csv", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unisrec prepare: error: "), err
        return err[0].removeprefix("unisrec prepare: error: ")

    assert EMBEDDINGS_DIR in DATASET_ENTRIES  # the text vectors cached in a dataset folder are its own
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "dataset.json").write_text('{"foo": 1}')
    (project / "src" / "code.py").write_text("print(1)")
    assert refused(project) == (
        f"{project}: its dataset.json is not a unisrec dataset's; refusing to replace the folder (choose another "
        "--out)")
    assert (project / "src" / "code.py").read_text() == "print(1)"
    out = tmp_path / "data"
    prepare(tiny_csv_source, "csv", out)
    (out / EMBEDDINGS_DIR).mkdir()
    (out / ".data.lock").write_text("")  # what the library leaves inside counts as the folder's own
    prepare(tiny_csv_source, "csv", out, overwrite=True)  # a dataset folder with its caches: replaced
    (out / "notes.txt").write_text("mine")
    assert refused(out) == (
        f"{out}: holds 'notes.txt', which a unisrec dataset folder does not; refusing to replace the folder (move "
        "it out, or choose another --out)")
    assert (out / "notes.txt").read_text() == "mine" and (out / "dataset.json").exists()


def test_inputs_a_review_found_misread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A BOM before a quoted header (pandas' utf-8-sig with full quoting), ISO minutes with 'T', a source named
    '.', and the count of catalogue items that nobody rated (items the k-core removed are not among them)."""
    source = tmp_path / "shop"
    source.mkdir()
    (source / "items.csv").write_bytes('\ufeff"item_id","title"\r\n"i1","One"\r\n"i2","Two"\r\n"i3","Three"\r\n'
                                       '"i4","Four"\r\n"i5","Five"\r\n'.encode())
    rows = ["user_id,item_id,timestamp", "u1,i1,2020-01-01T10:00", "u1,i2,2020-01-01T10:01", "u1,i3,2020-01-01T10:02",
            "u2,i2,2020-01-01 11:00+01:00", "u2,i1,2020-01-01T11:05", "u2,i3,2020-01-01T11:06",
            "u3,i4,2020-01-02T00:00"]
    (source / "interactions.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(source)
    prepare(".", "csv", tmp_path / "out", options=PrepareOptions(user_core=3, item_core=1))
    data = load_processed(tmp_path / "out")
    assert data.name == "shop" and list(data.item_ids) == ["i1", "i2", "i3"]
    assert sequences(data)["u2"] == ["i2", "i1", "i3"]  # 11:00+01:00 is 10:00 UTC, before 11:05
    assert data.timestamps[:3].tolist() == [1577872800, 1577872860, 1577872920]
    assert data.stats["catalogue_items_without_interactions"] == 1  # i5; i4 (rated by u3, removed) is the k-core's


def test_the_line_break_search_finds_a_break_in_any_chunk_and_none_where_there_is_none() -> None:
    clean = pa.chunked_array([pa.array(["a", "", "b c"]), pa.array(["d"])])
    assert not _may_hold_line_break(clean)
    assert not _may_hold_line_break(pa.chunked_array([pa.array(["", ""])]))  # no characters at all
    assert not _may_hold_line_break(pa.chunked_array([], type=pa.string()))
    assert _may_hold_line_break(pa.chunked_array([pa.array(["a"]), pa.array(["x", "two\nlines"])]))
    assert _may_hold_line_break(pa.chunked_array([pa.array(["a", "b\r\nc"])]))
    # a slice keeps the whole character buffer: a break outside it is a false alarm, never a miss
    assert _may_hold_line_break(pa.chunked_array([pa.array(["x\ny", "z"]).slice(1)]))


def test_one_file_per_name(tiny_csv_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_csv_source / "interactions.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,timestamp\n"))
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        f"{tiny_csv_source}: interactions.csv and interactions.csv.gz are both here; which one to read is "
        "ambiguous: remove one (or pass --interactions FILE)")


def test_sources_of_one_name_are_refused_before_anything_is_written(tiny_csv_source: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other" / "tiny"
    other.parent.mkdir()
    other.mkdir()
    for name in ("interactions", "items"):
        (other / f"{name}.csv").write_bytes((tiny_csv_source / f"{name}.csv").read_bytes())
    capsys.readouterr()
    assert main(["prepare", str(tiny_csv_source), str(other), "--format", "csv", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"sources {tiny_csv_source} and {other} would both be written to {tmp_path / 'o' / 'tiny'}" in err
    assert not (tmp_path / "o" / "tiny").exists()


def test_several_sources_check_every_output_first_and_name_what_was_written(
        tiny_csv_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = tmp_path / "more" / "second"
    second.mkdir(parents=True)
    for name in ("interactions", "items"):
        (second / f"{name}.csv").write_bytes((tiny_csv_source / f"{name}.csv").read_bytes())
    out = tmp_path / "o"
    (out / "second").mkdir(parents=True)
    (out / "second" / "dataset.json").write_text('{"format_version": 1}')  # an earlier dataset: not without
    argv = ["prepare", str(tiny_csv_source), str(second), "--format", "csv", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"unisrec prepare: error: {out / 'second'}: dataset folder exists; pass --overwrite (overwrite=True) to "
        "replace it")
    assert not (out / "tiny").exists()  # refused before the first source was written
    (second / "items.csv").write_text("item_id,title\ni0,\n")  # an input error in the second source
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"(written before it: {out / 'tiny'}; once it is mended, prepare the rest, or all again "
                        "with --overwrite)") and (out / "tiny" / "dataset.json").exists()


def test_each_file_takes_the_separator_of_its_own_name(tiny_csv_source: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """items.tsv beside interactions.csv was read with commas (the interactions file's name chose for both)."""
    (tiny_csv_source / "items.csv").unlink()
    titles = [f"Item {i}, a title with a comma" for i in range(6)]
    (tiny_csv_source / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"i{i}\t{t}\n" for i, t in
                                                                          enumerate(titles)))
    prepare(tiny_csv_source, "csv", tmp_path / "out", options=PrepareOptions(user_core=0, item_core=0))
    data = load_processed(tmp_path / "out")
    assert data.item_texts == titles
    assert main(["prepare", str(tiny_csv_source), "--format", "csv", "--out", str(tmp_path / "comma"),
                 "--delimiter", ","]) == 2  # given, it is used for both files: the TSV's header is one name
    err = capsys.readouterr().err
    assert "no text column: expected one of ['title', 'text']; the header has: item_id\ttitle" in err


def test_iso_times_with_fractions_and_offsets() -> None:
    where = {"path": Path("unused.csv"), "column": "timestamp", "header": True}
    cases = {
        ("2020-01-01T00:00:00Z", "2020-01-01T00:00:01.750Z"): [1577836800, 1577836801],
        ("2020-01-01T01:00:00+01:00", "2020-01-01T00:00:00-0030"): [1577836800, 1577838600],
        ("2020-01-01 00:00:00.9", "2020-01-01 00:00:01,5"): [1577836800, 1577836801],
    }
    for values, expected in cases.items():
        assert parse_timestamps(pa.array(values), **where).tolist() == expected  # type: ignore[arg-type]


def test_a_column_named_for_two_roles_is_read_once(tiny_csv_source: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cli_ok(capsys, [str(tiny_csv_source), "--format", "csv", "--text-columns", "item_id"], tmp_path / "ids")
    assert load_processed(tmp_path / "ids").item_texts == [f"i{i}" for i in range(6)]  # the id is the text
    cli_ok(capsys, [str(tiny_csv_source), "--format", "csv", "--text-columns", "title,title"], tmp_path / "twice")
    assert load_processed(tmp_path / "twice").item_texts[0] == 'Item 0, "quoted" title'  # joined once
    assert _error(capsys, tiny_csv_source, tmp_path / "o", "--user-column", "item_id") == (
        f"{tiny_csv_source / 'interactions.csv'}, line 1: --user-column and --item-column name the same column "
        "'item_id'")
    for flag, column in (("--user-column", "user_id"), ("--item-column", "item_id")):
        assert _error(capsys, tiny_csv_source, tmp_path / "o", "--time-column", column) == (
            f"{tiny_csv_source / 'interactions.csv'}, line 1: --time-column and {flag} name the same column "
            f"{column!r}")


def test_text_columns_naming_no_column_are_refused(tiny_csv_source: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for spec in (",", ""):
        assert _error(capsys, tiny_csv_source, tmp_path / "o", "--text-columns", spec) == (
            f"--text-columns {spec!r} names no column: expected a name ('title'), alternatives ('title|text') or "
            "names to join ('title,brand')")


def test_bare_cr_line_breaks_are_named(tiny_csv_source: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_csv_source / "interactions.csv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))  # old Mac line breaks
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        f"{path}, line 1: the line breaks are bare CR (carriage return only); convert the file to LF or CRLF "
        "line breaks")
    path.write_bytes(path.read_bytes().replace(b"\r", b"\r\n"))  # CRLF is read
    assert prepare(tiny_csv_source, "csv", tmp_path / "crlf").n_interactions == 48


def test_iso_forms_mixed_in_one_column_are_each_read(tiny_csv_source: Path, tmp_path: Path) -> None:
    path = tiny_csv_source / "interactions.csv"
    prepare(tiny_csv_source, "csv", tmp_path / "unix")
    head, *rows = path.read_text().splitlines()
    forms = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S+00:00", "%Y-%m-%dT%H:%M:%S.250")
    mixed = []
    for number, row in enumerate(rows):
        user, item, seconds = row.split(",")
        when = dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime(forms[number % len(forms)])
        mixed.append(f"{user},{item},{when}")
    mixed[2] = mixed[2].replace("+00:00", "+01:00").replace(" 00:", " 01:")  # an offset: converted to UTC
    path.write_text("\n".join([head, *mixed]) + "\n")
    prepare(tiny_csv_source, "csv", tmp_path / "iso")
    unix, iso = load_processed(tmp_path / "unix"), load_processed(tmp_path / "iso")
    assert iso.timestamps.tolist() == unix.timestamps.tolist() and sequences(iso) == sequences(unix)


def test_a_header_without_a_final_line_break_holds_no_interactions(tiny_csv_source: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_csv_source / "interactions.csv"
    path.write_text("user_id,item_id,timestamp")
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == "tiny: the input holds no interactions"
    path.unlink()
    (tiny_csv_source / "interactions.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,timestamp"))
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == "tiny: the input holds no interactions"


def test_utf16_files_and_encodings_are_named(tiny_csv_source: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A UTF-16 file (Excel's "Unicode text") was "not valid utf-8 text", and with --encoding utf-16 "not valid
    utf-16 text", since lines are found by the LF byte: say what the file is and how to convert it."""
    for name in ("interactions.csv", "items.csv"):
        path = tiny_csv_source / name
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    assert _error(capsys, tiny_csv_source, tmp_path / "o") == (
        f"{tiny_csv_source / 'items.csv'}, line 1: the file starts with a UTF-16 byte-order mark, not utf-8 text; "
        "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8 FILE > NEW)")
    items = tiny_csv_source / "items.csv"
    text = items.read_bytes().decode("utf-16")
    for codec in ("utf-32-le", "utf-32-be"):  # with their marks: UTF-32, not UTF-16 (whose iconv would corrupt it)
        items.write_bytes(codecs.BOM_UTF32_LE + text.encode(codec) if codec.endswith("le")
                          else codecs.BOM_UTF32_BE + text.encode(codec))
        assert _error(capsys, tiny_csv_source, tmp_path / "o").endswith(
            "the file starts with a UTF-32 byte-order mark, not utf-8 text; convert it to UTF-8 (iconv -f UTF-32 -t "
            "UTF-8 FILE > NEW)")
    items.write_bytes(text.encode("utf-16"))
    for encoding in ("utf-16", "UTF-32-LE"):
        assert _error(capsys, tiny_csv_source, tmp_path / "o", "--encoding", encoding) == (
            f"--encoding {encoding} is not read: its line feed is not the one byte LF that lines are found by; "
            f"convert the files to UTF-8 (iconv -f {encoding} -t UTF-8 FILE > NEW)")
    assert _error(capsys, tiny_csv_source, tmp_path / "o", "--encoding", "klingon") == (
        "unknown encoding 'klingon' (--encoding)")
    for name in ("interactions.csv", "items.csv"):  # converted as the message says: read
        path = tiny_csv_source / name
        path.write_bytes(path.read_bytes().decode("utf-16").encode("utf-8"))
    assert cli_ok(capsys, [str(tiny_csv_source), "--format", "csv"], tmp_path / "ok")["interactions"] == 48
    for name in ("interactions.csv", "items.csv"):  # pandas' to_csv(encoding="utf-8-sig"): its mark comes once
        path = tiny_csv_source / name
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-8-sig"))
    assert cli_ok(capsys, [str(tiny_csv_source), "--format", "csv", "--encoding", "utf-8-sig"],
                  tmp_path / "sig")["interactions"] == 48


def test_an_output_given_as_a_link_is_replaced_where_it_points(tiny_csv_source: Path, tmp_path: Path) -> None:
    """--overwrite through a symbolic link replaced the link by a folder, left the old target as it was and the
    renamed link dangling beside it."""
    target = tmp_path / "store" / "tiny"
    prepare(tiny_csv_source, "csv", target)
    link = tmp_path / "tiny-link"
    link.symlink_to(target)
    prepare(tiny_csv_source, "csv", link, options=PrepareOptions(user_core=0, item_core=0), overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert load_processed(target).stats["filtering"][-1]["step"].endswith("users >= 3, items >= 0 interactions")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "tiny", "tiny-link"]  # nothing left beside it
    assert not [p for p in (tmp_path / "store").iterdir() if p.name != "tiny" and not p.name.endswith(".lock")]
