"""Format ``unisrec``: the UniSRec authors' processed files, kept exactly (indices and split).

``X.train.inter`` holds every prefix -> next item of each user's training part (prefix cut to the last L
items), ``X.valid.inter`` / ``X.test.inter`` one row per user; ``X.text`` the item texts by original id,
``X.item2index`` / ``X.user2index`` original id -> 0-based index. Each user's full sequence is rebuilt from
these rows and every row is checked against it, so the stored split reproduces the files exactly.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from unisrec.datasets.csv_io import check_exists
from unisrec.datasets.processed import TEST, TRAIN, VALID, ProcessedDataset
from unisrec.datasets.text_clean import clean_text
from unisrec.errors import DataError, UnisrecError

INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
TEXT_HEADER = ["item_id:token", "text:token_seq"]


def find_prefix(source: Path, name: str | None) -> Path:
    if name is not None:
        return source / name
    found = sorted(p.name[: -len(".train.inter")] for p in source.glob("*.train.inter"))
    if not found:
        raise UnisrecError(f"{source}: no X.train.inter file; expected the UniSRec processed files")
    if len(found) > 1:
        raise UnisrecError(f"{source}: several datasets ({', '.join(found)}); choose one with --name")
    return source / found[0]


def _read_lines(path: Path) -> list[str]:
    check_exists(path)
    try:
        # a byte-order mark is not part of line 1; lines end at LF or CRLF only (str.splitlines would also break
        # them at U+2028, U+0085 or a form feed, which item texts may hold)
        text = path.read_text(encoding="utf-8-sig")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.removesuffix("\r") for line in lines]
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(path, "not valid UTF-8 text", line=line) from None


def read_index(path: Path) -> dict[str, int]:
    """original id -> index; indices must be 0..n-1, each once."""
    mapping: dict[str, int] = {}
    seen: dict[int, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isascii() or not parts[1].strip().isdigit():
            raise DataError(path, f"expected 'original id<TAB>index', got {line[:80]!r}", line=number)
        key, index = parts[0], int(parts[1])
        if key in mapping:
            raise DataError(path, f"duplicate id {key!r}", line=number)
        if index in seen:
            raise DataError(path, f"index {index} already used on line {seen[index]}", line=number)
        mapping[key] = index
        seen[index] = number
    if sorted(seen) != list(range(len(seen))):
        raise DataError(path, f"indices are not 0..{len(seen) - 1}")
    return mapping


def _rows(path: Path, n_users: int, n_items: int) -> list[tuple[int, int, list[int], int]]:
    """(line, user, history, target) of an .inter file with the RecBole atomic header."""
    lines = _read_lines(path)
    if not lines or lines[0].split("\t") != INTER_HEADER:
        raise DataError(path, f"expected the header {chr(9).join(INTER_HEADER)!r}", line=1)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():  # a blank line (at the end, typically): skipped, as in the index files
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(path, f"expected 3 tab-separated fields, found {len(parts)}", line=number)
        try:
            user, history, target = int(parts[0]), [int(x) for x in parts[1].split()], int(parts[2])
        except ValueError:
            raise DataError(path, "expected integer user, item list and item indices", line=number) from None
        if not 0 <= user < n_users:
            raise DataError(
                path, f"user index {user} outside 0..{n_users - 1}", line=number, column="user_id"
            )
        if not history or any(not 0 <= i < n_items for i in (*history, target)):
            raise DataError(path, f"empty history or item index outside 0..{n_items - 1}", line=number)
        rows.append((number, user, history, target))
    return rows


def read_unisrec_source(source: Path, name: str | None = None) -> ProcessedDataset:
    if not source.is_dir():
        raise UnisrecError(f"{source}: expected a folder holding the UniSRec processed files")
    prefix = find_prefix(source, name)
    item_index = read_index(Path(f"{prefix}.item2index"))
    user_index = read_index(Path(f"{prefix}.user2index"))
    n_items, n_users = len(item_index), len(user_index)
    for count, what in ((n_items, "item2index"), (n_users, "user2index")):
        if count == 0:
            raise DataError(Path(f"{prefix}.{what}"), "no ids: the dataset is empty")

    text_path = Path(f"{prefix}.text")
    lines = _read_lines(text_path)
    if not lines or lines[0].split("\t") != TEXT_HEADER:
        raise DataError(text_path, f"expected the header {chr(9).join(TEXT_HEADER)!r}", line=1)
    texts: list[str | None] = [None] * n_items
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise DataError(text_path, "expected 'item id<TAB>text'", line=number)
        if parts[0] not in item_index:
            raise DataError(text_path, f"item {parts[0]!r} is not in {prefix.name}.item2index", line=number)
        text = clean_text(parts[1])
        if not text:
            raise DataError(text_path, f"empty text for item {parts[0]!r}", line=number, column="text")
        if texts[item_index[parts[0]]] is not None:
            raise DataError(text_path, f"duplicate item id {parts[0]!r}", line=number)
        texts[item_index[parts[0]]] = text
    missing = [i for i, t in enumerate(texts) if t is None]
    if missing:
        inverse = {v: k for k, v in item_index.items()}
        raise DataError(text_path, f"{len(missing)} items have no text, e.g. {inverse[missing[0]]!r}")

    split_rows = {s: _rows(Path(f"{prefix}.{s}.inter"), n_users, n_items) for s in ("train", "valid", "test")}
    sequences, max_len = _rebuild(prefix, split_rows, n_users)

    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if n_users else np.zeros(0)
    split = np.full(len(items), TRAIN, dtype=np.int8)
    split[offsets[1:] - 1] = TEST
    split[offsets[1:] - 2] = VALID
    timestamps = np.arange(len(items), dtype=np.int64) - np.repeat(offsets[:-1], lengths)

    by_index = {v: k for k, v in user_index.items()}
    item_by_index = {v: k for k, v in item_index.items()}
    dataset = ProcessedDataset(
        name=prefix.name,
        user_ids=np.asarray([by_index[u] for u in range(n_users)], dtype=object),
        item_ids=np.asarray([item_by_index[i] for i in range(n_items)], dtype=object),
        item_texts=[t or "" for t in texts],
        offsets=offsets,
        items=items.astype(np.int32),
        timestamps=timestamps,
        split=split,
        info={"split": "given (unisrec files)", "timestamps": "position in sequence", "history_cut": max_len},
    )
    used = np.unique(items)
    dataset.stats = {
        **dataset.compute_stats(),
        "input": {"train_rows": len(split_rows["train"]), "valid_rows": len(split_rows["valid"])},
        "catalogue_items_without_interactions": n_items - len(used),
        "filtering": [],
    }
    return dataset


def _rebuild(
    prefix: Path, split_rows: dict[str, list[tuple[int, int, list[int], int]]], n_users: int
) -> tuple[list[list[int]], int]:
    """Each user's full sequence from the split files; every row is checked against it."""
    max_len = max((len(r[2]) for rows in split_rows.values() for r in rows), default=0)
    train: dict[int, list[tuple[int, int, list[int], int]]] = defaultdict(list)
    for row in split_rows["train"]:
        train[row[1]].append(row)
    once: dict[str, dict[int, tuple[int, int, list[int], int]]] = {"valid": {}, "test": {}}
    for split in ("valid", "test"):
        path = Path(f"{prefix}.{split}.inter")
        for row in split_rows[split]:
            if row[1] in once[split]:
                first = once[split][row[1]][0]
                raise DataError(path, f"second row for user {row[1]} (first on line {first})", line=row[0])
            once[split][row[1]] = row
    sequences: list[list[int]] = []
    train_path = Path(f"{prefix}.train.inter")
    for user in range(n_users):
        for split in ("valid", "test"):
            if user not in once[split]:
                raise DataError(Path(f"{prefix}.{split}.inter"), f"no row for user {user}")
        rows = train[user]
        if rows and len(rows[0][2]) != 1:
            rows = rows[::-1]  # the files list a user's prefixes longest first
        seq = list(rows[0][2]) if rows else list(once["valid"][user][2])
        for line, _user, history, target in rows:
            start = max(0, len(seq) - max_len)
            if history != seq[start:]:
                raise DataError(train_path, f"history does not continue user {user}'s sequence", line=line)
            seq.append(target)
        for split in ("valid", "test"):
            line, _user, history, target = once[split][user]
            if history != seq[max(0, len(seq) - max_len) :]:
                raise DataError(
                    Path(f"{prefix}.{split}.inter"), f"history does not match user {user}'s training items",
                    line=line,
                )
            seq.append(target)
        sequences.append(seq)
    return sequences, max_len
