"""Format ``online-retail``: UCI Online Retail as CSV or XLSX, on small files written here."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from format_checks import check_leave_one_out, cli_error, cli_ok, sequences, steps

from unisrec.datasets import load_processed, prepare
from unisrec.datasets.online_retail import DATE_FORMATS

HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
CODES = ["85123A", "71053", "84406B", "22752", "21730"]
NAMES = {
    "85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "71053": "WHITE METAL LANTERN",
    "84406B": "CREAM CUPID HEARTS COAT HANGER",
    "21730": "GLASS STAR FROSTED T-LIGHT HOLDER, &amp; SAUCER",
}


def description(invoice: int, code: str) -> str:
    if code == "22752":  # a tie: the description seen first wins
        return "SET 7 BABUSHKA NESTING BOXES" if invoice % 2 == 0 else "BABUSHKA  NESTING BOXES"
    if code == "71053" and invoice == 3:
        return "white metal lantern "  # the most frequent description wins
    return NAMES[code]


def rows() -> list[list[object]]:
    """(cells) of 6 invoices of 5 items each, plus a cancellation, a return and a row without description."""
    out: list[list[object]] = []
    for invoice in range(6):
        when = dt.datetime(2010, 12, 1 + invoice, 8, 26)
        for k in range(5):
            code = CODES[(invoice + k) % 5]
            out.append([536365 + invoice, code, description(invoice, code), 6, when, 2.55, 17850.0, "UK"])
    out.insert(3, ["C536379", "22752", "SET 7 BABUSHKA NESTING BOXES", -1, dt.datetime(2010, 12, 13, 9, 41),
                   4.25, 14527.0, "UK"])  # fmt: skip  # (day 13: the column reads as month/day only)
    out.append([536380, "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", -2, dt.datetime(2010, 12, 9, 9), 0, None, "UK"])
    out.append([536381, "99999", None, 5, dt.datetime(2010, 12, 9, 10), 0, None, "UK"])
    return out


def csv_cell(value: object) -> str:
    if isinstance(value, dt.datetime):
        return f"{value.month}/{value.day}/{value.year} {value.hour}:{value.minute:02d}"
    if value is None:
        return ""
    text = str(value)
    return f'"{text}"' if "," in text else text


def write_csv(path: Path, data: list[list[object]] | None = None) -> Path:
    lines = [",".join(HEADER)] + [",".join(csv_cell(v) for v in row) for row in (data or rows())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_dataset(out: Path) -> None:
    data = load_processed(out)
    assert (data.n_users, data.n_items, data.n_interactions) == (6, 5, 30)
    assert list(data.user_ids) == [str(536365 + i) for i in range(6)]
    assert list(data.item_ids) == CODES
    assert data.item_texts == [
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "WHITE METAL LANTERN",
        "CREAM CUPID HEARTS COAT HANGER",
        "SET 7 BABUSHKA NESTING BOXES",
        "GLASS STAR FROSTED T-LIGHT HOLDER, & SAUCER",
    ]
    assert sequences(data)["536366"] == ["71053", "84406B", "22752", "21730", "85123A"]  # file order
    assert data.timestamps[0] == 1291191960  # 2010-12-01 08:26 UTC
    check_leave_one_out(data)
    assert data.stats["input"] == {"interactions": 33, "catalogue_items": 5}
    assert steps(data) == [
        ("drop cancelled invoices (InvoiceNo starting with 'C')", 1, 1, 0),
        ("drop rows with Quantity <= 0", 1, 1, 0),
        ("drop rows without a description", 1, 1, 1),
        ("drop interactions whose item has no text", 0, 0, 0),
        ("iterative k-core: users >= 5, items >= 5 interactions", 0, 0, 0),
    ]


def test_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "Online Retail.csv")
    summary = cli_ok(capsys, [str(source), "--format", "online-retail"], tmp_path / "out")
    assert summary["name"] == "Online Retail"
    check_dataset(tmp_path / "out")


def test_csv_latin1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "retail.csv")
    source.write_bytes(source.read_text().replace("CREAM CUPID", "CRÈME CUPID").encode("latin-1"))
    message = cli_error(capsys, [str(source), "--format", "online-retail"], tmp_path / "out")
    assert message == f"{source}, line 4: not valid utf-8 text; re-encode the file or pass --encoding"
    prepare(source, "online-retail", tmp_path / "out", encoding="latin-1")
    assert load_processed(tmp_path / "out").item_texts[2] == "CRÈME CUPID HEARTS COAT HANGER"


def write_xlsx(path: Path, data: list[list[object]] | None = None) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER)
    for row in data or rows():
        sheet.append(row)
    book.save(path)
    return path


def test_xlsx(tmp_path: Path) -> None:
    source = write_xlsx(tmp_path / "Online Retail.xlsx")
    assert prepare(source, "online-retail", tmp_path / "out").name == "Online Retail"
    check_dataset(tmp_path / "out")


def _error(capsys: pytest.CaptureFixture[str], source: Path, out: Path) -> str:
    return cli_error(capsys, [str(source), "--format", "online-retail"], out)


def test_bad_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    source = tmp_path / "retail.csv"
    assert _error(capsys, source, out) == f"{source}: file not found"
    data = rows()
    data[5][4] = "someday"
    write_csv(source, data)
    formats = " / ".join(DATE_FORMATS)
    assert _error(capsys, source, out) == (
        f"{source}, line 7, column 'InvoiceDate': unparsable timestamp 'someday': expected Unix seconds, "
        f"an ISO 8601 date-time or a date-time in the format {formats}"
    )
    data = rows()
    data[7][3] = "many"
    write_csv(source, data)
    assert _error(capsys, source, out) == f"{source}, line 9, column 'Quantity': expected a number, got 'many'"
    data = rows()
    data[8][1] = " "
    write_csv(source, data)
    assert _error(capsys, source, out) == f"{source}, line 10, column 'StockCode': empty StockCode"
    write_csv(source)
    source.write_text(source.read_text().replace("StockCode", "Stock Code", 1))
    assert _error(capsys, source, out) == (
        f"{source}, line 1: missing column 'StockCode'; the header has: InvoiceNo, Stock Code, Description, "
        "Quantity, InvoiceDate, UnitPrice, CustomerID, Country"
    )


def test_bad_xlsx(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    data = rows()
    data[4][4] = "not a date"
    source = write_xlsx(tmp_path / "retail.xlsx", data)
    assert _error(capsys, source, out) == (
        f"{source}, line 6, column 'InvoiceDate': unparsable date 'not a date': expected a date-time cell"
    )
    data = rows()
    data[2][3] = None
    write_xlsx(source, data)
    assert _error(capsys, source, out) == f"{source}, line 4, column 'Quantity': expected a number, got None"
    source.write_bytes(source.read_bytes()[:500])
    assert _error(capsys, source, out).startswith(f"{source}: not a readable .xlsx workbook (")
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    assert _error(capsys, source, out) == (
        "reading .xlsx files needs openpyxl: pip install 'unisrec[retail]' (or save the sheet as CSV)"
    )


def test_dates_that_read_as_day_month_and_as_month_day_are_noted(capsys: pytest.CaptureFixture[str]) -> None:
    """The first format that read every value was taken without a word, also when another read them all as
    other dates (every day 12 or less): a UK-style 1/12/2010 (1 December) was stored as 12 January."""
    import pyarrow as pa

    from unisrec.datasets.csv_io import parse_timestamps
    from unisrec.datasets.online_retail import DATE_FORMATS

    where = {"path": Path("sales.csv"), "column": "InvoiceDate", "header": True}
    values = pa.array(["1/12/2010 8:26", "2/12/2010 9:00"])
    seconds = parse_timestamps(values, formats=DATE_FORMATS, **where)  # type: ignore[arg-type]
    assert seconds.tolist() == [1263284760, 1265965200]  # month/day: 12 January and 12 February, as before
    assert capsys.readouterr().err.strip() == (
        "sales.csv: column 'InvoiceDate': every timestamp reads as %m/%d/%Y %H:%M and as %d/%m/%Y %H:%M, with "
        "other times; read as %m/%d/%Y %H:%M (the first of the formats)")
    parse_timestamps(pa.array(["12/13/2010 8:26"]), formats=DATE_FORMATS, **where)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""  # day 13: one reading only
