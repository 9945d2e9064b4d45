"""Format ``recbole``: RecBole atomic files ``<name>.inter`` and ``<name>.item``.

Both are tab-separated, unquoted, with a typed header: every field is ``name:type``, type one of token,
token_seq, float, float_seq (e.g. ``user_id:token  item_id:token  rating:float  timestamp:float``).

- ``.inter`` needs ``user_id`` (or ``session_id``) and ``item_id``; ``timestamp`` is optional: without it
  each user's interactions keep their file order (recorded in ``dataset.json`` -> ``timestamps``).
- ``.item`` needs ``item_id``; an item's text joins its token and token_seq fields other than item_id, a
  field whose name holds "title" first, the others in header order: "Toy Story. 1995. Animation Children's
  Comedy" for ml-100k. Items whose text is empty have no text: their interactions are dropped and counted.

SOURCE is the folder holding the files (--name picks the prefix when it holds several) or the .inter file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from unisrec.datasets.csv_io import (
    check_exists,
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

TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_TYPES = ("token", "token_seq")
USER_FIELDS = ("user_id", "session_id")


def find_files(path: Path, name: str | None) -> tuple[Path, Path]:
    """(.inter file, .item file) of a folder (prefix ``name`` or the only one) or of an .inter file."""
    if path.is_dir():
        if name is None:
            found = sorted(p.name[: -len(".inter")] for p in path.glob("*.inter"))
            if not found:
                raise UnisrecError(f"{path}: no <name>.inter file; expected RecBole atomic files")
            if len(found) > 1:
                raise UnisrecError(f"{path}: several datasets ({', '.join(found)}); choose one with --name")
            name = found[0]
        inter = path / f"{name}.inter"
    else:
        inter = path
        if not inter.name.endswith(".inter"):
            raise UnisrecError(
                f"{path}: expected a folder holding <name>.inter and <name>.item, or an .inter file"
            )
        name = inter.name[: -len(".inter")]
    check_exists(inter)
    item = inter.parent / f"{name}.item"
    if not item.exists():
        raise DataError(item, "file not found: the recbole format needs the item texts (<name>.item)")
    return inter, item


def typed_header(path: Path, encoding: str) -> dict[str, str]:
    """field name -> header entry ("item_id" -> "item_id:token"); every entry must be ``name:type``."""
    fields: dict[str, str] = {}
    for entry in read_header(path, encoding, "\t", quoting=False):
        field, _, kind = entry.rpartition(":")
        if not field or kind not in TYPES:
            raise DataError(
                path,
                f"header field {entry!r} is not 'name:type' with type one of {', '.join(TYPES)}",
                line=1,
            )
        if field in fields:
            raise DataError(path, f"header field {field!r} appears twice", line=1)
        fields[field] = entry
    return fields


def _require(path: Path, fields: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        if name in fields:
            return fields[name]
    wanted = " or ".join(f"'{n}:token'" for n in names)
    raise DataError(path, f"missing field {wanted}; the header has: {', '.join(fields.values())}", line=1)


def _check_ids(path: Path, values: pa.Array, column: str, encoding: str) -> None:
    empty = first_empty(values)
    if empty is not None:
        line = record_line(path, empty, header=True, encoding=encoding, delimiter="\t", quoting=False)
        raise DataError(path, "empty id", line=line, column=column)


def read_inter(
    path: Path, encoding: str
) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(user, item, whole-second timestamp, nanoseconds within the second or None, info) of an .inter file;
    without a timestamp field, file order."""
    fields = typed_header(path, encoding)
    user, item = _require(path, fields, USER_FIELDS), _require(path, fields, ("item_id",))
    time = fields.get("timestamp")
    columns = [user, item] + ([time] if time else [])
    table = read_csv(path, columns, delimiter="\t", encoding=encoding, quoting=False)
    users, items = table.column(user).combine_chunks(), table.column(item).combine_chunks()
    _check_ids(path, users, user, encoding)
    _check_ids(path, items, item, encoding)
    if time is None:
        return (
            users,
            items,
            np.arange(len(users), dtype=np.int64),
            None,
            {"timestamps": "file order (no timestamp)"},
        )
    timestamps = parse_timestamps(
        table.column(time), path, time, header=True, encoding=encoding, delimiter="\t", quoting=False
    )
    return users, items, timestamps, fractions_of_seconds(table.column(time)), {}


def text_fields(fields: dict[str, str]) -> list[str]:
    """Header entries joined into the item text: title-like fields first, then the others in order."""
    names = [f for f, entry in fields.items() if f != "item_id" and entry.rpartition(":")[2] in TEXT_TYPES]
    return [fields[f] for f in sorted(names, key=lambda f: "title" not in f.lower())]


def read_item(path: Path, encoding: str) -> tuple[pa.Array, pa.Array, int]:
    """(item ids, texts, items whose text is empty) of an .item file; those items are left out."""
    fields = typed_header(path, encoding)
    item = _require(path, fields, ("item_id",))
    columns = text_fields(fields)
    if not columns:
        raise DataError(
            path,
            "no text field: expected token or token_seq fields besides item_id (e.g. title:token_seq)",
            line=1,
        )
    table = read_csv(path, [item, *columns], delimiter="\t", encoding=encoding, quoting=False)
    ids = table.column(item).combine_chunks()
    _check_ids(path, ids, item, encoding)
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        first, repeat = (
            record_line(path, i, header=True, encoding=encoding, delimiter="\t", quoting=False)
            for i in duplicate
        )
        raise DataError(
            path,
            f"duplicate item id {ids[duplicate[1]].as_py()!r} (first on line {first})",
            line=repeat,
            column=item,
        )
    values = [table.column(c).to_pylist() for c in columns]
    texts = [join_fields(row) for row in zip(*values, strict=True)]
    keep = np.array([bool(t) for t in texts], dtype=bool)
    kept_texts = pa.array([t for t in texts if t], pa.string())
    return ids.filter(pa.array(keep)), kept_texts, int((~keep).sum())


def read_recbole_source(path: Path, name: str | None, encoding: str) -> RawData:
    inter_path, item_path = find_files(path, name)
    catalogue_id, catalogue_text, empty = read_item(item_path, encoding)
    users, items, timestamps, within_second, info = read_inter(inter_path, encoding)
    info = {
        **info,
        "inter_file": inter_path.name,
        "item_file": item_path.name,
        "text_fields": [c.rpartition(":")[0] for c in text_fields(typed_header(item_path, encoding))],
        "items_without_text": empty,
    }
    return RawData(users, items, timestamps, catalogue_id, catalogue_text, info=info,
                   within_second=within_second)
