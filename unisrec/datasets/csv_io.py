"""Column-wise CSV reading (pyarrow) with errors that name the file, the line and the column.

Files are read in one columnar pass; the slow line-by-line scans below run only after a failure, to
point at the first offending line.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from unisrec.errors import DataError, UnisrecError


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _records(path: Path, encoding: str, delimiter: str, quoting: bool = True) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of every record, header included; blank lines skipped, as pyarrow does."""
    style: Literal[0, 3] = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
    with open_text(path, encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=style)
        start = 1
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1


def record_line(
    path: Path, index: int, *, header: bool, encoding: str, delimiter: str, quoting: bool = True
) -> int | None:
    """Line number (1-based) where data record ``index`` (0-based) starts, or None if not found."""
    target = index + (1 if header else 0)
    for i, (line, _fields) in enumerate(_records(path, encoding, delimiter, quoting)):
        if i == target:
            return line
    return None


def check_encoding(encoding: str) -> None:
    """Refuse an unknown encoding, and one whose line feed is not the single byte LF (UTF-16, UTF-32): the
    readers find lines and their numbers by that byte."""
    try:
        codecs.lookup(encoding)
        one, two = "\n".encode(encoding), "\n\n".encode(encoding)  # a prefix (utf-8-sig's mark) comes once
        line_feed = two[len(one):]
    except LookupError:
        raise UnisrecError(f"unknown encoding {encoding!r} (--encoding)") from None
    except UnicodeError:
        line_feed = b""
    if line_feed != b"\n":
        raise UnisrecError(f"--encoding {encoding} is not read: its line feed is not the one byte LF that lines are "
                           f"found by; convert the files to UTF-8 (iconv -f {encoding} -t UTF-8 FILE > NEW)")


def _first_bad_utf8_line(path: Path, encoding: str) -> int | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return None


def _first_bad_width(path: Path, encoding: str, delimiter: str, width: int, quoting: bool) -> tuple[int, int] | None:
    for line, fields in _records(path, encoding, delimiter, quoting):
        if len(fields) != width:
            return line, len(fields)
    return None


UNCLOSED_QUOTE = ("a quoted field opens on this line and is never closed (the rest of the file would become one "
                  "value); close the quote or remove it")


def _unclosed_quote_line(path: Path, encoding: str, delimiter: str) -> int | None:
    """The line where a quoted field opens that the file never closes (pyarrow reads it to the end of the file,
    the rest of the file becoming that one value), or None."""
    with open_text(path, encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
        start = 1
        try:
            for _fields in reader:
                start = reader.line_num + 1
        except csv.Error as exc:
            # the file ends inside the quoted field, or its quote "closes" lines later where another field's
            # opening quote is (the record then runs over several lines and breaks there)
            if "unexpected end of data" in str(exc) or reader.line_num > start:
                return start
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
    quoting: bool = True,
) -> pa.Table:
    """Read ``columns`` of a CSV (plain or .gz) as strings; missing columns are an error.

    ``quoting=False`` reads '"' as an ordinary character (tab-separated dumps such as RecBole's and
    MovieLens' files, where titles hold unbalanced quotes).
    """
    check_exists(path)
    check_encoding(encoding)
    columns = list(dict.fromkeys(columns))  # a column named for two roles (id and text) is read once
    names = list(column_names) if column_names is not None else None
    parse_options = pcsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=quoting, quote_char='"' if quoting else False
    )
    if header:
        header_names = read_header(path, encoding, delimiter, quoting)
        repeated = sorted({c for c in columns if header_names.count(c) > 1})
        if repeated:
            raise DataError(path, f"column {repeated[0]!r} appears {header_names.count(repeated[0])} times in the "
                            "header; which one to use is ambiguous", line=1)
        missing = [c for c in columns if c not in header_names]
        if missing:
            found = ", ".join(header_names) or "(empty)"
            raise DataError(path, f"missing column {missing[0]!r}{what}; the header has: {found}", line=1)
        names = header_names  # as read_header cleaned them ("user_id, item_id": spaces and a BOM taken off)
    elif column_names is not None and len(column_names) < len(columns):
        raise DataError(path, f"expected {len(columns)} columns")
    read_options = pcsv.ReadOptions(
        encoding=encoding if encoding.lower().replace("-", "") != "utf8" else "utf8",
        column_names=names,
        skip_rows=1 if header else 0,
        autogenerate_column_names=False,
        block_size=1 << 24,
    )
    convert = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(columns),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pcsv.read_csv(path, read_options=read_options, parse_options=parse_options, convert_options=convert)
        if quoting and (any(_may_hold_line_break(table.column(c)) for c in columns)
                        or table.num_rows + int(header) < _line_breaks(path)):
            # a value over several lines, in a column read or in one not read (fewer records than lines): a
            # legitimate quoted field, or a quote never closed that swallowed the rest of the file
            line = _unclosed_quote_line(path, encoding, delimiter)
            if line is not None:
                raise DataError(path, UNCLOSED_QUOTE, line=line)
        return table
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"truncated or corrupted gzip file ({exc})") from None
    except OSError as exc:
        text = str(exc)
        if "compressed" in text.lower() or "gzip" in text.lower():
            raise DataError(path, f"truncated or corrupted gzip file ({text})") from None
        raise DataError(path, f"cannot read ({text})") from None
    except pa.ArrowInvalid as exc:
        if header and _only_one_line(path):  # a header without a final line break: pyarrow cannot skip it
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        text = str(exc)
        if "UTF8" in text or "utf8" in text or "decode" in text.lower():
            line = _first_bad_utf8_line(path, encoding)
            raise DataError(
                path, f"not valid {encoding} text; re-encode the file or pass --encoding", line=line
            ) from None
        if "Expected" in text and "columns" in text:
            unclosed = _unclosed_quote_line(path, encoding, delimiter) if quoting else None
            if unclosed is not None:
                raise DataError(path, UNCLOSED_QUOTE, line=unclosed) from None
            width = (
                len(column_names) if column_names is not None else len(read_header(path, encoding, delimiter, quoting))
            )
            bad = _first_bad_width(path, encoding, delimiter, width, quoting)
            if bad is not None:
                raise DataError(
                    path, f"expected {width} fields separated by {delimiter!r}, found {bad[1]}", line=bad[0]
                ) from None
        raise DataError(path, f"cannot parse as CSV ({text})") from None


def _only_one_line(path: Path) -> bool:
    """Whether the file holds a single line (no line break, or only a final one)."""
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as handle:
            handle.readline()
            return handle.read(1) == b""
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return False


def _line_breaks(path: Path) -> int:
    """The number of line feeds in the file (decompressed): at least its records' lines, less a last line
    without one; blank lines count too (pyarrow skips them), so more line feeds than records is only a hint."""
    opener = gzip.open if path.name.endswith(".gz") else open
    count = 0
    with opener(path, "rb") as handle:
        while block := handle.read(1 << 24):
            count += block.count(b"\n")
    return count


def _may_hold_line_break(column: pa.ChunkedArray) -> bool:
    """Whether a value of a string column may hold a line break: a byte search of each chunk's character buffer
    (about 6x faster than a per-value substring match on 4M values). A sliced chunk's buffer can hold characters
    of values outside the slice, so True may be a false alarm; the caller's exact pass over the file decides."""
    for chunk in column.chunks:
        data = chunk.buffers()[2]  # validity, offsets, characters
        if data is not None and data.size and data.to_pybytes().find(b"\n") >= 0:
            return True
    return False


def read_header(path: Path, encoding: str, delimiter: str, quoting: bool = True) -> list[str]:
    """Field names of the first line (only that line is decoded, so a bad byte further on is not blamed
    on line 1)."""
    check_exists(path)
    gz = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as handle:
            raw = handle.readline()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(path, f"truncated or corrupted gzip file ({exc})" if gz else f"cannot read ({exc})") from None
    check_encoding(encoding)
    for mark, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                       (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # UTF-32's first
        if raw.startswith(mark):
            raise DataError(path, f"the file starts with a {name} byte-order mark, not {encoding} text; convert it "
                            f"to UTF-8 (iconv -f {name} -t UTF-8 FILE > NEW)", line=1)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise DataError(path, f"not valid {encoding} text; re-encode the file or pass --encoding", line=1) from None
    style: Literal[0, 3] = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
    text = text.removeprefix("\ufeff")  # a byte-order mark before a quoted first name would keep its quotes
    try:
        first = next(csv.reader([text], delimiter=delimiter, quoting=style), [])
    except csv.Error as exc:
        # ``raw`` runs to the first LF: in a file with bare CR line breaks (old Mac) that is the whole file
        if "\r" in text.replace("\r\n", ""):
            raise DataError(path, "the line breaks are bare CR (carriage return only); convert the file to LF or "
                            "CRLF line breaks", line=1) from None
        raise DataError(path, f"cannot parse the header as CSV ({exc})", line=1) from None
    return [name.strip().lstrip("\ufeff") for name in first]


ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d",
               "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%dT%H:%M%z",
               "%Y-%m-%d %H:%M%z")  # with a UTC offset: converted


def _iso_normalised(strings: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """ISO 8601 spellings strptime does not take, rewritten: fractional seconds dropped (rounded down to the
    whole second, as decimal Unix seconds are), a final ``Z`` (UTC) as ``+0000``, an offset ``+HH:MM`` as
    ``+HHMM``."""
    out = pc.replace_substring_regex(strings, r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})[.,]\d+", r"\1")
    out = pc.replace_substring_regex(out, r"Z$", "+0000")
    return pc.replace_substring_regex(out, r"([+-]\d{2}):(\d{2})$", r"\1\2")


def parse_timestamps(
    values: pa.ChunkedArray | pa.Array,
    path: Path,
    column: str,
    *,
    header: bool,
    encoding: str = "utf-8",
    delimiter: str = ",",
    formats: Sequence[str] = (),
    quoting: bool = True,
) -> np.ndarray:
    """(E,) int64 Unix seconds from integer / decimal seconds or ISO 8601 date-times (or ``formats``).

    Integers are read exactly as int64 (no float rounding: nanosecond-scale values keep their order); a value
    outside int64 is an error naming its line. Decimal seconds are rounded down to the whole second, exactly
    (the integer part is read as int64), and a note on stderr says how many were rounded; events of the same
    user in the same second keep their file order. ISO 8601 values are read each in its own form (with or
    without 'T', seconds, fractions, an offset; no offset = UTC); otherwise the whole column must be Unix
    seconds or follow one of ``formats`` (two such formats could read a value differently: 01/02 as January or
    February). An error names the first value that does not follow the form most values follow.
    """
    strings = pc.utf8_trim_whitespace(values)
    if len(strings) == 0:
        return np.zeros(0, dtype=np.int64)
    numeric = pc.match_substring_regex(strings, r"^-?[0-9]+(\.[0-9]*)?$")
    if pc.all(numeric).as_py():
        where = {"path": path, "column": column, "header": header, "encoding": encoding, "delimiter": delimiter,
                 "quoting": quoting}
        return _exact_seconds(strings, where)
    masks = [numeric.to_numpy(zero_copy_only=False)]
    for index, fmt in enumerate(formats):
        parsed = pc.strptime(strings, format=fmt, unit="s", error_is_null=True)
        valid = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
        if valid.all():
            seconds = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
            _note_other_reading(seconds, strings, formats[index + 1 :], fmt, path, column)
            return seconds
        masks.append(valid)
    # (E,) int64 seconds, null where no ISO form reads the value: the forms are disjoint (strptime matches the
    # whole value), so the first form that reads a value is the only one
    iso = _iso_normalised(strings)
    seconds = pa.nulls(len(iso), pa.int64())
    for fmt in ISO_FORMATS:
        parsed = pc.cast(pc.strptime(iso, format=fmt, unit="s", error_is_null=True), pa.int64())
        seconds = pc.coalesce(seconds, parsed)
        if seconds.null_count == 0:  # every value read (a column of one form: after that form)
            break
    valid = pc.is_valid(seconds).to_numpy(zero_copy_only=False)
    if valid.all():
        return seconds.to_numpy(zero_copy_only=False)
    masks.append(valid)
    best = max(masks, key=lambda mask: int(mask.sum()))  # the form most values follow (first on ties)
    index = int(np.flatnonzero(~best)[0])
    line = record_line(path, index, header=header, encoding=encoding, delimiter=delimiter, quoting=quoting)
    expected = "Unix seconds or an ISO 8601 date-time"
    if formats:
        expected = f"Unix seconds, an ISO 8601 date-time or a date-time in the format {' / '.join(formats)}"
    raise DataError(
        path,
        f"unparsable timestamp {strings[index].as_py()!r}: expected {expected}",
        line=line,
        column=column,
    )


def _note_other_reading(seconds: np.ndarray, strings: pa.ChunkedArray | pa.Array, others: Sequence[str],
                        chosen: str, path: Path, column: str) -> None:
    """Say on stderr when a later format also reads every value, as other times (a column whose days are all 12
    or less reads as day/month and as month/day): the first format was taken, and the user should know."""
    for fmt in others:
        parsed = pc.strptime(strings, format=fmt, unit="s", error_is_null=True)
        if pc.is_valid(parsed).to_numpy(zero_copy_only=False).all():
            other = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
            if not np.array_equal(other, seconds):
                print(f"{path}: column {column!r}: every timestamp reads as {chosen} and as {fmt}, with other "
                      f"times; read as {chosen} (the first of the formats)", file=sys.stderr)
                return


def fractions_of_seconds(values: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """(E,) int64 nanoseconds past each value's whole second, as its text gives them (decimal Unix seconds
    ``100.25``, ISO 8601 ``...T10:00:05.250``), 0 where it gives none; None when no value has a fraction.
    ``parse_timestamps`` keeps whole seconds; this orders the events of one second as their times do."""
    strings = pc.utf8_trim_whitespace(values)
    pattern = r"^(?P<sign>-?)(?:[0-9]+\.|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}[.,])(?P<digits>[0-9]+)"
    found = pc.extract_regex(strings, pattern)
    if found.null_count == len(found):
        return None
    digits = pc.fill_null(pc.struct_field(found, "digits"), "")
    signs = pc.fill_null(pc.struct_field(found, "sign"), "").to_pylist()
    nanos = np.array([int((d + "000000000")[:9]) for d in digits.to_pylist()], dtype=np.int64)
    negative = np.array([sign == "-" for sign in signs]) & (nanos > 0)  # -5.25 is 0.75 s past -6
    nanos[negative] = 1_000_000_000 - nanos[negative]
    return nanos if nanos.any() else None


def _exact_seconds(strings: pa.ChunkedArray | pa.Array, where: dict[str, Any]) -> np.ndarray:
    """Integer / decimal second strings -> (E,) int64 whole seconds, exactly (see ``parse_timestamps``)."""
    dot = pc.find_substring(strings, ".").to_numpy(zero_copy_only=False)  # (E,) -1 where no fraction
    fractional = dot >= 0
    whole: pa.ChunkedArray | pa.Array = strings
    texts: list[str] = []
    if fractional.any():  # the integer part of each value (only for columns with decimals)
        texts = strings.to_pylist()
        parts = [t[:cut] if cut >= 0 else t for t, cut in zip(texts, dot, strict=True)]
        whole = pa.array([p if p not in ("", "-") else "0" for p in parts], pa.string())
    try:
        seconds = pc.cast(whole, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, OverflowError):
        for index, text in enumerate(whole.to_pylist()):
            if not -(2**63) <= int(text) < 2**63:
                line = record_line(where["path"], index, header=where["header"], encoding=where["encoding"],
                                   delimiter=where["delimiter"], quoting=where["quoting"])
                raise DataError(where["path"], f"timestamp {strings[index].as_py()!r} is out of range "
                                "(64-bit integer seconds)", line=line, column=where["column"]) from None
        raise
    if fractional.any():
        has_fraction = np.array([f and t[cut + 1 :].strip("0") != "" for t, cut, f in zip(texts, dot, fractional,
                                                                                          strict=True)])
        negative = np.array([t.startswith("-") for t in texts]) & has_fraction
        seconds = seconds - negative.astype(np.int64)  # floor, not truncation, below zero
        if has_fraction.any():
            print(f"{where['path']}: column {where['column']!r}: {int(has_fraction.sum())} fractional timestamps "
                  "rounded down to whole seconds (events of one second keep the order of their fractions)",
                  file=sys.stderr)
    return seconds


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
