"""Dataset readers: every input format becomes the same processed folder (see ``processed``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unisrec.datasets.csv_format import CsvColumns, read_csv_source
from unisrec.datasets.pipeline import PrepareOptions, RawData, build_dataset
from unisrec.datasets.processed import (
    ProcessedDataset,
    check_output_folder,
    load_processed,
    write_processed,
)
from unisrec.datasets.unisrec_format import read_unisrec_source
from unisrec.errors import UnisrecError

FORMATS = ("unisrec", "csv", "amazon2018", "online-retail", "recbole", "movielens")

# What each format reads besides its source and --name: a "columns" or "filtering" entry stands for a group of
# options (the csv column names; --user-core, --item-core and --min-seq-len). A unisrec folder is already filtered
# and split, so no filtering option applies to it.
FORMAT_OPTIONS: dict[str, frozenset[str]] = {
    "unisrec": frozenset(),
    "csv": frozenset({"interactions", "items", "columns", "delimiter", "encoding", "filtering"}),
    "amazon2018": frozenset({"filtering"}),
    "online-retail": frozenset({"encoding", "filtering"}),
    "recbole": frozenset({"encoding", "filtering"}),
    "movielens": frozenset({"cache_dir", "filtering"}),
}

READER_KEYWORDS = frozenset({"interactions", "items", "columns", "delimiter", "encoding", "cache_dir"})

__all__ = [
    "FORMATS",
    "FORMAT_OPTIONS",
    "CsvColumns",
    "PrepareOptions",
    "ProcessedDataset",
    "load_processed",
    "prepare",
    "read_raw",
    "refuse_inapplicable_options",
    "write_processed",
]


def refuse_inapplicable_options(fmt: str, given: Mapping[str, str]) -> None:
    """Refuse options that ``fmt`` would not read: ``given`` maps each option's name as the user spelled it (a
    CLI flag or a keyword) to its ``FORMAT_OPTIONS`` entry."""
    applies = FORMAT_OPTIONS.get(fmt, frozenset())
    for spelled, option in given.items():
        if option not in applies:
            formats = [name for name, options in FORMAT_OPTIONS.items() if option in options]
            why = " (a unisrec folder is already filtered and split)" if fmt == "unisrec" else ""
            raise UnisrecError(f"{spelled} does not apply to format {fmt}{why}; it is read by format "
                               f"{', '.join(formats)} only")


def read_raw(source: str, fmt: str, **kwargs: Any) -> RawData:
    """Raw interactions and item texts of ``source`` in format ``fmt`` (all formats but ``unisrec``)."""
    path = Path(source)
    if fmt == "csv":
        return read_csv_source(
            path if kwargs.get("interactions") is None or kwargs.get("items") is None else None,
            interactions=kwargs.get("interactions"),
            items=kwargs.get("items"),
            columns=kwargs.get("columns"),
            delimiter=kwargs.get("delimiter"),
            encoding=kwargs.get("encoding") or "utf-8",
        )
    if fmt == "amazon2018":
        from unisrec.datasets.amazon2018 import read_amazon2018_source

        return read_amazon2018_source(path, category=kwargs.get("name"))
    if fmt == "online-retail":
        from unisrec.datasets.online_retail import read_online_retail_source

        return read_online_retail_source(path, encoding=kwargs.get("encoding") or "utf-8")
    if fmt == "recbole":
        from unisrec.datasets.recbole_format import read_recbole_source

        return read_recbole_source(path, name=kwargs.get("name"), encoding=kwargs.get("encoding") or "utf-8")
    if fmt == "movielens":
        from unisrec.datasets.movielens import read_movielens_source

        return read_movielens_source(source, cache_dir=kwargs.get("cache_dir"))
    raise UnisrecError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def _source_name(source: str) -> str:
    """Default dataset name: the source's file or folder name without data-file extensions."""
    path = Path(source.rstrip("/") or "/")
    name = path.name if path.name not in ("", "..") else path.resolve().name  # "." or "..": the folder's own name
    for suffix in (".gz", ".csv", ".tsv", ".xlsx", ".inter"):
        name = name.removesuffix(suffix)
    return name


def prepare(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    options: PrepareOptions | None = None,
    name: str | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> ProcessedDataset:
    """Read ``source`` in format ``fmt``, filter and split it, and write the processed folder ``out``."""
    started = time.perf_counter()
    check_output_folder(Path(out), overwrite=overwrite)
    if fmt not in FORMATS:
        raise UnisrecError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    unknown = sorted(set(kwargs) - READER_KEYWORDS)
    if unknown:
        raise UnisrecError(f"prepare() got unknown option(s) {', '.join(unknown)}; expected: "
                           f"{', '.join(sorted(READER_KEYWORDS))}")
    given = {key: key for key, value in kwargs.items() if value is not None}
    if options is not None and options != PrepareOptions():
        given["options"] = "filtering"
    refuse_inapplicable_options(fmt, given)
    options = options or PrepareOptions()
    files_given = fmt == "csv" and kwargs.get("interactions") is not None and kwargs.get("items") is not None
    if fmt != "movielens" and not files_given and not Path(source).exists():  # movielens: also a release name
        raise UnisrecError(f"{source}: file not found" if Path(source).suffix else f"{source}: folder not found")
    info = {"source": str(source), "source_format": fmt}
    if fmt == "unisrec":
        dataset = read_unisrec_source(Path(source), name)
        dataset.info = {**info, **dataset.info}
    else:
        raw = read_raw(str(source), fmt, name=name, **kwargs)
        dataset_name = name or _source_name(str(source))
        dataset = build_dataset(raw, name=dataset_name, options=options, info=info)
    dataset.stats["prepare_seconds"] = round(time.perf_counter() - started, 3)
    write_processed(dataset, out, overwrite=overwrite)
    return dataset
