"""User-facing errors: raised for bad input, reported by the CLI as one line without a traceback."""

from __future__ import annotations

from pathlib import Path


class UnisrecError(Exception):
    """An error caused by the user's input (files, options, data), not by a bug in unisrec."""


class DataError(UnisrecError):
    """Bad input data; the message names the file, the line or column, and what was expected."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.column = column


class ConfigError(UnisrecError):
    """An invalid configuration value or an unknown configuration key."""
