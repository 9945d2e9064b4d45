"""Shared fixtures: small synthetic datasets written by the tests themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest


def write_csv(path: Path, header: str, rows: list[str], *, compress: bool = False) -> Path:
    text = header + "\n" + "".join(r + "\n" for r in rows)
    if compress:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_csv_source(tmp_path: Path) -> Path:
    """A csv-format folder: 8 users x 6 interactions over 6 items (passes 5-core), one item without events."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = []
    for user in range(8):
        for step in range(6):
            item = (user + step) % 6
            rows.append(f"u{user},i{item},{1000 + 10 * step + user}")
    write_csv(folder / "interactions.csv", "user_id,item_id,timestamp", rows)
    items = [f'i{i},"Item {i}, &quot;quoted&quot; title"' for i in range(6)] + ["i99,Never bought"]
    write_csv(folder / "items.csv", "item_id,title", items)
    return folder
