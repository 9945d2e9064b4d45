"""One writer per output: an advisory lock held for the life of the process that writes a folder.

``hold(path, what)`` takes an exclusive ``flock`` on the lock file ``path`` and keeps it until the process
exits (or ``release``). A second process asking for the same lock fails at once with
``<what>: in use by process PID``. The kernel drops a ``flock`` when its holder dies, even by kill -9, so a
stale lock file left behind is simply taken over by the next writer.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

from unisrec.atomic import real_folder
from unisrec.errors import UnisrecError

_HELD: dict[Path, IO[str]] = {}
P = ParamSpec("P")
R = TypeVar("R")


def hold(path: Path, what: str, *, wait: bool = False) -> None:
    """Take the lock ``path`` for this process (re-entrant) or raise ``UnisrecError`` naming its holder;
    ``wait``: wait for the holder to finish instead (saying so once on stderr)."""
    import fcntl

    path = path.resolve()
    if path in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the handle)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        if not wait:
            handle.close()
            raise UnisrecError(f"{what}: in use by process {holder}") from None
        print(f"waiting for process {holder}, which writes {what}", file=sys.stderr, flush=True)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[path] = handle


def release(path: Path) -> None:
    """Drop a lock this process holds (a no-op otherwise)."""
    handle = _HELD.pop(path.resolve(), None)
    if handle is not None:
        handle.close()


def folder_lock(folder: Path) -> Path:
    """The lock file of the output folder ``folder``: ``.NAME.lock`` beside it (beside the folder a symbolic link
    points to: a link and its target are one output, written where the link points, ``atomic.real_folder``)."""
    folder = real_folder(folder)
    return folder.parent / f".{folder.name}.lock"


def hold_folder(folder: Path) -> None:
    """Lock the output folder ``folder`` (lock file ``.NAME.lock`` beside it, so that replacing the folder
    atomically keeps the lock)."""
    hold(folder_lock(folder), str(folder))


def hold_results(folder: Path) -> None:
    """Lock a report's results folder (``.runner.lock`` in it) for one runner: two runners with other ``--out``
    folders would otherwise train the same runs and write the same records."""
    hold(folder / ".runner.lock", f"{folder} (the records of a report runner)")


@contextmanager
def holding_folder(folder: Path) -> Iterator[None]:
    """``hold_folder`` for a block: the lock is let go after it (unless this process held it already), so that a
    long-lived process (a notebook that wrote a dataset) does not keep other writers out afterwards."""
    lock = folder_lock(folder).resolve()
    already = lock in _HELD
    hold_folder(folder)
    try:
        yield
    finally:
        if not already:
            release(lock)


def releases_its_locks(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` letting go, when it returns or raises, of every lock it took (those held before the call stay
    held): a long-lived process (a notebook that trained a run, a server) does not keep other writers of the run
    folder out once the run is written. A process that ends drops its locks anyway."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        before = set(_HELD)
        try:
            return function(*args, **kwargs)
        finally:
            for path in [held for held in _HELD if held not in before]:
                release(path)

    return wrapper


@contextmanager
def waiting_for(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` for a short read-modify-write, waiting for other holders (blocking)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
