"""Column-wise CSV reading (pyarrow) with errors that name the file, the line and the column.

Files are read in one columnar pass; the slow line-by-line scans below run only after a failure, to
point at the first offending line.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from unisrec.errors import DataError


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _records(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of every record, header included."""
    with open_text(path, encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        start = 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def record_line(path: Path, index: int, *, header: bool, encoding: str, delimiter: str) -> int | None:
    """Line number (1-based) where data record ``index`` (0-based) starts, or None if not found."""
    target = index + (1 if header else 0)
    for i, (line, _fields) in enumerate(_records(path, encoding, delimiter)):
        if i == target:
            return line
    return None


def _first_bad_utf8_line(path: Path, encoding: str) -> int | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return None


def _first_bad_width(path: Path, encoding: str, delimiter: str, width: int) -> tuple[int, int] | None:
    for line, fields in _records(path, encoding, delimiter):
        if len(fields) != width:
            return line, len(fields)
    return None


def check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a file")


def read_csv(
    path: Path,
    columns: Sequence[str],
    *,
    header: bool = True,
    column_names: Sequence[str] | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    what: str = "",
) -> pa.Table:
    """Read ``columns`` of a CSV (plain or .gz) as strings; missing columns are an error."""
    check_exists(path)
    read_options = pcsv.ReadOptions(
        encoding=encoding if encoding.lower().replace("-", "") != "utf8" else "utf8",
        column_names=list(column_names) if column_names is not None else None,
        autogenerate_column_names=False,
        block_size=1 << 24,
    )
    parse_options = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    if header:
        header_names = read_header(path, encoding, delimiter)
        missing = [c for c in columns if c not in header_names]
        if missing:
            raise DataError(
                path,
                f"missing column {missing[0]!r}{what}; the header has: {', '.join(header_names) or '(empty)'}",
                line=1,
            )
    elif column_names is not None and len(column_names) < len(columns):
        raise DataError(path, f"expected {len(columns)} columns")
    convert = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(columns),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        return pcsv.read_csv(path, read_options=read_options, parse_options=parse_options, convert_options=convert)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"truncated or corrupted gzip file ({exc})") from None
    except OSError as exc:
        text = str(exc)
        if "compressed" in text.lower() or "gzip" in text.lower():
            raise DataError(path, f"truncated or corrupted gzip file ({text})") from None
        raise DataError(path, f"cannot read ({text})") from None
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "UTF8" in text or "utf8" in text or "decode" in text.lower():
            line = _first_bad_utf8_line(path, encoding)
            raise DataError(
                path, f"not valid {encoding} text; re-encode the file or pass --encoding", line=line
            ) from None
        if "Expected" in text and "columns" in text:
            width = len(column_names) if column_names is not None else len(read_header(path, encoding, delimiter))
            bad = _first_bad_width(path, encoding, delimiter, width)
            if bad is not None:
                raise DataError(
                    path, f"expected {width} fields separated by {delimiter!r}, found {bad[1]}", line=bad[0]
                ) from None
        raise DataError(path, f"cannot parse as CSV ({text})") from None


def read_header(path: Path, encoding: str, delimiter: str) -> list[str]:
    try:
        with open_text(path, encoding) as handle:
            first = next(csv.reader(handle, delimiter=delimiter), [])
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(path, f"truncated or corrupted gzip file ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(path, f"not valid {encoding} text; pass --encoding", line=1) from None
    return [name.strip().lstrip("\ufeff") for name in first]


def parse_timestamps(
    values: pa.ChunkedArray | pa.Array,
    path: Path,
    column: str,
    *,
    header: bool,
    encoding: str = "utf-8",
    delimiter: str = ",",
    formats: Sequence[str] = (),
) -> np.ndarray:
    """(E,) int64 Unix seconds from integer / decimal seconds or ISO 8601 date-times (or ``formats``)."""
    strings = pc.utf8_trim_whitespace(values)
    numeric = pc.match_substring_regex(strings, r"^-?[0-9]+(\.[0-9]*)?$")
    if pc.all(numeric).as_py() is not False and len(strings) > 0:
        return pc.cast(pc.cast(strings, pa.float64()), pa.int64(), safe=False).to_numpy(zero_copy_only=False)
    if len(strings) == 0:
        return np.zeros(0, dtype=np.int64)
    parsed: pa.Array | pa.ChunkedArray | None = None
    for fmt in (*formats, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            parsed = pc.strptime(strings, format=fmt, unit="s", error_is_null=False)
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    if parsed is not None:
        return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
    ok = pc.or_(numeric, pc.match_substring_regex(strings, r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$"))
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    index = int(bad[0]) if len(bad) else 0
    line = record_line(path, index, header=header, encoding=encoding, delimiter=delimiter)
    raise DataError(
        path,
        f"unparsable timestamp {strings[index].as_py()!r}: expected Unix seconds or an ISO 8601 date-time",
        line=line,
        column=column,
    )


def first_empty(values: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first empty / blank string, or None."""
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)
    hits = np.flatnonzero(blank.to_numpy(zero_copy_only=False))
    return int(hits[0]) if len(hits) else None


def first_duplicate(values: pa.ChunkedArray | pa.Array) -> tuple[int, int] | None:
    """Indices (first, repeat) of the first value that appears twice, or None."""
    array = values.to_numpy(zero_copy_only=False) if hasattr(values, "to_numpy") else np.asarray(values)
    _uniq, first_index, inverse = np.unique(array, return_index=True, return_inverse=True)
    if len(first_index) == len(array):
        return None
    repeats = np.flatnonzero(first_index[inverse] != np.arange(len(array)))
    repeat = int(repeats[0])
    return int(first_index[inverse[repeat]]), repeat
