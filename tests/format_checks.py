"""Helpers shared by the tests of the input formats (tests/test_format_*.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unisrec.cli import main
from unisrec.datasets import ProcessedDataset


def cli_error(capsys: pytest.CaptureFixture[str], args: list[str], out: Path) -> str:
    """Run ``unisrec prepare ARGS --out OUT``; check it fails cleanly (one line, no traceback, no output
    folder nor temporary left beside it) and return the message after ``unisrec prepare: error: ``."""
    capsys.readouterr()
    code = main(["prepare", *args, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("unisrec prepare: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return lines[0][len("unisrec prepare: error: ") :]


def cli_ok(capsys: pytest.CaptureFixture[str], args: list[str], out: Path) -> dict[str, Any]:
    """Run ``unisrec prepare ARGS --out OUT``, check it succeeds and return its JSON summary."""
    capsys.readouterr()
    code = main(["prepare", *args, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def sequences(dataset: ProcessedDataset) -> dict[str, list[str]]:
    """original user id -> original item ids in order."""
    return {
        str(dataset.user_ids[u]): [str(dataset.item_ids[i]) for i in dataset.sequence(u)]
        for u in range(dataset.n_users)
    }


def check_leave_one_out(dataset: ProcessedDataset) -> None:
    """Every user's last interaction is test, the one before valid, the others train."""
    for u in range(dataset.n_users):
        split = dataset.split[dataset.offsets[u] : dataset.offsets[u + 1]]
        assert split[-1] == 2 and split[-2] == 1 and np.all(split[:-2] == 0)


def steps(dataset: ProcessedDataset) -> list[tuple[str, int, int, int]]:
    """(step, removed interactions, removed users, removed items) of stats.json -> filtering."""
    return [
        (s["step"], s["removed_interactions"], s["removed_users"], s["removed_items"])
        for s in dataset.stats["filtering"]
    ]


def write_gz(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data))
    return path


def truncate_gz(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
