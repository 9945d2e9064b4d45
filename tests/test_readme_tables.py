"""README result tables generated from committed records: each table that follows a
``<!-- table: python scripts/seed_table.py ... -->`` comment must equal that command's output today."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
MARK = "<!-- table: "


def generated_tables() -> list[tuple[str, list[str]]]:
    """(command, the table lines after it) for every marked table of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    tables = []
    for index, line in enumerate(lines):
        if line.startswith(MARK) and line.endswith("-->"):
            command = line[len(MARK) : -len("-->")].strip()
            table = []
            for row in lines[index + 1 :]:
                if not row.startswith("|"):
                    break
                table.append(row)
            tables.append((command, table))
    return tables


def test_readme_tables_equal_their_commands_output() -> None:
    tables = generated_tables()
    assert tables, "the README has no generated tables"
    for command, table in tables:
        words = shlex.split(command)
        assert words[:2] == ["python", "scripts/seed_table.py"], command
        done = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, check=True)
        assert done.stdout.splitlines() == table, command
