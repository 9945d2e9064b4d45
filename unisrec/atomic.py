"""Atomic writes: a reader never sees a half-written file or folder, a crash leaves the old one intact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and then each folder, deepest first, to the disk: before a rename makes
    them the real ones (and the previous version is deleted), so that a power loss cannot leave empty files."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            file = Path(root) / name
            if file.is_symlink():
                continue
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def real_folder(path: str | Path) -> Path:
    """``path``, or the folder it links to when it is a symbolic link: an output given as a link is written (and
    replaced) where the link points, never by replacing the link itself with a folder (which left the old target
    stale and the renamed link dangling beside it)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, replace: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (beside its target, for a link); on success it becomes ``path`` in
    one rename.

    With ``replace`` an existing ``path`` is swapped out (renamed aside, then deleted) only after the new
    folder is complete; on any error the temporary folder is removed and ``path`` is untouched.
    """
    path = real_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        fsync_tree(tmp)  # durable before it replaces anything
        if path.exists():
            if not replace:
                raise FileExistsError(path)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)  # the previous folder comes back
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(path: str | Path) -> list[Path]:
    """Remove what interrupted atomic writes of ``path`` left beside it (``.NAME.*.tmp`` / ``.old``).

    Call it only while holding the output's lock (``unisrec.locking``): then no live writer owns them. When a
    kill fell between the two renames of ``atomic_directory`` (``path`` gone, its previous version in
    ``.old``), the previous version is restored first.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # ".NAME.<random>.tmp" exactly: the random part has no dot, so the leftovers of "NAME.v2" are not NAME's
    own = re.compile(rf"\.{re.escape(path.name)}\.[^.]+\.(tmp|old)")
    leftovers = [p for p in sorted(path.parent.glob(f".{path.name}.*")) if own.fullmatch(p.name)]
    olds = [p for p in leftovers if p.name.endswith(".old")]
    if olds and not path.exists():
        os.replace(olds[0], path)
        leftovers.remove(olds[0])
    for stale in leftovers:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return leftovers
