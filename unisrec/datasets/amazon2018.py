"""Format ``amazon2018``: the Amazon review data (2018) ratings-only CSV and its metadata file.

Files of one category ``C`` (e.g. ``Industrial_and_Scientific``)::

    C.csv[.gz]            item,user,rating,time    (no header; time in Unix seconds)
    meta_C.json[.gz]      one JSON object per line: asin, title, category (list), brand, description, ...

SOURCE is the folder holding both (the category is read from the ``meta_C`` file name, or given with
--name when the folder holds several), or the ratings file with the metadata file beside it.

Processed as the UniSRec paper did: repeated ratings (same user, item, rating and time) count once; item
text is "title. categories. brand" (categories joined by spaces, HTML entities unescaped, double quotes
deleted, a field longer than ``MAX_FIELD_CHARS`` dropped); items without a metadata line or whose text is
empty have no text, so their interactions are dropped (``stats.json`` counts them). When an asin has several
metadata lines the first one is used. Older dumps written as Python literals (``{'asin': ...}``) are read too.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisrec.datasets.csv_io import check_exists, first_empty, parse_timestamps, read_csv, record_line
from unisrec.datasets.pipeline import RawData, prefilter
from unisrec.datasets.text_clean import join_fields
from unisrec.errors import DataError, UnisrecError

# The paper drops a field whose cleaned text, with its final period, reaches 2,000 characters.
MAX_FIELD_CHARS = 1998
TEXT_FIELDS = ("title", "category", "brand")
REMOVED_CHARS = '"'  # the paper's clean-up deletes double quotes
RATING_COLUMNS = ("item", "user", "rating", "time")
# Cheap look-up of a line's asins, so that metadata of items nobody rated is never parsed.
_ASIN = re.compile(rb"""["']asin["']\s*:\s*["']([^"']*)["']""")


def _ratings_file(folder: Path, category: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        if (folder / f"{category}{suffix}").exists():
            return folder / f"{category}{suffix}"
    return None


def _meta_file(folder: Path, category: str) -> Path | None:
    for suffix in (".json.gz", ".json"):
        if (folder / f"meta_{category}{suffix}").exists():
            return folder / f"meta_{category}{suffix}"
    return None


def _category_of_meta(path: Path) -> str:
    return re.sub(r"\.json(\.gz)?$", "", path.name)[len("meta_") :]


def find_files(path: Path, category: str | None) -> tuple[Path, Path]:
    """(ratings file, metadata file) of ``path``: a folder, or the ratings file itself."""
    if path.is_dir():
        if category is None or _meta_file(path, category) is None:
            metas = sorted({_category_of_meta(p) for p in path.glob("meta_*.json*")})
            if not metas:
                raise UnisrecError(f"{path}: no meta_<Category>.json.gz file in this folder")
            if len(metas) > 1:
                raise UnisrecError(f"{path}: several categories ({', '.join(metas)}); choose one with --name")
            category = metas[0]
        meta = _meta_file(path, category)
        ratings = _ratings_file(path, category)
        if meta is None:
            raise UnisrecError(f"{path}: no meta_{category}.json.gz file in this folder")
        if ratings is None:
            raise UnisrecError(f"{path}: no ratings file {category}.csv or {category}.csv.gz beside {meta.name}")
        return ratings, meta
    check_exists(path)
    stem = re.sub(r"\.csv(\.gz)?$", "", path.name)
    meta = _meta_file(path.parent, stem) or (category and _meta_file(path.parent, category)) or None
    if meta is None:
        raise DataError(path, f"no metadata file meta_{stem}.json.gz beside this ratings file")
    return path, meta


def read_ratings(path: Path) -> tuple[pa.Array, pa.Array, pa.Array, np.ndarray]:
    """(user, item, rating, timestamp) columns of a ratings-only CSV (no header)."""
    table = read_csv(path, ["item", "user", "rating", "time"], header=False, column_names=RATING_COLUMNS)
    columns = {name: table.column(name).combine_chunks() for name in ("item", "user", "rating", "time")}
    for name in ("user", "item"):
        empty = first_empty(columns[name])
        if empty is not None:
            line = record_line(path, empty, header=False, encoding="utf-8", delimiter=",")
            raise DataError(path, f"empty {name} id", line=line, column=name)
    timestamps = parse_timestamps(columns["time"], path, "time", header=False)
    return columns["user"], columns["item"], columns["rating"], timestamps


def _first_of_each(table: pa.Table) -> np.ndarray:
    """(E,) bool: rows that are the first of their distinct (all columns) value."""
    indexed = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    first = indexed.group_by(table.column_names, use_threads=False).aggregate([("row", "min")])
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[first.column("row_min").to_numpy()] = True
    return keep


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(_field_text(v) for v in value)
    return value if isinstance(value, str) else str(value)


def item_text(record: dict[str, Any]) -> str:
    """The paper's "title. categories. brand" text of one metadata record."""
    fields = [_field_text(record.get(key)) for key in TEXT_FIELDS]
    return join_fields(fields, MAX_FIELD_CHARS, remove=REMOVED_CHARS)


def _parse_line(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(path, "not valid UTF-8 text", line=number) from None
    try:
        record = json.loads(text)
    except (RecursionError, MemoryError) as exc:  # e.g. 100,000 '[': too deep or too large for the parser
        what = "nested too deeply" if isinstance(exc, RecursionError) else "too large"
        raise DataError(path, f"not a JSON object ({what} to parse)", line=number) from None
    except json.JSONDecodeError as exc:
        try:
            record = ast.literal_eval(text.strip())  # older dumps: one Python dict literal per line
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # TypeError: {[1]: 2}
            raise DataError(path, f"not a JSON object ({exc.msg} at character {exc.pos + 1})", line=number) from None
    if not isinstance(record, dict) or not isinstance(record.get("asin"), str):
        raise DataError(path, "expected a JSON object with an 'asin' string", line=number)
    return record


def _meta_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from enumerate(handle, start=1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"truncated or corrupted gzip file ({exc})") from None


def read_meta(path: Path, wanted: set[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """(asins, texts) of the items in ``wanted`` that have a metadata line and a non-empty text."""
    asins: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    counts = {"metadata_lines": 0, "repeated_metadata_lines": 0, "rated_items_with_empty_text": 0}
    for number, raw in _meta_lines(path):
        if not raw.strip():
            continue
        counts["metadata_lines"] += 1
        # every "asin": "..." of the line (a nested one, or one quoted inside a text, may come first): skipped
        # unparsed only when none of them is wanted and none is escaped (\u0069... reads as another string)
        found = _ASIN.findall(raw)
        if found and not any(b"\\" in a or a.decode("utf-8", "replace") in wanted for a in found):
            continue
        record = _parse_line(path, number, raw)
        asin = record["asin"]
        if asin not in wanted:
            continue
        if asin in seen:
            counts["repeated_metadata_lines"] += 1
            continue
        seen.add(asin)
        text = item_text(record)
        if text:
            asins.append(asin)
            texts.append(text)
        else:
            counts["rated_items_with_empty_text"] += 1
    counts["rated_items_without_metadata"] = len(wanted) - len(seen)
    return asins, texts, counts


def read_amazon2018_source(path: Path, category: str | None) -> RawData:
    ratings_path, meta_path = find_files(path, category)
    users, items, ratings, timestamps = read_ratings(ratings_path)
    steps: list[dict[str, Any]] = []
    keys = pa.table({"user": users, "item": items, "rating": ratings, "time": pa.array(timestamps)})
    keep = _first_of_each(keys)
    users, items, time = prefilter(
        steps, "drop repeated ratings (same user, item, rating and time)", keep, [users, items, keys["time"]]
    )
    wanted = set(pc.unique(items).to_pylist())
    asins, texts, counts = read_meta(meta_path, wanted)
    info = {
        "ratings_file": ratings_path.name,
        "metadata_file": meta_path.name,
        "text_fields": list(TEXT_FIELDS),
        "max_field_chars": MAX_FIELD_CHARS,
        **counts,
    }
    return RawData(
        users,
        items,
        time.combine_chunks().to_numpy() if isinstance(time, pa.ChunkedArray) else time.to_numpy(),
        pa.array(asins, pa.string()),
        pa.array(texts, pa.string()),
        pre_steps=steps,
        info=info,
    )
