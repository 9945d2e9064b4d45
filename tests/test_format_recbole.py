"""Format ``recbole``: RecBole atomic files <name>.inter / <name>.item, on small files written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from format_checks import check_leave_one_out, cli_error, cli_ok, sequences, steps

from unisrec.datasets import PrepareOptions, load_processed, prepare

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tprice:float\trelease_year:token\tmovie_title:token_seq\tclass:token_seq"


def inter_rows() -> list[str]:
    rows = [f"{u}\t{10 + (u + k) % 5}\t3\t{880000000 + 100 * (4 - k) + u}.0" for u in range(6) for k in range(5)]
    rows += ["1\t99\t4\t880000001", "2\t99\t4\t880000002"]  # item 99 has an empty text
    return rows


def item_rows() -> list[str]:
    return [
        "10\t9.5\t1995\tToy Story\tAnimation Children's Comedy",
        "11\t\t1995\tBob's \"Big Night\tComedy",  # an unbalanced quote is an ordinary character
        "12\t1.0\t\tFour Rooms\t",
        "13\t\t1994\tL&#233;on &amp; co\tAction",
        "14\t\t1996\tTwelve Monkeys\tSci-Fi Thriller",
        "99\t3.0\t\t\t",
        "15\t\t1990\tNever rated\tDrama",
    ]


def write_source(
    folder: Path,
    name: str = "tiny",
    rows: list[str] | None = None,
    inter_header: str = INTER_HEADER,
    item_header: str = ITEM_HEADER,
) -> Path:
    folder.mkdir(exist_ok=True)
    inter_text = inter_header + "\n" + "\n".join(inter_rows() if rows is None else rows)
    (folder / f"{name}.inter").write_text(inter_text + "\n")
    (folder / f"{name}.item").write_text(item_header + "\n" + "\n".join(item_rows()) + "\n")
    return folder


def test_prepare_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_source(tmp_path / "rb")
    summary = cli_ok(capsys, [str(source), "--format", "recbole"], tmp_path / "out")
    assert summary == {
        "out": str(tmp_path / "out"),
        "name": "rb",
        "users": 6,
        "items": 5,
        "interactions": 30,
        "split": {"train": 18, "valid": 6, "test": 6},
    }
    data = load_processed(tmp_path / "out")
    assert list(data.item_ids) == ["10", "11", "12", "13", "14"]
    assert data.item_texts == [
        "Toy Story. 1995. Animation Children's Comedy",
        "Bob's \"Big Night. 1995. Comedy",
        "Four Rooms",
        "Léon & co. 1994. Action",
        "Twelve Monkeys. 1996. Sci-Fi Thriller",
    ]
    assert sequences(data)["1"] == ["10", "14", "13", "12", "11"]  # by time, the file lists them backwards
    assert data.timestamps[0] == 880000000
    check_leave_one_out(data)
    assert steps(data) == [
        ("drop interactions whose item has no text", 2, 0, 1),
        ("iterative k-core: users >= 5, items >= 5 interactions", 0, 0, 0),
    ]
    assert data.stats["input"] == {"interactions": 32, "catalogue_items": 6}
    assert data.info["text_fields"] == ["movie_title", "release_year", "class"]
    assert data.info["items_without_text"] == 1


def test_inter_file_as_source_session_ids_and_no_timestamp(tmp_path: Path) -> None:
    rows = [r.rsplit("\t", 1)[0] for r in inter_rows()]
    source = write_source(tmp_path / "rb", rows=rows, inter_header="session_id:token\titem_id:token\trating:float")
    data = prepare(source / "tiny.inter", "recbole", tmp_path / "out")
    assert data.name == "tiny" and data.info["timestamps"] == "file order (no timestamp)"
    assert sequences(load_processed(tmp_path / "out"))["1"] == ["11", "12", "13", "14", "10"]  # file order


def test_name_picks_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_source(tmp_path / "rb")
    write_source(source, name="other")
    message = cli_error(capsys, [str(source), "--format", "recbole"], tmp_path / "out")
    assert message == f"{source}: several datasets (other, tiny); choose one with --name"
    summary = cli_ok(capsys, [str(source), "--format", "recbole", "--name", "other"], tmp_path / "out")
    assert summary["name"] == "other" and summary["interactions"] == 30


def _error(capsys: pytest.CaptureFixture[str], source: Path, out: Path) -> str:
    return cli_error(capsys, [str(source), "--format", "recbole"], out)


def test_missing_files_and_bad_headers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    source = write_source(tmp_path / "rb")
    (source / "tiny.item").unlink()
    assert _error(capsys, source, out) == (
        f"{source / 'tiny.item'}: file not found: the recbole format needs the item texts (<name>.item)"
    )
    write_source(source, inter_header="user_id:token\titem_id\ttimestamp:float")
    assert _error(capsys, source, out) == (
        f"{source / 'tiny.inter'}, line 1: header field 'item_id' is not 'name:type' with type one of "
        "token, token_seq, float, float_seq"
    )
    write_source(source, inter_header="user:token\titem_id:token\trating:float\ttimestamp:float")
    assert _error(capsys, source, out) == (
        f"{source / 'tiny.inter'}, line 1: missing field 'user_id:token' or 'session_id:token'; the header "
        "has: user:token, item_id:token, rating:float, timestamp:float"
    )
    write_source(source, item_header="item_id:token\tprice:float")
    assert _error(capsys, source, out) == (
        f"{source / 'tiny.item'}, line 1: no text field: expected token or token_seq fields besides item_id "
        "(e.g. title:token_seq)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(capsys, empty, out) == f"{empty}: no <name>.inter file; expected RecBole atomic files"


def test_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rows = inter_rows()
    rows[3] = "0\t13\t3\tlast week"
    source = write_source(tmp_path / "rb", rows=rows)
    inter = source / "tiny.inter"
    assert _error(capsys, source, out) == (
        f"{inter}, line 5, column 'timestamp:float': unparsable timestamp 'last week': "
        "expected Unix seconds or an ISO 8601 date-time"
    )
    rows[3] = "0\t13\t3"
    write_source(source, rows=rows)
    assert _error(capsys, source, out) == f"{inter}, line 5: expected 4 fields separated by '\\t', found 3"
    rows[3] = "0\t\t3\t880000000"
    write_source(source, rows=rows)
    assert _error(capsys, source, out) == f"{inter}, line 5, column 'item_id:token': empty id"
    write_source(source)
    item = source / "tiny.item"
    item.write_text(item.read_text().replace("14\t\t1996", "12\t\t1996"))
    assert _error(capsys, source, out) == (
        f"{item}, line 6, column 'item_id:token': duplicate item id '12' (first on line 4)"
    )
    item.write_bytes(item.read_bytes().replace(b"Toy Story", b"Toy St\xf6ry"))
    assert _error(capsys, source, out) == (
        f"{item}, line 2: not valid utf-8 text; re-encode the file or pass --encoding"
    )


def test_bare_cr_line_breaks_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_source(tmp_path / "rb")
    item = source / "tiny.item"
    item.write_bytes(item.read_bytes().replace(b"\n", b"\r"))  # old Mac line breaks
    assert _error(capsys, source, tmp_path / "out") == (
        f"{item}, line 1: the line breaks are bare CR (carriage return only); convert the file to LF or CRLF "
        "line breaks")


def test_csv_options_are_refused_and_its_own_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Atomic files are tab-separated with typed headers: --delimiter and the csv column names were ignored
    without a word; the filtering options and --encoding apply."""
    source = write_source(tmp_path / "rb")
    message = cli_error(capsys, [str(source), "--format", "recbole", "--delimiter", ";"], tmp_path / "out")
    assert message == "--delimiter does not apply to format recbole; it is read by format csv only"
    message = cli_error(capsys, [str(source), "--format", "recbole", "--user-column", "uid"], tmp_path / "out")
    assert message == "--user-column does not apply to format recbole; it is read by format csv only"
    message = cli_error(capsys, [str(source), "--format", "recbole", "--cache-dir", "c"], tmp_path / "out")
    assert message == "--cache-dir does not apply to format recbole; it is read by format movielens only"
    cli_ok(capsys, [str(source), "--format", "recbole", "--user-core", "2", "--item-core", "1", "--encoding",
                    "utf-8"], tmp_path / "out")
    assert steps(load_processed(tmp_path / "out"))[-1][0] == "iterative k-core: users >= 3, items >= 1 interactions"
    message = cli_error(capsys, [str(source), "--format", "recbole", "--user-core", "6"], tmp_path / "out6")
    assert message.startswith(f"{source.name}: no interactions left after the k-core filtering (users >= 6, items >= 5")


def test_events_of_one_second_are_ordered_by_their_fractions(tmp_path: Path) -> None:
    """RecBole's timestamp:float values were cut to whole seconds before the sort, so events of one second kept
    the file's order: user 1's validation item was the later event (as csv's were before)."""
    rows = ["1\t10\t3\t100.9", "1\t11\t3\t100.1", "1\t12\t3\t101", "2\t10\t3\t7", "2\t11\t3\t7", "2\t12\t3\t8"]
    source = write_source(tmp_path / "rb", rows=rows)
    prepare(source, "recbole", tmp_path / "out", options=PrepareOptions(user_core=0, item_core=0))
    data = load_processed(tmp_path / "out")
    assert sequences(data) == {"1": ["11", "10", "12"], "2": ["10", "11", "12"]}  # user 2: file order on ties
