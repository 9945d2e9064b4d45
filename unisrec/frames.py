"""The DataFrame API: pandas in, pandas out (in the spirit of RecTools).

    import unisrec
    ds = unisrec.Dataset.from_frames(interactions, items, user_col="user_id", item_col="item_id",
                                     time_col="timestamp", text_col="title")   # same filtering/split as prepare
    rec = unisrec.fit(ds, mode="inductive", epochs=2, seed=1)    # -> Recommender (out=None: temporary run)
    rec.recommend(users=["u1", "u2"], k=10)                    # DataFrame user_id, item_id, score, rank, text
    rec.recommend_histories([["i1", "i7"]], k=10)              # ad-hoc histories (user_id = row)

A ``Dataset`` is a processed dataset folder (``unisrec prepare``'s output), so everything the CLI does works
on it too; ``fit`` is ``unisrec finetune`` and returns the run's ``Recommender`` with the dataset's users.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from unisrec.config import RunConfig, override
from unisrec.datasets.pipeline import PrepareOptions, RawData, build_dataset
from unisrec.datasets.processed import ProcessedDataset, load_processed, write_processed
from unisrec.datasets.text_clean import join_fields
from unisrec.errors import UnisrecError
from unisrec.recommend import Recommender

_SHORTCUTS = {"epochs": "train.epochs", "seed": "train.seed", "device": "train.device", "lr": "train.lr",
              "batch_size": "train.batch_size", "threads": "train.threads"}


def _temporary_folder(prefix: str) -> Path:
    """A folder removed when the interpreter exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _column(frame: Any, name: str, what: str) -> Any:
    if not hasattr(frame, "columns"):  # a dict of lists, a list of rows: not a frame
        raise UnisrecError(f"{what} must be a pandas DataFrame (pandas.DataFrame(...) of it), got "
                           f"{type(frame).__name__}")
    if name not in frame.columns:
        found = ", ".join(map(str, frame.columns)) or "(none)"
        raise UnisrecError(f"{what}: no column {name!r}; the frame has: {found}")
    return frame[name]


def _ids(frame: Any, name: str, what: str) -> Any:
    """A column of ids as strings; a missing id (None, NaN) or an empty one is an error naming its row."""
    values = _column(frame, name, what)
    missing = values.isna()
    if missing.any():
        raise UnisrecError(f"{what}: column {name!r} has a missing id at row {int(missing.to_numpy().argmax())}")
    text = values.astype(str).str.strip()
    empty = text == ""
    if empty.any():
        raise UnisrecError(f"{what}: column {name!r} has an empty id at row {int(empty.to_numpy().argmax())}")
    return text


def _out_of_range(column: str, row: int, value: int | float) -> UnisrecError:
    return UnisrecError(f"interactions: column {column!r} row {row}: timestamp {value!r} is out of range "
                       "(64-bit integer seconds)")


def _within_second(values: Any) -> np.ndarray | None:
    """(E,) int64 nanoseconds past the whole second of datetimes (None for other columns, or none past it):
    events of one second are ordered by them, as the CSV reader orders fractional timestamps."""
    import pandas as pd

    if not pd.api.types.is_datetime64_any_dtype(values):
        return None
    stamps = pd.to_datetime(values, utc=True)
    nanos = ((stamps - stamps.dt.floor("s")) // pd.Timedelta(nanoseconds=1)).to_numpy(dtype=np.int64)
    return nanos if nanos.any() else None


def _timestamps(values: Any, column: str) -> np.ndarray:
    """(E,) int64 Unix seconds from integers, datetimes (naive = UTC) or whole-second floats."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values, utc=True)
        if stamps.isna().any():
            row = int(stamps.isna().argmax())
            raise UnisrecError(f"interactions: column {column!r} has a missing time at row {row}")
        # whole seconds since the epoch whatever the column's unit (pandas reads CSV dates as microseconds)
        return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(values):
        missing = values.isna()  # a nullable Int64 column can hold <NA>
        if missing.any():
            raise UnisrecError(f"interactions: column {column!r} has a missing time at row "
                               f"{int(missing.to_numpy().argmax())}")
        if pd.api.types.is_unsigned_integer_dtype(values):  # uint64 above int64's range would wrap to negative
            unsigned = values.to_numpy(dtype=np.uint64)
            big = np.flatnonzero(unsigned > np.iinfo(np.int64).max)
            if len(big):
                raise _out_of_range(column, int(big[0]), int(unsigned[big[0]]))
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values):
        array = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(array) | (array != np.floor(array))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UnisrecError(f"interactions: column {column!r} row {row}: {array[row]!r} is not a whole number "
                               "of seconds; pass integers or datetimes")
        outside = np.flatnonzero((array < -(2.0**63)) | (array >= 2.0**63))  # the cast would give int64's minimum
        if len(outside):
            raise _out_of_range(column, int(outside[0]), float(array[outside[0]]))
        return array.astype(np.int64)
    raise UnisrecError(f"interactions: column {column!r} must hold integers (Unix seconds) or datetimes, "
                       f"got dtype {values.dtype}")


class Dataset:
    """A processed dataset (users' sequences, item texts, leave-one-out split) kept in a folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.processed: ProcessedDataset = load_processed(self.path)

    @classmethod
    def from_frames(
        cls,
        interactions: Any,
        items: Any,
        *,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str = "timestamp",
        text_col: str = "title",
        name: str = "frames",
        out: str | Path | None = None,
        user_core: int = 5,
        item_core: int = 5,
        overwrite: bool = False,
    ) -> Dataset:
        """Interactions (user, item, time) and items (item, text) DataFrames -> a Dataset, filtered and split as
        ``unisrec prepare`` does (k-core, events ordered by time with ties in input order, leave-one-out).

        ``out``: the folder to write (default: a temporary one, removed at exit); an earlier dataset there is
        replaced only with ``overwrite`` (``unisrec prepare --overwrite``).
        """
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise UnisrecError(f"name must be a dataset name without path separators, got {name!r} (out= says "
                               "where to write)")
        for core, value in (("user_core", user_core), ("item_core", item_core)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UnisrecError(f"{core} must be an integer, got {value!r}")
        for first, second, a, b in (("user_col", "item_col", user_col, item_col),
                                    ("time_col", "user_col", time_col, user_col),
                                    ("time_col", "item_col", time_col, item_col)):
            if a == b:  # one column in two roles: ids read as times (numeric ones silently), or users as items
                raise UnisrecError(f"interactions: {first} and {second} name the same column {a!r}")
        users = _ids(interactions, user_col, "interactions")
        item_ids = _ids(interactions, item_col, "interactions")
        time_values = _column(interactions, time_col, "interactions")
        times = _timestamps(time_values, time_col)
        catalogue = _ids(items, item_col, "items")
        texts = _column(items, text_col, "items")
        if texts.isna().any():
            raise UnisrecError(f"items: column {text_col!r} has a missing text at row {int(texts.isna().argmax())}")
        texts = texts.astype(str).map(lambda text: join_fields([text]))  # cleaned as the file formats clean them
        if (texts == "").any():
            row = int((texts == "").to_numpy().argmax())
            raise UnisrecError(f"items: column {text_col!r} has an empty text at row {row} "
                               f"(item {catalogue.iloc[row]!r})")
        duplicated = catalogue.duplicated()
        if duplicated.any():
            raise UnisrecError(f"items: item id {catalogue[duplicated].iloc[0]!r} appears twice in {item_col!r}")
        raw = RawData(
            user_id=pa.array(users.tolist(), pa.string()),
            item_id=pa.array(item_ids.tolist(), pa.string()),
            timestamp=times,
            catalogue_id=pa.array(catalogue.tolist(), pa.string()),
            catalogue_text=pa.array(texts.tolist(), pa.string()),
            within_second=_within_second(time_values),
        )
        options = PrepareOptions(user_core=user_core, item_core=item_core)
        info = {"source": "DataFrames", "source_format": "frames"}
        dataset = build_dataset(raw, name=name, options=options, info=info)
        folder = Path(out) if out is not None else _temporary_folder("unisrec-dataset-") / name
        write_processed(dataset, folder, overwrite=overwrite)
        return cls(folder)

    @property
    def n_users(self) -> int:
        return self.processed.n_users

    @property
    def n_items(self) -> int:
        return self.processed.n_items

    def user_histories(self) -> dict[str, list[str]]:
        """Every user's whole sequence (item ids, oldest first): what recommendations for that user start from."""
        data = self.processed
        ids = np.asarray(data.item_ids, dtype=object)
        return {str(user): ids[data.sequence(index)].tolist() for index, user in enumerate(data.user_ids)}

    def __repr__(self) -> str:
        return f"Dataset({self.path}, users={self.n_users}, items={self.n_items})"


def fit(
    dataset: Dataset | str | Path,
    mode: str = "inductive",
    *,
    out: str | Path | None = None,
    init: str | Path | None = None,
    config: RunConfig | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> Recommender:
    """Train (``unisrec finetune``) and return the run's ``Recommender``, which knows the dataset's users.

    Keyword arguments are the CLI's dotted overrides (``**{"train.lr": 3e-4}``, ``train__lr=3e-4``,
    ``text__pooling="mean"``) or the shortcuts epochs, seed, device, lr, batch_size, threads. ``out=None``
    trains in a temporary run folder. As ``unisrec finetune`` does in its own process, training seeds the global
    random generators (Python's, numpy's, torch's) with the run's seed and, with ``threads``, sets torch's thread
    count; both stay so in the calling process afterwards.
    """
    from unisrec.finetune import finetune

    data = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    dotted = []
    for key, value in overrides.items():
        name = _SHORTCUTS.get(key, key.replace("__", "."))
        if "." not in name:
            raise UnisrecError(f"unknown setting {key!r}; use a dotted config key such as train__lr or one of "
                               f"{', '.join(_SHORTCUTS)}")
        dotted.append(override(name, value))
    run = Path(out) if out is not None else _temporary_folder("unisrec-run-") / "run"
    finetune(data.path, mode, run, config=config, overrides=dotted, init=init, overwrite=overwrite)
    recommender = Recommender.from_pretrained(run)
    recommender.set_users(data.user_histories())
    return recommender
