"""Format ``online-retail``: the UCI Online Retail data set, as CSV (plain or .gz) or XLSX.

Columns InvoiceNo (or Invoice), StockCode, Description, Quantity, InvoiceDate (others are ignored). As in
the UniSRec paper a session is an invoice: the "user" is the InvoiceNo, items are StockCodes, an item's text
is its Description (the most frequent one when a StockCode has several; ties go to the first seen), the
timestamp is the InvoiceDate ("12/1/2010 8:26" in the CSV, date-time cells in the XLSX; items of one invoice
keep their file order). Cancelled invoices (InvoiceNo starting with "C"), rows with Quantity <= 0 and rows
without a description are dropped first, and ``stats.json`` -> ``filtering`` counts each of these steps.
An XLSX file is read from its first sheet, with openpyxl (``pip install 'unisrec[retail]'``).
"""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisrec.datasets.csv_io import (
    check_exists,
    first_empty,
    parse_timestamps,
    read_csv,
    read_header,
    record_line,
)
from unisrec.datasets.pipeline import RawData, prefilter
from unisrec.datasets.text_clean import clean_text
from unisrec.errors import DataError, UnisrecError

# role -> accepted column names (the UCI file's first; "Online Retail II" spells the invoice "Invoice")
COLUMNS = {
    "invoice": ("InvoiceNo", "Invoice"),
    "item": ("StockCode",),
    "text": ("Description",),
    "quantity": ("Quantity",),
    "time": ("InvoiceDate",),
}
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")
_EPOCH = dt.datetime(1970, 1, 1)
Columns = tuple[dict[str, pa.Array], np.ndarray, np.ndarray, Callable[[int], "int | None"]]


def resolve_columns(header: list[str], path: Path) -> dict[str, str]:
    """role -> column name present in ``header``; a missing column is an error naming the header."""
    found = {}
    for role, names in COLUMNS.items():
        name = next((n for n in names if n in header), None)
        if name is None:
            raise DataError(
                path,
                f"missing column {names[0]!r}; the header has: {', '.join(map(str, header)) or '(empty)'}",
                line=1,
            )
        found[role] = name
    return found


def _quantity(values: pa.Array, lines: Callable[[int], int | None], path: Path, column: str) -> np.ndarray:
    """(E,) float64 quantities; ``lines(index)`` gives the line of a bad value."""
    strings = pc.utf8_trim_whitespace(values)
    ok = pc.match_substring_regex(strings, r"^[-+]?[0-9]+(\.[0-9]*)?$").to_numpy(zero_copy_only=False)
    if not ok.all():
        index = int(np.flatnonzero(~ok)[0])
        raise DataError(
            path, f"expected a number, got {strings[index].as_py()!r}", line=lines(index), column=column
        )
    return pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)


def read_retail_csv(path: Path, encoding: str) -> Columns:
    """(columns by role, quantity, timestamp, line of a row) of a CSV export."""
    names = resolve_columns(read_header(path, encoding, ","), path)
    table = read_csv(path, list(names.values()), encoding=encoding)
    columns = {role: table.column(name).combine_chunks() for role, name in names.items()}

    def lines(index: int) -> int | None:
        return record_line(path, index, header=True, encoding=encoding, delimiter=",")

    quantity = _quantity(columns["quantity"], lines, path, names["quantity"])
    timestamps = parse_timestamps(
        columns["time"], path, names["time"], header=True, encoding=encoding, formats=DATE_FORMATS
    )
    return columns, quantity, timestamps, lines


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _cell_time(value: Any, path: Path, line: int, column: str) -> int:
    if isinstance(value, dt.datetime):
        return int((value - _EPOCH).total_seconds())
    if isinstance(value, str):
        for fmt in (*DATE_FORMATS, "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
            try:
                return int((dt.datetime.strptime(value.strip(), fmt) - _EPOCH).total_seconds())
            except ValueError:
                continue
    raise DataError(path, f"unparsable date {value!r}: expected a date-time cell", line=line, column=column)


def read_retail_xlsx(path: Path) -> Columns:
    """(columns by role, quantity, timestamp, line of a row) of the first sheet of an XLSX workbook."""
    try:
        import openpyxl
    except ImportError:
        raise UnisrecError(
            "reading .xlsx files needs openpyxl: pip install 'unisrec[retail]' (or save the sheet as CSV)"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(path, f"not a readable .xlsx workbook ({exc})") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [_cell_text(v) for v in next(rows, ())]
        names = resolve_columns(header, path)
        position = {role: header.index(name) for role, name in names.items()}
        values: dict[str, list[str]] = {role: [] for role in ("invoice", "item", "text")}
        quantity: list[float] = []
        times: list[int] = []
        lines: list[int] = []
        width = len(header)
        for line, cells in enumerate(rows, start=2):
            if not any(v is not None for v in cells):
                continue
            row = (*cells, *([None] * (width - len(cells))))
            for role in values:
                values[role].append(_cell_text(row[position[role]]))
            amount = row[position["quantity"]]
            if not isinstance(amount, (int, float)):
                raise DataError(
                    path, f"expected a number, got {amount!r}", line=line, column=names["quantity"]
                )
            quantity.append(float(amount))
            times.append(_cell_time(row[position["time"]], path, line, names["time"]))
            lines.append(line)
    finally:
        book.close()
    columns = {role: pa.array(v, pa.string()) for role, v in values.items()}
    return (
        columns,
        np.asarray(quantity, dtype=np.float64),
        np.asarray(times, dtype=np.int64),
        lines.__getitem__,
    )


def most_frequent_text(items: pa.Array, texts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(item ids, text) with each item's most frequent text; ties go to the text seen first."""
    rows = pa.array(np.arange(len(items), dtype=np.int64))
    table = pa.table({"item": items, "text": texts, "row": rows})
    grouped = table.group_by(["item", "text"], use_threads=False).aggregate(
        [("row", "count"), ("row", "min")]
    )
    grouped = grouped.append_column("neg_count", pc.negate(grouped.column("row_count")))
    ranked = grouped.sort_by([("item", "ascending"), ("neg_count", "ascending"), ("row_min", "ascending")])
    item_col = ranked.column("item").to_numpy(zero_copy_only=False)
    first = np.ones(len(item_col), dtype=bool)
    first[1:] = item_col[1:] != item_col[:-1]
    best = ranked.filter(pa.array(first)).sort_by("row_min")  # catalogue in order of first sale
    return best.column("item").combine_chunks(), best.column("text").combine_chunks()


def read_online_retail_source(path: Path, encoding: str) -> RawData:
    check_exists(path)
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        columns, quantity, timestamps, lines = read_retail_xlsx(path)
    else:
        columns, quantity, timestamps, lines = read_retail_csv(path, encoding)
    for role in ("invoice", "item"):
        empty = first_empty(columns[role])
        if empty is not None:
            raise DataError(path, f"empty {COLUMNS[role][0]}", line=lines(empty), column=COLUMNS[role][0])
    unique_texts = pc.unique(columns["text"])
    cleaned = pa.array([clean_text(t) for t in unique_texts.to_pylist()], pa.string())
    text = cleaned.take(pc.index_in(columns["text"], value_set=unique_texts))
    event = [columns["invoice"], columns["item"], text, pa.array(timestamps), pa.array(quantity)]
    steps: list[dict[str, Any]] = []
    cancelled = pc.starts_with(pc.utf8_upper(event[0]), "C")
    event = prefilter(
        steps, "drop cancelled invoices (InvoiceNo starting with 'C')", pc.invert(cancelled), event
    )
    event = prefilter(steps, "drop rows with Quantity <= 0", pc.greater(event[4], 0), event)
    event = prefilter(
        steps, "drop rows without a description", pc.greater(pc.utf8_length(event[2]), 0), event
    )
    catalogue_id, catalogue_text = most_frequent_text(event[1], event[2])
    return RawData(
        event[0],
        event[1],
        event[3].to_numpy(zero_copy_only=False),
        catalogue_id,
        catalogue_text,
        pre_steps=steps,
        info={"sessions": "invoices (user = InvoiceNo)", "text": "most frequent Description of a StockCode"},
    )
