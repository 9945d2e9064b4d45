"""Regenerate (or check) the README's result tables from the committed records.

    python scripts/readme_tables.py            # rewrite every generated table of README.md in place
    python scripts/readme_tables.py --check    # exit 1, naming the tables, when one differs from its command

A generated table is the block of ``|`` lines right after a ``<!-- table: python scripts/seed_table.py ... -->``
comment; the comment's command (run from the repository root) prints the table. tests/test_readme_tables.py
runs the check, so a README number is always the output of a command over records anyone can rerun.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- table: "
END = "-->"
ALLOWED = ["python", "scripts/seed_table.py"]  # the only command a table may name


@dataclass(frozen=True)
class Table:
    line: int  # 0-based index of the marker line
    command: str
    rows: list[str]  # the README's table lines now


def find_tables(lines: list[str]) -> list[Table]:
    tables = []
    for index, line in enumerate(lines):
        if line.startswith(MARK) and line.endswith(END):
            command = line[len(MARK) : -len(END)].strip()
            rows = []
            for row in lines[index + 1 :]:
                if not row.startswith("|"):
                    break
                rows.append(row)
            tables.append(Table(index, command, rows))
    return tables


def generate(command: str) -> list[str]:
    """The table printed by ``command`` (a seed_table.py call) run from the repository root."""
    words = shlex.split(command)
    if words[:2] != ALLOWED:
        raise SystemExit(f"readme_tables: README.md: a table must come from {' '.join(ALLOWED)}, not {command!r}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"readme_tables: {command}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.splitlines()


def regenerated(lines: list[str], tables: list[Table]) -> tuple[list[str], list[str]]:
    """README lines with every table replaced by its command's output, and the commands whose table changed."""
    out: list[str] = []
    changed: list[str] = []
    done_to = 0
    for table in tables:
        new_rows = generate(table.command)
        if new_rows != table.rows:
            changed.append(table.command)
        out += lines[done_to : table.line + 1] + new_rows
        done_to = table.line + 1 + len(table.rows)
    return out + lines[done_to:], changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs")
    parser.add_argument("--readme", type=Path, default=README, help="the Markdown file (default: README.md)")
    args = parser.parse_args(argv)
    lines = args.readme.read_text().splitlines()
    tables = find_tables(lines)
    if not tables:
        print(f"readme_tables: {args.readme}: no generated table", file=sys.stderr)
        return 2
    new_lines, changed = regenerated(lines, tables)
    if args.check:
        for command in changed:
            print(f"readme_tables: differs from its command's output: {command}", file=sys.stderr)
        return 1 if changed else 0
    if changed:
        from unisrec.atomic import atomic_write_text

        atomic_write_text(args.readme, "\n".join(new_lines) + "\n")
    print(f"readme_tables: {len(changed)} table(s) rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
