"""Format ``csv``: one interactions file (user, item, timestamp) and one items file (item, text)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from unisrec.datasets.csv_io import (
    first_duplicate,
    first_empty,
    fractions_of_seconds,
    parse_timestamps,
    read_csv,
    read_header,
    record_line,
)
from unisrec.datasets.pipeline import RawData
from unisrec.datasets.text_clean import join_fields
from unisrec.errors import DataError, UnisrecError


@dataclass(frozen=True)
class CsvColumns:
    """Column names of the two files; ``text`` lists alternatives ("title|text") or fields to join."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    items_item: str = "item_id"
    text: str = "title|text"


def find_file(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}{suffix}" for suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz")
             if (folder / f"{stem}{suffix}").exists()]
    if len(found) > 1:
        raise UnisrecError(f"{folder}: {' and '.join(p.name for p in found)} are both here; which one to read is "
                           f"ambiguous: remove one (or pass --{stem} FILE)")
    if not found:
        raise UnisrecError(f"{folder}: no {stem}.csv or {stem}.csv.gz in this folder (or pass --{stem} FILE)")
    return found[0]


def resolve_text_columns(spec: str, header: Sequence[str], path: Path) -> list[str]:
    """"title|text" -> the first alternative present; "title,brand" -> every listed column (joined)."""
    if "|" in spec:
        for name in spec.split("|"):
            if name in header:
                return [name]
        raise DataError(
            path,
            f"no text column: expected one of {spec.split('|')}; the header has: {', '.join(header)}",
            line=1,
        )
    names = list(dict.fromkeys(n for n in spec.split(",") if n))  # a column listed twice is joined once
    if not names:
        raise UnisrecError(f"--text-columns {spec!r} names no column: expected a name ('title'), alternatives "
                           "('title|text') or names to join ('title,brand')")
    for name in names:
        if name not in header:
            raise DataError(
                path, f"missing text column {name!r}; the header has: {', '.join(header)}", line=1
            )
    return names


def read_items(
    path: Path, id_column: str, text_spec: str, *, delimiter: str, encoding: str
) -> tuple[pa.Array, pa.Array]:
    """(ids, texts) of an items file; empty texts and duplicate ids are errors naming the line."""
    text_columns = resolve_text_columns(text_spec, read_header(path, encoding, delimiter), path)
    table = read_csv(path, [id_column, *text_columns], delimiter=delimiter, encoding=encoding)
    ids = pc.utf8_trim_whitespace(table.column(id_column).combine_chunks())  # "i1, title": the id is "i1"
    columns = [table.column(c).to_pylist() for c in text_columns]
    texts = [join_fields(fields) for fields in zip(*columns, strict=True)]
    text_array = pa.array(texts, pa.string())
    _check_items(path, ids, text_array, id_column, text_columns, delimiter=delimiter, encoding=encoding)
    return ids, text_array


def _check_items(
    path: Path,
    ids: pa.Array,
    texts: pa.Array,
    id_column: str,
    text_columns: list[str],
    *,
    delimiter: str,
    encoding: str,
    header: bool = True,
) -> None:
    empty_id = first_empty(ids)
    if empty_id is not None:
        line = record_line(path, empty_id, header=header, encoding=encoding, delimiter=delimiter)
        raise DataError(path, "empty item id", line=line, column=id_column)
    empty = first_empty(texts)
    if empty is not None:
        line = record_line(path, empty, header=header, encoding=encoding, delimiter=delimiter)
        raise DataError(
            path,
            f"empty text for item {ids[empty].as_py()!r}: expected a non-empty title or text",
            line=line,
            column="/".join(text_columns),
        )
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        first, repeat = duplicate
        first_line = record_line(path, first, header=header, encoding=encoding, delimiter=delimiter)
        line = record_line(path, repeat, header=header, encoding=encoding, delimiter=delimiter)
        raise DataError(
            path,
            f"duplicate item id {ids[repeat].as_py()!r} (first on line {first_line}): expected unique ids",
            line=line,
            column=id_column,
        )


def read_interactions(
    path: Path, columns: CsvColumns, *, delimiter: str, encoding: str
) -> tuple[pa.Array, pa.Array, pa.Array]:
    if columns.user == columns.item:
        raise DataError(path, f"--user-column and --item-column name the same column {columns.user!r}", line=1)
    for flag, name in (("--user-column", columns.user), ("--item-column", columns.item)):
        if columns.timestamp == name:  # numeric ids would be read as times, silently; others "unparsable timestamp"
            raise DataError(path, f"--time-column and {flag} name the same column {name!r}", line=1)
    table = read_csv(
        path, [columns.user, columns.item, columns.timestamp], delimiter=delimiter, encoding=encoding
    )
    # ids without the spaces around them ("u1, i1, 1000"), as in the items file
    users = pc.utf8_trim_whitespace(table.column(columns.user).combine_chunks())
    items = pc.utf8_trim_whitespace(table.column(columns.item).combine_chunks())
    for values, name in ((users, columns.user), (items, columns.item)):
        empty = first_empty(values)
        if empty is not None:
            line = record_line(path, empty, header=True, encoding=encoding, delimiter=delimiter)
            raise DataError(path, "empty id", line=line, column=name)
    return users, items, table.column(columns.timestamp).combine_chunks()


def read_csv_source(
    source: Path | None,
    *,
    interactions: Path | None = None,
    items: Path | None = None,
    columns: CsvColumns | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> RawData:
    """``delimiter``: of both files; None: each file's by its name (a tab for .tsv[.gz], else a comma)."""
    columns = columns or CsvColumns()
    if source is not None and not source.is_dir() and (interactions is None or items is None):
        raise UnisrecError(
            f"{source}: expected a folder holding interactions.csv[.gz] and items.csv[.gz] "
            "(or give both files with --interactions and --items)"
        )
    inter_path = interactions or find_file(source, "interactions")  # type: ignore[arg-type]
    items_path = items or find_file(source, "items")  # type: ignore[arg-type]
    def separator(path: Path) -> str:
        return delimiter or ("\t" if path.name.endswith((".tsv", ".tsv.gz")) else ",")

    catalogue_id, catalogue_text = read_items(
        items_path, columns.items_item, columns.text, delimiter=separator(items_path), encoding=encoding
    )
    users, item_ids, raw_time = read_interactions(inter_path, columns, delimiter=separator(inter_path),
                                                  encoding=encoding)
    timestamps = parse_timestamps(
        raw_time, inter_path, columns.timestamp, header=True, encoding=encoding, delimiter=separator(inter_path)
    )
    return RawData(users, item_ids, timestamps, catalogue_id, catalogue_text,
                   within_second=fractions_of_seconds(raw_time))
