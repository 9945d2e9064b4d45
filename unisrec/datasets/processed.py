"""The processed dataset folder that every input format is turned into, and its reader.

Layout of a folder written by ``unisrec prepare``::

    dataset.json          format version, name, source, source format, options used
    stats.json            users / items / interactions, per-split counts, what each filtering step removed
    interactions.parquet  user:int32, item:int32, timestamp:int64, split:int8 -- sorted by user, then time
                          (ties keep input order); split 0 = train, 1 = valid, 2 = test
    items.parquet         item:int32 (0..n-1), item_id:string (original id), text:string
    users.parquet         user:int32 (0..m-1), user_id:string (original id)
    embeddings/           text embeddings written by ``unisrec encode`` (see unisrec.text_cache)

Item and user indices are dense and 0-based; a user's interactions are one contiguous run of rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unisrec.atomic import atomic_directory, clean_stale, real_folder
from unisrec.errors import DataError, UnisrecError
from unisrec.json_io import read_json
from unisrec.locking import holding_folder

FORMAT_VERSION = 1
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass
class ProcessedDataset:
    """Users' item sequences in time order, item texts, and the split of every interaction."""

    name: str
    user_ids: np.ndarray  # (U,) str: original user ids, index = user
    item_ids: np.ndarray  # (N,) str: original item ids, index = item
    item_texts: list[str]  # (N,) item text
    offsets: np.ndarray  # (U + 1,) int64: user u owns rows offsets[u]:offsets[u+1]
    items: np.ndarray  # (I,) int32: item of each interaction
    timestamps: np.ndarray  # (I,) int64
    split: np.ndarray  # (I,) int8: TRAIN / VALID / TEST
    stats: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    def user_of_rows(self) -> np.ndarray:
        """(I,) int64: the user of every interaction row."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.offsets))

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def target_rows(self, split: str) -> np.ndarray:
        """(T,) int64: rows whose item is a target of ``split`` and that have at least one earlier item."""
        code = SPLIT_NAMES[split]
        rows = np.flatnonzero(self.split == code)
        first = self.offsets[:-1][self.user_of_rows()[rows]]
        return rows[rows > first]

    def compute_stats(self) -> dict[str, Any]:
        lengths = np.diff(self.offsets)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "split": {name: int((self.split == code).sum()) for name, code in SPLIT_NAMES.items()},
            "sequence_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
        }

    def validate(self) -> None:
        """Check internal consistency; raises UnisrecError naming what is wrong."""
        where = str(self.path) if self.path else self.name
        if len(self.offsets) != self.n_users + 1 or self.offsets[0] != 0:
            raise UnisrecError(f"{where}: user offsets do not match {self.n_users} users")
        if self.offsets[-1] != self.n_interactions or np.any(np.diff(self.offsets) < 0):
            raise UnisrecError(f"{where}: user offsets do not cover the {self.n_interactions} interactions")
        if len(self.item_texts) != self.n_items:
            raise UnisrecError(f"{where}: {len(self.item_texts)} texts for {self.n_items} items")
        if self.n_interactions and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise UnisrecError(f"{where}: item index out of range 0..{self.n_items - 1}")
        if len(self.timestamps) != self.n_interactions or len(self.split) != self.n_interactions:
            raise UnisrecError(f"{where}: interaction columns have different lengths")


# what a processed dataset folder holds: its files, and the text vectors cached in it (``text_cache``)
DATASET_ENTRIES = frozenset({"dataset.json", "interactions.parquet", "items.parquet", "users.parquet", "stats.json",
                             "embeddings"})


def check_output_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier processed dataset, and that only with ``overwrite``: a folder
    whose dataset.json is not one this library wrote, or that holds anything else (a project folder that
    happens to have a dataset.json), is never deleted."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UnisrecError(f"{out}: exists and is not a folder; choose another --out")
    if not (out / "dataset.json").exists():
        if any(out.iterdir()):
            raise UnisrecError(f"{out}: folder exists, is not empty and is not a unisrec dataset; choose another --out")
        return
    if not overwrite:
        raise UnisrecError(f"{out}: dataset folder exists; pass --overwrite (overwrite=True) to replace it")
    try:
        info = read_json(out / "dataset.json")
    except UnisrecError:
        info = {}
    if not isinstance(info.get("format_version"), int):
        raise UnisrecError(f"{out}: its dataset.json is not a unisrec dataset's; refusing to replace the folder "
                           "(choose another --out)")
    others = sorted(p.name for p in out.iterdir() if p.name not in DATASET_ENTRIES and not p.name.startswith("."))
    if others:
        raise UnisrecError(f"{out}: holds {others[0]!r}, which a unisrec dataset folder does not; refusing to replace "
                           "the folder (move it out, or choose another --out)")


def write_processed(dataset: ProcessedDataset, out: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``dataset`` as a processed folder at ``out`` atomically (all files or none)."""
    dataset.validate()
    out = real_folder(out)  # a link: its target is the dataset folder (and its lock beside it)
    with holding_folder(out):  # one writer per dataset folder, while it writes
        return _write_held(dataset, out, overwrite)


def _write_held(dataset: ProcessedDataset, out: Path, overwrite: bool) -> Path:
    clean_stale(out)  # we hold the folder: what a killed writer left beside it can go
    check_output_folder(out, overwrite=overwrite)
    users = dataset.user_of_rows().astype(np.int32)
    with atomic_directory(out, replace=True) as tmp:
        pq.write_table(
            pa.table(
                {
                    "user": pa.array(users, pa.int32()),
                    "item": pa.array(dataset.items.astype(np.int32), pa.int32()),
                    "timestamp": pa.array(dataset.timestamps.astype(np.int64), pa.int64()),
                    "split": pa.array(dataset.split.astype(np.int8), pa.int8()),
                }
            ),
            tmp / "interactions.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "item": pa.array(np.arange(dataset.n_items, dtype=np.int32)),
                    "item_id": pa.array(dataset.item_ids.astype(str).tolist(), pa.string()),
                    "text": pa.array(dataset.item_texts, pa.string()),
                }
            ),
            tmp / "items.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "user": pa.array(np.arange(dataset.n_users, dtype=np.int32)),
                    "user_id": pa.array(dataset.user_ids.astype(str).tolist(), pa.string()),
                }
            ),
            tmp / "users.parquet",
        )
        info = {"format_version": FORMAT_VERSION, "name": dataset.name, **dataset.info}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "stats.json").write_text(json.dumps(dataset.stats, indent=2) + "\n")
    dataset.path = out
    return out


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    if not path.exists():
        raise DataError(path, "missing; is this a folder written by `unisrec prepare`?")
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"unreadable parquet file ({exc})") from None
    return table


def load_processed(path: str | Path) -> ProcessedDataset:
    """Read a processed dataset folder."""
    path = Path(path)
    if not path.is_dir():
        raise UnisrecError(f"{path}: no such dataset folder (create one with `unisrec prepare`)")
    info_path = path / "dataset.json"
    if not info_path.exists():
        raise DataError(info_path, "missing; is this a folder written by `unisrec prepare`?")
    info = read_json(info_path, "prepare the dataset again")
    if info.get("format_version") != FORMAT_VERSION:
        raise DataError(
            info_path,
            f"dataset format version {info.get('format_version')!r}, this unisrec reads version "
            f"{FORMAT_VERSION}; prepare the dataset again",
        )
    stats_path = path / "stats.json"
    stats = read_json(stats_path, "prepare the dataset again") if stats_path.exists() else {}
    inter = _read_parquet(path / "interactions.parquet", ["user", "item", "timestamp", "split"])
    items = _read_parquet(path / "items.parquet", ["item", "item_id", "text"])
    users = _read_parquet(path / "users.parquet", ["user", "user_id"])
    user_col = inter.column("user").to_numpy()
    n_users = users.num_rows
    counts = np.bincount(user_col, minlength=n_users) if len(user_col) else np.zeros(n_users, np.int64)
    if len(user_col) and np.any(np.diff(user_col) < 0):
        raise DataError(path / "interactions.parquet", "rows are not sorted by user", column="user")
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    dataset = ProcessedDataset(
        name=str(info.get("name", path.name)),
        user_ids=np.asarray(users.column("user_id").to_pylist(), dtype=object),
        item_ids=np.asarray(items.column("item_id").to_pylist(), dtype=object),
        item_texts=items.column("text").to_pylist(),
        offsets=offsets,
        items=inter.column("item").to_numpy().astype(np.int32),
        timestamps=inter.column("timestamp").to_numpy().astype(np.int64),
        split=inter.column("split").to_numpy().astype(np.int8),
        stats=stats,
        info=info,
        path=path,
    )
    dataset.validate()
    return dataset
